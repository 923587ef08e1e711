"""stats.language_subspace against an independent eigendecomposition and a constructed subspace."""

import numpy as np
import pytest

from interp_tl.errors import BadInputError
from interp_tl.stats import language_subspace, problem_centred


def _planted(n=30, langs=7, d=24, rank=3, noise=0.0, seed=0):
    """Problem vectors plus language offsets confined to a known ``rank``-dim subspace."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, rank)))[0]
    problems = rng.normal(size=(n, 1, d)) * 3
    offsets = rng.normal(size=(n, langs, rank)) @ basis.T
    return problems + offsets + noise * rng.normal(size=(n, langs, d)), basis


def test_matches_the_eigendecomposition_of_the_centred_covariance():
    acts = np.random.default_rng(1).normal(size=(40, 7, 16))
    sub = language_subspace(acts, k=5)
    dev = (acts - acts.mean(1, keepdims=True)).reshape(-1, 16)  # the research script's centring
    evals, evecs = np.linalg.eigh(dev.T @ dev)
    order = np.argsort(evals)[::-1]
    top = evecs[:, order[:5]]
    np.testing.assert_allclose(sub.axes @ sub.axes.T, top @ top.T, atol=1e-8)
    assert sub.variance_explained == pytest.approx(evals[order[:5]].sum() / evals.sum(), rel=1e-10)
    np.testing.assert_allclose(sub.singular_values**2, np.sort(np.clip(evals, 0, None))[::-1], atol=1e-8)
    np.testing.assert_allclose(sub.axes.T @ sub.axes, np.eye(5), atol=1e-12)
    assert sub.scree.sum() == pytest.approx(1.0)


def test_recovers_a_planted_language_subspace():
    acts, basis = _planted()
    sub = language_subspace(acts, k=3)
    assert sub.rank == 3 and sub.variance_explained == pytest.approx(1.0)
    np.testing.assert_allclose(sub.axes @ sub.axes.T, basis @ basis.T, atol=1e-10)
    # the problem vectors themselves (shared across languages) are not in it
    assert np.abs(sub.axes.T @ acts.mean(1).T).max() < np.abs(acts.mean(1)).max()
    with pytest.raises(BadInputError, match="above the rank 3"):
        language_subspace(acts, k=4)


def test_min_variance_rule_picks_the_smallest_k():
    acts, _ = _planted(rank=6, noise=0.01)
    sub = language_subspace(acts, min_variance=0.5)
    cum = np.cumsum(sub.scree)
    assert cum[sub.k - 1] >= 0.5 and (sub.k == 1 or cum[sub.k - 2] < 0.5)


def test_problem_centring_removes_each_problems_mean():
    acts = np.random.default_rng(2).normal(size=(4, 3, 5))
    dev = problem_centred(acts).reshape(4, 3, 5)
    np.testing.assert_allclose(dev.sum(1), 0, atol=1e-12)
    np.testing.assert_allclose(dev[2, 1], acts[2, 1] - acts[2].mean(0))


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "at least 1"),
    ({"k": 8}, "below d_model = 8"),
    ({"min_variance": 1.5}, r"min_variance must be in \(0, 1\]"),
])
def test_bad_k(kwargs, message):
    acts = np.random.default_rng(3).normal(size=(10, 7, 8))
    with pytest.raises(BadInputError, match=message):
        language_subspace(acts, **kwargs)


@pytest.mark.wrong_types
def test_bad_activations():
    with pytest.raises(BadInputError, match="at least two languages"):
        language_subspace(np.ones((5, 1, 4)), k=1)
    with pytest.raises(BadInputError, match="n_problems, n_langs, d_model"):
        language_subspace(np.ones((5, 4)), k=1)
    bad = np.random.default_rng(0).normal(size=(5, 3, 4))
    bad[1, 1, 1] = np.nan
    with pytest.raises(BadInputError, match="NaN"):
        language_subspace(bad, k=1)
    with pytest.raises(BadInputError, match="do not vary across languages"):
        language_subspace(np.ones((5, 3, 4)), k=1)
