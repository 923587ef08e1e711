"""Coverage of the alignment-gap interval, measured by simulation where the truth is known.

Run (single-threaded BLAS is set below; the table is the same on any machine, only the time differs)::

    PYTHONPATH=$PWD python bench/coverage.py [--reps 2000] [--n-boot 1000] [--alternatives] [--offset]
        [--json auto | --json PATH]

Design (issue 23): ``n`` pairs share a latent, ``a_i = x_i + s e1_i``, ``b_i = x_i + s e2_i`` with
``x_i, e1_i, e2_i`` independent in ``d = 16`` dimensions, ``e ~ N(0, I)``, and

* isotropic: ``x ~ N(0, I_16)``;
* anisotropic (a dominant shared direction, as real residual streams): ``x ~ N(8 u, I_16)``
  with ``u`` the first basis vector, so the shared part carries 4x the latent's expected
  squared norm (64 vs 16) and unrelated rows have cosines near 0.8.

The gap ``mean diag S - mean S`` of ``S = cos(a_i, b_j)`` has expectation
``(1 - 1/n) (E cos(a_i, b_i) - E cos(a_i, b_j))``, ``j != i``; both cosine expectations come from
1,000,000 independent draws (the second is 0 by symmetry in the isotropic case, and is taken
as 0 there). Each cell of the grid ``n in {15, 50, 200} x s in {0.3, 1.0} x {isotropic,
anisotropic}`` draws ``--reps`` samples (fixed seeds) and counts how often each interval
(95% nominal) holds the truth:

* before: the percentile interval of interp_tl <= 8e92c2e (``S[idx][:, idx]`` resamples, a pair
  drawn twice puts ``S_ii`` among the "mismatched" cells), reimplemented verbatim below, and its
  ``z_exact`` interval (does it hold the sample's own ``z_exact``?);
* after: :func:`interp_tl.stats.gap_interval` (studentized, distinct-pair cells, jackknife se);
* with ``--alternatives``: the other candidates that were screened (percentile and BCa on
  distinct-pair cells, jackknife t, t with the unbiased U-statistic variance), implemented here
  from the formulas in docs/statistics.md.

``--offset`` prints the cancellation check of issue 23: a shared offset ``c`` (``|c| = 57``) plus
a spread ``e`` that leaves ``z_exact`` unchanged; the intervals, in units of the exact null sd,
must not move.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import norm, t as t_dist  # noqa: E402

from interp_tl import stats  # noqa: E402

D = 16
SHIFT = 8.0
GRID_N = (15, 50, 200)
GRID_S = (0.3, 1.0)
KINDS = ("isotropic", "anisotropic")
LEVEL = 0.95
TRUTH_DRAWS = 1_000_000
TARGET = (93.0, 97.5)


def draw(rng: np.random.Generator, n: int, s: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, D))
    if kind == "anisotropic":
        x[:, 0] += SHIFT
    return x + s * rng.standard_normal((n, D)), x + s * rng.standard_normal((n, D))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def truth(s: float, kind: str, n_draws: int = TRUTH_DRAWS) -> dict[str, float]:
    """E cos(a_i, b_i) and E cos(a_i, b_j) (j != i) from n_draws independent draws, with their MC SEs."""
    rng = np.random.default_rng([7, KINDS.index(kind), int(round(10 * s))])
    matched, other = [], []
    for _ in range(n_draws // 100_000):
        a, b = draw(rng, 100_000, s, kind)
        _, b2 = draw(rng, 100_000, s, kind)  # an independent pair's second item
        ua, ub, ub2 = _unit(a), _unit(b), _unit(b2)
        matched.append(np.einsum("nd,nd->n", ua, ub))
        other.append(np.einsum("nd,nd->n", ua, ub2))
    matched, other = np.concatenate(matched), np.concatenate(other)
    off = 0.0 if kind == "isotropic" else float(other.mean())
    return {"E_cos_matched": float(matched.mean()), "E_cos_matched_se": float(matched.std() / math.sqrt(matched.size)),
            "E_cos_other": off, "E_cos_other_se": 0.0 if kind == "isotropic" else float(other.std() / math.sqrt(other.size)),
            "n_draws": n_draws}


# --- before: interp_tl.stats.bootstrap_ci at 8e92c2e, verbatim in method -----------------------------


def before_intervals(S: np.ndarray, n_boot: int, seed: int, level: float) -> tuple[list[float], list[float]]:
    n = S.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    sw, stw = w @ S.T, w @ S
    grand = np.einsum("bi,bi->b", w, sw) / n**2
    sum_sq = np.einsum("bi,bi->b", w @ (S * S).T, w)
    rows = np.einsum("bi,bi->b", w, (sw / n) ** 2)
    cols = np.einsum("bi,bi->b", w, (stw / n) ** 2)
    var = np.maximum(sum_sq - n * rows - n * cols + n**2 * grand**2, 0.0) / (n * n * (n - 1))
    matched = w @ np.diagonal(S) / n
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        zs = np.where(sd > 0, (matched - grand) / np.where(sd > 0, sd, 1.0), np.nan)
    q = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    gaps = matched - grand
    return list(np.percentile(gaps, q)), list(np.percentile(zs[np.isfinite(zs)], q))


# --- alternatives that were screened ---------------------------------------------------------------


def _distinct_cell_deltas(C: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """delta of each resample: mean of drawn diagonal cells - mean of cells whose drawn pairs differ."""
    n = C.shape[0]
    w = np.zeros((idx.shape[0], n))
    np.add.at(w, (np.arange(idx.shape[0])[:, None], idx), 1.0)
    dg = np.diagonal(C)
    total = np.einsum("bi,bi->b", w, w @ C.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        return w @ dg / n - (total - (w * w) @ dg) / (n * n - (w * w).sum(1))


def _leave_one_out_deltas(C: np.ndarray) -> np.ndarray:
    n = C.shape[0]
    dg = np.diagonal(C)
    tr, tot = dg.sum(), C.sum()
    return (tr - dg) / (n - 1) - (tot - tr - C.sum(1) - C.sum(0) + 2 * dg) / ((n - 1) * (n - 2))


def alternative_intervals(S: np.ndarray, n_boot: int, seed: int, level: float) -> dict[str, list[float]]:
    n = S.shape[0]
    factor = 1.0 - 1.0 / n
    C = S - S.mean()
    delta = float(np.trace(C) / n - (C.sum() - np.trace(C)) / (n * (n - 1)))
    boot = _distinct_cell_deltas(C, stats.resample_indices(n, n_boot, seed))
    boot = boot[np.isfinite(boot)]
    q = np.array([50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    loo = _leave_one_out_deltas(C)
    se = stats.jackknife_se(loo)
    t_q = t_dist.ppf(0.5 + level / 2, n - 1)
    # BCa (Efron 1987): bias from the bootstrap, acceleration from the jackknife.
    z0 = norm.ppf((np.sum(boot < delta) + 0.5 * np.sum(boot == delta)) / boot.size)
    dev = loo.mean() - loo
    acc = np.sum(dev**3) / (6.0 * np.sum(dev**2) ** 1.5)
    zq = norm.ppf(q / 100.0)
    alpha = norm.cdf(z0 + (z0 + zq) / (1.0 - acc * (z0 + zq)))
    se_u = _unbiased_u_se(C, delta)
    return {
        "percentile_distinct": list(factor * np.percentile(boot, q)),
        "bca_distinct": list(factor * np.percentile(boot, 100.0 * alpha)),
        "jackknife_t": [factor * (delta - t_q * se), factor * (delta + t_q * se)],
        "unbiased_u_t": [factor * (delta - t_q * se_u), factor * (delta + t_q * se_u)],
    }


def _unbiased_u_se(C: np.ndarray, delta: float) -> float:
    """sd of delta from the unbiased variance estimate of an order-2 U-statistic.

    delta is the U-statistic of the kernel H_ij = (C_ii + C_jj - C_ij - C_ji) / 2 (i != j); with H centred
    at delta, Var-hat = (4 sum_i r_i^2 - 2 sum_ij H_ij^2) / (n (n-1) (n-2) (n-3)), r_i the row sums.
    """
    n = C.shape[0]
    dg = np.diagonal(C)
    H = 0.5 * (dg[:, None] + dg[None, :] - C - C.T) - delta
    np.fill_diagonal(H, 0.0)
    var = (4.0 * np.sum(H.sum(1) ** 2) - 2.0 * np.sum(H * H)) / (n * (n - 1) * (n - 2) * (n - 3))
    return math.sqrt(max(var, 0.0))


# --- the grid ----------------------------------------------------------------------------------------


def run_cell(kind: str, s: float, n: int, reps: int, n_boot: int, truth_row: dict[str, float],
             alternatives: bool = False, before: bool = True) -> dict:
    target = (1.0 - 1.0 / n) * (truth_row["E_cos_matched"] - truth_row["E_cos_other"])
    rng = np.random.default_rng([11, KINDS.index(kind), int(round(10 * s)), n])
    hits: dict[str, int] = {}
    widths: dict[str, float] = {}

    def count(name: str, lo: float, hi: float) -> None:
        hits[name] = hits.get(name, 0) + int(lo <= target <= hi)
        widths[name] = widths.get(name, 0.0) + (hi - lo)

    z_own = 0
    for rep in range(reps):
        a, b = draw(rng, n, s, kind)
        S = stats.similarity(a, b)
        if before:
            gap_old, z_old = before_intervals(S, n_boot, rep, LEVEL)
            count("before", *gap_old)
            z_exact = stats.matched_vs_scrambled_z(a, b, n_perms=1).z_exact
            z_own += int(z_old[0] <= z_exact <= z_old[1])
        after = stats.gap_interval(S, n_boot=n_boot, seed=rep, level=LEVEL)
        count("after", after.lo, after.hi)
        if alternatives:
            for name, (lo, hi) in alternative_intervals(S, n_boot, rep, LEVEL).items():
                count(name, lo, hi)
    return {"kind": kind, "s": s, "n": n, "truth": target, "reps": reps, "n_boot": n_boot,
            "coverage_pct": {k: 100.0 * v / reps for k, v in hits.items()},
            "mean_width": {k: v / reps for k, v in widths.items()},
            "before_z_interval_holds_own_z_exact_pct": 100.0 * z_own / reps if before else None}


def offset_pairs(e: float, n: int = 50, s: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Issue 23's case: a shared offset c (|c| = 57) plus spread e; cosines within ~1e-8 of 1 at e = 0.001."""
    rng = np.random.default_rng(2023)
    c = rng.standard_normal(D)
    c *= 57.0 / np.linalg.norm(c)
    x, e1, e2 = rng.standard_normal((3, n, D))
    return c + e * (x + s * e1), c + e * (x + s * e2)


