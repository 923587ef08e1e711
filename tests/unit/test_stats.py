"""Tests of interp_tl.stats against reference loops, enumeration, Monte Carlo and sklearn."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from seed_reference import seeds_matched_vs_scrambled_z
from sklearn.metrics import roc_auc_score

from interp_tl import stats
from interp_tl.errors import BadInputError
from interp_tl.stats import (
    GAP_METHOD,
    SPREAD_RTOL,
    AlignmentZ,
    alignment_summary,
    bootstrap_ci,
    check_pairs,
    cohens_d,
    cohens_d_summary,
    exact_null,
    gap_interval,
    jackknife_se,
    jackknifed,
    matched_vs_scrambled_z,
    no_spread_reason,
    principal_components,
    resample_indices,
    retrieval_auc,
    seed_permutations,
    similarity,
    similarity_spread_reason,
    studentized_bootstrap,
    studentized_interval,
    unit_rows,
)


def correlated_pairs(n: int, d: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x + noise * rng.standard_normal((n, d)), x + noise * rng.standard_normal((n, d))


def one_hot(labels: np.ndarray, width: int) -> np.ndarray:
    return np.eye(width)[labels]


# 1. The vectorized z reproduces the seeds' loop.


@pytest.mark.parametrize(("n", "d", "n_perms"), [(60, 16, 500), (60, 16, 1000), (37, 5, 1000)])
def test_z_matches_seed_loop(n, d, n_perms):
    a, b = correlated_pairs(n, d, noise=1.5, seed=n)
    got = matched_vs_scrambled_z(a, b, n_perms=n_perms)
    want = seeds_matched_vs_scrambled_z(a, b, n_perms=n_perms)
    assert got.z == pytest.approx(want[0], rel=0, abs=1e-6)
    assert got.matched == pytest.approx(want[1], rel=0, abs=1e-6)
    assert got.scrambled_mean == pytest.approx(want[2], rel=0, abs=1e-6)
    assert got.scrambled_std == pytest.approx(want[3], rel=0, abs=1e-6)
    assert (got.n_pairs, got.n_perms) == (n, n_perms)
    # Guards against a test that passes because the data carry no signal.
    assert 2.0 < got.z < 50.0


def test_chunked_gather_equals_one_gather(monkeypatch):
    a, b = correlated_pairs(40, 8, noise=1.0, seed=1)
    whole = matched_vs_scrambled_z(a, b, n_perms=300)
    monkeypatch.setattr(stats, "_GATHER_BUDGET", 40 * 7)  # 7 permutations per chunk, ragged tail
    chunked = matched_vs_scrambled_z(a, b, n_perms=300)
    assert chunked == whole


def test_seed_changes_permutations_but_not_matched():
    a, b = correlated_pairs(30, 8, noise=1.0, seed=2)
    r42, r7 = matched_vs_scrambled_z(a, b, n_perms=200), matched_vs_scrambled_z(a, b, n_perms=200, seed=7)
    assert r42.matched == r7.matched
    assert r42.scrambled_mean != r7.scrambled_mean


def test_degenerate_null_gives_nan_not_error():
    a = one_hot(np.zeros(5, dtype=int), 3)
    res = matched_vs_scrambled_z(a, a.copy(), n_perms=50)
    assert res.scrambled_std == 0.0 and res.null_sd_exact == 0.0
    assert math.isnan(res.z) and math.isnan(res.z_exact)
    d = res.as_dict()
    assert d["z"] is None and d["z_exact"] is None and d["matched"] == 1.0
    assert "no spread" in d["degenerate"]
    json.dumps(d, allow_nan=False)


def test_as_dict_is_plain_and_json_safe():
    a, b = correlated_pairs(20, 6, noise=1.0, seed=3)
    d = matched_vs_scrambled_z(a, b, n_perms=100).as_dict()
    assert list(d) == [f.name for f in AlignmentZ.__dataclass_fields__.values()]
    assert type(d["n_pairs"]) is int and type(d["n_perms"]) is int and d["degenerate"] is None
    assert all(type(d[k]) is float for k in d if k not in ("n_pairs", "n_perms", "degenerate"))
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_gap_and_exact_p_values():
    a, b = correlated_pairs(30, 6, noise=2.0, seed=17)
    res = matched_vs_scrambled_z(a, b, n_perms=100)
    S = similarity(a, b)
    n = 30
    off = S[~np.eye(n, dtype=bool)].mean()
    assert res.gap == pytest.approx((1 - 1 / n) * (np.mean(np.diag(S)) - off), rel=1e-12)
    assert res.gap == pytest.approx(res.matched - res.null_mean_exact, rel=1e-12)
    assert res.p_normal == pytest.approx(norm.sf(res.z_exact), rel=1e-12)
    assert res.p_bound == pytest.approx(1 / (1 + res.z_exact**2), rel=1e-12)
    assert 1.0 < res.z_exact < 10.0  # neither side of the bound is trivial
    b_neg = -b  # anti-aligned: z_exact < 0, so the one-sided bound is the trivial 1
    neg = matched_vs_scrambled_z(a, b_neg, n_perms=100)
    assert neg.z_exact < 0 and neg.p_bound == 1.0 and neg.p_normal > 0.5


@pytest.mark.parametrize(("n", "noise"), [(7, 1.0), (7, 3.0), (8, 0.7)])
def test_p_bound_holds_the_enumerated_exact_p(n, noise):
    a, b = correlated_pairs(n, 4, noise=noise, seed=n + int(10 * noise))
    S = similarity(a, b)
    res = matched_vs_scrambled_z(a, b, n_perms=10)
    t = np.array([S[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n))])
    exact_p = float(np.mean(t >= res.matched - 1e-12))
    assert 1 / math.factorial(n) <= exact_p <= res.p_bound
    assert abs(res.p_normal - exact_p) < 0.05  # the normal approximation, near the centre


# 2. The exact null equals enumeration and Monte Carlo.


def enumerated_null(S: np.ndarray) -> tuple[float, float]:
    n = S.shape[0]
    t = np.array([S[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n))])
    return float(t.mean()), float(t.std())


@pytest.mark.parametrize("n", [5, 6])
def test_exact_null_equals_enumeration(n):
    S = np.random.default_rng(n).standard_normal((n, n))  # not symmetric, not a cosine matrix
    mean, sd = exact_null(S)
    want_mean, want_sd = enumerated_null(S)
    assert mean == pytest.approx(want_mean, rel=0, abs=1e-12)
    assert sd == pytest.approx(want_sd, rel=0, abs=1e-12)


def test_exact_null_equals_monte_carlo():
    n, n_mc = 12, 100_000
    rng = np.random.default_rng(11)
    S = rng.standard_normal((n, n)) + np.eye(n)
    perms = np.argsort(rng.random((n_mc, n)), axis=1)
    t = S[np.arange(n), perms].mean(axis=1)
    mean, sd = exact_null(S)
    # Standard errors of the sample mean and (delta method) of the sample sd; 5 of them makes a
    # false failure ~1e-6 likely, while a variance off by n/(n-1) (8.7% here) is ~30 SEs.
    m2 = np.mean((t - t.mean()) ** 2)
    m4 = np.mean((t - t.mean()) ** 4)
    se_mean = math.sqrt(m2 / n_mc)
    se_sd = math.sqrt((m4 - m2**2) / n_mc) / (2 * math.sqrt(m2))
    assert abs(t.mean() - mean) < 5 * se_mean
    assert abs(t.std() - sd) < 5 * se_sd


@pytest.mark.wrong_types
def test_exact_null_rejects_non_square():
    with pytest.raises(BadInputError, match="square"):
        exact_null(np.ones((3, 4)))


# 3. The p-value.


def test_p_value_equals_independent_count():
    a, b = correlated_pairs(25, 6, noise=3.0, seed=4)
    res = matched_vs_scrambled_z(a, b, n_perms=400)
    S = similarity(a, b)
    matched = np.mean(np.diag(S))
    rng = np.random.RandomState(42)
    count = sum(int(np.mean(S[np.arange(25), rng.permutation(25)]) >= matched) for _ in range(400))
    assert 0 < count < 400  # weak signal, so the count is informative
    assert res.p_value == (1 + count) / 401


def test_p_value_independent_data_not_small():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((50, 10)), rng.standard_normal((50, 10))
    res = matched_vs_scrambled_z(a, b, n_perms=999)
    assert res.p_value > 0.05
    assert res.p_value <= 1.0


def test_p_value_strong_match_is_minimal():
    a, b = correlated_pairs(50, 10, noise=0.1, seed=6)
    res = matched_vs_scrambled_z(a, b, n_perms=999)
    assert res.p_value == 1 / 1000


# 4. Bootstrap intervals.


def loop_gap_interval(S, n_boot, seed, level):
    """The gap interval by explicit loops: resample, drop same-pair cells, delete each draw in turn."""
    n = S.shape[0]

    def delta(rows):
        sub = S[np.ix_(rows, rows)]
        distinct = rows[:, None] != rows[None, :]
        return np.mean(S[rows, rows]) - sub[distinct].mean()

    def with_se(rows):
        loo = [delta(np.delete(rows, k)) for k in range(rows.size)]
        return delta(rows), math.sqrt((n - 1) / n * np.sum((np.array(loo) - np.mean(loo)) ** 2))

    est, se = with_se(np.arange(n))
    t = []
    for rows in np.random.default_rng(seed).integers(0, n, size=(n_boot, n)):
        value, value_se = with_se(rows)
        t.append((value - est) / value_se)
    q_lo, q_hi = np.percentile(t, [50 * (1 - level), 50 * (1 + level)])
    factor = 1 - 1 / n
    return factor * est, factor * (est - q_hi * se), factor * (est - q_lo * se), factor * se


def test_gap_interval_equals_loop():
    a, b = correlated_pairs(25, 8, noise=1.0, seed=7)
    S = similarity(a, b)
    got = gap_interval(S, n_boot=120, seed=3, level=0.9)
    est, lo, hi, se = loop_gap_interval(S, n_boot=120, seed=3, level=0.9)
    np.testing.assert_allclose([got.estimate, got.lo, got.hi, got.se], [est, lo, hi, se], rtol=1e-10, atol=0)
    assert (got.n_boot, got.n_used, got.level, got.seed, got.method, got.reason) == (120, 120, 0.9, 3, GAP_METHOD, None)


def test_generic_studentized_bootstrap_equals_the_gap_fast_path():
    a, b = correlated_pairs(20, 6, noise=1.0, seed=18)
    S = similarity(a, b)
    n = 20

    def gap(rows):
        distinct = rows[:, None] != rows[None, :]
        return (1 - 1 / n) * (np.mean(S[rows, rows]) - S[np.ix_(rows, rows)][distinct].mean())

    generic = studentized_bootstrap(jackknifed(gap), n, n_boot=80, seed=5)
    fast = gap_interval(S, n_boot=80, seed=5)
    np.testing.assert_allclose([generic.estimate, generic.lo, generic.hi, generic.se],
                               [fast.estimate, fast.lo, fast.hi, fast.se], rtol=1e-10, atol=0)
    assert generic.reason is None and generic.n_used == 80


def test_bootstrap_ci_is_the_gap_interval_of_s():
    a, b = correlated_pairs(40, 8, noise=1.0, seed=7)
    got = bootstrap_ci(a, b, n_boot=300, seed=3, level=0.9)
    want = gap_interval(similarity(a, b), n_boot=300, seed=3, level=0.9)
    assert got == {"gap": [want.lo, want.hi], "gap_estimate": want.estimate, "gap_se": want.se, "method": GAP_METHOD,
                   "n_boot": 300, "n_used": 300, "level": 0.9, "seed": 3, "reason": None}
    assert "z_exact" not in got  # no z interval: z is not a parameter (docs/statistics.md)
    assert bootstrap_ci(a, b, n_boot=300, seed=4, level=0.9)["gap"] != got["gap"]


def test_bootstrap_contains_point_estimate():
    a, b = correlated_pairs(60, 12, noise=0.8, seed=8)
    point = matched_vs_scrambled_z(a, b, n_perms=100)
    ci = bootstrap_ci(a, b, n_boot=500)
    assert ci["gap_estimate"] == pytest.approx(point.gap, rel=1e-12)
    assert ci["gap"][0] < point.gap < ci["gap"][1]
    assert ci["gap"][0] > 0  # well matched: the interval excludes no alignment
    json.dumps(ci, allow_nan=False)


def test_resamples_are_one_default_rng_call():
    want = np.random.default_rng(9).integers(0, 12, size=(30, 12))
    np.testing.assert_array_equal(resample_indices(12, 30, seed=9), want)


def test_studentized_interval_by_hand():
    # t = (boot - 1) / se_b = [-2, -1, 0, 1, 4]; 10% / 90% linear percentiles: -1.6 and 2.8.
    lo, hi, used = studentized_interval(1.0, 0.5, np.array([0.0, 0.5, 1.0, 1.5, 3.0, np.nan]),
                                        np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5]), level=0.8)
    assert used == 5
    assert lo == pytest.approx(1.0 - 2.8 * 0.5, abs=1e-14) and hi == pytest.approx(1.0 + 1.6 * 0.5, abs=1e-14)
    assert all(math.isnan(v) for v in studentized_interval(1.0, 0.0, np.ones(3), np.ones(3))[:2])


def test_jackknife_se_formula_and_offset():
    v = np.array([1.0, 2.0, 4.0, 7.0])
    want = math.sqrt(3 / 4 * np.sum((v - v.mean()) ** 2))
    assert jackknife_se(v) == pytest.approx(want, rel=1e-14)
    assert jackknife_se(v * 1e-9 + 1.0) == pytest.approx(want * 1e-9, rel=1e-6)  # centred before squaring
    assert math.isnan(jackknife_se(np.array([1.0]))) and math.isnan(jackknife_se(np.array([1.0, np.nan])))


def test_gap_interval_needs_enough_distinct_pairs():
    rng = np.random.default_rng(19)
    S3 = rng.standard_normal((3, 3)) + 2 * np.eye(3)
    few = gap_interval(S3, n_boot=200)
    assert math.isnan(few.lo) and "resamples" in few.reason and few.n_used < 100
    assert json.loads(json.dumps(few.as_dict(), allow_nan=False))["interval"] == [None, None]
    with pytest.raises(BadInputError, match="n >= 3"):
        gap_interval(np.eye(2))


def test_gap_interval_without_jackknife_spread():
    # S = I: every leave-one-out gap is the same, so the jackknife se is 0 and there is no interval.
    got = gap_interval(np.eye(10), n_boot=50)
    assert got.estimate == pytest.approx(0.9, abs=1e-15) and math.isnan(got.lo) and "standard error" in got.reason


@pytest.mark.wrong_types
@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, True, float("nan"), "0.9"])
def test_bootstrap_rejects_bad_level(level):
    a, b = correlated_pairs(10, 4, noise=1.0, seed=9)
    with pytest.raises(BadInputError, match="level"):
        bootstrap_ci(a, b, n_boot=10, level=level)


# 4b. A shared offset that leaves z_exact unchanged leaves the intervals unchanged.


def offset_pairs(e, n=50, s=0.3):
    """Issue 23's case: a shared offset c (|c| = 57) plus spread e; cosines bunch within ~1e-8 of 1 at e = 0.001."""
    rng = np.random.default_rng(2023)
    c = rng.standard_normal(16)
    c *= 57.0 / np.linalg.norm(c)
    x, e1, e2 = rng.standard_normal((3, n, 16))
    return c + e * (x + s * e1), c + e * (x + s * e2)


