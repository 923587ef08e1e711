"""Gauge alignment of transformer weights: Procrustes over the symmetries a layer really has.

TransformerLens multiplies ``x @ W``, with per-head ``W_Q, W_K, W_V: [n_heads, d_model, d_head]``
(``_W_K`` / ``_W_V: [n_kv_heads, ...]`` under grouped-query attention) and
``W_O: [n_heads, d_head, d_model]``; MLP ``W_in`` (and ``W_gate``) ``[d_model, d_mlp]`` and
``W_out [d_mlp, d_model]``.

Exact symmetries (each one is checked in the tests by applying it to a model and comparing logits):

* **Heads**: a permutation of the K/V groups, carrying their query heads along, and a
  permutation of the query heads inside a group (they share K and V). Biases move with them.
* **QK pair** of a K/V group: ``W_Q -> W_Q A``, ``W_K -> W_K A^{-T}``. Absolute positions: any
  invertible A; we align over orthogonal A (where ``A^{-T} = A``). Rotary and q/k norms restrict
  A further (below).
* **VO pair**: ``W_V -> W_V B``, ``W_O -> B^{-1} W_O``; independent of A; neither rotary nor q/k
  norms touch it. We align over orthogonal B.
* **MLP** with an elementwise activation: a permutation of neurons (``W_in[:, p]``,
  ``W_out[p]``); an arbitrary d_mlp rotation is not one.

Which QK transforms commute with rotary and with q/k norms (:class:`QKConstraint`). Let ``q`` be
a head's query (``x W_Q + b_Q``) and ``k`` its key. Qwen3 (TransformerLens ``cfg.use_qk_norm``)
applies one RMSNorm of length d_head, shared by all heads, to every head's q and k before rotary:
``q~ = q D_q / rms(q)``, ``D_q = diag(attn.q_norm.w)`` (``D_k`` likewise). The score is
``q~ R_Δ k~^T`` with ``R_Δ`` the relative rotary rotation: a 2-D rotation by ``Δ θ_p`` on each
rotary pair p and the identity on the other (non-rotary) coordinates. Replace q by ``q A`` and k
by ``k A`` with A orthogonal: ``rms(qA) = rms(q)`` exactly (eps included), so the score becomes
``(q / rms) A X A^T (k / rms)^T`` with ``X = D_q R_Δ D_k``, and A is a symmetry iff it commutes
with ``X`` for every Δ. Over all Δ (distinct frequencies) the ``R_Δ`` span every matrix that is a
rotation-scaling ``[[a, -b], [b, a]]`` on each pair and a scalar on the non-rotary block, with
all of these independent. With non-zero norm weights, A must therefore keep each pair and the
non-rotary block (commuting with an ``X`` that is invertible on one pair and zero elsewhere keeps
its range and kernel). On a pair (i, j) with ``D_q = diag(p_i, p_j)``, ``D_k = diag(k_i, k_j)``:
``X = [[p_i k_i a, -p_i k_j b], [p_j k_i b, p_j k_j a]]``.

* If ``(p_j, k_j) = ±(p_i, k_i)``, every ``X`` is a rotation-scaling: A may be any rotation of
  the pair (reflections reverse the rotary angle and are excluded). This is the only case
  without q/k norms (``D = I``).
* Otherwise only ``A = ±I`` on the pair. With ``b = 0``, ``X = diag(p_i k_i, p_j k_j)``; if the
  two entries differ, A is diagonal with entries ±1, and the ``b`` term forces equal signs. If
  they are equal (but ``p_j ≠ ±p_i``), the ``b`` part ``E = [[0, -p_i k_j], [p_j k_i, 0]]`` has
  ``|p_i k_j| ≠ |p_j k_i|``; the orthogonal matrices commuting with it are ``x I + y E`` with
  ``x y (E + E^T) = 0`` and ``y^2 E E^T ≠ I``, so ``y = 0``.
* Non-rotary coordinates: ``X = c D_q D_k``, so A is any orthogonal map inside each set of
  coordinates with equal ``q_norm.w * k_norm.w`` (all of them without norms).

Qwen3's learned norm weights differ within every pair, so its QK gauge is a sign per rotary pair
and K/V group: the alignment then mostly matches heads. The norms are not folded (no exact fold
exists: the norm acts on ``x W_Q``, and its weight does not commute with rotary). The transforms
are applied to the first layer of a pair, so its norm weights decide what is allowed. Not aligned
(so a symmetric copy can only look farther, never closer): a per-coordinate scale moved between a
residual norm weight and the weights it feeds (what ``fold_ln`` does), a per-pair scale moved
between ``q_norm`` and ``k_norm``, and a layer-wide 90° pair rotation that swaps norm weights.

Approximations, labelled so: the research script's ``tied`` (one orthogonal transform for Q, K,
V and O of a head, per query head, heads not matched) is a symmetry only for absolute positions
without GQA (under GQA its per-query-head transforms of a shared K are not one transform; under
rotary it is not restricted); the d_mlp rotation (:func:`rotate_neurons`) is never one.

:func:`procrustes` solves ``min_R ||A R - B||_F`` over orthogonal R with scipy. The seed's own
``procrustes`` returned the transpose of the maximizer it claimed (see the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.linalg import orthogonal_procrustes
from scipy.optimize import linear_sum_assignment

from interp_tl.errors import BadInputError

Mode = Literal["tied", "tied_exact", "separate"]
#: The alignment modes: the seed's ``tied``; ``tied_exact`` and ``separate`` (exact symmetries).
MODES: tuple[str, ...] = ("tied", "tied_exact", "separate")
FAMILIES = ("q", "k", "v", "o")


def _np64(t) -> np.ndarray:
    """A weight tensor as a float64 numpy array on the CPU."""
    return t.detach().to("cpu").double().numpy()


def unit(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``x`` divided by its Frobenius norm (the seed's normalization: direction, not scale)."""
    return x / max(float(np.linalg.norm(x)), eps)


