"""Coverage of the mean interval (:func:`interp_tl.stats.mean_intervals`) on data shaped like the lens study's.

Run (single-threaded BLAS is set below; the table is the same on any machine, only the time differs)::

    PYTHONPATH=$PWD python bench/coverage_mean.py [--reps 2000] [--n-boot 1000] [--json auto | --json PATH]

The lens study reports, per layer, means over problems of per-problem probabilities in [0, 1]: a
token's probability (bunched near 0 at early layers, near 1 at the last), a fraction of languages
where the token is top-1, and masses of rarely predicted tokens (almost all near 0, a few large).
Each cell draws ``n`` units from one such distribution with a known mean, ``--reps`` times (fixed
seeds; ``reps / 100`` calls of 100 samples, each call with its own resampling seed), and counts how
often the 95% interval holds the true mean:

* ``low``: Beta(0.3, 3), mean 1/11 (small probabilities, right-skewed);
* ``high``: Beta(3, 0.3), mean 10/11 (the mirror image);
* ``u_shaped``: Beta(0.2, 0.2), mean 1/2 (near-0/near-1 values, e.g. top-1 probabilities);
* ``rare``: 0.95 Beta(0.5, 50) + 0.05 Uniform(0.5, 1), mean 0.95/101 + 0.0375 (a token almost never
  predicted, occasionally strongly: heavy right skew);
* ``fraction``: Binomial(7, 0.15) / 7, mean 0.15 (a per-problem fraction over seven languages).

Beside it, the plain t interval ``mean ± t(n-1) sd / sqrt(n)`` on the same samples.

``--binomial`` prints the two fractions' intervals instead: the exact coverage of
:func:`interp_tl.stats.binomial_interval` (Clopper-Pearson; the binomial distribution summed, no
sampling) over 999 true fractions at ``n`` = 5, 20, 98, beside the Wald interval's; the same for a
pooled count of unequal trials (Poisson-binomial, by convolution); and the simulated coverage of
:func:`interp_tl.stats.first_crossing`'s confidence set on four curves over four layers (60 trials
per layer, ``--reps`` samples each).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import t as t_dist  # noqa: E402

from interp_tl import stats  # noqa: E402

GRID_N = (20, 50, 200)
LEVEL = 0.95
BLOCK = 100


def _rare(rng, size):
    spike = rng.random(size) < 0.05
    return np.where(spike, rng.uniform(0.5, 1.0, size), rng.beta(0.5, 50.0, size))


#: name -> (draw(rng, size), true mean)
CASES = {
    "low": (lambda rng, size: rng.beta(0.3, 3.0, size), 0.3 / 3.3),
    "high": (lambda rng, size: rng.beta(3.0, 0.3, size), 3.0 / 3.3),
    "u_shaped": (lambda rng, size: rng.beta(0.2, 0.2, size), 0.5),
    "rare": (_rare, 0.95 * 0.5 / 50.5 + 0.05 * 0.75),
    "fraction": (lambda rng, size: rng.binomial(7, 0.15, size) / 7.0, 0.15),
}


def cell(case: str, n: int, reps: int, n_boot: int, seed: int) -> dict:
    """Coverage and mean width of the mean interval and the t interval in one cell."""
    draw, truth = CASES[case]
    rng = np.random.default_rng(seed)
    held, widths, t_held, t_widths, none = [], [], [], [], 0
    quantile = t_dist.ppf(0.5 + LEVEL / 2, n - 1)
    for block in range(reps // BLOCK):
        x = draw(rng, (n, BLOCK))
        for iv in stats.mean_intervals(x, n_boot, seed * 1000 + block, LEVEL):
            if iv.reason is not None:
                none += 1
                continue
            held.append(iv.lo <= truth <= iv.hi)
            widths.append(iv.hi - iv.lo)
        half = quantile * x.std(axis=0, ddof=1) / np.sqrt(n)
        mean = x.mean(axis=0)
        t_held.extend((mean - half <= truth) & (truth <= mean + half))
        t_widths.extend(2 * half)
    return {"case": case, "n": n, "truth": truth, "coverage": float(np.mean(held)), "mean_width": float(np.mean(widths)),
            "no_interval": none, "t_coverage": float(np.mean(t_held)), "t_mean_width": float(np.mean(t_widths))}


def _exact_coverage(bounds: np.ndarray, pmf: np.ndarray, truth: float) -> float:
    return float(pmf[(bounds[:, 0] <= truth) & (truth <= bounds[:, 1])].sum())


def binomial_tables(reps: int) -> dict:
    """Exact coverage of Clopper-Pearson (and Wald) and simulated coverage of the first-crossing set."""
    from scipy.stats import binom

    out: dict = {"clopper_pearson": [], "poisson_binomial": [], "first_crossing": []}
    grid = np.linspace(0.001, 0.999, 999)
    for n in (5, 20, 98):
        cp = np.array([stats.binomial_interval(k, n) for k in range(n + 1)])
        p_hat = np.arange(n + 1) / n
        half = 1.959964 * np.sqrt(p_hat * (1 - p_hat) / n)
        wald = np.column_stack([p_hat - half, p_hat + half])
        cov = [[_exact_coverage(b, binom.pmf(np.arange(n + 1), n, p), p) for p in grid] for b in (cp, wald)]
        out["clopper_pearson"].append({"n": n, "min": min(cov[0]), "mean": float(np.mean(cov[0])),
                                       "wald_min": min(cov[1]), "wald_mean": float(np.mean(cov[1]))})
    n = 98
    cp = np.array([stats.binomial_interval(k, n) for k in range(n + 1)])
    for spread in (0.0, 0.3, 0.45):
        worst = 1.0
        for centre in np.linspace(0.02, 0.98, 49):
            ps = np.clip(centre + spread * np.linspace(-1, 1, n), 0.0, 1.0)
            pmf = np.array([1.0])
            for p in ps:
                pmf = np.convolve(pmf, [1 - p, p])
            worst = min(worst, _exact_coverage(cp, pmf, float(ps.mean())))
        out["poisson_binomial"].append({"n": n, "spread": spread, "min": worst})
    rng = np.random.default_rng(5)
    curves = {"rising": [0.1, 0.45, 0.55, 0.9], "non_monotone": [0.3, 0.6, 0.4, 0.8],
              "never": [0.2, 0.5, 0.3, 0.45], "near_half": [0.48, 0.52, 0.5, 0.53], "all_above": [0.9] * 4}
    for name, p in curves.items():
        truth = next((i for i, x in enumerate(p) if x > 0.5), len(p))
        held = 0
        for _ in range(reps):
            lo, hi = stats.first_crossing(rng.binomial(60, p).tolist(), [60] * 4)["set"]
            held += (len(p) if lo is None else lo) <= truth <= (len(p) if hi is None else hi)
        out["first_crossing"].append({"curve": name, "p": p, "coverage": held / reps})
    return out


def _print_binomial(tables: dict) -> None:
    print("| n | Clopper-Pearson min / mean coverage | Wald min / mean |")
    print("|---|---|---|")
    for r in tables["clopper_pearson"]:
        print(f"| {r['n']} | {100 * r['min']:.2f} / {100 * r['mean']:.2f} | {100 * r['wald_min']:.2f} / "
              f"{100 * r['wald_mean']:.2f} |")
    print()
    print("| unequal trials (n = 98), spread | Clopper-Pearson min coverage of the mean fraction |")
    print("|---|---|")
    for r in tables["poisson_binomial"]:
        print(f"| ±{r['spread']} | {100 * r['min']:.2f} |")
    print()
    print("| curve (fractions at layers 0-3) | first-crossing set holds the truth |")
    print("|---|---|")
    for r in tables["first_crossing"]:
        print(f"| {r['curve']} {r['p']} | {100 * r['coverage']:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--json", default=None, help="write the cells as JSON (auto: bench/results/...)")
    parser.add_argument("--binomial", action="store_true", help="the fractions' intervals instead of the mean's")
    args = parser.parse_args(argv)
    start = time.time()
    if args.binomial:
        tables = binomial_tables(args.reps)
        _print_binomial(tables)
        if args.json:
            path = Path(args.json) if args.json != "auto" else (
                Path(__file__).parent / "results" / f"coverage_binomial_reps{args.reps}.json")
            path.write_text(json.dumps({"reps": args.reps, **tables}, indent=2) + "\n", "utf-8")
            print(f"wrote {path}", file=sys.stderr)
        return 0
    cells = [cell(case, n, args.reps, args.n_boot, seed=17 + i)
             for i, (case, n) in enumerate((c, n) for c in CASES for n in GRID_N)]
    print("| case | n | truth | studentized bootstrap (mean_intervals) | mean width | t interval | t width |")
    print("|---|---|---|---|---|---|---|")
    for c in cells:
        flag = "" if 0.93 <= c["coverage"] <= 0.975 else "*"
        print(f"| {c['case']} | {c['n']} | {c['truth']:.4f} | {100 * c['coverage']:.1f}{flag} | {c['mean_width']:.4f} | "
              f"{100 * c['t_coverage']:.1f} | {c['t_mean_width']:.4f} |")
    print(f"({time.time() - start:.0f} s)", file=sys.stderr)
    if args.json:
        path = Path(args.json) if args.json != "auto" else (
            Path(__file__).parent / "results" / f"coverage_mean_reps{args.reps}_boot{args.n_boot}.json")
        path.write_text(json.dumps({"reps": args.reps, "n_boot": args.n_boot, "level": LEVEL, "cells": cells},
                                   indent=2) + "\n", "utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
