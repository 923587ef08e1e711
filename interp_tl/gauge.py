"""Gauge alignment of transformer weights: Procrustes over the symmetries a layer really has.

TransformerLens multiplies ``x @ W``, with per-head ``W_Q, W_K, W_V: [n_heads, d_model, d_head]``
(``_W_K`` / ``_W_V: [n_kv_heads, ...]`` under grouped-query attention) and
``W_O: [n_heads, d_head, d_model]``; MLP ``W_in`` (and ``W_gate``) ``[d_model, d_mlp]`` and
``W_out [d_mlp, d_model]``. The exact symmetries used here:

* **QK pair** of a head (of a K/V group under GQA): ``W_Q -> W_Q A``, ``W_K -> W_K A^{-T}``.
  Absolute positions: any invertible A; we align over orthogonal A (where ``A^{-T} = A``).
  Rotary: only A commuting with every position's rotation: a 2-D rotation inside each rotary
  pair (``(i, i + r/2)``, or ``(2i, 2i+1)`` with adjacent pairs) and any orthogonal map of the
  non-rotary dimensions.
* **VO pair**: ``W_V -> W_V B``, ``W_O -> B^{-1} W_O``; independent of A; rotary does not touch it.
* **MLP** with an elementwise activation: a permutation of neurons (``W_in[:, p]``,
  ``W_out[p]``) is exact; an arbitrary d_mlp rotation is not (the research script's "rotation
  alignment" is an approximation and is labelled so).
* The research script ties one rotation to Q, K, V and O of a head (``tied``): a subgroup of
  the true group for absolute positions, not a symmetry at all for rotary models.

:func:`procrustes` solves ``min_R ||A R - B||_F`` over orthogonal R with scipy. The seed's own
``procrustes`` returned the transpose of the maximizer it claimed (see the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float
from scipy.linalg import orthogonal_procrustes
from scipy.optimize import linear_sum_assignment

from interp_tl.errors import BadInputError

Mode = Literal["tied", "separate"]


def _np64(t) -> np.ndarray:
    """A weight tensor as a float64 numpy array on the CPU."""
    return t.detach().to("cpu").double().numpy()


def unit(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``x`` divided by its Frobenius norm (the seed's normalization: direction, not scale)."""
    return x / max(float(np.linalg.norm(x)), eps)


def procrustes(a: Float[np.ndarray, "m n"], b: Float[np.ndarray, "m n"]) -> Float[np.ndarray, "n n"]:
    """The orthogonal R minimizing ``||a @ R - b||_F`` (scipy's orthogonal Procrustes)."""
    return orthogonal_procrustes(a, b)[0]


def rotary_pairs(d_head: int, rotary_dim: int, adjacent: bool = False) -> list[tuple[int, int]]:
    """The coordinate pairs TransformerLens rotates together (``(i, i + r/2)`` or ``(2i, 2i+1)``)."""
    half = rotary_dim // 2
    return [(2 * i, 2 * i + 1) for i in range(half)] if adjacent else [(i, i + half) for i in range(half)]


def rotary_procrustes(
    a: Float[np.ndarray, "m n"], b: Float[np.ndarray, "m n"], rotary_dim: int, adjacent: bool = False
) -> Float[np.ndarray, "n n"]:
    """The best R that commutes with rotary: a 2-D rotation per rotary pair, free on the other dimensions.

    For a pair (i, j) with ``M = a[:, (i, j)]^T b[:, (i, j)]`` the angle maximizing
    ``tr(R^T M)`` is ``atan2(M10 - M01, M00 + M11)``.
    """
    n = a.shape[1]
    r = np.zeros((n, n))
    pairs = rotary_pairs(n, rotary_dim, adjacent)
    for i, j in pairs:
        m = a[:, [i, j]].T @ b[:, [i, j]]
        theta = np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
        c, s = np.cos(theta), np.sin(theta)
        r[np.ix_([i, j], [i, j])] = [[c, -s], [s, c]]
    rest = sorted(set(range(n)) - {k for p in pairs for k in p})
    if rest:
        r[np.ix_(rest, rest)] = procrustes(a[:, rest], b[:, rest])
    return r