def procrustes(a: Float[np.ndarray, "m n"], b: Float[np.ndarray, "m n"]) -> Float[np.ndarray, "n n"]:
    """The orthogonal R minimizing ``||a @ R - b||_F`` (scipy's orthogonal Procrustes)."""
    return orthogonal_procrustes(a, b)[0]


def max_trace_orthogonal(m: Float[np.ndarray, "n n"]) -> Float[np.ndarray, "n n"]:
    """The orthogonal R maximizing ``tr(R^T m)``: ``U V^T`` for ``m = U S V^T``.

    With ``m = a^T b`` this is the R minimizing ``||a R - b||_F`` (:func:`procrustes`).
    """
    u, _, vt = np.linalg.svd(m)
    return u @ vt


def rotary_pairs(d_head: int, rotary_dim: int, adjacent: bool = False) -> list[tuple[int, int]]:
    """The coordinate pairs TransformerLens rotates together (``(i, i + r/2)`` or ``(2i, 2i+1)``)."""
    half = rotary_dim // 2
    return [(2 * i, 2 * i + 1) for i in range(half)] if adjacent else [(i, i + half) for i in range(half)]


@dataclass(frozen=True, eq=False)
class QKConstraint:
    """The orthogonal QK transforms of one layer that commute with its rotary and q/k norms.

    Attributes:
        d_head: head dimension.
        rotary_dim: rotated dimensions (0: absolute positions, every coordinate free).
        adjacent: rotary pairs ``(2i, 2i+1)`` (``rotary_adjacent_pairs``) instead of ``(i, i + r/2)``.
        q_norm: the layer's ``attn.q_norm.w`` ``[d_head]`` (None without q/k norms).
        k_norm: the layer's ``attn.k_norm.w`` ``[d_head]``.
    """

    d_head: int
    rotary_dim: int = 0
    adjacent: bool = False
    q_norm: Float[np.ndarray, " d_head"] | None = None
    k_norm: Float[np.ndarray, " d_head"] | None = None

    def pairs(self) -> list[tuple[int, int]]:
        """The rotary pairs."""
        return rotary_pairs(self.d_head, self.rotary_dim, self.adjacent)

    def pair_rotates(self, i: int, j: int) -> bool:
        """Whether every 2-D rotation of pair (i, j) is a symmetry (else only ±I)."""
        if self.q_norm is None:
            return True
        qi, qj, ki, kj = self.q_norm[i], self.q_norm[j], self.k_norm[i], self.k_norm[j]
        return bool((qi == qj and ki == kj) or (qi == -qj and ki == -kj))

    def free_blocks(self) -> list[list[int]]:
        """Non-rotary coordinates grouped by equal ``q_norm.w * k_norm.w`` (one group without norms)."""
        rest = list(range(self.rotary_dim, self.d_head))
        if not rest or self.q_norm is None:
            return [rest] if rest else []
        prod = self.q_norm * self.k_norm
        return [[i for i in rest if prod[i] == value] for value in sorted({float(prod[i]) for i in rest})]

    def solve(self, m: Float[np.ndarray, "d_head d_head"]) -> Float[np.ndarray, "d_head d_head"]:
        """The allowed R maximizing ``tr(R^T m)`` (``m = a^T b``: the R minimizing ``||a R - b||_F``)."""
        r = np.zeros_like(m)
        for i, j in self.pairs():
            block = m[np.ix_([i, j], [i, j])]
            if self.pair_rotates(i, j):
                theta = np.arctan2(block[1, 0] - block[0, 1], block[0, 0] + block[1, 1])
                c, s = np.cos(theta), np.sin(theta)
                r[np.ix_([i, j], [i, j])] = [[c, -s], [s, c]]
            else:
                r[np.ix_([i, j], [i, j])] = np.eye(2) * (1.0 if np.trace(block) >= 0 else -1.0)
        for idx in self.free_blocks():
            r[np.ix_(idx, idx)] = max_trace_orthogonal(m[np.ix_(idx, idx)])
        return r

    def summary(self) -> dict:
        """What the constraint allows, for provenance."""
        pairs = self.pairs()
        rotating = sum(self.pair_rotates(i, j) for i, j in pairs)
        return {"rotary_dim": self.rotary_dim,
                "rotary_pairing": ("(2i, 2i+1)" if self.adjacent else "(i, i + rotary_dim/2)") if pairs else None,
                "qk_norm": self.q_norm is not None, "pairs_any_rotation": rotating,
                "pairs_sign_only": len(pairs) - rotating,
                "free_block_sizes": [len(b) for b in self.free_blocks()]}


