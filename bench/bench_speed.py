"""Benchmark: the research scripts' way against interp_tl at GPT-2 small's shape, side by side (timing only).

One command, one process, baseline and candidate interleaved and repeated (the minimum is kept):

    HF_HOME=/work/hfgpt2 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python bench/bench_speed.py --json auto
    python bench/render_benchmarks.py bench/results/speed_<date>.json   # the table in docs/benchmarks.md

``HF_HOME`` must hold the offline GPT-2 of ``shared/tools/make_offline_gpt2.py --hf-home DIR`` (needs
npm): GPT-2 small's real config and tokenizer with RANDOM weights, so every number the studies
compute is meaningless and none is kept (outputs go to a temporary folder). Random weights never
emit EOS, so every generation runs its full budget. Run it on a quiet machine: two torch
processes at once on 2 cores slow each other 3-10x. The load average at start and end, and
before every measurement, goes into the JSON.

What runs (each part interleaved: baseline, candidate, then the other order in the next rep):

1. **alignment**, per size in ``--pairs`` (default 200 and 1,000): the research way
   (``bench/seed_alignment_gpt2.py``'s ``run``: HF model, one prompt per forward, hand-written
   module hooks, 5 x n_layers permutation loops, JSON + npz) against interp_tl with default flags
   (``load_model("gpt2")``, the study's prepare / extract / analyse, ``write_result``: what
   ``interp-tl alignment --model gpt2 --n-pairs N`` runs after its imports) and with
   ``head_shares=False``. Each timed from model load to written files. Imports are timed
   separately in fresh interpreters (``import torch, transformers`` + interp_tl's prompts for
   the research way; ``import interp_tl.cli`` + ``interp_tl.studies`` + ``transformer_lens`` for
   interp_tl; both with transformers' GPT-2 module, which each way's first ``from_pretrained``
   imports) and added for the whole-process figure. Peak memory: the same interp_tl run (default flags and
   ``head_shares=False``) as a fresh child process per size, timed end to end, reading its own
   ``VmHWM``: the peak of the whole process, and the study's peak above the loaded model (the
   high-water mark reset after ``load_model`` and ``malloc_trim``), split into the activations the
   study holds (its caches: prompts x hooks x d_model floats, the data itself, linear in pairs for
   any method that keeps them) and the working set beyond them (what "flat in pairs" is about).
2. **extraction vs FLOP floor**, from the default interp_tl runs: forward matmul FLOPs of the
   prompts (per prompt of T tokens and per layer ``2 T (4 d^2 + 2 d d_mlp) + 4 T^2 d``: Q, K, V,
   O, the MLP's two matrices, scores and weighted values; embeddings, norms, GELU, softmax not
   counted; the unembed is skipped by the extraction), over the fp32 matmul rate measured right
   after that run at the row count of every batch the extraction ran (best of 3 per distinct
   count). With ``--forward-refs``, a plain TransformerLens forward without hooks and Hugging
   Face's ``GPT2Model`` on the same padded batches, at the smallest size, to attribute the rest.
3. **generation** on the surgery seed's evaluation shape: ``seed_test_problems(4)`` (20 problems)
   in en and zh, 40 prompts x 128 new tokens. Research way: ``bench/seed_surgery_generation_gpt2.py``
   (HF ``generate`` one prompt at a time). interp_tl: ``evaluate_generation`` (batched, left-padded,
   key-value cache), without BOS so both ways run the same token ids; the tokens of the two are
   compared (same greedy continuations, up to fp32 near-ties). ``--uncached`` adds interp_tl's
   uncached reference path (slow: minutes).
4. **layers**, one layer pair's d_mlp rotation: ``interp_tl.gauge.rotate_neurons`` (thin) against
   the seed's scipy ``orthogonal_procrustes`` of the full d_mlp x d_mlp problem, on GPT-2's W_in and
   W_out of blocks 0 and 1, and the thin one at a Qwen2.5-3B-like gated shape (d_model 2048, d_mlp
   11,008, random weights; ``--full-qwen`` adds the full one there: minutes); residuals compared.

``--quick`` runs a few seconds of everything (tiny sizes) to check the script, not to measure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

#: The issue's targets.
TARGETS = {
    "alignment_speedup_at_1000": 3.0,  # research way / interp_tl, whole process, default flags
    "extraction_over_floor": 1.3,
    "head_shares_overhead": 1.15,  # default / --no-head-shares, whole process
    "generation_speedup": 3.0,  # HF generate one prompt at a time / interp_tl
    # The study's peak above the loaded model, less the caches it holds (the data, n x hooks x d_model
    # floats): flat when the larger size's is within 10% of the smaller's.
    "working_set_growth": 1.1,
}


# ----------------------------------------------------------------------------- environment

def setup_env(hf_home: str | None) -> str:
    """Point Hugging Face at the offline GPT-2 (refuse to run without it), offline."""
    home = hf_home or os.environ.get("HF_HOME") or "/work/hfgpt2"
    os.environ["HF_HOME"] = home
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub = Path(home) / "hub"
    if not any((hub / d).exists() for d in ("models--gpt2", "models--openai-community--gpt2")):
        sys.exit(f"no GPT-2 in {hub}: build it with `python shared/tools/make_offline_gpt2.py --hf-home {home}` "
                 "(random weights, for timing)")
    return home


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformer_lens": version("transformer-lens"),
            "transformers": version("transformers"), "numpy": version("numpy"), "scipy": version("scipy"),
            "platform": platform.platform()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def settle() -> None:
    """Free what the last measurement left and hand the heap back, so the next starts alike."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def timed(fn, *args, **kwargs) -> tuple[float, Any]:
    settle()
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - t0, value


