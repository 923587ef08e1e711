"""Tests of interp_tl.stats against reference loops, enumeration, Monte Carlo and sklearn."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from seed_reference import seeds_matched_vs_scrambled_z
from sklearn.metrics import roc_auc_score

from interp_tl import stats
from interp_tl.errors import BadInputError
from interp_tl.stats import (
    AlignmentZ,
    alignment_summary,
    bootstrap_ci,
    check_pairs,
    cohens_d,
    exact_null,
    matched_vs_scrambled_z,
    retrieval_auc,
    seed_permutations,
    similarity,
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
    json.dumps(d, allow_nan=False)


def test_as_dict_is_plain_and_json_safe():
    a, b = correlated_pairs(20, 6, noise=1.0, seed=3)
    d = matched_vs_scrambled_z(a, b, n_perms=100).as_dict()
    assert list(d) == [f.name for f in AlignmentZ.__dataclass_fields__.values()]
    assert type(d["n_pairs"]) is int and type(d["n_perms"]) is int
    assert all(type(d[k]) is float for k in d if k not in ("n_pairs", "n_perms"))
    assert json.loads(json.dumps(d, allow_nan=False)) == d


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


def loop_bootstrap(a, b, n_boot, seed, level):
    n = a.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    gaps, zs = [], []
    for rows in idx:
        ua = a[rows] / np.linalg.norm(a[rows], axis=1, keepdims=True)
        ub = b[rows] / np.linalg.norm(b[rows], axis=1, keepdims=True)
        S = ua @ ub.T
        matched = np.mean(np.diag(S))
        row, col, grand = S.mean(axis=1)[:, None], S.mean(axis=0)[None, :], S.mean()
        var = np.sum((S - row - col + grand) ** 2) / (n * n * (n - 1))
        gaps.append(matched - grand)
        zs.append((matched - grand) / np.sqrt(var))
    q = [50 * (1 - level), 50 * (1 + level)]
    return np.percentile(gaps, q), np.percentile(zs, q)


def test_bootstrap_equals_loop():
    a, b = correlated_pairs(40, 8, noise=1.0, seed=7)
    got = bootstrap_ci(a, b, n_boot=300, seed=3, level=0.9)
    gap, z = loop_bootstrap(a, b, n_boot=300, seed=3, level=0.9)
    np.testing.assert_allclose(got["gap"], gap, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got["z_exact"], z, rtol=0, atol=1e-9)
    assert (got["n_boot"], got["level"], got["seed"]) == (300, 0.9, 3)
    assert bootstrap_ci(a, b, n_boot=300, seed=4, level=0.9)["gap"] != got["gap"]


def test_bootstrap_contains_point_estimate():
    a, b = correlated_pairs(60, 12, noise=0.8, seed=8)
    point = matched_vs_scrambled_z(a, b, n_perms=100)
    ci = bootstrap_ci(a, b, n_boot=500)
    gap = point.matched - point.null_mean_exact
    assert ci["gap"][0] < gap < ci["gap"][1]
    assert ci["z_exact"][0] < point.z_exact < ci["z_exact"][1]
    assert ci["gap"][0] > 0  # well matched: the interval excludes no alignment
    json.dumps(ci, allow_nan=False)


def test_bootstrap_rejects_bad_level():
    a, b = correlated_pairs(10, 4, noise=1.0, seed=9)
    with pytest.raises(BadInputError, match="level"):
        bootstrap_ci(a, b, n_boot=10, level=1.5)


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


@pytest.mark.parametrize(
    ("x", "fragment"), [([], "empty"), ([[1.0, 2.0]], "1-D"), ([1.0, np.nan], "non-finite")]
)
def test_cohens_d_bad_input(x, fragment):
    with pytest.raises(BadInputError, match=fragment):
        cohens_d(np.array(x), np.array([1.0, 2.0]))


# 7. Bad inputs.


def test_mismatched_rows():
    rng = np.random.default_rng(13)
    message = "mismatched pairs: 200 rows in the first language, 199 in the second"
    with pytest.raises(BadInputError, match=message):
        matched_vs_scrambled_z(rng.standard_normal((200, 4)), rng.standard_normal((199, 4)))


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