def test_offset_in_s_leaves_z_exact_and_intervals_unchanged():
    S = similarity(*offset_pairs(0.001))
    assert 1 - 1e-7 < S.min() and S.max() < 1  # bunched: the regime where raw sums cancel
    m = S.mean()
    # Every entry is within a factor 2 of m, so S - m is exact (Sterbenz), and so is the power-of-two scale:
    # these are exactly S shifted by a constant (and rescaled), which leaves z_exact unchanged.
    for T, scale in ((S - m, 1.0), ((S - m) * 2.0**30, 2.0**30), (S + 0.5, 1.0)):
        mean0, sd0 = exact_null(S)
        assert (np.mean(np.diag(T)) - exact_null(T)[0]) / exact_null(T)[1] == pytest.approx(
            (np.mean(np.diag(S)) - mean0) / sd0, rel=1e-6)
        base, moved = gap_interval(S, n_boot=400, seed=1), gap_interval(T, n_boot=400, seed=1)
        np.testing.assert_allclose(np.array([moved.estimate, moved.lo, moved.hi, moved.se]) / scale,
                                   [base.estimate, base.lo, base.hi, base.se], rtol=1e-6, atol=0)


def test_offset_in_activations_keeps_z_exact_and_the_interval_in_null_sd_units():
    # e = 0.1 -> 0.001 is not an exact offset of S (corrections of order e / |c| remain), but it is close:
    # the old raw-moment z interval fell from ~[19.3, 21.5] to [1.14, 2.52] here; the gap interval must stay put.
    res, units = [], []
    for e in (0.1, 0.001):
        a, b = offset_pairs(e)
        r = matched_vs_scrambled_z(a, b, n_perms=10)
        iv = gap_interval(similarity(a, b), n_boot=400, seed=1)
        res.append(r.z_exact)
        units.append(np.array([iv.lo, iv.hi]) / r.null_sd_exact)
    assert res[1] == pytest.approx(res[0], rel=1e-4) and res[0] > 10
    np.testing.assert_allclose(units[1], units[0], rtol=1e-3)