def run_child(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` to completion; its wall time and last line of output.

    Peak memory is read by the child itself (``VmHWM``): ``ru_maxrss`` from ``wait4`` would hold
    this process's RSS at the fork (Linux folds the pre-exec address space's high-water mark into it).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=err, env=os.environ.copy(), check=False)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"child failed: {' '.join(cmd)}\n{err.read().decode(errors='replace')[-3000:]}")
        lines = out.read().decode().strip().splitlines()
    return {"wall_s": wall, "last_line": lines[-1] if lines else ""}


# ----------------------------------------------------------------------------- alignment

def research_alignment(n: int, out: Path) -> dict[str, float]:
    import seed_alignment_gpt2

    t = time.perf_counter()
    marks = seed_alignment_gpt2.run("gpt2", n, out, verbose=False)
    return {**marks, "total": time.perf_counter() - t}


def interp_alignment(n: int, head_shares: bool, out: Path) -> dict[str, Any]:
    """What ``interp-tl alignment --model gpt2 --n-pairs N`` runs after its imports, phase by phase."""
    from interp_tl.models import load_model
    from interp_tl.report import write_result
    from interp_tl.studies.alignment import STUDY, AlignmentConfig

    config = AlignmentConfig(n_pairs=n, head_shares=head_shares)
    marks: dict[str, Any] = {}
    start = t = time.perf_counter()
    model = load_model("gpt2")
    marks["load"] = time.perf_counter() - t
    t = time.perf_counter()
    prompts = STUDY.prepare(model, config)
    caches = STUDY.extract(model, config, prompts)
    marks["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    result = STUDY.analyse(model, config, prompts, caches)
    marks["analyse"] = time.perf_counter() - t
    t = time.perf_counter()
    write_result(result, out)
    marks["write"] = time.perf_counter() - t
    marks["total"] = time.perf_counter() - start
    if head_shares:  # after the timed run
        marks["floor"] = extraction_floor(model, prompts.stacked(), config.batch_size)
    return marks


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(n: int, head_shares: bool, out: str) -> None:
    """Child mode: the CLI's alignment run (load, study, files); peak RSS of the whole and above the loaded model."""
    from interp_tl.models import load_model
    from interp_tl.report import write_result
    from interp_tl.studies.alignment import STUDY, AlignmentConfig

    model = load_model("gpt2")
    settle()
    after_load = rss_mb()
    load_peak = rss_mb("VmHWM")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (Linux >= 4.0): the peak from here on
        f.write("5")
    config = AlignmentConfig(n_pairs=n, head_shares=head_shares)
    prompts = STUDY.prepare(model, config)
    caches = STUDY.extract(model, config, prompts)
    activations = sum(t.numel() * t.element_size() for c in caches.values() for t in c.cache_dict.values()) / 2**20
    write_result(STUDY.analyse(model, config, prompts, caches), out)
    study_peak = rss_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": max(load_peak, study_peak), "load_peak_rss_mb": load_peak,
                      "after_load_rss_mb": after_load, "study_peak_above_load_mb": study_peak - after_load,
                      "activations_mb": activations,
                      "working_set_mb": study_peak - after_load - activations}))


def layer_flops(T: int, d: int, d_mlp: int) -> int:
    """Matmul FLOPs of one transformer block on a prompt of T tokens (see the module docstring)."""
    return 2 * T * (4 * d * d + 2 * d * d_mlp) + 2 * 2 * T * T * d


def extraction_floor(model, tokens, batch_size: int) -> dict[str, Any]:
    """FLOPs of the prompts, and the matmul rate at the row counts of the extraction's batches."""
    from interp_tl.batching import length_sorted_batches

    cfg = model.cfg
    lengths = [int(x) for x in tokens.lengths]
    batches = [[lengths[i] for i in rows] for rows in length_sorted_batches(lengths, batch_size)]
    real = sum(cfg.n_layers * layer_flops(t, cfg.d_model, cfg.d_mlp) for t in lengths)
    padded = sum(len(b) * cfg.n_layers * layer_flops(max(b), cfg.d_model, cfg.d_mlp) for b in batches)
    rows = [len(b) * max(b) for b in batches]
    rate = gemm_rate(rows, cfg.d_model, cfg.d_mlp)
    return {"flops_real": real, "flops_padded": padded, "tokens_real": sum(lengths),
            "tokens_padded": sum(rows), "batches": len(batches), "gemm_flops_per_s": rate,
            "floor_s": real / rate}


def gemm_rate(batch_rows: list[int], d: int, d_mlp: int, reps: int = 3) -> float:
    """FLOP/s of one block's GEMMs (QKV, O, MLP in, MLP out) at each batch's row count, weighted by FLOPs."""
    import torch

    gen = torch.Generator().manual_seed(0)
    w = [torch.randn(k, n, generator=gen) for k, n in ((d, 3 * d), (d, d), (d, d_mlp), (d_mlp, d))]
    flops, seconds = 0.0, 0.0
    with torch.inference_mode():
        for rows in sorted(set(batch_rows)):
            xs = [torch.randn(rows, d, generator=gen)] * 3 + [torch.randn(rows, d_mlp, generator=gen)]
            for x, m in zip(xs, w):
                x @ m
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                for x, m in zip(xs, w):
                    x @ m
                best = min(best, time.perf_counter() - t0)
            count = batch_rows.count(rows)
            flops += count * sum(2 * rows * m.shape[0] * m.shape[1] for m in w)
            seconds += count * best
    return flops / seconds


def forward_references(n: int) -> dict[str, float]:
    """The default extraction's padded batches through TransformerLens without hooks and HF GPT2Model."""
    import torch
    from transformers import AutoModelForCausalLM

    from interp_tl.batching import batches
    from interp_tl.cache import fused_gelu
    from interp_tl.models import load_model
    from interp_tl.studies.alignment import STUDY, AlignmentConfig

    model = load_model("gpt2")
    config = AlignmentConfig(n_pairs=n)
    padded = [(b.tokens, b.attention_mask) for b in batches(model, STUDY.prepare(model, config).stacked(),
                                                             config.batch_size)]
    out = {}
    with torch.inference_mode(), fused_gelu(model):
        model(padded[0][0][:2], attention_mask=padded[0][1][:2], return_type=None)
        t0 = time.perf_counter()
        for toks, mask in padded:
            model(toks, attention_mask=mask, return_type=None)
        out["tl_forward_no_hooks_s"] = time.perf_counter() - t0
    del model
    hf = AutoModelForCausalLM.from_pretrained("gpt2", dtype=torch.float32).eval().transformer
    with torch.inference_mode():
        hf(padded[0][0][:2], attention_mask=padded[0][1][:2])
        t0 = time.perf_counter()
        for toks, mask in padded:
            hf(toks, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))
        out["hf_gpt2model_s"] = time.perf_counter() - t0
    return out


def import_times(reps: int) -> dict[str, float]:
    """Seconds to start a fresh interpreter and import what each way imports (min over ``reps``)."""
    # Both ways load GPT-2 through transformers' GPT-2 classes (TransformerLens converts their weights):
    # ``from_pretrained`` imports that module at a process's first load. Timed here with the rest of the
    # imports; in the repeated runs it would fall in the first repetition, which the minimum drops.
    gpt2 = "import transformers.models.gpt2.modeling_gpt2"
    research = "import torch, transformers, numpy, tqdm; from transformers import AutoModelForCausalLM; " \
               f"import interp_tl.prompts; {gpt2}"
    interp = "import interp_tl.cli, interp_tl.studies, interp_tl.report, interp_tl.models, transformer_lens, " \
             f"matplotlib.figure; {gpt2}"
    out = {"research": float("inf"), "interp_tl": float("inf")}
    for _ in range(reps):
        for key, code in (("research", research), ("interp_tl", interp)):
            out[key] = min(out[key], run_child([sys.executable, "-c", code])["wall_s"])
    return out


def alignment_part(sizes: list[int], reps: int, tmp: Path, forward_refs: bool) -> dict[str, Any]:
    runs: dict[str, dict[str, list]] = {str(n): {"research": [], "interp_tl": [], "interp_tl_no_head_shares": []}
                                        for n in sizes}
    ways = [("research", lambda n, out: research_alignment(n, out)),
            ("interp_tl", lambda n, out: interp_alignment(n, True, out)),
            ("interp_tl_no_head_shares", lambda n, out: interp_alignment(n, False, out))]
    for rep in range(reps):
        for n in sizes:
            for name, fn in (ways if rep % 2 == 0 else ways[::-1]):
                before = loadavg()
                phases = timed(fn, n, tmp / f"{name}_{n}_{rep}")[1]
                seconds = phases.pop("total")
                runs[str(n)][name].append({"s": seconds, "phases": phases, "loadavg_before": before})
                print(f"  alignment n={n} {name:26s} {seconds:8.1f} s   (load {before[0]})", flush=True)
    out: dict[str, Any] = {"runs": runs, "imports": import_times(max(reps, 2))}
    print(f"  imports: research {out['imports']['research']:.1f} s, interp_tl {out['imports']['interp_tl']:.1f} s")
    out["children"] = {}
    for n in sizes:
        for name, shares in (("interp_tl", True), ("interp_tl_no_head_shares", False)):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(n), str(tmp / f"mem_{name}_{n}")]
            child = run_child(cmd + ([] if shares else ["--no-head-shares"]))
            child.update(json.loads(child.pop("last_line")))
            out["children"][f"{name}_{n}"] = child
            print(f"  child: alignment n={n} {name:26s} whole process {child['wall_s']:6.1f} s, peak RSS "
                  f"{child['peak_rss_mb']:.0f} MB (loaded model {child['after_load_rss_mb']:.0f} MB, study peak above it "
                  f"{child['study_peak_above_load_mb']:+.0f} MB = activations {child['activations_mb']:.0f} MB + working "
                  f"set {child['working_set_mb']:.0f} MB)", flush=True)
    if forward_refs:
        out["forward_refs"] = {"n": min(sizes), **timed(forward_references, min(sizes))[1]}
    return out


# ----------------------------------------------------------------------------- generation

def generation_part(reps: int, per_category: int, max_new_tokens: int, uncached: bool) -> dict[str, Any]:
    import seed_surgery_generation_gpt2 as seed

    from interp_tl.tokens import tokenize
    from interp_tl.generation import evaluate_generation, greedy_completions
    from interp_tl.models import load_model
    from interp_tl.prompts import seed_test_problems

    langs = ("en", "zh")
    problems = seed_test_problems(per_category)
    texts = [p.prompts[lang] for lang in langs for p in problems]
    hf, tokenizer = seed.load("gpt2")
    model = load_model("gpt2")
    batch_size = 32  # the surgery study's default

    def research():
        return seed.generate_one_at_a_time(hf, tokenizer, texts, max_new_tokens)

    def interp():
        evaluate_generation(model, problems, langs, max_new_tokens, batch_size, prepend_bos=False)

    ways = [("research", research), ("interp_tl", interp)]
    if uncached:
        tokens = tokenize(model, texts, prepend_bos=False)
        ways.append(("interp_tl_uncached", lambda: greedy_completions(model, tokens, max_new_tokens, batch_size,
                                                                      use_cache=False)))
    runs: dict[str, list] = {name: [] for name, _ in ways}
    research_ids = None
    for rep in range(reps):
        for name, fn in (ways if rep % 2 == 0 else ways[::-1]):
            before = loadavg()
            seconds, value = timed(fn)
            if name == "research":
                research_ids = value
            runs[name].append({"s": seconds, "loadavg_before": before})
            print(f"  generation {len(texts)} x {max_new_tokens} {name:20s} {seconds:8.1f} s   (load {before[0]})",
                  flush=True)
    ours = greedy_completions(model, tokenize(model, texts, prepend_bos=False), max_new_tokens, batch_size)
    eos = tokenizer.eos_token_id
    cut = [ids[: ids.index(eos)] if eos in ids else ids for ids in research_ids]
    same = sum(a == b for a, b in zip(ours, cut))
    first_diff = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                  for a, b in zip(ours, cut) if a != b]
    return {"prompts": len(texts), "max_new_tokens": max_new_tokens, "batch_size": batch_size, "runs": runs,
            "generated_tokens": sum(len(x) for x in ours), "same_continuations": same,
            "first_difference_at": first_diff}


# ----------------------------------------------------------------------------- layers

def layers_part(reps: int, full_qwen: bool, quick: bool) -> dict[str, Any]:
    import numpy as np
    from scipy.linalg import orthogonal_procrustes

    from interp_tl.gauge import MLPWeights, mlp_weights, rotate_neurons
    from interp_tl.models import load_model

    model = load_model("gpt2")

    rng = np.random.default_rng(0)
    d_model, d_mlp = (256, 1024) if quick else (2048, 11008)

    def gated():
        return MLPWeights(rng.normal(size=(d_model, d_mlp)), rng.normal(size=(d_mlp, d_model)),
                          rng.normal(size=(d_model, d_mlp)))

    shapes = {"gpt2": (mlp_weights(model, 0), mlp_weights(model, 1)), "qwen2.5-3b-like": (gated(), gated())}
    del model

    def full(wa, wb):
        fa, fb = wa.families(), wb.families()
        s = orthogonal_procrustes(np.hstack(list(fa.values())).T, np.hstack(list(fb.values())).T)[0]
        return {k: float(np.linalg.norm(s.T @ fa[k] - fb[k])) for k in fa}

    out: dict[str, Any] = {}
    for name, (wa, wb) in shapes.items():
        ways = [("thin", rotate_neurons)]
        if name == "gpt2" or full_qwen:
            ways.append(("full", full))
        entry: dict[str, Any] = {"d_model": wa.W_in.shape[0], "d_mlp": wa.W_in.shape[1], "gated": wa.W_gate is not None}
        values = {}
        for rep in range(reps):
            for way, fn in (ways if rep % 2 == 0 else ways[::-1]):
                seconds, values[way] = timed(fn, wa, wb)
                entry.setdefault(way, []).append(seconds)
                print(f"  layers {name} {way:5s} {seconds:8.2f} s per pair", flush=True)
        if "full" in values:
            entry["max_abs_residual_difference"] = max(abs(values["thin"][k] - values["full"][k])
                                                       for k in values["thin"])
        out[name] = entry
    return out


# ----------------------------------------------------------------------------- summary

def _best(runs: list[dict]) -> float:
    return min(r["s"] for r in runs)


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Ratios and targets from the raw measurements (minimum over repetitions)."""
    out: dict[str, Any] = {}
    al = doc.get("alignment")
    if al:
        imp = al["imports"]
        for n, runs in al["runs"].items():
            research = _best(runs["research"]) + imp["research"]
            default = _best(runs["interp_tl"]) + imp["interp_tl"]
            plain = _best(runs["interp_tl_no_head_shares"]) + imp["interp_tl"]
            extract = min(r["phases"]["extract"] for r in runs["interp_tl"])
            floor = min(r["phases"]["floor"]["floor_s"] for r in runs["interp_tl"])
            out[f"alignment_{n}"] = {
                "research_s": research, "interp_tl_s": default, "interp_tl_no_head_shares_s": plain,
                "speedup": research / default, "head_shares_overhead": default / plain,
                "extract_s": extract, "floor_s": floor,
                "extraction_over_floor": min(r["phases"]["extract"] / r["phases"]["floor"]["floor_s"]
                                             for r in runs["interp_tl"]),
                "analyse_s": min(r["phases"]["analyse"] for r in runs["interp_tl"]),
                "analyse_no_head_shares_s": min(r["phases"]["analyse"] for r in runs["interp_tl_no_head_shares"]),
                **{f"{key}{suffix}": al["children"][f"{name}_{n}"][field]
                   for name, suffix in (("interp_tl", ""), ("interp_tl_no_head_shares", "_no_head_shares"))
                   for key, field in (("peak_rss_mb", "peak_rss_mb"), ("study_peak_mb", "study_peak_above_load_mb"),
                                      ("child_whole_process_s", "wall_s"), ("activations_mb", "activations_mb"),
                                      ("working_set_mb", "working_set_mb"))},
            }
    gen = doc.get("generation")
    if gen:
        out["generation"] = {"research_s": _best(gen["runs"]["research"]), "interp_tl_s": _best(gen["runs"]["interp_tl"])}
        out["generation"]["speedup"] = out["generation"]["research_s"] / out["generation"]["interp_tl_s"]
        if "interp_tl_uncached" in gen["runs"]:
            out["generation"]["interp_tl_uncached_s"] = _best(gen["runs"]["interp_tl_uncached"])
    lay = doc.get("layers")
    if lay:
        out["layers"] = {name: {k: min(v[k]) for k in ("thin", "full") if k in v} for name, v in lay.items()}
    out["targets"] = targets(out)
    return out


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """Each of the issue's targets: the measured value, the target, met or not."""
    res: dict[str, Any] = {}
    sizes = sorted(int(k.split("_")[1]) for k in summary if k.startswith("alignment_"))
    if 1000 in sizes:
        value = summary["alignment_1000"]["speedup"]
        res["alignment speedup at 1,000 pairs (>= 3x)"] = [value, value >= TARGETS["alignment_speedup_at_1000"]]
    for n in sizes:
        s = summary[f"alignment_{n}"]
        res[f"extraction / FLOP floor at {n} pairs (<= 1.3)"] = [s["extraction_over_floor"],
                                                                 s["extraction_over_floor"] <= TARGETS["extraction_over_floor"]]
        res[f"default / --no-head-shares at {n} pairs (<= 1.15)"] = [s["head_shares_overhead"],
                                                                    s["head_shares_overhead"] <= TARGETS["head_shares_overhead"]]
    if len(sizes) > 1:
        lo, hi = summary[f"alignment_{sizes[0]}"], summary[f"alignment_{sizes[-1]}"]
        res[f"peak RSS growth {sizes[0]} -> {sizes[-1]} pairs, whole process (MB, default flags)"] = [
            hi["peak_rss_mb"] - lo["peak_rss_mb"], None]
        res[f"study's peak above the loaded model, growth {sizes[0]} -> {sizes[-1]} pairs (MB)"] = [
            hi["study_peak_mb"] - lo["study_peak_mb"], None]
        res[f"activations held (the caches), growth {sizes[0]} -> {sizes[-1]} pairs (MB)"] = [
            hi["activations_mb"] - lo["activations_mb"], None]
        for suffix, label in (("", "default flags"), ("_no_head_shares", "--no-head-shares")):
            ratio = hi[f"working_set_mb{suffix}"] / lo[f"working_set_mb{suffix}"]
            res[f"working set beyond the activations, {sizes[-1]} / {sizes[0]} pairs, {label} (<= 1.1: flat)"] = [
                ratio, ratio <= TARGETS["working_set_growth"]]
    if "generation" in summary:
        value = summary["generation"]["speedup"]
        res["generation speedup vs HF generate one at a time (>= 3x)"] = [value, value >= TARGETS["generation_speedup"]]
    return res


def print_summary(summary: dict[str, Any]) -> None:
    print("\n" + "=" * 78)
    for key, value in summary.items():
        if key == "targets":
            continue
        print(f"{key}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()))
    print("-" * 78)
    for label, (value, met) in summary["targets"].items():
        verdict = "" if met is None else ("MET" if met else "NOT MET")
        print(f"{label:64s} {value:8.2f}  {verdict}")
    print("=" * 78)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, nargs="+", default=[200, 1000], help="alignment sizes (multiples of 5)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of every measurement (the minimum is kept)")
    ap.add_argument("--parts", nargs="+", default=["alignment", "generation", "layers"],
                    choices=["alignment", "generation", "layers"])
    ap.add_argument("--forward-refs", action="store_true",
                    help="also time TransformerLens without hooks and HF GPT2Model on the extraction's batches")
    ap.add_argument("--uncached", action="store_true", help="also time interp_tl's uncached generation (slow)")
    ap.add_argument("--full-qwen", action="store_true", help="also time scipy's full rotation at d_mlp 11,008 (slow)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    ap.add_argument("--hf-home", default=None, help="the offline GPT-2 cache (default $HF_HOME, else /work/hfgpt2)")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write the results here ('auto': bench/results/speed_<date>.json)")
    ap.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-head-shares", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    home = setup_env(args.hf_home)
    if args.memory_child:
        memory_child(int(args.memory_child[0]), not args.no_head_shares, args.memory_child[1])
        return
    if args.quick:
        args.pairs, args.reps = [10, 20], 1
    doc: dict[str, Any] = {"benchmark": "speed", "started": datetime.datetime.now().isoformat(timespec="seconds"),
                           "command": "python bench/bench_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
                           "hf_home": home, "weights": "random (offline GPT-2 config + tokenizer): timing only",
                           "quick": args.quick, "reps": args.reps, "loadavg_start": loadavg(), "machine": machine()}
    print(f"load average at start {doc['loadavg_start']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        if "alignment" in args.parts:
            doc["alignment"] = alignment_part(args.pairs, args.reps, Path(tmp), args.forward_refs)
        if "generation" in args.parts:
            doc["generation"] = generation_part(args.reps, 1 if args.quick else 4, 8 if args.quick else 128,
                                                args.uncached)
        if "layers" in args.parts:
            doc["layers"] = layers_part(args.reps, args.full_qwen, args.quick)
    doc["loadavg_end"] = loadavg()
    doc["summary"] = summarize(doc)
    print_summary(doc["summary"])
    print(f"load average at start {doc['loadavg_start']}, at end {doc['loadavg_end']}")
    if args.json:
        path = Path(args.json)
        if args.json == "auto":
            path = BENCH / "results" / f"speed_{datetime.date.today().isoformat()}{'_quick' if args.quick else ''}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
