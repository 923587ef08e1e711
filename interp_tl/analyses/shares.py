"""Which writers carry the alignment: an additive split of the alignment gap over TransformerLens' decomposition.

At layer L the last-token residual ``x = blocks.L.hook_resid_post`` is the sum of the components of
TransformerLens' ``cache.get_full_resid_decomposition(L + 1, expand_neurons=False)``: every head of
layers 0..L (labels ``L{l}H{h}``), every MLP (``{l}_mlp_out``), ``embed``, ``pos_embed`` (absolute
positions) and ``bias`` (the summed attention output biases ``b_O``). The alignment gap the studies
use, on unit-scaled residuals ``u_i = x_i / |x_i|`` (language a) and ``v_j`` (language b), is

    T = mean_i u_i·v_i − mean_ij u_i·v_j    (matched minus the exact permutation-null mean),

bilinear in (u, v). Splitting u and v over their writers (each part scaled by the whole residual's
norm) and sharing each cross term half-half between its two writers gives
``share(c) = ½ [T(u^c, v) + T(u, v^c)]``, which sums to T exactly (tested). The research scripts'
Δz per sublayer does not add up; these shares do.

Each share's **null band** is the same share under random pairings (the pairs' order in one
language permuted): its 2.5–97.5% range and the share's Monte Carlo z against it (sd ddof=0, as
every Monte Carlo z in interp_tl). It is a null band (what the share looks like when nothing is
paired), not an interval for the share. Under a random pairing π a share is the linear
permutation statistic ``mean_i A^c[i, π(i)]`` with ``A^c_ij = ½ (u^c_i·v_j + u_i·v^c_j)``, so it
also has an exact null (Hoeffding's mean and sd over all n! pairings, as
:func:`interp_tl.stats.exact_null`): ``z_exact = share / sd_exact`` (the exact null mean is what
the share subtracts). ``z_exact`` is deterministic and unchanged when the languages are swapped;
rankings and headlines use it. Everything is linear
in the number of pairs: ``mean_ij u^c_i·v_j = ū^c·v̄``, and a pairing π needs only
``mean_i u^c_i·v_π(i)`` (one gather and one matrix product per chunk of permutations).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from transformer_lens import ActivationCache

from interp_tl import stats
from interp_tl.cache import one_position
from interp_tl.errors import BadInputError, LayerRangeError

_HEAD = re.compile(r"^L(\d+)H(\d+)$")
#: Elements gathered per chunk of permutations (bounds memory at any number of pairs).
_GATHER_BUDGET = 1 << 23


def hook_names(model, layer: int) -> list[str]:
    """The hooks :func:`writer_shares` reads to split the residual after ``layer``."""
    names = ["hook_embed", f"blocks.{layer}.hook_resid_post"]
    if model.cfg.positional_embedding_type == "standard":
        names.append("hook_pos_embed")
    names += [f"blocks.{i}.attn.hook_z" for i in range(layer + 1)]
    names += [f"blocks.{i}.hook_mlp_out" for i in range(layer + 1)]
    return names


def head_of(label: str) -> tuple[int, int] | None:
    """``(layer, head)`` of a TransformerLens head label ``L{layer}H{head}``, None for other writers."""
    match = _HEAD.match(label)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def add_head_results(cache: ActivationCache, layers: range) -> None:
    """Put ``blocks.L.attn.hook_result`` (each head's write, ``[batch, pos, head, d_model]``) into the cache.

    The same as TransformerLens' ``cache.compute_head_results()`` (``hook_z`` times ``W_O`` per head;
    tested equal), as one einsum per layer instead of a ``[batch, pos, head, d_head, d_model]``
    product, and only for ``layers``. Heads whose results are already cached are left alone.
    """
    model = cache.model
    for layer in layers:
        name = f"blocks.{layer}.attn.hook_result"
        if name in cache.cache_dict:
            continue
        z = cache[("z", layer, "attn")]
        w_o = model.blocks[layer].attn.W_O.detach().to(z.device, z.dtype)
        cache.cache_dict[name] = torch.einsum("...hd,hdm->...hm", z, w_o)


@contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    # TransformerLens logs "Tried to compute head results when they were already cached" through
    # the root logger whenever hook_result is present; here that is the intended state.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def decomposition(
    cache: ActivationCache, layer: int
) -> tuple[list[str], Float[np.ndarray, "writer n d_model"], Float[np.ndarray, "n d_model"]]:
    """Writers of ``blocks.{layer}.hook_resid_post`` at the cache's one position per prompt.

    Returns TransformerLens' labels, the components of
    ``get_full_resid_decomposition(layer + 1, expand_neurons=False)`` as float64 ``[writer, n, d]``,
    and the residual itself (the components sum to it; tested). Like TransformerLens'
    ``compute_head_results``, it adds ``blocks.L.attn.hook_result`` to the cache.
    """
    model = cache.model
    if model is None:
        raise BadInputError("the cache is bound to no model: the decomposition needs W_O and the biases")
    if not 0 <= layer < model.cfg.n_layers:
        raise LayerRangeError(f"layer {layer} is out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    one_position(cache, [n for n in hook_names(model, layer) if "hook_z" not in n])
    for i in range(layer + 1):
        if f"blocks.{i}.attn.hook_result" not in cache.cache_dict:
            one_position(cache, [f"blocks.{i}.attn.hook_z"])
    add_head_results(cache, range(layer + 1))
    with _quiet_root_warnings():
        parts, labels = cache.get_full_resid_decomposition(layer + 1, expand_neurons=False, return_labels=True)
    parts = parts[:, :, 0].detach().to("cpu").double().numpy()
    resid = cache[f"blocks.{layer}.hook_resid_post"][:, 0].detach().to("cpu").double().numpy()
    return list(labels), parts, resid


def _pairing_means(x: np.ndarray, y: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``[writer, n_perms]``: ``mean_i x[c, i]·y[perm[i]]`` for every writer c and permutation."""
    c, n, d = x.shape
    flat = x.reshape(c, n * d)
    chunk = max(1, _GATHER_BUDGET // (n * d))
    out = np.empty((c, len(perms)))
    for start in range(0, len(perms), chunk):
        gathered = y[perms[start:start + chunk]].reshape(-1, n * d)
        out[:, start:start + chunk] = flat @ gathered.T / n
    return out


def exact_share_z(
    uc: Float[np.ndarray, "writer n d"], v: Float[np.ndarray, "n d"], u: Float[np.ndarray, "n d"],
    vc: Float[np.ndarray, "writer n d"], shares: Float[np.ndarray, " writer"],
) -> Float[np.ndarray, " writer"]:
    """Each share against its exact permutation null: ``share / sd_exact(A^c)``, NaN where ``A^c`` has no spread.

    ``A^c = ½ (u^c vᵀ + u v^cᵀ)`` is the ``[n, n]`` matrix whose pairing means are the share
    plus its null mean; its exact null comes from :func:`interp_tl.stats.exact_null`.
    """
    n = u.shape[0]
    chunk = max(1, _GATHER_BUDGET // (n * n))
    out = np.full(len(shares), np.nan)
    for start in range(0, len(shares), chunk):
        block = 0.5 * (np.einsum("cnd,md->cnm", uc[start:start + chunk], v)
                       + np.einsum("nd,cmd->cnm", u, vc[start:start + chunk]))
        for j, A in enumerate(block):
            if stats.similarity_spread_reason(A) is None:
                out[start + j] = shares[start + j] / stats.exact_null(A)[1]
    return out


def split_gap(
    parts_a: Float[np.ndarray, "writer n d"], parts_b: Float[np.ndarray, "writer n d"], *, n_perms: int = 200,
    seed: int = 42,
) -> dict[str, Any]:
    """Split ``T = mean_i u_i·v_i − mean_ij u_i·v_j`` over writers, with a null band and two z's per share.

    Args:
        parts_a: ``[writer, n, d]`` writers of language a's residuals (they sum to the residual).
        parts_b: the same for language b, row i the same problem.
        n_perms: random pairings for the bands.
        seed: ``RandomState`` seed of the pairings (:func:`interp_tl.stats.seed_permutations`).

    Returns:
        ``total`` (T), ``shares`` ``[writer]`` (sum to T), ``band`` ``[writer, 2]`` (2.5 and
        97.5 percentiles under random pairings), ``z`` ``[writer]`` against those pairings
        (Monte Carlo, sd ddof=0) and ``z_exact`` ``[writer]`` against all pairings
        (:func:`exact_share_z`).

    Raises:
        BadInputError: shapes differ, or a residual has zero norm.
    """
    if parts_a.shape != parts_b.shape or parts_a.ndim != 3:
        raise BadInputError(f"writers must be [writer, n, d] of the same shape, got {parts_a.shape}, {parts_b.shape}")
    xa, xb = parts_a.sum(0), parts_b.sum(0)
    na, nb = np.linalg.norm(xa, axis=1), np.linalg.norm(xb, axis=1)
    if (na == 0).any() or (nb == 0).any():
        raise BadInputError("a residual has zero norm: cannot normalize")
    u, v = xa / na[:, None], xb / nb[:, None]
    uc, vc = parts_a / na[None, :, None], parts_b / nb[None, :, None]
    n = u.shape[0]
    matched = 0.5 * (np.einsum("cnd,nd->c", uc, v) + np.einsum("nd,cnd->c", u, vc)) / n
    null_mean = 0.5 * (uc.mean(1) @ v.mean(0) + vc.mean(1) @ u.mean(0))
    shares = matched - null_mean
    perms = stats.seed_permutations(n, n_perms, seed)
    inverse = np.argsort(perms, axis=1)
    # mean_i u_i·v^c_perm(i) = mean_j u_inverse(j)·v^c_j
    scrambled = 0.5 * (_pairing_means(uc, v, perms) + _pairing_means(vc, u, inverse)) - null_mean[:, None]
    sd = scrambled.std(1)
    total = float(np.einsum("nd,nd->", u, v) / n - u.mean(0) @ v.mean(0))
    return {"total": total, "shares": shares, "band": np.percentile(scrambled, [2.5, 97.5], axis=1).T,
            "z": np.where(sd > 0, (shares - scrambled.mean(1)) / np.where(sd > 0, sd, 1), np.nan),
            "z_exact": exact_share_z(uc, v, u, vc, shares)}


@dataclass(frozen=True)
class WriterShares:
    """The alignment gap at one layer split over its writers (:func:`writer_shares`).

    Attributes:
        layer: the residual split (``blocks.{layer}.hook_resid_post``).
        labels: TransformerLens' component labels (``L0H0``, ``0_mlp_out``, ``embed``, ``pos_embed``, ``bias``).
        total: the gap T.
        shares: ``[writer]``, summing to ``total``.
        band: ``[writer, 2]``, the null band of each share under random pairings.
        z: ``[writer]``, each share's Monte Carlo z against its random pairings (sd ddof=0).
        sum_error: largest ``|sum of writers − resid_post|`` over prompts and both languages.
        z_exact: ``[writer]``, each share against its exact permutation null (NaN without spread).
    """

    layer: int
    labels: list[str]
    total: float
    shares: Float[np.ndarray, " writer"]
    band: Float[np.ndarray, "writer 2"]
    z: Float[np.ndarray, " writer"]
    sum_error: float
    z_exact: Float[np.ndarray, " writer"]

    def head_grid(self, n_heads: int) -> Float[np.ndarray, "layer_plus_1 n_heads"]:
        """The heads' shares as ``[layer + 1, n_heads]`` (NaN where a head has no share)."""
        grid = np.full((self.layer + 1, n_heads), np.nan)
        for label, share in zip(self.labels, self.shares):
            at = head_of(label)
            if at is not None:
                grid[at] = share
        return grid

    def table(self, top: int = 10) -> str:
        """The ``top`` writers by share, as text: label, share, null band, exact-null z, Monte Carlo z."""
        order = np.argsort(-self.shares, kind="stable")[:top]
        lines = [f"layer {self.layer}: gap {self.total:.5f}",
                 f"{'writer':>12} {'share':>9} {'null band':>21} {'z_exact':>7} {'mc z':>7}"]
        for i in order:
            lo, hi = self.band[i]
            lines.append(f"{self.labels[i]:>12} {self.shares[i]:9.5f} [{lo:9.5f}, {hi:9.5f}] {self.z_exact[i]:7.1f} "
                         f"{self.z[i]:7.1f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def writer_shares(
    cache_a: ActivationCache, cache_b: ActivationCache, layer: int, *, n_perms: int = 200, perm_seed: int = 42
) -> WriterShares:
    """Split the alignment gap of ``blocks.{layer}.hook_resid_post`` over its writers.

    Args:
        cache_a: the first language's prompts, one position per prompt, bound to the model,
            holding ``hook_embed`` (``hook_pos_embed`` for absolute positions), every layer's
            ``attn.hook_z`` (or ``attn.hook_result``) and ``hook_mlp_out`` up to ``layer``, and
            ``blocks.{layer}.hook_resid_post``.
        cache_b: the second language's prompts, row i the same problem.
        layer: the residual split.
        n_perms: random pairings for the null bands.
        perm_seed: their seed.

    Raises:
        BadInputError: a missing hook, more than one position per prompt, a cache with no model.
        LayerRangeError: ``layer`` outside the model.
    """
    labels, parts_a, resid_a = decomposition(cache_a, layer)
    labels_b, parts_b, resid_b = decomposition(cache_b, layer)
    assert labels == labels_b
    sum_error = float(max(np.abs(parts_a.sum(0) - resid_a).max(), np.abs(parts_b.sum(0) - resid_b).max()))
    split = split_gap(parts_a, parts_b, n_perms=n_perms, seed=perm_seed)
    return WriterShares(layer, labels, split["total"], split["shares"], split["band"], split["z"], sum_error,
                        split["z_exact"])