def qk_constraint(model, layer: int) -> QKConstraint:
    """Layer ``layer``'s :class:`QKConstraint` from the model's config and q/k norm weights.

    Raises:
        BadInputError: q/k norms over all heads at once (OLMo), which this analysis does not model.
    """
    cfg = model.cfg
    d_head = int(cfg.d_head)
    rotary = cfg.positional_embedding_type == "rotary"
    rotary_dim = int(cfg.rotary_dim or d_head) if rotary else 0
    adjacent = bool(getattr(cfg, "rotary_adjacent_pairs", False)) and rotary
    attn = model.blocks[layer].attn
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    if q_norm is None:
        return QKConstraint(d_head, rotary_dim, adjacent)
    if not cfg.use_qk_norm or q_norm.w.shape[-1] != d_head or k_norm.w.shape[-1] != d_head:
        raise BadInputError("q/k norms over all heads at once (OLMo) are not supported by the gauge alignment")
    return QKConstraint(d_head, rotary_dim, adjacent, _np64(q_norm.w), _np64(k_norm.w))


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


@dataclass(frozen=True, eq=False)
class AttentionAlignment:
    """How layer a's attention was aligned to layer b's, and the residuals left.

    Attributes:
        mode: ``tied`` (the seed), ``tied_exact`` or ``separate``.
        perm_q: ``[n_heads]``: head ``perm_q[h]`` of layer a is matched to head h of layer b.
        perm_kv: ``[n_kv_heads]``: K/V group ``perm_kv[g]`` of a is matched to group g of b.
        R_qk: ``[n_kv_heads, d_head, d_head]``, the QK transform of a's group ``perm_kv[g]``
            (``[n_heads, ...]`` per query head for ``tied``, the seed's way).
        R_vo: the VO transforms, same layout.
        residuals: ``{"q", "k", "v", "o": [n_heads]}`` ``||unit(X_a) R - unit(X_b)||_F`` per head
            of b (K/V residuals repeated over their group).
    """

    mode: str
    perm_q: Int[np.ndarray, " n_heads"]
    perm_kv: Int[np.ndarray, " n_kv_heads"]
    R_qk: Float[np.ndarray, "n d_head d_head"]
    R_vo: Float[np.ndarray, "n d_head d_head"]
    residuals: dict[str, np.ndarray]


