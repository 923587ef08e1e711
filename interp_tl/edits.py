"""Weight edits on a HookedTransformer that respect TransformerLens weight processing, and their controls.

Removing a subspace ``U`` (orthonormal columns ``[d_model, k]``) from what a layer's MLP writes to
the residual stream is, with TransformerLens' ``x @ W`` convention,
``W_out <- W_out @ P`` and ``b_out <- b_out @ P`` with ``P = I - alpha U U^T``: the same function
as applying ``@ P`` to ``blocks.L.hook_mlp_out`` (tested, LN and RMS models, processed or not).

**The basis must live in the edited model's residual basis.** On a LayerNorm model loaded with
``center_writing_weights`` every residual write is centred (``x - mean(x)``), so
:class:`Basis` records the basis its axes were fitted in (``raw`` or ``centred``, see
:func:`residual_basis`) and :func:`basis_for` maps it to the edited model's:

* fitted ``centred`` (orthogonal to the all-ones direction), edited model ``raw``: used as is;
  the same function as the edit on the centred model (LayerNorm cannot see the all-ones direction).
* fitted ``raw``, edited model ``centred``: ``U_c = orth((I - 11^T/d) U)``, and the mapping says
  so. This is the closest edit that can be expressed in the centred basis, **not** the raw
  edit's function (the raw edit also reads the mean of the MLP output, which the centred model
  has discarded). For that exact function use :func:`load_edited_model`: edit the unprocessed
  weights, then process.
* RMSNorm models are never centred (TransformerLens skips ``center_writing_weights`` for them);
  a basis is never mapped for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float

from interp_tl.cache import check_layers
from interp_tl.errors import BadInputError

ResidualBasis = Literal["raw", "centred"]
_LN = ("LN", "LNPre")
ORTHONORMAL_TOL = 1e-5


@dataclass(frozen=True)
class Basis:
    """Orthonormal axes ``[d_model, k]`` and the residual basis they were fitted in."""

    axes: Float[np.ndarray, "d_model k"]
    residual_basis: ResidualBasis

    def __post_init__(self) -> None:
        axes = np.asarray(self.axes, dtype=np.float64)
        if axes.ndim != 2 or axes.shape[1] < 1:
            raise BadInputError(f"a basis is [d_model, k] with k >= 1, got shape {axes.shape}")
        if axes.shape[1] >= axes.shape[0]:
            raise BadInputError(f"k = {axes.shape[1]} must be below d_model = {axes.shape[0]}")
        if not np.isfinite(axes).all():
            raise BadInputError("the basis contains NaN or infinite values")
        error = float(np.abs(axes.T @ axes - np.eye(axes.shape[1])).max())
        if error > ORTHONORMAL_TOL:
            raise BadInputError(f"the basis is not orthonormal: max |U^T U - I| = {error:.2e}")
        if self.residual_basis not in ("raw", "centred"):
            raise BadInputError(f"residual_basis must be raw or centred, got {self.residual_basis!r}")
        object.__setattr__(self, "axes", axes)

    @property
    def k(self) -> int:
        """Number of axes."""
        return self.axes.shape[1]


def residual_basis(model) -> ResidualBasis:
    """``centred`` for a LayerNorm model whose writing weights are centred, else ``raw``.

    Read from the weights (every row of every ``W_out`` and of ``W_E`` has mean ~0 after
    TransformerLens' ``center_writing_weights``), so it also works on models built by the caller.
    """
    if model.cfg.normalization_type not in _LN:
        return "raw"
    rows = [model.W_E] + [block.mlp.W_out for block in model.blocks]
    worst = max(float(w.detach().float().mean(-1).abs().max() / (w.detach().float().abs().mean() + 1e-30))
                for w in rows)
    return "centred" if worst < 1e-4 else "raw"


def basis_for(model, basis: Basis) -> tuple[Float[np.ndarray, "d_model k"], str]:
    """The axes to use on ``model`` and a one-line statement of the mapping applied (see module doc)."""
    d = model.cfg.d_model
    if basis.axes.shape[0] != d:
        raise BadInputError(f"the basis has d_model {basis.axes.shape[0]}, the model {d}")
    target = residual_basis(model)
    if target == basis.residual_basis:
        return basis.axes, f"fitted in the {target} residual basis of the edited model: used as is"
    if target == "raw":
        return basis.axes, "centred basis on a raw model: used as is (same function as on the centred model)"
    centred = basis.axes - basis.axes.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    keep = s > 1e-8 * max(1.0, s[0])
    return u[:, keep], (
        f"raw basis on a model with centred writing weights: mapped to orth((I - 11^T/d) U) "
        f"({int(keep.sum())} of {basis.k} axes); not the raw edit's function: use load_edited_model for that"
    )


def projector(axes: Float[np.ndarray, "d_model k"], alpha: float) -> Float[np.ndarray, "d_model d_model"]:
    """``P = I - alpha U U^T`` in float64."""
    if not 0.0 <= alpha <= 1.0:
        raise BadInputError(f"alpha must be in [0, 1], got {alpha}")
    axes = np.asarray(axes, dtype=np.float64)
    return np.eye(axes.shape[0]) - alpha * axes @ axes.T


def _per_layer(model, layers, bases: Basis | Mapping[int, Basis]) -> dict[int, Basis]:
    layers = check_layers(model, layers)
    if isinstance(bases, Basis):
        return {layer: bases for layer in layers}
    missing = [layer for layer in layers if layer not in bases]
    if missing:
        raise BadInputError(f"no basis for layer {missing[0]}")
    return {layer: bases[layer] for layer in layers}


def _projectors(model, layers, bases: Basis | Mapping[int, Basis], alpha: float) -> dict[int, tuple[np.ndarray, str]]:
    """``{layer: (P in the model's residual basis, how the basis was mapped)}``, checked before any edit."""
    plan = {}
    for layer, basis in _per_layer(model, layers, bases).items():
        axes, note = basis_for(model, basis)
        plan[layer] = (projector(axes, alpha), note)
    return plan


def project_mlp_writes_(
    model, layers, bases: Basis | Mapping[int, Basis], alpha: float = 1.0
) -> dict[int, str]:
    """Remove each layer's subspace from what its MLP writes, in place (``W_out``, ``b_out`` times P).

    Args:
        model: a HookedTransformer (any weight processing; see :func:`basis_for`).
        layers: the layers whose MLP is edited.
        bases: one :class:`Basis` for every layer, or ``{layer: Basis}``.
        alpha: strength in [0, 1] (1 removes the subspace entirely).

    Returns:
        ``{layer: how the basis was mapped}``.
    """
    plan = _projectors(model, layers, bases, alpha)
    with torch.no_grad():
        for layer, (p, _) in plan.items():
            mlp = model.blocks[layer].mlp
            p_t = torch.as_tensor(p, dtype=mlp.W_out.dtype, device=mlp.W_out.device)
            mlp.W_out.copy_(mlp.W_out @ p_t)
            mlp.b_out.copy_(mlp.b_out @ p_t)
    return {layer: note for layer, (_, note) in plan.items()}


@contextmanager
def projected_mlp_writes(
    model, layers, bases: Basis | Mapping[int, Basis], alpha: float = 1.0
) -> Iterator[dict[int, str]]:
    """:func:`project_mlp_writes_` for the duration of a ``with`` block; weights restored bit-exactly after.

    The original ``W_out`` / ``b_out`` of the edited layers are copied before the edit and copied
    back on exit, also when the block raises.
    """
    layers = check_layers(model, layers)
    saved = {layer: (model.blocks[layer].mlp.W_out.detach().clone(), model.blocks[layer].mlp.b_out.detach().clone())
             for layer in layers}
    try:
        yield project_mlp_writes_(model, layers, bases, alpha)
    finally:
        with torch.no_grad():
            for layer, (w, b) in saved.items():
                model.blocks[layer].mlp.W_out.copy_(w)
                model.blocks[layer].mlp.b_out.copy_(b)


def projection_hooks(model, layers, bases: Basis | Mapping[int, Basis], alpha: float = 1.0) -> list:
    """The same edit as forward hooks on ``blocks.L.hook_mlp_out`` (``act @ P``): for ``model.hooks``."""
    hooks = []
    for layer, (p, _) in _projectors(model, layers, bases, alpha).items():
        p_t = torch.as_tensor(p, dtype=model.cfg.dtype, device=model.cfg.device)

        def hook(act, hook, p_t=p_t):
            return act @ p_t

        hooks.append((f"blocks.{layer}.hook_mlp_out", hook))
    return hooks


def load_edited_model(
    name: str, processing: str, layers, bases: Basis | Mapping[int, Basis], alpha: float = 1.0,
    dtype: str | torch.dtype = "float32", device: str = "cpu",
):
    """The exact route: load ``name`` unprocessed, edit its MLP writes, then apply ``processing``.

    The bases must be ``raw`` (fitted on an unprocessed model) or ``centred``; either is used as
    is on the unprocessed weights, and TransformerLens' processing afterwards keeps the function.
    Provenance records the edit.
    """
    from interp_tl import models

    model = models.load_model(name, processing="none", dtype=dtype, device=device)
    notes = project_mlp_writes_(model, layers, bases, alpha)
    models.process_weights(model, processing)
    models.record_loaded(model, name, processing, edit={
        "kind": "mlp_write_projection", "layers": sorted(notes), "alpha": alpha,
        "route": "edit unprocessed, then process",
    })
    return model


# How much of a write an edit removes, and a random control that removes as much.

#: Largest tilt tried when matching (the weights are ``(λ/λ_ref)^(t/2)``).
_MAX_TILT = 1e4
#: Smallest weight (relative to the largest) the k-th tilted direction may get: much below it the
#: QR factorization of the tilted draw cannot resolve the k-th direction (its part is rounding next to
#: the first), and the removed fraction stops being a continuous function of the tilt.
_MIN_WEIGHT_LOG = math.log(1e-6)
#: Relative tolerance of the match: the bisection stops when the fractions agree to this.
MATCH_RTOL = 1e-9


def removed_energy(
    writes: Float[np.ndarray, "n d_model"], axes: Float[np.ndarray, "d_model k"], alpha: float = 1.0
) -> float:
    """Fraction of the writes' squared norm that ``W ← W (I − α U Uᵀ)`` removes: ``1 − ‖W P‖² / ‖W‖²``.

    For orthonormal ``U`` this is ``(2α − α²) ‖W U‖² / ‖W‖²``; at α = 1 the energy of the writes
    inside the subspace.

    Raises:
        BadInputError: the writes have zero energy, or shapes do not fit.
    """
    w = np.asarray(writes, dtype=np.float64)
    u = np.asarray(axes, dtype=np.float64)
    if w.ndim != 2 or u.ndim != 2 or w.shape[1] != u.shape[0]:
        raise BadInputError(f"writes [n, d_model] and axes [d_model, k] do not fit: {w.shape}, {u.shape}")
    total = float(np.einsum("nd,nd->", w, w))
    if not total > 0:
        raise BadInputError("the writes have zero energy: no fraction to remove")
    inside = w @ u
    return (2 * alpha - alpha * alpha) * float(np.einsum("nk,nk->", inside, inside)) / total


@dataclass(frozen=True)
class MatchedBasis:
    """A random basis removing as much of a write's energy as a target basis (:func:`energy_matched_basis`).

    Attributes:
        basis: the control's axes, in the target's residual basis.
        target: the fraction of the writes' energy the target axes remove (α = 1).
        achieved: the fraction the control removes.
        matched: whether ``|achieved − target| <= MATCH_RTOL · target`` (False when no tilt reaches it).
        tilt: the exponent t of the write's second-moment matrix the directions were drawn with.
        isotropic: the fraction the same draw removes at t = 0 (uniformly random directions).
        covariance: the fraction at t = 1 (directions drawn from the write's own second moment).
        overlap: ``‖Uᵀ V‖²_F / k``, the mean squared cosine between the control's and the target's
            subspaces (0: orthogonal, 1: the same; ``k / d`` expected for uniformly random ones).
    """

    basis: Basis
    target: float
    achieved: float
    matched: bool
    tilt: float
    isotropic: float
    covariance: float
    overlap: float

    def as_dict(self) -> dict[str, float | bool]:
        """The numbers (not the axes) for the JSON."""
        return {"target": self.target, "achieved": self.achieved, "matched": self.matched, "tilt": self.tilt,
                "isotropic": self.isotropic, "covariance": self.covariance, "overlap": self.overlap}


def _allowed_directions(d: int, kind: ResidualBasis) -> np.ndarray:
    """Orthonormal ``[d, r]`` basis of the directions a basis in ``kind`` may use (all, or those ⟂ 1)."""
    if kind == "raw":
        return np.eye(d)
    ones = np.full((d, 1), 1 / math.sqrt(d))
    return np.linalg.svd(np.eye(d) - ones @ ones.T)[0][:, : d - 1]


class _TiltedDraws:
    """``V(t) = orth(C^{t/2} G)`` in the eigenbasis of the writes' second moment ``C`` (allowed directions only)."""

    def __init__(self, writes: np.ndarray, allowed: np.ndarray, k: int, rng: np.random.Generator) -> None:
        coords = writes @ allowed
        lam, vecs = np.linalg.eigh(coords.T @ coords)
        self.lam, self.vecs = lam[::-1].copy(), vecs[:, ::-1]
        self.total = float(np.einsum("nd,nd->", writes, writes))
        self.allowed, self.k = allowed, k
        self.log_lam = np.log(np.maximum(self.lam, self.lam[0] * 1e-15))
        self.g = rng.standard_normal((len(self.lam), k))

    def _coords(self, t: float) -> np.ndarray:
        ref = self.log_lam[0] if t >= 0 else self.log_lam[-1]
        return np.linalg.qr(np.exp(0.5 * t * (self.log_lam - ref))[:, None] * self.g)[0]

    def fraction(self, t: float) -> float:
        y = self._coords(t)
        return float(np.einsum("i,ik,ik->", self.lam, y, y)) / self.total

    def axes(self, t: float) -> np.ndarray:
        return self.allowed @ (self.vecs @ self._coords(t))

    def max_tilt(self, sign: int) -> float:
        """The largest |t| at which the k-th strongest (sign +) or weakest (sign −) direction keeps weight >= 1e-6."""
        spread = self.log_lam[0] - self.log_lam[self.k - 1] if sign > 0 else self.log_lam[-self.k] - self.log_lam[-1]
        return _MAX_TILT if spread <= 0 else min(_MAX_TILT, -2 * _MIN_WEIGHT_LOG / spread)


def _solve_tilt(draws: _TiltedDraws, target: float) -> float:
    """Bisection for ``fraction(t) = target`` between 0 and the limit on the side the target lies (or that limit)."""
    f0 = draws.fraction(0.0)
    sign = 1 if target >= f0 else -1
    end = sign * draws.max_tilt(sign)
    if (draws.fraction(end) - target) * sign < 0:
        return end  # out of reach: the closest the family gets
    lo, hi = 0.0, end
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        f = draws.fraction(mid)
        if abs(f - target) <= MATCH_RTOL * target:
            return mid
        if (f - target) * sign < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def energy_matched_basis(
    writes: Float[np.ndarray, "n d_model"], target: Basis, seed: Sequence[int] | int = 0
) -> MatchedBasis:
    """A random k-dim basis that removes the same fraction of ``writes``' energy as ``target``.

    Directions are drawn as ``orth(C^{t/2} G)`` with ``C = Wᵀ W`` the writes' second moment and
    ``G`` a standard normal ``[d, k]`` draw (``t = 0``: uniformly random directions, the plain
    control; ``t = 1``: directions distributed as the writes themselves; ``t → ∞``: the writes'
    top-k principal directions); ``t`` is solved by bisection so that the control removes the
    fraction ``target`` removes (:func:`removed_energy`, α = 1; then at every α, as both scale
    by ``2α − α²``). In the centred residual basis the directions stay orthogonal to the
    all-ones vector.

    Args:
        writes: ``[n, d_model]``, e.g. ``blocks.L.hook_mlp_out`` at the positions the target
            axes were fitted on.
        target: the axes to match (e.g. the language subspace).
        seed: seed (sequence) of ``numpy.random.default_rng`` for ``G``.

    Returns:
        A :class:`MatchedBasis`; ``matched`` is False when even the writes' top (or bottom)
        principal directions cannot reach the target fraction (then the closest draw).

    Raises:
        BadInputError: the writes are not finite, have zero energy, or do not fit the basis.
    """
    w = np.asarray(writes, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != target.axes.shape[0] or not np.isfinite(w).all():
        raise BadInputError(f"writes must be finite [n, d_model = {target.axes.shape[0]}], got shape {w.shape}")
    goal = removed_energy(w, target.axes)
    draws = _TiltedDraws(w, _allowed_directions(w.shape[1], target.residual_basis), target.k,
                         np.random.default_rng(seed))
    tilt = _solve_tilt(draws, goal)
    axes = draws.axes(tilt)
    achieved = removed_energy(w, axes)
    return MatchedBasis(
        basis=Basis(axes, target.residual_basis), target=goal, achieved=achieved,
        matched=abs(achieved - goal) <= MATCH_RTOL * goal, tilt=float(tilt), isotropic=draws.fraction(0.0),
        covariance=draws.fraction(1.0),
        overlap=float(np.linalg.norm(target.axes.T @ axes) ** 2 / target.k))