@dataclass(frozen=True)
class AttentionWeights:
    """One layer's attention weights in TransformerLens layout (numpy, float64)."""

    W_Q: Float[np.ndarray, "n_heads d_model d_head"]
    W_K: Float[np.ndarray, "n_kv_heads d_model d_head"]
    W_V: Float[np.ndarray, "n_kv_heads d_model d_head"]
    W_O: Float[np.ndarray, "n_heads d_head d_model"]

    @property
    def group(self) -> int:
        """Query heads per K/V head."""
        return self.W_Q.shape[0] // self.W_K.shape[0]


def attention_weights(model, layer: int) -> AttentionWeights:
    """Layer ``layer``'s attention weights; K/V un-repeated under grouped-query attention."""
    attn = model.blocks[layer].attn
    w_k = getattr(attn, "_W_K", attn.W_K)
    w_v = getattr(attn, "_W_V", attn.W_V)
    return AttentionWeights(_np64(attn.W_Q), _np64(w_k), _np64(w_v), _np64(attn.W_O))


def _qk_solver(rotary: tuple[int, bool] | None):
    if rotary is None:
        return procrustes
    rotary_dim, adjacent = rotary
    return lambda a, b: rotary_procrustes(a, b, rotary_dim, adjacent)


def align_attention(
    wa: AttentionWeights, wb: AttentionWeights, mode: Mode = "separate", rotary: tuple[int, bool] | None = None
) -> dict[str, np.ndarray]:
    """Per-head residuals ``||unit(X_a) R - unit(X_b)||_F`` of Q, K, V, O after gauge alignment.

    Args:
        wa: the layer aligned (transformed).
        wb: the target layer (same shapes).
        mode: ``separate`` (one transform for the QK pair and another for the VO pair of each
            K/V group: the true orthogonal symmetries) or ``tied`` (the research script: one
            rotation for Q, K, V and O of each group).
        rotary: ``(rotary_dim, adjacent_pairs)`` for rotary models: the QK transform is
            restricted to rotations commuting with rotary (``tied`` then uses the same restricted
            rotation, since anything more is not a symmetry).

    Returns:
        ``{"q", "k", "v", "o": [n_heads] residuals}`` (K/V residuals repeated over their group)
        and the transforms ``"R_qk"``, ``"R_vo"``: ``[n_kv_heads, d_head, d_head]``.
    """
    if wa.W_Q.shape != wb.W_Q.shape or wa.W_K.shape != wb.W_K.shape:
        raise BadInputError("the two layers have different attention shapes")
    g = wa.group
    qk_solver = _qk_solver(rotary)
    res = {key: np.zeros(wa.W_Q.shape[0]) for key in "qkvo"}
    r_qk, r_vo = [], []
    for kv in range(wa.W_K.shape[0]):
        heads = range(kv * g, (kv + 1) * g)
        qa, qb = [unit(wa.W_Q[h]) for h in heads], [unit(wb.W_Q[h]) for h in heads]
        ka, kb = unit(wa.W_K[kv]), unit(wb.W_K[kv])
        va, vb = unit(wa.W_V[kv]), unit(wb.W_V[kv])
        oa, ob = [unit(wa.W_O[h]).T for h in heads], [unit(wb.W_O[h]).T for h in heads]
        qk_a, qk_b = np.vstack([*qa, ka]), np.vstack([*qb, kb])
        vo_a, vo_b = np.vstack([va, *oa]), np.vstack([vb, *ob])
        if mode == "tied":
            rqk = rvo = qk_solver(np.vstack([qk_a, vo_a]), np.vstack([qk_b, vo_b]))
        elif mode == "separate":
            rqk, rvo = qk_solver(qk_a, qk_b), procrustes(vo_a, vo_b)
        else:
            raise BadInputError(f"unknown alignment mode {mode!r}: tied or separate")
        r_qk.append(rqk)
        r_vo.append(rvo)
        for i, h in enumerate(heads):
            res["q"][h] = np.linalg.norm(qa[i] @ rqk - qb[i])
            res["o"][h] = np.linalg.norm(oa[i] @ rvo - ob[i])
            res["k"][h] = np.linalg.norm(ka @ rqk - kb)
            res["v"][h] = np.linalg.norm(va @ rvo - vb)
    return {**res, "R_qk": np.stack(r_qk), "R_vo": np.stack(r_vo)}