# 4c. No spread, huge rows, seeds.


def test_constant_similarity_is_degenerate_everywhere():
    rng = np.random.default_rng(20)
    a, b = np.tile(rng.standard_normal(8), (30, 1)), np.tile(rng.standard_normal(8), (30, 1))
    out = alignment_summary(a, b, n_perms=100, n_boot=50)
    reason = out["degenerate"]
    assert "no spread" in reason
    for key in ("z", "z_exact", "p_value", "gap", "p_normal", "p_bound"):
        assert out[key] is None, key
    assert out["retrieval"]["auc"] is None and out["retrieval"]["degenerate"] == reason
    assert out["ci"]["gap"] == [None, None] and out["ci"]["reason"] == reason and out["ci"]["gap_estimate"] is None
    assert out["matched"] == pytest.approx(float(similarity(a, b)[0, 0]), abs=1e-15)  # means stay reported
    json.dumps(out, allow_nan=False)


def test_one_language_constant_is_degenerate():
    # Every prompt of one language ends in the same token: S[i, j] depends on j only, D = 0.
    rng = np.random.default_rng(21)
    a, b = np.tile(rng.standard_normal(8), (40, 1)), rng.standard_normal((40, 8))
    res = matched_vs_scrambled_z(a, b, n_perms=200)
    assert res.degenerate is not None and math.isnan(res.z) and math.isnan(res.z_exact)
    assert math.isnan(res.p_value) and math.isnan(res.p_bound) and math.isnan(res.gap)
    assert res.null_sd_exact < 1e-15  # rounding only, which the old code divided by
    assert similarity_spread_reason(similarity(a, b)) == res.degenerate