class AttentionComparison:
    """Two layers' attention weights, Frobenius-normalized per head, and their cross-products.

    The cross-products ``X_a[i]^T X_b[j]`` (``[d_head, d_head]`` for every pair of heads) are
    computed once and serve every alignment mode, the head matching and the invariants.

    Args:
        wa: the layer aligned (transformed).
        wb: the target layer (same shapes).
    """

    def __init__(self, wa: AttentionWeights, wb: AttentionWeights):
        if wa.W_Q.shape != wb.W_Q.shape or wa.W_K.shape != wb.W_K.shape:
            raise BadInputError("the two layers have different attention shapes")
        self.group = wa.group
        self.a, self.b = _unit_heads(wa), _unit_heads(wb)
        self.cross = {f: np.einsum("iDa,jDb->ijab", self.a[f], self.b[f], optimize=True) for f in FAMILIES}
        self._cos: dict[str, np.ndarray] = {}

    @property
    def kv_of(self) -> np.ndarray:
        """The K/V group of each query head."""
        return np.arange(len(self.a["q"])) // self.group

    def raw(self) -> dict[str, np.ndarray]:
        """Per-head residuals without any alignment (head index to head index)."""
        res = {f: np.linalg.norm(self.a[f] - self.b[f], axis=(1, 2)) for f in FAMILIES}
        return {f: res[f][self.kv_of] if f in "kv" else res[f] for f in FAMILIES}

    def align(self, mode: Mode = "separate", qk: QKConstraint | None = None) -> AttentionAlignment:
        """Align layer a to layer b.

        ``separate``: heads matched, then one QK transform (restricted by ``qk``) and one
        orthogonal VO transform per K/V group. ``tied_exact``: heads matched, one transform
        for Q, K, V and O of each group, restricted by ``qk``. ``tied``: the research script,
        one orthogonal transform per query head for its Q, K, V, O, heads index to index.
        """
        if mode == "tied":
            return self._seed_tied()
        if mode not in MODES:
            raise BadInputError(f"unknown alignment mode {mode!r}: one of {', '.join(MODES)}")
        solve_qk = (qk or QKConstraint(self.a["q"].shape[-1])).solve
        n_kv = len(self.a["k"])
        fits = [[self._match_group(ga, gb, solve_qk, mode == "tied_exact") for gb in range(n_kv)]
                for ga in range(n_kv)]
        rows, cols = linear_sum_assignment(-np.array([[f[3] for f in row] for row in fits]))
        perm_kv = rows[np.argsort(cols)]
        chosen = [fits[perm_kv[gb]][gb] for gb in range(n_kv)]
        perm_q = np.concatenate([f[0] for f in chosen])
        r_qk, r_vo = np.stack([f[1] for f in chosen]), np.stack([f[2] for f in chosen])
        return AttentionAlignment(mode, perm_q, perm_kv, r_qk, r_vo, self._residuals(perm_q, perm_kv, r_qk, r_vo))

    def invariants(self) -> dict[str, dict]:
        """Per-head ``W_QK = W_Q W_K^T`` and ``W_OV = W_V W_O`` distances, heads matched by assignment.

        ``d(h, h') = ||X_h / |X_h| - Y_h' / |Y_h'| ||_F`` for the ``d_model x d_model`` products,
        computed from the cross-products (never the products): ``<Q_i K^T, Q'_j K'^T>_F =
        tr((Q_i^T Q'_j)(K'^T K))``. Invariant under every QK / VO transform and head permutation.
        """
        out = {}
        for name, cos in (("W_QK", self._cosines("q", "k")), ("W_OV", self._cosines("o", "v"))):
            dist = np.sqrt(np.clip(2 - 2 * cos, 0, None))
            rows, cols = linear_sum_assignment(dist)
            out[name] = {"distance": dist.round(6).tolist(), "match": cols.tolist(),
                         "matched_mean": float(dist[rows, cols].mean()), "same_index_mean": float(np.diag(dist).mean())}
        return out

    def _cosines(self, head: str, shared: str) -> np.ndarray:
        """Cosines between the per-head products of ``head`` (q or o) with their group's ``shared`` (cached)."""
        if head not in self._cos:
            n, m = len(self.a[head]), len(self.a[shared])
            g, d = n // m, self.a[head].shape[-1]
            per_group = self.cross[head].reshape(m, g, m, g, d, d)  # head A*g + i is query i of group A
            inner = np.einsum("AiBjab,ABab->AiBj", per_group, self.cross[shared], optimize=True).reshape(n, n)
            norms = []
            for side in (self.a, self.b):
                gram_h = np.einsum("iDa,iDb->iab", side[head], side[head], optimize=True).reshape(m, g, d, d)
                gram_s = np.einsum("iDa,iDb->iab", side[shared], side[shared], optimize=True)
                norms.append(np.sqrt(np.einsum("Aiab,Aab->Ai", gram_h, gram_s).reshape(n)))
            self._cos[head] = inner / np.outer(*norms)
        return self._cos[head]

    def _fit(self, heads_a, heads_b, ga, gb, solve_qk, tied):
        """Best transforms for a's heads ``heads_a`` (in order) against b's ``heads_b``; and the trace."""
        m_qk = self.cross["k"][ga, gb] + self.cross["q"][heads_a, heads_b].sum(0)
        m_vo = self.cross["v"][ga, gb] + self.cross["o"][heads_a, heads_b].sum(0)
        if tied:
            r = solve_qk(m_qk + m_vo)
            return r, r, float(np.sum(r * (m_qk + m_vo)))
        r_qk, r_vo = solve_qk(m_qk), max_trace_orthogonal(m_vo)
        return r_qk, r_vo, float(np.sum(r_qk * m_qk) + np.sum(r_vo * m_vo))

    def _match_group(self, ga: int, gb: int, solve_qk, tied: bool):
        """Query heads of group ``ga`` matched to those of ``gb`` and the group's transforms.

        One query head per group: exact. Several: starting from the invariant matching,
        alternate linear assignment (transforms fixed) and Procrustes (matching fixed); each
        step can only raise the fit, and it stops when the matching repeats.
        """
        g = self.group
        cand, heads_b = np.arange(ga * g, ga * g + g), np.arange(gb * g, gb * g + g)
        order = cand
        if g > 1:
            cos = self._cosines("q", "k") + self._cosines("o", "v")
            order = _assign(cos[np.ix_(cand, heads_b)], cand)
        r_qk, r_vo, value = self._fit(order, heads_b, ga, gb, solve_qk, tied)
        for _ in range(20 if g > 1 else 0):
            gain = (np.einsum("ijab,ab->ij", self.cross["q"][np.ix_(cand, heads_b)], r_qk)
                    + np.einsum("ijab,ab->ij", self.cross["o"][np.ix_(cand, heads_b)], r_vo))
            new = _assign(gain, cand)
            if np.array_equal(new, order):
                break
            order = new
            r_qk, r_vo, value = self._fit(order, heads_b, ga, gb, solve_qk, tied)
        return order, r_qk, r_vo, value

    def _residuals(self, perm_q, perm_kv, r_qk, r_vo) -> dict[str, np.ndarray]:
        kv = self.kv_of
        res = {"q": np.linalg.norm(np.einsum("hDa,hab->hDb", self.a["q"][perm_q], r_qk[kv]) - self.b["q"], axis=(1, 2)),
               "o": np.linalg.norm(np.einsum("hDa,hab->hDb", self.a["o"][perm_q], r_vo[kv]) - self.b["o"], axis=(1, 2))}
        for f, r in (("k", r_qk), ("v", r_vo)):
            per = np.linalg.norm(np.einsum("gDa,gab->gDb", self.a[f][perm_kv], r) - self.b[f], axis=(1, 2))
            res[f] = per[kv]
        return {f: res[f] for f in FAMILIES}

    def _seed_tied(self) -> AttentionAlignment:
        """The research script: per query head h, one orthogonal R for its Q, its group's K and V, and its O."""
        n, kv = len(self.a["q"]), self.kv_of
        heads = np.arange(n)
        m = (self.cross["q"][heads, heads] + self.cross["o"][heads, heads]
             + self.cross["k"][kv, kv] + self.cross["v"][kv, kv])
        r = np.stack([max_trace_orthogonal(x) for x in m])
        res = {f: np.linalg.norm(np.einsum("hDa,hab->hDb", self.a[f][kv if f in "kv" else heads], r)
                                 - self.b[f][kv if f in "kv" else heads], axis=(1, 2)) for f in FAMILIES}
        return AttentionAlignment("tied", heads, np.arange(len(self.a["k"])), r, r, res)


