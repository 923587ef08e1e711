"""Benchmark: the seed's d_mlp rotation alignment per layer pair, thin vs full (timing only).

Run on a quiet machine (two BLAS-heavy processes at once on 2 cores run several times slower)::

    python bench/bench_gauge_rotation.py [--full] [--shapes gpt2 qwen] [--repeat 3] [--threads N] [--attention]

Shapes: GPT-2 small (d_model 768, d_mlp 3072, W_in and W_out) and a Qwen2.5-3B-like gated MLP
(d_model 2048, d_mlp 11008, W_in, W_gate and W_out), random weights. ``rotate_neurons`` (thin:
two R-only QR factorizations of ``d_mlp x k`` and an SVD of ``k x k``, ``k = families * d_model``)
against scipy's ``orthogonal_procrustes`` of the full ``d_mlp x d_mlp`` problem (``--full``: slow
at 11008), with the residuals of the two compared. ``--attention``: one layer pair's attention comparison at
Qwen3-4B's shape (32 heads, 8 K/V heads, d_head 128, d_model 2560, rotary, q/k norms): the
cross-products, the ``tied``, ``tied_exact`` and ``separate`` alignments (heads matched) and the
invariants.
"""

from __future__ import annotations

import argparse
import os
import time

#: (d_model, d_mlp, gated): GPT-2 small; a Qwen2.5-3B-like SwiGLU MLP.
SHAPES = {"gpt2": (768, 3072, False), "qwen": (2048, 11008, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time scipy's full Procrustes")
    parser.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=list(SHAPES), help="which MLP shapes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--attention", action="store_true", help="also time one Qwen3-4B-shaped attention pair")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (sets OPENBLAS/OMP/MKL_NUM_THREADS)")
    args = parser.parse_args()
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np
    from scipy.linalg import orthogonal_procrustes

    from interp_tl.gauge import MLPWeights, rotate_neurons

    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()}")
    for d_model, d_mlp, gated in (SHAPES[name] for name in args.shapes):
        def mlp():
            return MLPWeights(rng.normal(size=(d_model, d_mlp)), rng.normal(size=(d_mlp, d_model)),
                              rng.normal(size=(d_model, d_mlp)) if gated else None)

        wa, wb = mlp(), mlp()
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            thin = rotate_neurons(wa, wb)
            times.append(time.perf_counter() - t)
        print(f"d_model {d_model} d_mlp {d_mlp} gated {gated}: thin {min(times):.2f} s per pair "
              f"(min of {args.repeat}; all {[round(x, 2) for x in times]})")
        if args.full:
            fa, fb = wa.families(), wb.families()
            t = time.perf_counter()
            s = orthogonal_procrustes(np.hstack(list(fa.values())).T, np.hstack(list(fb.values())).T)[0]
            full = {k: float(np.linalg.norm(s.T @ fa[k] - fb[k])) for k in fa}
            elapsed = time.perf_counter() - t
            diff = max(abs(full[k] - thin[k]) for k in fa)
            print(f"  full {elapsed:.2f} s per pair; max |residual difference| {diff:.2e}")
    if args.attention:
        attention_pair(rng)


def attention_pair(rng) -> None:
    """Time one attention pair at Qwen3-4B's shape (random weights and norm gains)."""

    from interp_tl.gauge import AttentionComparison, AttentionWeights, QKConstraint

    n, m, d, d_model = 32, 8, 128, 2560

    def layer():
        return AttentionWeights(rng.normal(size=(n, d_model, d)), rng.normal(size=(m, d_model, d)),
                                rng.normal(size=(m, d_model, d)), rng.normal(size=(n, d, d_model)))

    wa, wb = layer(), layer()
    qk = QKConstraint(d, d, False, 1 + 0.3 * rng.normal(size=d), 1 + 0.3 * rng.normal(size=d))
    t = time.perf_counter()
    comparison = AttentionComparison(wa, wb)
    steps = {"cross-products": time.perf_counter() - t}
    for mode in ("tied", "tied_exact", "separate"):
        t = time.perf_counter()
        comparison.align(mode, qk)
        steps[mode] = time.perf_counter() - t
    t = time.perf_counter()
    comparison.invariants()
    steps["invariants"] = time.perf_counter() - t
    print("attention pair, Qwen3-4B shape: " + ", ".join(f"{k} {v:.2f} s" for k, v in steps.items())
          + f"; total {sum(steps.values()):.2f} s")


if __name__ == "__main__":
    main()