def test_spread_rule_is_relative():
    rng = np.random.default_rng(22)
    S = rng.standard_normal((20, 20))
    assert similarity_spread_reason(S) is None
    assert similarity_spread_reason(1e-300 * S) is None  # tiny but real spread: scale-free rule
    flat = np.full((20, 20), 0.3) + 1e-14 * S  # spread 1e-14 of the scale: rounding level
    assert similarity_spread_reason(flat) is not None
    assert no_spread_reason(2 * SPREAD_RTOL, 1.0, "x") is None
    assert no_spread_reason(SPREAD_RTOL, 1.0, "x").startswith("x has no spread")
    assert no_spread_reason(float("nan"), 1.0, "x") is not None


@pytest.mark.parametrize("scale", [1e160, 1e300, 1e-160, 1e-300])
def test_huge_and_tiny_rows_are_scaled_not_zeroed(scale):
    a, b = correlated_pairs(12, 5, noise=1.0, seed=23)
    want = similarity(a, b)
    got = similarity(a * scale, b)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(unit_rows(a * scale), axis=1), 1.0, rtol=1e-15)
    assert matched_vs_scrambled_z(a * scale, b * scale, n_perms=50).z_exact == pytest.approx(
        matched_vs_scrambled_z(a, b, n_perms=50).z_exact, rel=1e-10)