def _unit_heads(w: AttentionWeights) -> dict[str, np.ndarray]:
    """Per-head Frobenius-normalized ``[n, d_model, d_head]`` stacks (O transposed to that layout)."""
    def per(x):
        return x / np.maximum(np.linalg.norm(x, axis=(1, 2), keepdims=True), 1e-12)

    return {"q": per(w.W_Q), "k": per(w.W_K), "v": per(w.W_V), "o": per(np.swapaxes(w.W_O, 1, 2))}


def _assign(score: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """``cand[i]`` for each column, maximizing the summed score (linear assignment)."""
    rows, cols = linear_sum_assignment(-score)
    return cand[rows[np.argsort(cols)]]


def align_attention(
    wa: AttentionWeights, wb: AttentionWeights, mode: Mode = "separate", qk: QKConstraint | None = None
) -> AttentionAlignment:
    """Align layer a's attention to layer b's (see :meth:`AttentionComparison.align`)."""
    return AttentionComparison(wa, wb).align(mode, qk)


def aligned_attention(w: AttentionWeights, alignment: AttentionAlignment) -> AttentionWeights:
    """Layer a's weights with the alignment applied: heads permuted, then transformed.

    Raises:
        BadInputError: the seed's ``tied`` alignment under grouped-query attention (its
            per-query-head transforms of a shared K/V are not one transform).
    """
    if alignment.mode == "tied" and w.group > 1:
        raise BadInputError("the seed's tied alignment is not a transform of the weights under grouped-query attention")
    permuted = AttentionWeights(w.W_Q[alignment.perm_q], w.W_K[alignment.perm_kv], w.W_V[alignment.perm_kv],
                                w.W_O[alignment.perm_q])
    return gauge_transform_attention(permuted, alignment.R_qk, alignment.R_vo)


def apply_attention_alignment_(model, layer: int, alignment: AttentionAlignment) -> None:
    """Write the aligned attention of ``layer`` into ``model`` in place (biases moved the same way).

    Used to check that an alignment is a symmetry: the logits must not move.
    """
    attn = model.blocks[layer].attn
    w = aligned_attention(attention_weights(model, layer), alignment)
    gqa = hasattr(attn, "_W_K")
    kv = alignment.perm_kv
    g = w.group
    b_q = _np64(attn.b_Q)[alignment.perm_q]
    b_k = _np64(attn._b_K if gqa else attn.b_K)[kv]
    b_v = _np64(attn._b_V if gqa else attn.b_V)[kv]
    values = {"W_Q": w.W_Q, "W_O": w.W_O, "_W_K" if gqa else "W_K": w.W_K, "_W_V" if gqa else "W_V": w.W_V,
              "b_Q": np.stack([b_q[h] @ alignment.R_qk[h // g] for h in range(len(b_q))]),
              "_b_K" if gqa else "b_K": np.einsum("ga,gab->gb", b_k, alignment.R_qk),
              "_b_V" if gqa else "b_V": np.einsum("ga,gab->gb", b_v, alignment.R_vo)}
    with torch.no_grad():
        for name, value in values.items():
            param = getattr(attn, name)
            param.copy_(torch.as_tensor(value, dtype=param.dtype, device=param.device))


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


def _check_mlp_shapes(fa: dict, fb: dict) -> None:
    if {k: v.shape for k, v in fa.items()} != {k: v.shape for k, v in fb.items()}:
        raise BadInputError("the two layers have different MLP shapes")


def match_neurons(wa: MLPWeights, wb: MLPWeights) -> dict[str, np.ndarray | float]:
    """Neuron permutation matching (exact symmetry of elementwise MLPs) by linear assignment.

    Neuron j of layer a is described by its normalized rows in every family, concatenated; the
    permutation maximizing the summed inner products is found with scipy's
    ``linear_sum_assignment``. Returns ``perm`` (neuron ``perm[j]`` of a matches neuron j of b)
    and the residual ``||X_a[perm] - X_b||_F`` per family.
    """
    fa, fb = wa.families(), wb.families()
    _check_mlp_shapes(fa, fb)
    feats_a = np.hstack(list(fa.values()))
    feats_b = np.hstack(list(fb.values()))
    rows, cols = linear_sum_assignment(-(feats_b @ feats_a.T))
    perm = cols[np.argsort(rows)]
    return {"perm": perm, **{k: float(np.linalg.norm(fa[k][perm] - fb[k])) for k in fa}}


def apply_neuron_permutation_(model, layer: int, perm: Int[np.ndarray, " d_mlp"]) -> None:
    """Permute layer ``layer``'s MLP neurons in place (``W_in``, ``W_gate``, ``b_in`` columns, ``W_out`` rows)."""
    mlp = model.blocks[layer].mlp
    idx = torch.as_tensor(np.asarray(perm), device=mlp.W_in.device)
    with torch.no_grad():
        for name in ("W_in", "W_gate"):
            if getattr(mlp, name, None) is not None:
                getattr(mlp, name).copy_(getattr(mlp, name)[:, idx].clone())
        mlp.b_in.copy_(mlp.b_in[idx].clone())
        mlp.W_out.copy_(mlp.W_out[idx].clone())


def thin_procrustes(
    xa: Float[np.ndarray, "n k"], xb: Float[np.ndarray, "n k"]
) -> tuple[Float[np.ndarray, "r k"], Float[np.ndarray, "r k"]]:
    """``S^T xa`` and ``xb`` in one orthonormal basis of ``range(xb)``, for the optimal rotation S.

    ``S`` (``n x n`` orthogonal) minimizes ``||S^T xa - xb||_F``; it comes from the SVD of
    ``xa xb^T``, an ``n x n`` matrix of rank at most ``k``. With ``xa = Q_a R_a`` and ``xb = Q_b
    R_b`` (thin QR), ``xa xb^T = Q_a (R_a R_b^T) Q_b^T``; for ``R_a R_b^T = U S V^T`` the optimal S
    maps ``Q_a U`` onto ``Q_b V`` (its action elsewhere is arbitrary and never matters), so
    ``S^T xa = Q_b V U^T R_a``. Only the R factors are formed: ``O(n k^2)`` instead of ``O(n^3)``.

    Returns:
        ``(V U^T R_a, R_b)``: their column blocks' differences have the residual norms of
        ``S^T xa - xb`` (``Q_b`` has orthonormal columns).
    """
    r_a = np.linalg.qr(xa, mode="r")
    r_b = np.linalg.qr(xb, mode="r")
    u, _, vt = np.linalg.svd(r_a @ r_b.T)
    return vt.T @ u.T @ r_a, r_b


def rotate_neurons(wa: MLPWeights, wb: MLPWeights) -> dict[str, float]:
    """The research script's d_mlp rotation alignment: NOT a symmetry of elementwise MLPs (approximation).

    The per-family residuals ``||S^T X_a - X_b||_F`` of the optimal d_mlp rotation S, computed
    thinly (:func:`thin_procrustes`) and equal to scipy's full ``orthogonal_procrustes``.
    """
    fa, fb = wa.families(), wb.families()
    _check_mlp_shapes(fa, fb)
    aligned, target = thin_procrustes(np.hstack(list(fa.values())), np.hstack(list(fb.values())))
    out, start = {}, 0
    for k, v in fa.items():
        stop = start + v.shape[1]
        out[k] = float(np.linalg.norm(aligned[:, start:stop] - target[:, start:stop]))
        start = stop
    return out


def head_invariants(model, la: int, lb: int) -> dict[str, Any]:
    """Per-head W_QK and W_OV distances between two layers of a model, heads matched by linear assignment.

    ``d(h, h') = ||X_h / |X_h| - Y_h' / |Y_h'| ||_F``, computed from the per-head factors
    (never the ``d_model x d_model`` products; see :meth:`AttentionComparison.invariants`).
    Returns the distance matrices, the matching and the mean distance matched and index-to-index.
    """
    return AttentionComparison(attention_weights(model, la), attention_weights(model, lb)).invariants()