def exact_shift_check(e: float = 0.001, n_boot: int = 1000) -> dict:
    """S versus S - mean(S) (exact by Sterbenz: every entry is within 2x of the mean): the largest relative change."""
    S = stats.similarity(*offset_pairs(e))
    T = S - S.mean()
    rel = {}
    for name, fn in (("before_gap", lambda M: before_intervals(M, n_boot, 0, LEVEL)[0]),
                     ("before_z", lambda M: before_intervals(M, n_boot, 0, LEVEL)[1]),
                     ("after_gap", lambda M: (lambda iv: [iv.lo, iv.hi, iv.se])(stats.gap_interval(M, n_boot=n_boot)))):
        x, y = np.array(fn(S)), np.array(fn(T))
        rel[name] = {"on_S": x.tolist(), "on_S_minus_mean": y.tolist(), "max_rel_change": float(np.max(np.abs(y / x - 1)))}
    z = [(np.mean(np.diag(M)) - stats.exact_null(M)[0]) / stats.exact_null(M)[1] for M in (S, T)]
    rel["z_exact"] = {"on_S": z[0], "on_S_minus_mean": z[1], "max_rel_change": abs(z[1] / z[0] - 1)}
    return {"e": e, "S_min": float(S.min()), "S_max": float(S.max()), **rel}


