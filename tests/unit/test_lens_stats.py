"""The lens study's statistics: the vectorized mean interval against the generic loop, the Clopper-Pearson
interval against scipy and its exact coverage, the first-crossing set's coverage by simulation, the
classification of outputs and the patching trials (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from interp_tl import stats
from interp_tl.analyses.lens import follows
from interp_tl.errors import BadInputError
from interp_tl.prompts import generate_problems
from interp_tl.studies.lens import patch_trials


def _values(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.beta(0.3 + j, 2.0, size=n) for j in range(k)])


@pytest.mark.parametrize(("n", "n_boot", "seed"), [(12, 300, 0), (57, 200, 5), (2, 100, 1)])
def test_mean_intervals_equal_the_generic_studentized_bootstrap(n, n_boot, seed):
    """Vectorized (counts x centred values, closed-form jackknife se) vs the loop over resamples and jackknives."""
    x = _values(n, 3, seed)
    got = stats.mean_intervals(x, n_boot, seed)
    for j, interval in enumerate(got):
        want = stats.studentized_bootstrap(stats.jackknifed(lambda rows, j=j: float(np.mean(x[rows, j]))), n,
                                           n_boot, seed)
        assert interval.n_used == want.n_used and interval.reason == want.reason
        for a, b in ((interval.estimate, want.estimate), (interval.se, want.se), (interval.lo, want.lo),
                     (interval.hi, want.hi)):
            assert a == pytest.approx(b, rel=1e-10, abs=1e-12), (j, interval, want)
        if n > 2:  # two units: every resample with both has t = 0, the generic interval's degenerate case too
            assert interval.lo < interval.estimate < interval.hi


def test_mean_intervals_follow_a_shift_and_refuse_no_spread():
    x = _values(40, 2, 3)
    base = stats.mean_intervals(x, 200, 7)
    shifted = stats.mean_intervals(x + 1e6, 200, 7)  # centred before squaring: a shared offset moves the ends only
    for a, b in zip(base, shifted):
        assert b.lo - 1e6 == pytest.approx(a.lo, abs=1e-8) and b.hi - 1e6 == pytest.approx(a.hi, abs=1e-8)
    flat = stats.mean_intervals(np.column_stack([np.full(30, 0.25), x[:30, 0]]), 100, 0)
    assert flat[0].reason is not None and math.isnan(flat[0].lo) and flat[0].estimate == 0.25
    assert flat[1].reason is None
    one = stats.mean_intervals(np.ones((1, 1)), 50, 0)[0]
    assert one.reason is not None and math.isnan(one.hi)
    with pytest.raises(BadInputError, match="non-finite"):
        stats.mean_intervals(np.array([[np.nan], [1.0]]), 10, 0)


def test_mean_interval_covers_on_one_skewed_cell():
    """Coverage on a cell the lens sees (probabilities bunched near 0, n = 50): inside 92-98% over 1000 samples.

    The whole grid is measured by ``bench/coverage_mean.py`` (docs/statistics.md)."""
    rng = np.random.default_rng(11)
    a, b, n = 0.3, 3.0, 50
    truth = a / (a + b)
    samples = rng.beta(a, b, size=(n, 1000))
    held = [(iv.lo <= truth <= iv.hi) for iv in stats.mean_intervals(samples, 400, 3)]
    assert 0.92 <= np.mean(held) <= 0.98, np.mean(held)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 98), (1, 1), (0, 0)])
def test_binomial_interval_is_clopper_pearson(k, n):
    lo, hi = stats.binomial_interval(k, n, 0.95)
    if n == 0:
        assert (lo, hi) == (0.0, 1.0)
        return
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def _exact_coverage(interval, n: int, ps: np.ndarray) -> np.ndarray:
    """P(interval(K, n) holds p) for K ~ Binomial(n, p), summed exactly over K."""
    bounds = np.array([interval(k, n) for k in range(n + 1)])
    holds = (bounds[:, 0][None, :] <= ps[:, None]) & (ps[:, None] <= bounds[:, 1][None, :])
    return (binom.pmf(np.arange(n + 1)[None, :], n, ps[:, None]) * holds).sum(axis=1)


def _wald(k: int, n: int) -> tuple[float, float]:
    p = k / n
    half = 1.959964 * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


@pytest.mark.parametrize("n", [5, 20, 98])
def test_clopper_pearson_coverage_is_at_least_the_level_for_every_fraction(n):
    """Exact coverage over a grid of true fractions (no sampling); the same check fails the Wald interval."""
    ps = np.linspace(0.001, 0.999, 999)
    assert _exact_coverage(stats.binomial_interval, n, ps).min() >= 0.95 - 1e-12
    assert _exact_coverage(_wald, n, ps).min() < 0.9


@pytest.mark.parametrize("spread", [0.0, 0.3, 0.45])
def test_clopper_pearson_covers_a_pooled_fraction_of_unequal_trials(spread):
    """The study pools trials whose success probabilities differ (language pairs): the count is Poisson-binomial.

    Exact: its distribution by convolution, the coverage of the mean probability summed over every count."""
    n = 98
    for centre in (0.05, 0.3, 0.5, 0.8):
        ps = np.clip(centre + spread * np.linspace(-1, 1, n), 0.0, 1.0)
        pmf = np.array([1.0])
        for p in ps:
            pmf = np.convolve(pmf, [1 - p, p])
        truth = ps.mean()
        bounds = np.array([stats.binomial_interval(k, n) for k in range(n + 1)])
        coverage = pmf[(bounds[:, 0] <= truth) & (truth <= bounds[:, 1])].sum()
        assert coverage >= 0.95, (spread, centre, coverage)


@pytest.mark.wrong_types
def test_binomial_interval_refuses_bad_counts():
    for k, n in ((3, 2), (-1, 4), (1.5, 4)):
        with pytest.raises(BadInputError):
            stats.binomial_interval(k, n)


def test_first_crossing_on_known_counts():
    out = stats.first_crossing([1, 9, 30, 50], [50, 50, 50, 50])
    assert out["estimate"] == 2 and out["set"][0] in (1, 2) and out["set"][1] == 3
    assert stats.first_crossing([0, 0, 1], [40, 40, 40])["set"] == [None, None]
    assert stats.first_crossing([40, 40], [40, 40])["set"] == [0, 0]
    with pytest.raises(BadInputError):
        stats.first_crossing([1, 2], [3])


def test_first_crossing_set_covers_the_true_first_crossing():
    """Simulated curves with a known first crossing (rising, non-monotone, never crossing): coverage >= 95%."""
    rng = np.random.default_rng(2)
    curves = {"rising": [0.1, 0.45, 0.55, 0.9], "non_monotone": [0.3, 0.6, 0.4, 0.8],
              "never": [0.2, 0.5, 0.3, 0.45], "near_half": [0.48, 0.52, 0.5, 0.53]}
    for name, p in curves.items():
        truth = next((i for i, x in enumerate(p) if x > 0.5), None)
        held = 0
        reps = 400
        for _ in range(reps):
            k = rng.binomial(60, p)
            lo, hi = stats.first_crossing(k.tolist(), [60] * 4)["set"]
            at = len(p) if truth is None else truth
            held += (len(p) if lo is None else lo) <= at <= (len(p) if hi is None else hi)
        assert held / reps >= 0.95, (name, held / reps)


def test_follows_language_and_number():
    f = follows(" The answer is 6.", ("zh",), "en", [5], 6)
    assert (f.language, f.language_source, f.language_target, f.number, f.number_source, f.number_target) == (
        "en", False, True, 6, False, True)
    f = follows(" 答案是 5。", ("zh", "ja"), "en", [5, None], 6)
    assert f.language_source and not f.language_target and f.number_source and not f.number_target
    assert follows(" The answer is 6.", ("zh",), "en", [6], 6).number_source is None  # the two answers coincide
    assert follows(" The answer is 6.", ("zh",), "en", [None], 6).number_target is None  # the source has none
    same = follows(" La respuesta es 7.", ("es",), "es", [5], 6)
    assert same.language_source and same.language_target and same.number_source is False


def test_patch_trials_pair_problems_once_within_their_template():
    problems = generate_problems(200, 42)
    langs = ("zh", "en", "es")
    trials, unpaired = patch_trials(problems, langs)
    used = [i for t in trials for i in (t.source, t.target)]
    assert len(used) == len(set(used)) == 2 * len(trials) == 200 - unpaired and unpaired <= 6
    for t in trials:
        assert problems[t.source].template == problems[t.target].template
        assert problems[t.source].answer != problems[t.target].answer and t.source_lang != t.target_lang
    ordered = [(a, b) for a in langs for b in langs if a != b]
    assert [(t.source_lang, t.target_lang) for t in trials[:12]] == ordered * 2


@pytest.mark.slow
def test_mean_interval_coverage_on_the_bench_grid():
    """bench/coverage_mean.py's grid (1000 samples per cell, fixed seeds): 93-97.5% where an interval can cover;
    the rare-spike cells are bounded by the chance that a sample holds no spike at all (1 - 0.95^n)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_coverage_mean", Path(__file__).resolve().parents[2] / "bench" / "coverage_mean.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for i, case in enumerate(bench.CASES):
        for n in bench.GRID_N:
            c = bench.cell(case, n, 1000, 1000, seed=100 + i)["coverage"]
            if case == "rare" and n < 200:
                assert c <= 1 - 0.95**n + 0.02, (case, n, c)  # samples without a spike cannot cover the mean
            elif (case, n) in (("rare", 200), ("u_shaped", 20)):
                assert 0.95 <= c <= 0.995, (case, n, c)  # conservative
            else:
                assert 0.93 <= c <= 0.975, (case, n, c)
