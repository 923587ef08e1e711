"""Benchmark: ``interp-tl alignment`` vs the seeds' way on a GPT-2-small-shaped model (timing only).

Run on a quiet machine (two torch processes at once on 2 cores run several times slower)::

    HF_HOME=/work/hfgpt2 HF_HUB_OFFLINE=1 python bench/bench_alignment.py [--n-pairs 200] [--skip-seed]
        [--json bench/results/alignment_$(date +%F).json | --json auto]

``HF_HOME`` must hold the offline GPT-2 of ``shared/tools/make_offline_gpt2.py``: GPT-2 small's
real config and tokenizer with RANDOM weights. Every number the studies compute on it is
meaningless, so this script keeps none: the children's outputs go to a temporary folder that is
deleted, and only timings, memory and FLOP counts are printed (and written with ``--json``).

What runs, one thing at a time, in this order (so nothing torch-heavy ever overlaps):

1. The seeds' way, as a child process timed end to end (interpreter start, imports, model load,
   extraction, analysis, saving): ``bench/seed_alignment_gpt2.py``, a line-by-line port of
   ``shared/seeds/attn_vs_ffn_alignment.py`` to HF GPT-2 in float32 (one prompt per forward,
   hand-written module hooks, 5 × n_layers calls of the 500-permutation Python loop).
2. ``interp-tl alignment --model gpt2 --n-pairs N --quiet --no-prepend-bos --no-head-shares`` as a child process,
   timed the same way; its peak RSS comes from ``os.wait4`` (the child's own ``ru_maxrss``).
   Both sides run the same N problems of ``generate_problems(N, 42)`` without BOS; the z-scores
   of the two are compared (max |difference| only) to show they did the same work.
3. Memory vs N: the CLI again at N/4 and N/2 (its peak RSS per N), and per N a fresh child that
   loads the model, trims the heap, resets the peak (``/proc/self/clear_refs``) and reports the
   peak RSS of extraction + statistics above the loaded model, next to the bytes of the
   last-token vectors interp_tl keeps (N × 2 languages × 4 hooks × n_layers × d_model × 4 bytes).
4. In this process, interp_tl's parts: import of torch and transformer_lens, ``load_model``,
   tokenization, ``extract_alignment_activations``, ``alignment_from_activations`` (split into
   the z, retrieval and bootstrap calls), the residual-sum check, provenance and rendering; the
   extraction a second time (warm), and the same padded batches without hooks through
   TransformerLens and through HF's ``GPT2Model`` (both warm).
5. The FLOP floor: forward matmul FLOPs of the prompts interp_tl runs, per prompt of T tokens
   and per layer ``2·T·(4·d² + 2·d·d_mlp)`` (Q, K, V, O and the two MLP matrices) plus
   ``2·2·T²·d`` (scores and weighted values, full T×T), summed over layers; embeddings,
   LayerNorms, GELU, softmax and the unembed (skipped by ``return_type=None``) are not counted.
   Throughput is measured here with torch on one block's GEMMs (QKV, O, MLP in, MLP out) at the
   row count of every batch interp_tl runs (best of several repetitions per batch), weighted by
   FLOPs, right after each of the two extractions (this VM's matmul rate drifts by tens of % over
   minutes), and their mean is used: floor = FLOPs / throughput (attention's T×T matmuls, <1% of
   the FLOPs, at the same rate).
   One-shape and 2048² rates are printed for reference. The padded FLOPs
   (interp_tl's batches: sorted by length, 32 prompts, left-padded) show the padding waste.

Targets (from the issue): seeds' wall / interp_tl wall ≥ 4; extraction / floor ≤ 1.5; peak memory
growing with N no faster than the kept vectors.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
HOOKS_KEPT = 4  # resid_pre, attn_out, mlp_out, resid_post
TARGET_SPEEDUP = 4.0
TARGET_FLOOR_RATIO = 1.5
MB = 1024 * 1024


# ----------------------------------------------------------------------------- environment

def setup_env() -> list[str]:
    """Default HF_HOME to /work/hfgpt2 and force offline; refuse to run without the cached GPT-2."""
    notes = []
    if "HF_HOME" not in os.environ:
        os.environ["HF_HOME"] = "/work/hfgpt2"
        notes.append("HF_HOME was unset: using /work/hfgpt2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hub = Path(os.environ["HF_HOME"]) / "hub"
    if not any((hub / d).exists() for d in ("models--gpt2", "models--openai-community--gpt2")):
        sys.exit(f"no GPT-2 in {hub}: build it with `python shared/tools/make_offline_gpt2.py "
                 f"--hf-home {os.environ['HF_HOME']}` (random weights, for timing)")
    return notes


def busy_processes(threshold: float = 50.0) -> list[str]:
    """Other processes using more than ``threshold`` % CPU over one second."""
    import psutil

    me = os.getpid()
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid != me]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu > threshold:
            cmd = " ".join(p.info.get("cmdline") or [p.info.get("name") or "?"])[:90]
            busy.append(f"pid {p.pid} {cpu:.0f}% {cmd}")
    return busy


def run_child(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` to completion; wall time, the child's peak RSS and CPU time (from ``wait4``)."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"child failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


def interp_tl_command() -> list[str]:
    exe = shutil.which("interp-tl")
    return [exe] if exe else [sys.executable, "-m", "interp_tl.cli"]


def reset_peak_rss() -> None:
    """Reset this process's VmHWM (Linux ≥ 4.0), so the next read is the peak from now on."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def mem_sizes(n: int) -> list[int]:
    """N/4, N/2, N rounded to multiples of 5 (the problem set's rule), distinct, ascending."""
    sizes = {max(5, round(n * f / 5) * 5) for f in (0.25, 0.5)} | {n}
    return sorted(s for s in sizes if s <= n)