def test_mixed_row_scales_keep_ordinary_rows_bit_identical():
    a = np.random.default_rng(24).standard_normal((6, 4))
    mixed = a.copy()
    mixed[2] *= 1e200
    got = unit_rows(mixed)
    want = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_array_equal(np.delete(got, 2, axis=0), np.delete(want, 2, axis=0))
    np.testing.assert_allclose(got[2], want[2], rtol=1e-15)


@pytest.mark.wrong_types
@pytest.mark.parametrize("seed", [-1, 1.5, 2.0, True, 2**32, "3", None])
def test_bad_seeds_are_refused(seed):
    a, b = correlated_pairs(8, 3, noise=1.0, seed=25)
    for call in (lambda: seed_permutations(8, 5, seed), lambda: matched_vs_scrambled_z(a, b, 5, seed),
                 lambda: bootstrap_ci(a, b, 5, seed), lambda: alignment_summary(a, b, 5, seed),
                 lambda: resample_indices(8, 5, seed), lambda: gap_interval(similarity(a, b), 5, seed)):
        with pytest.raises(BadInputError, match="seed"):
            call()


def test_numpy_integer_seeds_are_accepted():
    a, b = correlated_pairs(8, 3, noise=1.0, seed=26)
    assert matched_vs_scrambled_z(a, b, 20, np.int64(7)) == matched_vs_scrambled_z(a, b, 20, 7)