def offset_check(n_boot: int = 1000) -> list[dict]:
    """Shared offset c (|c| = 57) plus spread e: z_exact stays put, so must the intervals (in null-sd units)."""
    rows = []
    for e in (0.1, 0.01, 0.001):
        a, b = offset_pairs(e)
        S = stats.similarity(a, b)
        res = stats.matched_vs_scrambled_z(a, b, n_perms=1)
        gap_old, z_old = before_intervals(S, n_boot, 0, LEVEL)
        after = stats.gap_interval(S, n_boot=n_boot, seed=0)
        sd = res.null_sd_exact
        rows.append({"e": e, "z_exact": res.z_exact, "null_sd_exact": sd,
                     "before_z_interval": z_old, "before_gap_interval_over_sd": [v / sd for v in gap_old],
                     "after_gap_interval_over_sd": [after.lo / sd, after.hi / sd], "after_gap_over_sd": after.estimate / sd})
    return rows


def _fmt(row: dict, names: list[str]) -> str:
    cov = row["coverage_pct"]
    flag = {name: "" if TARGET[0] <= cov[name] <= TARGET[1] else "*" for name in names}
    cells = " | ".join(f"{cov[name]:.1f}{flag[name]}" for name in names)
    return (f"| {row['kind']} | {row['s']} | {row['n']} | {row['truth']:.4f} | {cells} | "
            f"{row['before_z_interval_holds_own_z_exact_pct']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000, help="samples per cell")
    parser.add_argument("--n-boot", type=int, default=1000, help="resamples per interval")
    parser.add_argument("--alternatives", action="store_true", help="also the screened alternatives")
    parser.add_argument("--offset", action="store_true", help="also the shared-offset check")
    parser.add_argument("--cells", default="", help="only cells kind:s:n, comma separated (e.g. isotropic:0.3:50)")
    parser.add_argument("--json", default="", help="write results: a path, or 'auto' for bench/results/")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    names = ["before", "after"] + (["percentile_distinct", "bca_distinct", "jackknife_t", "unbiased_u_t"]
                                   if args.alternatives else [])
    wanted = {tuple(c.split(":")) for c in args.cells.split(",") if c}
    truths = {(kind, s): truth(s, kind) for kind in KINDS for s in GRID_S
              if not wanted or any(w[:2] == (kind, str(s)) for w in wanted)}
    print(f"coverage of 95% intervals (%), {args.reps} samples per cell, n_boot = {args.n_boot}; "
          f"* outside {TARGET[0]}-{TARGET[1]}")
    print("| case | s | n | truth | " + " | ".join(names) + " | before z interval holds own z_exact |")
    print("|---" * (len(names) + 5) + "|")
    rows = []
    for kind in KINDS:
        for s in GRID_S:
            for n in GRID_N:
                if wanted and (kind, str(s), str(n)) not in wanted:
                    continue
                row = run_cell(kind, s, n, args.reps, args.n_boot, truths[(kind, s)], args.alternatives)
                rows.append(row)
                print(_fmt(row, names), flush=True)
    out = {"command": "python bench/coverage.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "design": {"d": D, "anisotropic_shift": SHIFT, "level": LEVEL, "target_pct": list(TARGET),
                      "truth_draws": TRUTH_DRAWS},
           "truth": [{"kind": k, "s": s, **v} for (k, s), v in truths.items()], "cells": rows}
    if args.offset:
        out["offset"] = offset_check(args.n_boot)
        for r in out["offset"]:
            print(f"e = {r['e']}: z_exact {r['z_exact']:.6f}; before z interval "
                  f"[{r['before_z_interval'][0]:.2f}, {r['before_z_interval'][1]:.2f}]; gap interval / null sd: before "
                  f"[{r['before_gap_interval_over_sd'][0]:.6f}, {r['before_gap_interval_over_sd'][1]:.6f}], after "
                  f"[{r['after_gap_interval_over_sd'][0]:.6f}, {r['after_gap_interval_over_sd'][1]:.6f}]")
        out["exact_shift"] = shift = exact_shift_check(n_boot=args.n_boot)
        print(f"S vs S - mean(S) at e = 0.001 (S in [{shift['S_min']:.10f}, {shift['S_max']:.10f}]): max relative change "
              + ", ".join(f"{k} {shift[k]['max_rel_change']:.2e}" for k in ("z_exact", "before_gap", "before_z", "after_gap"))
              + f"; before z interval {shift['before_z']['on_S']} -> {shift['before_z']['on_S_minus_mean']}")
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.json:
        path = Path(args.json if args.json != "auto" else
                    f"bench/results/coverage_reps{args.reps}_boot{args.n_boot}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