# ----------------------------------------------------------------------------- FLOPs

def layer_flops(T: int, d: int, d_mlp: int) -> int:
    """Matmul FLOPs of one transformer block on T tokens (see the module docstring)."""
    return 2 * T * (4 * d * d + 2 * d * d_mlp) + 2 * 2 * T * T * d


def batches_as_interp_tl(lengths: list[int], batch_size: int) -> list[list[int]]:
    """The token lengths of each batch, as ``interp_tl.activations.extract`` forms them."""
    from interp_tl.activations import length_sorted_batches

    return [[lengths[i] for i in rows] for rows in length_sorted_batches(lengths, batch_size)]


def flop_counts(lengths: list[int], batch_size: int, n_layers: int, d: int, d_mlp: int, vocab: int) -> dict:
    real = sum(n_layers * layer_flops(t, d, d_mlp) for t in lengths)
    batches = batches_as_interp_tl(lengths, batch_size)
    padded = sum(len(b) * n_layers * layer_flops(max(b), d, d_mlp) for b in batches)
    unembed = sum(2 * t * d * vocab for t in lengths)  # the seeds' model(**inputs) computes logits
    return {
        "real": real, "padded": padded, "seed_with_unembed": real + unembed,
        "tokens_real": sum(lengths), "tokens_padded": sum(len(b) * max(b) for b in batches),
        "batch_rows_x_width": [len(b) * max(b) for b in batches],
    }


