"""Baseline for bench/bench_speed.py: the seeds' attn_vs_ffn_alignment.py, ported to HF GPT-2.

This is NOT interp_tl code and not a way to compute results: it reproduces, as closely as the
model change allows, how the research seed ``shared/seeds/attn_vs_ffn_alignment.py`` did the
alignment study, so that the benchmark can time "the seeds' way" against ``interp-tl alignment``
in the same run. Because it reproduces the seed, it uses what the project otherwise avoids:
``register_forward_pre_hook`` / ``register_forward_hook`` on Hugging Face submodules, one prompt per
forward pass (logits included, as ``model(**inputs)`` computes them), and the per-permutation
Python loop of the seed's ``matched_vs_scrambled_z``.

What changed from the seed, and why:

* Model: ``AutoModelForCausalLM.from_pretrained("gpt2")`` in float32 on CPU (the seed: Qwen2.5-3B in
  float16 on CUDA). Hooks go on ``model.transformer.h[l]`` (pre-hook: h_pre), ``.attn``
  (``output[0]``: the attention write, c_proj bias included) and ``.mlp`` (the MLP write).
* Prompts: ``interp_tl.prompts.generate_problems(n, 42)`` (the seeds' problems in the seeds' order,
  the same texts interp_tl runs), so both sides of the benchmark see identical prompts. GPT-2's
  tokenizer adds no BOS, as the seed ran Qwen without one.
* ``--out`` replaces the hard-coded ``output/`` folder; ``--timings`` optionally writes the time of
  each phase as JSON; ``--n-pairs`` for quick tests. :func:`run` is the same study as a function
  (model load to saved files), which the benchmark times in its own process.

Everything else (hooks, per-prompt loop, ``.squeeze(0)[-1].float().numpy()``, 5 z-scores per layer
with ``n_perms=500`` and the permutation loop, norms, summary, JSON and compressed npz) follows the
seed line by line. With GPT-2 from the offline cache (random weights) the numbers are meaningless:
this script exists to be timed.

    HF_HOME=/work/hfgpt2 HF_HUB_OFFLINE=1 python bench/seed_alignment_gpt2.py --out /tmp/seed_out
"""

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from interp_tl.prompts import generate_problems  # noqa: E402

_T_IMPORTS = time.perf_counter()


def matched_vs_scrambled_z(zh, en, n_perms=1000):
    """Unit-normalized matched vs scrambled z-score (the seed's function, verbatim)."""
    zh_u = zh / np.linalg.norm(zh, axis=1, keepdims=True)
    en_u = en / np.linalg.norm(en, axis=1, keepdims=True)
    matched = np.mean(np.sum(zh_u * en_u, axis=1))
    rng = np.random.RandomState(42)
    scrambled = np.array([
        np.mean(np.sum(zh_u * en_u[rng.permutation(len(en_u))], axis=1))
        for _ in range(n_perms)
    ])
    z = (matched - scrambled.mean()) / scrambled.std()
    return float(z), float(matched), float(scrambled.mean()), float(scrambled.std())


