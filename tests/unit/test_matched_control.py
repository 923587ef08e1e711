"""The energy-matched control: removed energy against the projection it stands for, the match, its limits."""

from __future__ import annotations

import numpy as np
import pytest

from interp_tl.edits import MATCH_RTOL, Basis, energy_matched_basis, projector, removed_energy
from interp_tl.errors import BadInputError

D, K = 24, 3


def writes(seed: int = 0, n: int = 300, centred: bool = False) -> np.ndarray:
    """Anisotropic writes with a mean: a few strong directions, the rest weak."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, D)) * np.geomspace(5.0, 0.1, D) + 0.5
    w = w @ np.linalg.qr(rng.standard_normal((D, D)))[0]
    return w - w.mean(1, keepdims=True) if centred else w


def orthonormal(seed: int, centred: bool = False) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal((D, K))
    if centred:
        g -= g.mean(0, keepdims=True)
    return np.linalg.qr(g)[0]


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_removed_energy_is_what_the_projection_removes(alpha):
    w, u = writes(), orthonormal(1)
    edited = w @ projector(u, alpha)
    assert removed_energy(w, u, alpha) == pytest.approx(1 - (edited**2).sum() / (w**2).sum(), rel=1e-12)
    with pytest.raises(BadInputError, match="zero energy"):
        removed_energy(np.zeros((3, D)), u)


def _principal(w: np.ndarray, k: int, top: bool) -> float:
    lam = np.linalg.eigvalsh(w.T @ w)
    return float((lam[-k:] if top else lam[:k]).sum() / lam.sum())


@pytest.mark.parametrize(("target_kind", "seed"), [("top", 0), ("mid", 1), ("bottom", 2), ("random", 3)])
def test_the_control_removes_the_targets_fraction(target_kind, seed):
    w = writes(seed)
    lam, vecs = np.linalg.eigh(w.T @ w)
    axes = {"top": vecs[:, -K:], "mid": vecs[:, D // 2: D // 2 + K], "bottom": vecs[:, :K],
            "random": orthonormal(seed)}[target_kind]
    target = Basis(axes, "raw")
    m = energy_matched_basis(w, target, seed=[seed, 7])
    goal = removed_energy(w, axes)
    # the match, measured independently: the projection's removed energy for each basis
    measured = 1 - ((w @ projector(m.basis.axes, 1.0)) ** 2).sum() / (w**2).sum()
    np.testing.assert_allclose(m.basis.axes.T @ m.basis.axes, np.eye(K), atol=1e-10)
    if target_kind in ("top", "bottom"):  # the extremes are reachable only in the limit
        assert not m.matched and abs(measured - goal) < 0.05 * goal + 1e-3
    else:
        assert m.matched and abs(measured - goal) <= 2 * MATCH_RTOL * goal
    assert m.target == pytest.approx(goal, rel=1e-12) and m.achieved == pytest.approx(measured, rel=1e-10)
    # the tilt's sign says which side of the uniformly random draw the target lies on
    assert (m.tilt > 0) == (goal > m.isotropic)
    assert 0 <= m.overlap <= 1 + 1e-12
    assert m.overlap == pytest.approx(np.linalg.norm(axes.T @ m.basis.axes) ** 2 / K, rel=1e-12)


def test_unreachable_target_gives_the_closest_draw():
    w = writes(4)
    top = np.linalg.eigh(w.T @ w)[1][:, -K:]
    m = energy_matched_basis(w, Basis(top, "raw"), seed=1)
    assert not m.matched and m.achieved < m.target <= _principal(w, K, top=True) + 1e-12
    assert m.achieved > 0.9 * m.target  # the family reaches close to the top-k share
    assert m.isotropic < m.covariance < m.achieved


def test_centred_control_stays_orthogonal_to_the_all_ones_direction():
    w = writes(5, centred=True)
    target = Basis(orthonormal(6, centred=True), "centred")
    m = energy_matched_basis(w, target, seed=2)
    assert m.matched and m.basis.residual_basis == "centred"
    assert np.abs(m.basis.axes.sum(0)).max() < 1e-10


def test_same_seed_same_control_and_row_order_does_not_matter():
    w, target = writes(6), Basis(orthonormal(8), "raw")
    a = energy_matched_basis(w, target, seed=[0, 1, 3])
    b = energy_matched_basis(w[::-1], target, seed=[0, 1, 3])
    c = energy_matched_basis(w, target, seed=[0, 1, 4])
    assert a.as_dict() == energy_matched_basis(w, target, seed=[0, 1, 3]).as_dict()
    assert b.achieved == pytest.approx(a.achieved, rel=1e-9) and b.tilt == pytest.approx(a.tilt, rel=1e-6)
    assert not np.allclose(a.basis.axes, c.basis.axes)


def test_bad_writes():
    target = Basis(orthonormal(0), "raw")
    with pytest.raises(BadInputError, match="finite"):
        energy_matched_basis(np.full((5, D), np.nan), target)
    with pytest.raises(BadInputError, match="finite"):
        energy_matched_basis(np.ones((5, D + 1)), target)