# 5. Retrieval.


def sklearn_auc(S: np.ndarray) -> float:
    labels = np.eye(S.shape[0], dtype=int).ravel()
    return float(roc_auc_score(labels, S.ravel()))


def loop_top1_and_rank(S: np.ndarray) -> tuple[float, float, float]:
    n = S.shape[0]
    a_to_b = np.mean([np.argmax(S[i]) == i for i in range(n)])
    b_to_a = np.mean([np.argmax(S[:, j]) == j for j in range(n)])
    ranks = []
    for i in range(n):
        others = [S[i, j] for j in range(n) if j != i]
        ranks.append(1 + sum(s > S[i, i] for s in others) + 0.5 * sum(s == S[i, i] for s in others))
    return float(a_to_b), float(b_to_a), float(np.mean(ranks))


def test_retrieval_matches_sklearn_and_loops():
    a, b = correlated_pairs(50, 8, noise=1.5, seed=10)
    got = retrieval_auc(a, b)
    S = similarity(a, b)
    assert got["auc"] == pytest.approx(sklearn_auc(S), rel=0, abs=1e-12)
    top_ab, top_ba, rank = loop_top1_and_rank(S)
    assert (got["top1_a_to_b"], got["top1_b_to_a"]) == (top_ab, top_ba)
    assert got["mean_rank_a_to_b"] == pytest.approx(rank, rel=0, abs=1e-12)
    assert 0.5 < got["auc"] < 1.0 and 0 < got["top1_a_to_b"] < 1  # informative, not saturated
    assert got["n_pairs"] == 50


def test_retrieval_with_ties():
    # One-hot rows make S exactly 0/1, so ties are exact rather than up to BLAS rounding.
    rng = np.random.default_rng(12)
    labels_a = rng.integers(0, 4, size=30)
    labels_b = np.where(rng.random(30) < 0.6, labels_a, rng.integers(0, 4, size=30))
    a, b = one_hot(labels_a, 4), one_hot(labels_b, 4)
    got = retrieval_auc(a, b)
    S = similarity(a, b)
    assert set(np.unique(S)) == {0.0, 1.0}
    assert got["auc"] == pytest.approx(sklearn_auc(S), rel=0, abs=1e-12)
    top_ab, top_ba, rank = loop_top1_and_rank(S)
    assert (got["top1_a_to_b"], got["top1_b_to_a"]) == (top_ab, top_ba)
    assert got["mean_rank_a_to_b"] == pytest.approx(rank, rel=0, abs=1e-12)