def main():
    """Run the seed's alignment study on GPT-2, one prompt at a time (the command line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--n-pairs", type=int, default=200)
    ap.add_argument("--out", required=True, help="output folder (the seed's output/)")
    ap.add_argument("--timings", default=None, help="write the time of each phase here as JSON")
    args = ap.parse_args()
    marks = {"imports": _T_IMPORTS - _T0, **run(args.model, args.n_pairs, Path(args.out))}
    marks["total_in_process"] = time.perf_counter() - _T0
    if args.timings:
        Path(args.timings).write_text(json.dumps(marks, indent=2))


def run(model_name, n_pairs, output_dir, verbose=True):
    """The seed's study from model load to saved files; returns the seconds of each phase.

    ``bench/bench_speed.py`` calls this in its own process, interleaved with interp_tl's run.
    """
    say = print if verbose else (lambda *a, **k: None)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    marks = {}

    t = time.perf_counter()
    say(f"Loading {model_name}...")
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
    model.eval()
    n_layers = model.config.num_hidden_layers
    d = model.config.hidden_size
    say(f"Model: {n_layers} layers, d={d}")
    marks["load"] = time.perf_counter() - t

    t = time.perf_counter()
    problems = [{"zh": p.prompts["zh"], "en": p.prompts["en"]}
                for p in generate_problems(n_pairs, 42, ("zh", "en"))]
    N = len(problems)

    attn_outputs = {}  # layer_idx -> last_token attn correction
    mlp_outputs = {}  # layer_idx -> last_token mlp correction
    layer_inputs = {}  # layer_idx -> last_token input (h_pre)

    def make_layer_input_hook(layer_idx):
        def hook(module, args, kwargs=None):
            h_in = args[0] if isinstance(args, tuple) else args
            if isinstance(h_in, torch.Tensor):
                layer_inputs[layer_idx] = h_in.detach().cpu().squeeze(0)[-1].float().numpy()
        return hook

    def make_attn_hook(layer_idx):
        def hook(module, input, output):
            h = output[0] if isinstance(output, tuple) else output
            attn_outputs[layer_idx] = h.detach().cpu().squeeze(0)[-1].float().numpy()
        return hook

    def make_mlp_hook(layer_idx):
        def hook(module, input, output):
            h = output if isinstance(output, torch.Tensor) else output[0]
            mlp_outputs[layer_idx] = h.detach().cpu().squeeze(0)[-1].float().numpy()
        return hook

    handles = []
    for l in range(n_layers):
        layer = model.transformer.h[l]
        handles.append(layer.register_forward_pre_hook(make_layer_input_hook(l)))
        handles.append(layer.attn.register_forward_hook(make_attn_hook(l)))
        handles.append(layer.mlp.register_forward_hook(make_mlp_hook(l)))

    zh_attn_delta = {l: np.zeros((N, d), dtype=np.float32) for l in range(n_layers)}
    zh_mlp_delta = {l: np.zeros((N, d), dtype=np.float32) for l in range(n_layers)}
    zh_h_pre = {l: np.zeros((N, d), dtype=np.float32) for l in range(n_layers)}
    en_attn_delta = {l: np.zeros((N, d), dtype=np.float32) for l in range(n_layers)}
    en_mlp_delta = {l: np.zeros((N, d), dtype=np.float32) for l in range(n_layers)}
    en_h_pre = {l: np.zeros((N, d), dtype=np.float32) for l in range(n_layers)}

    say(f"\nExtracting {N} Chinese problems...")
    for i, prob in enumerate(tqdm(problems, desc="zh", disable=not verbose)):
        inputs = tokenizer(prob["zh"], return_tensors="pt").to(model.device)
        with torch.no_grad():
            model(**inputs)
        for l in range(n_layers):
            zh_h_pre[l][i] = layer_inputs[l]
            zh_attn_delta[l][i] = attn_outputs[l]
            zh_mlp_delta[l][i] = mlp_outputs[l]
        layer_inputs.clear()
        attn_outputs.clear()
        mlp_outputs.clear()

    say(f"Extracting {N} English problems...")
    for i, prob in enumerate(tqdm(problems, desc="en", disable=not verbose)):
        inputs = tokenizer(prob["en"], return_tensors="pt").to(model.device)
        with torch.no_grad():
            model(**inputs)
        for l in range(n_layers):
            en_h_pre[l][i] = layer_inputs[l]
            en_attn_delta[l][i] = attn_outputs[l]
            en_mlp_delta[l][i] = mlp_outputs[l]
        layer_inputs.clear()
        attn_outputs.clear()
        mlp_outputs.clear()

    for h in handles:
        h.remove()
    marks["extract"] = time.perf_counter() - t

    # ========== ANALYSIS ==========
    t = time.perf_counter()
    say("\n" + "=" * 70)
    say("ANALYSIS: Attention vs FFN Contribution to Cross-Lingual Alignment")
    say("=" * 70)
    results = {
        "model": model_name,
        "n_problems": N,
        "n_layers": n_layers,
        "hidden_size": d,
        "methodology": "Unit-normalized matched-vs-scrambled z-score on cumulative residual stream",
    }
    layer_results = []
    for l in range(n_layers):
        z_pre, m_pre, s_pre, std_pre = matched_vs_scrambled_z(zh_h_pre[l], en_h_pre[l], n_perms=500)
        zh_post_attn = zh_h_pre[l] + zh_attn_delta[l]
        en_post_attn = en_h_pre[l] + en_attn_delta[l]
        z_post_attn, m_pa, s_pa, std_pa = matched_vs_scrambled_z(zh_post_attn, en_post_attn, n_perms=500)
        zh_post_mlp = zh_post_attn + zh_mlp_delta[l]
        en_post_mlp = en_post_attn + en_mlp_delta[l]
        z_post_mlp, m_pm, s_pm, std_pm = matched_vs_scrambled_z(zh_post_mlp, en_post_mlp, n_perms=500)
        dz_attn = z_post_attn - z_pre
        dz_mlp = z_post_mlp - z_post_attn
        z_attn_alone, _, _, _ = matched_vs_scrambled_z(zh_attn_delta[l], en_attn_delta[l], n_perms=500)
        z_mlp_alone, _, _, _ = matched_vs_scrambled_z(zh_mlp_delta[l], en_mlp_delta[l], n_perms=500)
        attn_norm_zh = np.linalg.norm(zh_attn_delta[l], axis=1).mean()
        mlp_norm_zh = np.linalg.norm(zh_mlp_delta[l], axis=1).mean()
        pre_norm_zh = np.linalg.norm(zh_h_pre[l], axis=1).mean()
        entry = {
            "layer": l,
            "z_pre": z_pre,
            "z_post_attn": z_post_attn,
            "z_post_mlp": z_post_mlp,
            "dz_attn": dz_attn,
            "dz_mlp": dz_mlp,
            "z_attn_correction_alone": z_attn_alone,
            "z_mlp_correction_alone": z_mlp_alone,
            "norm_h_pre": float(pre_norm_zh),
            "norm_attn_delta": float(attn_norm_zh),
            "norm_mlp_delta": float(mlp_norm_zh),
            "matched_cos_pre": m_pre,
            "matched_cos_post_attn": m_pa,
            "matched_cos_post_mlp": m_pm,
        }
        layer_results.append(entry)
        marker = ""
        if abs(dz_attn) > 1.5:
            marker += " *** ATTN"
        if abs(dz_mlp) > 1.5:
            marker += " *** MLP"
        say(f" L{l:2d}: z_pre={z_pre:5.1f} → +attn={dz_attn:+5.1f} → +mlp={dz_mlp:+5.1f} → z_post={z_post_mlp:5.1f}"
              f" | attn_alone={z_attn_alone:5.1f} mlp_alone={z_mlp_alone:5.1f}"
              f" | norms: pre={pre_norm_zh:.0f} attn={attn_norm_zh:.0f} mlp={mlp_norm_zh:.0f}{marker}")
    results["layer_results"] = layer_results

    say("\n" + "=" * 70)
    say("SUMMARY")
    say("=" * 70)
    total_dz_attn = sum(r["dz_attn"] for r in layer_results)
    total_dz_mlp = sum(r["dz_mlp"] for r in layer_results)
    say(f"\n Total Δz from attention: {total_dz_attn:+.1f}")
    say(f" Total Δz from MLP: {total_dz_mlp:+.1f}")
    say(f" Ratio attn/mlp: {total_dz_attn/total_dz_mlp:.2f}" if total_dz_mlp != 0 else " MLP Δz is zero")
    attn_dominant = sum(1 for r in layer_results if r["dz_attn"] > r["dz_mlp"] and r["dz_attn"] > 0.5)
    mlp_dominant = sum(1 for r in layer_results if r["dz_mlp"] > r["dz_attn"] and r["dz_mlp"] > 0.5)
    say(f"\n Layers where attention dominates: {attn_dominant}/{n_layers}")
    say(f" Layers where MLP dominates: {mlp_dominant}/{n_layers}")
    attn_aligned = sum(1 for r in layer_results if r["z_attn_correction_alone"] > 3.0)
    mlp_aligned = sum(1 for r in layer_results if r["z_mlp_correction_alone"] > 3.0)
    say(f"\n Layers with cross-lingual attn corrections (z>3): {attn_aligned}/{n_layers}")
    say(f" Layers with cross-lingual MLP corrections (z>3): {mlp_aligned}/{n_layers}")
    results["summary"] = {
        "total_dz_attn": total_dz_attn,
        "total_dz_mlp": total_dz_mlp,
        "attn_dominant_layers": attn_dominant,
        "mlp_dominant_layers": mlp_dominant,
        "attn_aligned_layers": attn_aligned,
        "mlp_aligned_layers": mlp_aligned,
    }
    marks["analysis"] = time.perf_counter() - t

    t = time.perf_counter()
    outpath = output_dir / "attn_vs_ffn_alignment.json"
    with open(outpath, "w") as f:
        json.dump(results, f, indent=2)
    say(f"\nSaved to {outpath}")
    save_dict = {}
    for l in range(n_layers):
        save_dict[f"zh_attn_delta_L{l}"] = zh_attn_delta[l]
        save_dict[f"zh_mlp_delta_L{l}"] = zh_mlp_delta[l]
        save_dict[f"en_attn_delta_L{l}"] = en_attn_delta[l]
        save_dict[f"en_mlp_delta_L{l}"] = en_mlp_delta[l]
    npz_path = output_dir / "attn_mlp_deltas.npz"
    np.savez_compressed(npz_path, **save_dict)
    say(f"Saved raw deltas to {npz_path} ({npz_path.stat().st_size / 1e6:.1f} MB)")
    marks["save"] = time.perf_counter() - t
    return marks




if __name__ == "__main__":
    main()