def gauge_transform_attention(
    w: AttentionWeights, r_qk: np.ndarray, r_vo: np.ndarray
) -> AttentionWeights:
    """Apply orthogonal per-group transforms: ``W_Q, W_K -> W R_qk``, ``W_V -> W_V R_vo``, ``W_O -> R_vo^T W_O``."""
    g = w.group
    q = np.stack([w.W_Q[h] @ r_qk[h // g] for h in range(w.W_Q.shape[0])])
    o = np.stack([r_vo[h // g].T @ w.W_O[h] for h in range(w.W_O.shape[0])])
    k = np.stack([w.W_K[i] @ r_qk[i] for i in range(w.W_K.shape[0])])
    v = np.stack([w.W_V[i] @ r_vo[i] for i in range(w.W_V.shape[0])])
    return AttentionWeights(q, k, v, o)


@dataclass(frozen=True)
class MLPWeights:
    """One layer's MLP weights (numpy, float64); ``W_gate`` None for ungated MLPs."""

    W_in: Float[np.ndarray, "d_model d_mlp"]
    W_out: Float[np.ndarray, "d_mlp d_model"]
    W_gate: Float[np.ndarray, "d_model d_mlp"] | None = None

    def families(self) -> dict[str, np.ndarray]:
        """``{name: [d_mlp, ...] per-neuron rows}``, each Frobenius-normalized."""
        out = {"W_in": unit(self.W_in).T, "W_out": unit(self.W_out)}
        if self.W_gate is not None:
            out["W_gate"] = unit(self.W_gate).T
        return out


def mlp_weights(model, layer: int) -> MLPWeights:
    """Layer ``layer``'s MLP weights."""
    mlp = model.blocks[layer].mlp
    gate = getattr(mlp, "W_gate", None)
    return MLPWeights(_np64(mlp.W_in), _np64(mlp.W_out), None if gate is None else _np64(gate))


def match_neurons(wa: MLPWeights, wb: MLPWeights) -> dict[str, np.ndarray | float]:
    """Neuron permutation matching (exact symmetry of elementwise MLPs) by linear assignment.

    Neuron j of layer a is described by its normalized rows in every family, concatenated; the
    permutation maximizing the summed inner products is found with scipy's
    ``linear_sum_assignment``. Returns ``perm`` (neuron ``perm[j]`` of a matches neuron j of b)
    and the residual ``||X_a[perm] - X_b||_F`` per family.
    """
    fa, fb = wa.families(), wb.families()
    if {k: v.shape for k, v in fa.items()} != {k: v.shape for k, v in fb.items()}:
        raise BadInputError("the two layers have different MLP shapes")
    feats_a = np.hstack(list(fa.values()))
    feats_b = np.hstack(list(fb.values()))
    rows, cols = linear_sum_assignment(-(feats_b @ feats_a.T))
    perm = cols[np.argsort(rows)]
    return {"perm": perm, **{k: float(np.linalg.norm(fa[k][perm] - fb[k])) for k in fa}}


def rotate_neurons(wa: MLPWeights, wb: MLPWeights) -> dict[str, np.ndarray | float]:
    """The research script's d_mlp rotation alignment: NOT a symmetry of elementwise MLPs (approximation)."""
    fa, fb = wa.families(), wb.families()
    s = procrustes(np.hstack(list(fa.values())).T, np.hstack(list(fb.values())).T)
    return {"S": s, **{k: float(np.linalg.norm(s.T @ fa[k] - fb[k])) for k in fa}}