def test_retrieval_perfect():
    a = np.eye(6) + 0.01
    got = retrieval_auc(a, a.copy())
    assert got["auc"] == 1.0 and got["top1_a_to_b"] == 1.0 and got["top1_b_to_a"] == 1.0
    assert got["mean_rank_a_to_b"] == 1.0


# 6. Cohen's d.


def test_cohens_d_by_hand():
    x, y = np.array([1.0, 2.0, 3.0, 6.0]), np.array([0.0, 1.0, 2.0])
    # mean 3 vs 1; var(x) = (4 + 1 + 0 + 9) / 4 = 3.5; var(y) = 2/3.
    want = 2.0 / math.sqrt((3.5 + 2.0 / 3.0) / 2.0)
    assert cohens_d(x, y) == pytest.approx(want, rel=1e-14)
    assert cohens_d(y, x) == pytest.approx(-want, rel=1e-14)


def test_cohens_d_zero_variance_is_nan():
    assert math.isnan(cohens_d(np.ones(4), np.ones(3)))
    summary = cohens_d_summary(np.ones(4), np.ones(3))
    assert set(summary) == {"d", "reason"} and summary["d"] is None
    assert summary["reason"].startswith("the pooled within-group sd has no spread")


def test_cohens_d_rounding_spread_is_nan():
    # The 6.67e15: two groups of one value each, up to rounding.
    x = np.full(50, 0.3) + np.random.default_rng(27).standard_normal(50) * 1e-17
    y = np.full(50, -0.2)
    assert math.isnan(cohens_d(x, y)) and cohens_d_summary(x, y)["d"] is None
    ok = cohens_d_summary(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0]))
    assert ok["reason"] is None and ok["d"] == cohens_d(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0]))


def test_cohens_d_huge_values():
    x, y = np.array([1.0, 2.0, 3.0, 6.0]), np.array([0.0, 1.0, 2.0])
    assert cohens_d(x * 1e200, y * 1e200) == pytest.approx(cohens_d(x, y), rel=1e-14)
    assert cohens_d(x * 1e-200, y * 1e-200) == pytest.approx(cohens_d(x, y), rel=1e-14)


@pytest.mark.wrong_types
@pytest.mark.parametrize(
    ("x", "fragment"), [([], "empty"), ([[1.0, 2.0]], "1-D"), ([1.0, np.nan], "non-finite")]
)
def test_cohens_d_bad_input(x, fragment):
    with pytest.raises(BadInputError, match=fragment):
        cohens_d(np.array(x), np.array([1.0, 2.0]))


# 7. Bad inputs.


@pytest.mark.wrong_types
def test_mismatched_rows():
    rng = np.random.default_rng(13)
    message = "mismatched pairs: 200 rows in the first language, 199 in the second"
    with pytest.raises(BadInputError, match=message):
        matched_vs_scrambled_z(rng.standard_normal((200, 4)), rng.standard_normal((199, 4)))


@pytest.mark.wrong_types
def test_mismatched_widths():
    with pytest.raises(BadInputError, match="mismatched widths"):
        check_pairs(np.ones((5, 4)), np.ones((5, 3)))


def test_too_few_pairs():
    with pytest.raises(BadInputError, match="need at least 3 pairs for a permutation null, got 2"):
        retrieval_auc(np.eye(2), np.eye(2))


def test_zero_norm_row():
    a = np.random.default_rng(14).standard_normal((6, 3))
    a[3] = 0.0
    message = "row 3 has zero norm: a zero activation cannot be unit-normalized"
    with pytest.raises(BadInputError, match=message):
        similarity(a, np.ones((6, 3)))


@pytest.mark.wrong_types
def test_one_d_input():
    with pytest.raises(BadInputError, match="2-D"):
        unit_rows(np.ones(5))
    with pytest.raises(BadInputError, match="2-D"):
        matched_vs_scrambled_z(np.ones(5), np.ones(5))


def test_nan_input():
    a = np.ones((5, 3))
    a[2, 1] = np.nan
    with pytest.raises(BadInputError, match=r"non-finite values \(first at row 2\)"):
        bootstrap_ci(np.ones((5, 3)), a, n_boot=5)


