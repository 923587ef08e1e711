"""The writer shares computed a block of pairs at a time: bands are the shares under each pairing,
blocks change nothing, and the study's streaming equals the split of the whole decomposition."""

from __future__ import annotations

import numpy as np
import pytest

from interp_tl import stats
from interp_tl.analyses import shares
from interp_tl.analyses.shares import decomposition, hook_names, split_gap, writer_shares
from interp_tl.cache import extract, split_languages
from interp_tl.tokens import parallel_prompts


def _parts(seed: int = 0, c: int = 5, n: int = 37, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = 2 * rng.normal(size=(n, d))
    a, b = rng.normal(size=(c, n, d)), rng.normal(size=(c, n, d))
    a[1] += shared
    b[1] += shared
    return a, b


def _shares_loop(parts_a: np.ndarray, parts_b: np.ndarray) -> np.ndarray:
    """Each writer's share by the definition, one writer at a time: ½ [T(u^c, v) + T(u, v^c)]."""
    u_all = parts_a / np.linalg.norm(parts_a.sum(0), axis=1)[None, :, None]
    v_all = parts_b / np.linalg.norm(parts_b.sum(0), axis=1)[None, :, None]
    u, v = u_all.sum(0), v_all.sum(0)

    def gap(x, y):
        s = x @ y.T
        return np.trace(s) / len(s) - s.mean()

    return np.array([0.5 * (gap(u_all[c], v) + gap(u, v_all[c])) for c in range(len(parts_a))])


@pytest.mark.parametrize("budget", [None, 3 * 5 * 6])
def test_bands_are_the_shares_under_each_pairing(monkeypatch, budget):
    """Band and z from the shares recomputed with language b's pairs permuted, one permutation at a time."""
    if budget is not None:  # blocks of 3 pairs (n = 37: a ragged last block)
        monkeypatch.setattr(shares, "_GATHER_BUDGET", budget)
        assert shares._block_rows(37, 5, 6, 5) == 3
    a, b = _parts()
    n_perms = 60
    got = split_gap(a, b, n_perms=n_perms, seed=7)
    perms = stats.seed_permutations(37, n_perms, 7)
    scrambled = np.stack([_shares_loop(a, b[:, p]) for p in perms], axis=1)
    np.testing.assert_allclose(got["shares"], _shares_loop(a, b), rtol=0, atol=1e-13)
    np.testing.assert_allclose(got["band"], np.percentile(scrambled, [2.5, 97.5], axis=1).T, rtol=0, atol=1e-13)
    sd = scrambled.std(1)  # ddof=0, as every Monte Carlo z
    np.testing.assert_allclose(got["z"], (got["shares"] - scrambled.mean(1)) / sd, rtol=1e-10)
    assert got["shares"].sum() == pytest.approx(got["total"], abs=1e-13)


def test_blocks_change_nothing_but_rounding(monkeypatch):
    a, b = _parts(seed=1, c=7, n=50, d=9)
    whole = split_gap(a, b, n_perms=80, seed=3)
    monkeypatch.setattr(shares, "_GATHER_BUDGET", 80 * 9 * 4)  # 4 pairs per block
    blocks = split_gap(a, b, n_perms=80, seed=3)
    assert blocks["total"] == whole["total"]
    for key in ("shares", "band", "z", "z_exact"):
        np.testing.assert_allclose(blocks[key], whole[key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("budget", [None, 40 * 64 * 4])
def test_writer_shares_equal_the_split_of_the_whole_decomposition(monkeypatch, small_model, budget):
    """The study's streaming (two passes over blocks of a cache) against split_gap of full arrays."""
    model = small_model
    layer = model.cfg.n_layers - 1
    prompts = parallel_prompts(model, 25, 42, ("zh", "en"))
    cache = extract(model, prompts.stacked(), hook_names(model, layer), batch_size=16)
    by_lang = split_languages(cache, prompts.langs)
    labels, parts_a, resid_a = decomposition(by_lang["zh"], layer)
    _, parts_b, resid_b = decomposition(by_lang["en"], layer)
    want = split_gap(parts_a, parts_b, n_perms=40, seed=5)
    if budget is not None:
        monkeypatch.setattr(shares, "_GATHER_BUDGET", budget)
        monkeypatch.setattr(shares, "_EXACT_BUDGET", 3 * 25 * model.cfg.d_model)  # exact z's 3 writers at a time
        assert shares._block_rows(25, (layer + 1) * (model.cfg.n_heads + 1) + 3, model.cfg.d_model, 40) == 4
    fresh = split_languages(extract(model, prompts.stacked(), hook_names(model, layer), batch_size=16), prompts.langs)
    got = writer_shares(fresh["zh"], fresh["en"], layer, n_perms=40, perm_seed=5)
    assert got.labels == labels
    # One block is the whole decomposition (same float32 head results): equal to rounding of the sums.
    # Blocks of 4 compute the heads' float32 results in smaller matrix products, which round
    # differently in the last bit (6e-8 on values of order 1): shares agree to ~1e-8 relative.
    tol = 1e-14 if budget is None else 1e-6
    scale = np.abs(want["shares"]).max()
    assert got.total == pytest.approx(want["total"], abs=tol * scale)
    np.testing.assert_allclose(got.shares, want["shares"], rtol=0, atol=tol * scale)
    np.testing.assert_allclose(got.band, want["band"], rtol=0, atol=tol * scale)
    np.testing.assert_allclose(got.z, want["z"], rtol=max(tol, 1e-12), atol=0)
    assert np.isfinite(want["z_exact"]).all()
    np.testing.assert_allclose(got.z_exact, want["z_exact"], rtol=max(tol, 1e-12), atol=0)
    bare = writer_shares(fresh["zh"], fresh["en"], layer, nulls=False)
    assert bare.band is None and bare.z is None and bare.z_exact is None
    np.testing.assert_allclose(bare.shares, got.shares, rtol=0, atol=1e-12 * scale)  # other blocks: rounding
    assert bare.total == pytest.approx(got.total, abs=1e-12 * scale) and "null band" not in bare.table()
    want_error = max(np.abs(parts_a.sum(0) - resid_a).max(), np.abs(parts_b.sum(0) - resid_b).max())
    assert got.sum_error == pytest.approx(want_error, rel=0.5) and got.sum_error < 1e-5


def test_caches_of_different_sizes_are_refused(ln_model):
    from interp_tl.cache import select_rows
    from interp_tl.errors import BadInputError

    prompts = parallel_prompts(ln_model, 10, 42, ("zh", "en"))
    by_lang = split_languages(extract(ln_model, prompts.stacked(), hook_names(ln_model, 1)), prompts.langs)
    with pytest.raises(BadInputError, match="same problems"):
        writer_shares(by_lang["zh"], select_rows(by_lang["en"], slice(0, 9)), 1)