def matmul_throughput(rows: int, d: int, d_mlp: int, reps: int) -> dict[str, float]:
    """FLOP/s of one block's GEMMs (QKV, O, MLP in, MLP out) at ``rows`` tokens, fp32, this process."""
    import torch

    gen = torch.Generator().manual_seed(0)
    shapes = [(rows, d, 3 * d), (rows, d, d), (rows, d, d_mlp), (rows, d_mlp, d)]
    mats = [(torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            for a, b in mats:
                a @ b
        for _ in range(reps):
            t0 = time.perf_counter()
            for a, b in mats:
                a @ b
            times.append(time.perf_counter() - t0)
    big = torch.randn(2048, 2048, generator=gen)
    with torch.inference_mode():
        big @ big
        t_big = min(_timed(lambda: big @ big) for _ in range(5))
    return {
        "rows": rows, "best_flops_per_s": flops / min(times), "median_flops_per_s": flops / statistics.median(times),
        "square2048_flops_per_s": 2 * 2048**3 / t_big, "threads": torch.get_num_threads(),
    }


def batch_gemm_throughput(batch_rows: list[int], d: int, d_mlp: int, reps: int) -> dict[str, float]:
    """FLOP/s of the block GEMMs at the row count of every batch interp_tl runs (best of ``reps`` each).

    Each batch's four GEMMs (QKV, O, MLP in, MLP out at rows = prompts × padded width) are timed
    once per distinct row count; the throughput is their FLOPs weighted by how often each batch
    occurs, over their summed best times: the matmul rate of exactly these forward passes.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    w = [torch.randn(k, n, generator=gen) for k, n in ((d, 3 * d), (d, d), (d, d_mlp), (d_mlp, d))]
    total_flops, total_time = 0.0, 0.0
    with torch.inference_mode():
        for rows in sorted(set(batch_rows)):
            xs = [torch.randn(rows, d, generator=gen)] * 3 + [torch.randn(rows, d_mlp, generator=gen)]
            for x, m in zip(xs, w):
                x @ m
            best = min(_timed(lambda: [x @ m for x, m in zip(xs, w)]) for _ in range(reps))
            count = batch_rows.count(rows)
            total_flops += count * sum(2 * rows * m.shape[0] * m.shape[1] for m in w)
            total_time += count * best
    return {"flops_per_s": total_flops / total_time, "batches": len(batch_rows)}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- children

def compare_outputs(seed_json: Path, cli_json: Path) -> dict[str, float]:
    """Max |difference| between the seed port's and the CLI's per-layer z and matched cosines."""
    seed = json.loads(seed_json.read_text())["layer_results"]
    cli = json.loads(cli_json.read_text())["layer_results"]
    z_keys = ["z_pre", "z_post_attn", "z_post_mlp", "z_attn_correction_alone", "z_mlp_correction_alone"]
    cos_keys = ["matched_cos_pre", "matched_cos_post_attn", "matched_cos_post_mlp"]

    def worst(keys):
        diffs = [abs(s[k] - c[k]) for s, c in zip(seed, cli) for k in keys if s[k] is not None and c[k] is not None]
        return max(diffs) if diffs else float("nan")

    return {"max_abs_dz": worst(z_keys), "max_abs_dcos": worst(cos_keys), "layers": len(cli)}


def memory_child(n: int) -> None:
    """Child mode: load, trim the heap, then peak RSS of extraction + statistics above that, as JSON."""
    import ctypes

    from interp_tl.models import load_model
    from interp_tl.studies.alignment import AlignmentConfig, alignment_from_activations, extract_alignment_activations

    model = load_model("gpt2")
    load_peak = rss_mb("VmHWM")
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back what loading freed, so the baseline is the model
    base = rss_mb()
    reset_peak_rss()
    config = AlignmentConfig(n_pairs=n, prepend_bos=False)
    prompts, layers, acts = extract_alignment_activations(model, config)
    peak_extract = rss_mb("VmHWM") - base
    a, b = prompts.langs
    alignment_from_activations(acts[a], acts[b], layers, config)
    kept = sum(v.nbytes for v in acts[a].values()) + sum(v.nbytes for v in acts[b].values())
    print(json.dumps({"n": n, "load_peak_rss_mb": load_peak, "after_load_rss_mb": base,
                      "extract_peak_above_load_mb": peak_extract, "total_peak_above_load_mb": rss_mb("VmHWM") - base,
                      "held_after_mb": rss_mb() - base, "kept_vectors_mb": kept / MB}))


def run_children(args, tmp: Path, sizes: list[int]) -> dict[str, Any]:
    logs = tmp / "logs"
    logs.mkdir()
    out: dict[str, Any] = {}
    if not args.skip_seed:
        print(f"[1/3] seeds' way: bench/seed_alignment_gpt2.py, n={args.n_pairs} ...", flush=True)
        cmd = [sys.executable, str(BENCH / "seed_alignment_gpt2.py"), "--model", "gpt2", "--n-pairs",
               str(args.n_pairs), "--out", str(tmp / "seed"), "--timings", str(tmp / "seed_timings.json")]
        out["seed"] = run_child(cmd, logs / "seed.log")
        out["seed"]["phases"] = json.loads((tmp / "seed_timings.json").read_text())
        print(f"      {out['seed']['wall_s']:.1f} s", flush=True)
    cli = interp_tl_command()
    out["cli"] = {}
    for i, n in enumerate(sorted(sizes, key=lambda s: s != args.n_pairs)):  # the headline size first
        print(f"[{2 if i == 0 else 3}/3] interp-tl alignment, n={n} ...", flush=True)
        cmd = cli + ["alignment", "--model", "gpt2", "--n-pairs", str(n), "--out", str(tmp / f"cli_{n}"),
                     "--quiet", "--no-prepend-bos", "--no-head-shares"]
        out["cli"][n] = run_child(cmd, logs / f"cli_{n}.log")
        print(f"      {out['cli'][n]['wall_s']:.1f} s, peak RSS {out['cli'][n]['peak_rss_mb']:.0f} MB", flush=True)
    out["memory"] = {}
    for n in sizes:
        print(f"[3/3] memory child (load, then extraction + statistics), n={n} ...", flush=True)
        log = logs / f"mem_{n}.log"
        run_child([sys.executable, str(Path(__file__).resolve()), "--memory-child", str(n)], log)
        out["memory"][n] = json.loads(log.read_text().strip().splitlines()[-1])
    if "seed" in out:
        out["agreement"] = compare_outputs(tmp / "seed" / "attn_vs_ffn_alignment.json",
                                           tmp / f"cli_{args.n_pairs}" / "alignment.json")
    return out


# ----------------------------------------------------------------------------- in process

def stats_breakdown(acts_a, acts_b, layers, config) -> dict[str, float]:
    """Time each statistics call of ``layer_entry`` separately, on the same stage vectors."""
    from interp_tl import stats
    from interp_tl.studies.alignment import STAGES, _stage_vectors  # the study's own stage vectors

    def stages(acts, layer):
        vectors = _stage_vectors(acts, layer)
        return [vectors[stage] for stage in STAGES]

    t = dict.fromkeys(["stage_vectors", "similarity", "z", "retrieval", "bootstrap"], 0.0)
    for layer in layers:
        t0 = time.perf_counter()
        pairs = list(zip(stages(acts_a, layer), stages(acts_b, layer)))
        t["stage_vectors"] += time.perf_counter() - t0
        for x, y in pairs:
            t["similarity"] += _timed(lambda: stats.similarity(x, y))
            t["z"] += _timed(lambda: stats.matched_vs_scrambled_z(x, y, n_perms=config.n_perms, seed=config.perm_seed))
            t["retrieval"] += _timed(lambda: stats.retrieval_auc(x, y))
            if config.n_boot:
                t["bootstrap"] += _timed(lambda: stats.bootstrap_ci(x, y, n_boot=config.n_boot, seed=0))
    t["calls"] = 5 * len(layers)
    return t


def forward_references(model, tokens, batch_size: int) -> dict[str, float]:
    """The same padded batches through TL without hooks and through HF's GPT2Model (no unembed)."""
    import torch

    from interp_tl.activations import _left_pad, length_sorted_batches  # the exact batches interp_tl runs

    batches = [list(map(int, b)) for b in length_sorted_batches(tokens.lengths, batch_size)]
    padded = [_left_pad([tokens.ids[i] for i in rows], 0, "cpu") for rows in batches]
    out = {}
    with torch.inference_mode():
        model(padded[0][0][:2], attention_mask=padded[0][1][:2], return_type=None)  # allocator warm-up
        t0 = time.perf_counter()
        for toks, mask in padded:
            model(toks, attention_mask=mask, return_type=None)
        out["tl_forward_no_hooks_s"] = time.perf_counter() - t0
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained("gpt2", dtype=torch.float32).eval().transformer
    with torch.inference_mode():
        hf(padded[0][0][:2], attention_mask=padded[0][1][:2])
        t0 = time.perf_counter()
        for toks, mask in padded:
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            hf(toks, attention_mask=mask, position_ids=pos)
        out["hf_gpt2model_batched_s"] = time.perf_counter() - t0
    del hf
    return out


def run_in_process(args) -> dict[str, Any]:
    print("[in-process] interp_tl breakdown ...", flush=True)
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    import torch
    res["import_torch_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import transformer_lens  # noqa: F401
    res["import_transformer_lens_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from interp_tl.models import load_model, model_provenance
    from interp_tl.report import render
    from interp_tl.studies.alignment import (
        AlignmentConfig, alignment_from_activations, extract_alignment_activations, resid_sum_error,
    )
    from interp_tl.studies.common import StudyResult, parallel_prompts
    res["import_interp_tl_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = load_model("gpt2")
    res["load_model_s"] = time.perf_counter() - t0
    cfg = model.cfg
    config = AlignmentConfig(n_pairs=args.n_pairs, prepend_bos=False)
    res["shape"] = {"n_layers": cfg.n_layers, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab,
                    "batch_size": config.batch_size, "torch_threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    prompts = parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)
    res["tokenize_s"] = time.perf_counter() - t0
    a, b = prompts.langs
    both = prompts.tokens[a] + prompts.tokens[b]
    res["lengths"] = {"zh_mean": float(prompts.tokens[a].lengths.mean()), "en_mean": float(prompts.tokens[b].lengths.mean()),
                      "min": int(both.lengths.min()), "max": int(both.lengths.max())}

    res["flops"] = flop_counts([int(x) for x in both.lengths], config.batch_size, cfg.n_layers,
                               cfg.d_model, cfg.d_mlp, cfg.d_vocab)
    batch_rows = res["flops"]["batch_rows_x_width"]

    t0 = time.perf_counter()
    _, layers, acts = extract_alignment_activations(model, config)
    res["extract_s"] = time.perf_counter() - t0
    # The GEMM rate right after each extraction: this VM's rate drifts by tens of % over minutes.
    rates = [batch_gemm_throughput(batch_rows, cfg.d_model, cfg.d_mlp, args.batch_reps)]
    t0 = time.perf_counter()
    layer_results, summary = alignment_from_activations(acts[a], acts[b], layers, config)
    res["stats_s"] = time.perf_counter() - t0
    res["stats_parts"] = stats_breakdown(acts[a], acts[b], layers, config)
    t0 = time.perf_counter()
    for lang in prompts.langs:
        resid_sum_error(acts[lang], layers)
    res["resid_check_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    extract_alignment_activations(model, config)
    res["extract_warm_s"] = time.perf_counter() - t0
    rates.append(batch_gemm_throughput(batch_rows, cfg.d_model, cfg.d_mlp, args.batch_reps))
    t0 = time.perf_counter()
    provenance = {"model": model_provenance(model)}
    res["provenance_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = StudyResult("alignment", {"languages": list(prompts.langs), "layer_results": layer_results,
                                       "summary": summary}, {**provenance, "prompts": {"n": prompts.n}})
    render(result)
    res["render_json_png_s"] = time.perf_counter() - t0
    del acts, layer_results, result

    res["forward"] = forward_references(model, both, config.batch_size)
    rows = int(statistics.median(batch_rows))
    res["matmul"] = matmul_throughput(rows, cfg.d_model, cfg.d_mlp, args.matmul_reps)
    res["matmul"]["per_batch"] = {
        "flops_per_s": statistics.mean(r["flops_per_s"] for r in rates), "batches": rates[0]["batches"],
        "after_1st_extract_flops_per_s": rates[0]["flops_per_s"],
        "after_warm_extract_flops_per_s": rates[1]["flops_per_s"],
    }
    return res


# ----------------------------------------------------------------------------- report

def kept_vectors_mb(n: int, n_layers: int, d: int) -> float:
    return n * 2 * HOOKS_KEPT * n_layers * d * 4 / MB


def report(args, children: dict, inproc: dict, notes: list[str]) -> dict[str, Any]:
    n = args.n_pairs
    shape = inproc["shape"]
    fl, mm = inproc["flops"], inproc["matmul"]
    thr = mm["per_batch"]["flops_per_s"]
    floor_s, floor_padded_s = fl["real"] / thr, fl["padded"] / thr
    cli = children["cli"][n]
    seed = children.get("seed")
    summary: dict[str, Any] = {"n_pairs": n, "cli_wall_s": cli["wall_s"], "extract_s": inproc["extract_s"],
                               "floor_s": floor_s, "extract_over_floor": inproc["extract_s"] / floor_s,
                               "extract_warm_over_floor": inproc["extract_warm_s"] / floor_s,
                               "tl_forward_no_hooks_over_floor": inproc["forward"]["tl_forward_no_hooks_s"] / floor_s}
    w = 44
    print()
    print("=" * 78)
    print(f"alignment benchmark, n_pairs={n} ({2 * n} prompts), GPT-2-small shape, RANDOM weights: timing only")
    print(f"torch threads {shape['torch_threads']}, batch {shape['batch_size']}, "
          f"tokens/prompt zh {inproc['lengths']['zh_mean']:.1f} en {inproc['lengths']['en_mean']:.1f} "
          f"(min {inproc['lengths']['min']}, max {inproc['lengths']['max']})")
    for note in notes:
        print(f"note: {note}")
    print("-" * 78)
    print(f"{'whole process (child, wall)':{w}} {'seeds way':>10} {'interp-tl':>10} {'ratio':>8}")
    if seed:
        ratio = seed["wall_s"] / cli["wall_s"]
        summary.update(seed_wall_s=seed["wall_s"], speedup=ratio)
        print(f"{'  wall time (s)':{w}} {seed['wall_s']:10.1f} {cli['wall_s']:10.1f} {ratio:7.2f}x")
        print(f"{'  CPU time user+sys (s)':{w}} {seed['cpu_s']:10.1f} {cli['cpu_s']:10.1f}")
        print(f"{'  peak RSS (MB)':{w}} {seed['peak_rss_mb']:10.0f} {cli['peak_rss_mb']:10.0f}")
        p = seed["phases"]
        print(f"{'  seeds way phases (s): imports/load/extract/analysis/save':{w}}")
        print(f"{'':{w}} {p['imports']:.1f} / {p['load']:.1f} / {p['extract']:.1f} / "
              f"{p['analysis']:.1f} / {p['save']:.1f}  (in-process total {p['total_in_process']:.1f})")
        ag = children["agreement"]
        print(f"{'  same work? max |Δz| / max |Δcos| seed vs cli':{w}} {ag['max_abs_dz']:.2e} / {ag['max_abs_dcos']:.2e}")
    else:
        print(f"{'  wall time (s)':{w}} {'skipped':>10} {cli['wall_s']:10.1f}")
        print(f"{'  peak RSS (MB)':{w}} {'':>10} {cli['peak_rss_mb']:10.0f}")
    print("-" * 78)
    print("interp_tl in process (s)")
    sp = inproc["stats_parts"]
    rows = [
        ("import torch", inproc["import_torch_s"]),
        ("import transformer_lens (after torch)", inproc["import_transformer_lens_s"]),
        ("import interp_tl study/report modules", inproc["import_interp_tl_s"]),
        ("load_model('gpt2')", inproc["load_model_s"]),
        ("tokenize 2N prompts (inside extraction)", inproc["tokenize_s"]),
        ("extract_alignment_activations (1st, as CLI)", inproc["extract_s"]),
        ("  same, 2nd run (warm)", inproc["extract_warm_s"]),
        ("  TL forward, same batches, no hooks", inproc["forward"]["tl_forward_no_hooks_s"]),
        ("  HF GPT2Model, same batches", inproc["forward"]["hf_gpt2model_batched_s"]),
        ("alignment_from_activations", inproc["stats_s"]),
        (f"  {sp['calls']} x matched_vs_scrambled_z", sp["z"]),
        (f"  {sp['calls']} x retrieval_auc", sp["retrieval"]),
        (f"  {sp['calls']} x bootstrap_ci (n_boot 200)", sp["bootstrap"]),
        (f"  {sp['calls']} x similarity (done 3x per stage)", sp["similarity"]),
        ("resid_sum_error (both langs)", inproc["resid_check_s"]),
        ("model_provenance (weights fingerprint)", inproc["provenance_s"]),
        ("render JSON + PNG", inproc["render_json_png_s"]),
    ]
    for label, value in rows:
        print(f"  {label:{w - 2}} {value:10.2f}")
    print("-" * 78)
    print("FLOP floor (forward matmuls; unembed, norms, GELU, softmax not counted)")
    print(f"  {'tokens real / padded (interp_tl batches)':{w - 2}} {fl['tokens_real']:10d} {fl['tokens_padded']:10d}"
          f"  ({fl['tokens_padded'] / fl['tokens_real'] - 1:+.1%})")
    print(f"  {'GFLOP real / padded':{w - 2}} {fl['real'] / 1e9:10.1f} {fl['padded'] / 1e9:10.1f}")
    print(f"  {'GFLOP seeds way (with unembed on all pos.)':{w - 2}} {fl['seed_with_unembed'] / 1e9:10.1f}")
    print(f"  {'matmul GFLOP/s at the batches run (floor rate)':{w - 2}} {thr / 1e9:10.1f}"
          f"  ({mm['per_batch']['batches']} batches, best of {args.batch_reps} each)")
    print(f"  {'  measured after 1st / after warm extraction':{w - 2}} "
          f"{mm['per_batch']['after_1st_extract_flops_per_s'] / 1e9:10.1f} "
          f"{mm['per_batch']['after_warm_extract_flops_per_s'] / 1e9:10.1f}  (floor rate = their mean)")
    print(f"  {'matmul GFLOP/s one shape: best / median':{w - 2}} {mm['best_flops_per_s'] / 1e9:10.1f} "
          f"{mm['median_flops_per_s'] / 1e9:10.1f}  ({mm['rows']} rows = median batch)")
    print(f"  {'matmul GFLOP/s, 2048^2 square (reference)':{w - 2}} {mm['square2048_flops_per_s'] / 1e9:10.1f}")
    print(f"  {'floor s: real / padded':{w - 2}} {floor_s:10.2f} {floor_padded_s:10.2f}")
    print("-" * 78)
    print("memory vs N (peak RSS; 'above load' = fresh process, after load_model and malloc_trim)")
    print(f"  {'N':>5} {'CLI peak':>9} {'load peak':>10} {'after load':>11} {'extract peak':>13} "
          f"{'+stats peak':>12} {'held':>6} {'kept vectors':>13}")
    mems = children["memory"]
    for m in sorted(mems):
        r = mems[m]
        print(f"  {m:5d} {children['cli'][m]['peak_rss_mb']:9.0f} {r['load_peak_rss_mb']:10.0f} {r['after_load_rss_mb']:11.0f} "
              f"{r['extract_peak_above_load_mb']:+13.0f} {r['total_peak_above_load_mb']:+12.0f} {r['held_after_mb']:+6.0f} "
              f"{r['kept_vectors_mb']:13.1f}")
    formula = kept_vectors_mb(max(mems), shape["n_layers"], shape["d_model"])
    print(f"  (MB; extract/+stats peak and held are above 'after load'; kept vectors by formula at N={max(mems)}: "
          f"{formula:.1f})")
    sizes = sorted(mems)
    if len(sizes) > 1:
        lo, hi = mems[sizes[0]], mems[sizes[-1]]
        d_cli = children["cli"][sizes[-1]]["peak_rss_mb"] - children["cli"][sizes[0]]["peak_rss_mb"]
        d_peak = hi["total_peak_above_load_mb"] - lo["total_peak_above_load_mb"]
        d_kept = hi["kept_vectors_mb"] - lo["kept_vectors_mb"]
        summary.update(cli_peak_growth_mb=d_cli, run_peak_growth_mb=d_peak, kept_growth_mb=d_kept)
        print(f"  growth N={sizes[0]}->{sizes[-1]}: CLI peak RSS {d_cli:+.0f} MB; peak of extraction+stats "
              f"{d_peak:+.0f} MB; kept vectors {d_kept:+.1f} MB")
    print("=" * 78)
    if seed:
        ok = summary["speedup"] >= TARGET_SPEEDUP
        print(f"seeds' wall / interp-tl wall = {summary['speedup']:.2f}x   (target >= {TARGET_SPEEDUP:g}: "
              f"{'MET' if ok else 'NOT MET'})")
    ok = summary["extract_over_floor"] <= TARGET_FLOOR_RATIO
    print(f"extraction / FLOP floor      = {summary['extract_over_floor']:.2f}    (target <= {TARGET_FLOOR_RATIO:g}: "
          f"{'MET' if ok else 'NOT MET'})")
    print(f"  (2nd, warm extraction / floor {summary['extract_warm_over_floor']:.2f}; TL forward without hooks / floor "
          f"{summary['tl_forward_no_hooks_over_floor']:.2f})")
    if "run_peak_growth_mb" in summary:
        print(f"peak memory growth with N    = {summary['run_peak_growth_mb']:+.0f} MB vs kept vectors "
              f"{summary['kept_growth_mb']:+.1f} MB (CLI process peak {summary['cli_peak_growth_mb']:+.0f} MB)")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-pairs", type=int, default=200, help="problems per language (multiple of 5)")
    ap.add_argument("--skip-seed", action="store_true", help="do not run the seeds' way (the slow part)")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the results as JSON here ('auto': bench/results/alignment_<date>.json)")
    ap.add_argument("--matmul-reps", type=int, default=20, help="repetitions of the one-shape GEMM timing")
    ap.add_argument("--batch-reps", type=int, default=5, help="repetitions of each batch's GEMMs (floor rate)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    if args.n_pairs < 5 or args.n_pairs % 5:
        ap.error("--n-pairs must be a positive multiple of 5")
    notes = setup_env()
    busy = busy_processes()
    for line in busy:
        notes.append(f"machine not quiet: {line}")
    sizes = mem_sizes(args.n_pairs)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="bench_alignment_") as tmp:
        children = run_children(args, Path(tmp), sizes)
        inproc = run_in_process(args)
    busy_after = busy_processes()
    notes += [f"machine not quiet at the end: {line}" for line in busy_after]
    summary = report(args, children, inproc, notes)
    if args.json:
        path = Path(args.json)
        if args.json == "auto":
            path = BENCH / "results" / f"alignment_{datetime.date.today().isoformat()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"benchmark": "alignment", "started": started, "command": " ".join(sys.argv),
               "weights": "random (offline GPT-2 config+tokenizer); timing only", "notes": notes,
               "summary": summary, "children": {k: v for k, v in children.items() if k != "cli"},
               "cli": {str(k): v for k, v in children["cli"].items()},
               "in_process": {k: v for k, v in inproc.items() if k != "flops"},
               "flops": {k: v for k, v in inproc["flops"].items() if k != "batch_rows_x_width"}}
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