def test_bad_counts():
    a, b = correlated_pairs(5, 3, noise=1.0, seed=15)
    with pytest.raises(BadInputError, match="n_perms"):
        matched_vs_scrambled_z(a, b, n_perms=0)
    with pytest.raises(BadInputError, match="n_boot"):
        bootstrap_ci(a, b, n_boot=0)


def test_errors_are_value_errors():
    assert issubclass(BadInputError, ValueError)


# 8. Cached permutations.


def test_seed_permutations_sequence_and_read_only():
    perms = seed_permutations(9, 20)
    rng = np.random.RandomState(42)
    np.testing.assert_array_equal(perms, np.stack([rng.permutation(9) for _ in range(20)]))
    assert not perms.flags.writeable
    with pytest.raises(ValueError):
        perms[0, 0] = 1
    assert seed_permutations(9, 20) is perms
    rng3 = np.random.RandomState(3)
    want3 = np.stack([rng3.permutation(9) for _ in range(5)])
    np.testing.assert_array_equal(seed_permutations(9, 5, seed=3), want3)


# The summary glues the pieces together.


def test_alignment_summary():
    a, b = correlated_pairs(30, 8, noise=1.0, seed=16)
    out = alignment_summary(a, b, n_perms=200, n_boot=50)
    assert {k: out[k] for k in out if k not in ("retrieval", "ci")} == matched_vs_scrambled_z(
        a, b, n_perms=200).as_dict()
    assert out["retrieval"] == retrieval_auc(a, b)
    assert out["ci"] == bootstrap_ci(a, b, n_boot=50)
    assert "ci" not in alignment_summary(a, b, n_perms=200)
    json.dumps(out, allow_nan=False)


# PCA above numerical rank.


def test_principal_components_equal_sklearn_at_full_rank():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(28).standard_normal((60, 12)) @ np.diag(np.linspace(3, 0.5, 12))
    got = principal_components(x, 5)
    want = PCA(n_components=5, svd_solver="full").fit(x)
    assert got.rank == 12 and got.k == 5 and got.n_requested == 5
    np.testing.assert_allclose(got.components, want.components_, atol=1e-10)
    np.testing.assert_allclose(got.explained_variance_ratio, want.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(got.transform(x), want.transform(x), atol=1e-10)


def test_principal_components_stop_at_numerical_rank():
    rng = np.random.default_rng(29)
    distinct = unit_rows(rng.standard_normal((5, 10)))  # 5 distinct rows: centred rank 4
    x = distinct[rng.integers(0, 5, size=80)]
    got = principal_components(x, 10)
    assert got.rank == 4 and got.k == 4
    assert got.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-12)
    assert got.explained_variance_ratio.min() > 1e-3  # no 1e-29 components listed
    same = principal_components(np.tile(distinct[0], (30, 1)), 10)
    assert same.rank == 0 and same.k == 0 and same.components.shape == (0, 10)
    assert same.transform(x).shape == (80, 0)


@pytest.mark.wrong_types
def test_principal_components_bad_input():
    with pytest.raises(BadInputError, match="n_components"):
        principal_components(np.ones((4, 3)), 0)
    with pytest.raises(BadInputError, match="2-D"):
        principal_components(np.ones(4), 1)


def test_principal_components_huge_values():
    x = np.random.default_rng(30).standard_normal((20, 4))
    big, ref = principal_components(x * 1e200, 3), principal_components(x, 3)
    np.testing.assert_allclose(big.components, ref.components, atol=1e-12)
    np.testing.assert_allclose(big.explained_variance_ratio, ref.explained_variance_ratio, rtol=1e-12)


def test_language_subspace_huge_activations():
    from interp_tl.stats import language_subspace

    acts = np.random.default_rng(31).standard_normal((12, 3, 8))
    big, ref = language_subspace(acts * 1e200, k=2), language_subspace(acts, k=2)
    np.testing.assert_allclose(big.axes, ref.axes, atol=1e-12)
    np.testing.assert_allclose(big.scree, ref.scree, rtol=1e-12)
    np.testing.assert_allclose(big.singular_values / 1e200, ref.singular_values, rtol=1e-12)
    assert big.rank == ref.rank
