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
``mean_i u^c_i·v_π(i)``, a sum over pairs. So the writers are taken a block of pairs at a time
(every pairing's gathered rows and one matrix product per block): time is linear in pairs x
pairings and memory is one block, never a ``[writer, n, d]`` array of all pairs (at GPT-2's 159
writers and 1,000 pairs that array is 0.98 GB per language in float64).
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
from interp_tl.cache import one_position, select_rows
from interp_tl.errors import BadInputError, LayerRangeError

_HEAD = re.compile(r"^L(\d+)H(\d+)$")
#: Elements gathered per chunk of permutations (bounds memory at any number of pairs).
_GATHER_BUDGET = 1 << 23
#: Elements of each ``[writer, n, max(n, d)]`` array of a group of writers for the exact-null z's.
_EXACT_BUDGET = 1 << 24


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


def _block_rows(n: int, n_writers: int, d: int, n_perms: int) -> int:
    """Rows per block: the block's writers and its gathered pairings stay near ``_GATHER_BUDGET`` elements."""
    return max(1, min(n, _GATHER_BUDGET // (max(n_writers, n_perms) * d)))


class _GapSplit:
    """The split of the gap and its permutation bands, accumulated over blocks of rows (pairs).

    Needs the unit residuals ``u``, ``v`` of every pair first (they are the writers' sums, scaled);
    then each block of writers ``[writer, rows, d]`` adds its matched products, its sums for the
    null means and, for every pairing at once, its products with the other language's gathered
    rows: memory is one block, time linear in pairs x pairings.
    """

    def __init__(self, n: int, d: int, n_writers: int, perms: np.ndarray):
        self.na, self.nb = np.empty(n), np.empty(n)
        self.u, self.v = np.empty((n, d)), np.empty((n, d))
        self.perms, self.inverse = perms, np.argsort(perms, axis=1)
        self.matched = np.zeros((2, n_writers))
        self.sums = np.zeros((2, n_writers, d))
        self.pairings = np.zeros((2, n_writers, len(perms)))

    def residuals(self, rows: slice, xa: np.ndarray, xb: np.ndarray) -> None:
        """The residuals (the writers' sums) of the pairs ``rows``: their norms and unit vectors.

        Every row's before :meth:`add` of any block with pairings (they gather other rows); without
        pairings a block's own rows are enough, so one pass over the blocks does.
        """
        na, nb = np.linalg.norm(xa, axis=1), np.linalg.norm(xb, axis=1)
        if (na == 0).any() or (nb == 0).any():
            raise BadInputError("a residual has zero norm: cannot normalize")
        self.na[rows], self.nb[rows] = na, nb
        self.u[rows], self.v[rows] = xa / na[:, None], xb / nb[:, None]

    def add(self, rows: slice, parts_a: np.ndarray, parts_b: np.ndarray) -> None:
        """Writers of the pairs ``rows`` in both languages, ``[writer, rows, d]``."""
        uc = parts_a / self.na[None, rows, None]
        vc = parts_b / self.nb[None, rows, None]
        self.matched[0] += np.einsum("cnd,nd->c", uc, self.v[rows])
        self.matched[1] += np.einsum("nd,cnd->c", self.u[rows], vc)
        self.sums[0] += uc.sum(1)
        self.sums[1] += vc.sum(1)
        if not len(self.perms):
            return
        # pairing pi: mean_i u^c_i . v_pi(i), and mean_i u_i . v^c_pi(i) = mean_j u_inverse(j) . v^c_j
        for side, (own, other, perms) in enumerate(((uc, self.v, self.perms), (vc, self.u, self.inverse))):
            gathered = other[perms[:, rows]]  # [pairing, rows, d]
            self.pairings[side] += own.reshape(len(own), -1) @ gathered.reshape(len(perms), -1).T

    def result(self) -> dict[str, Any]:
        u, v = self.u, self.v
        n = u.shape[0]
        matched = 0.5 * (self.matched[0] + self.matched[1]) / n
        null_mean = 0.5 * (self.sums[0] / n @ v.mean(0) + self.sums[1] / n @ u.mean(0))
        scrambled = 0.5 * (self.pairings[0] + self.pairings[1]) / n - null_mean[:, None]
        shares = matched - null_mean
        total = float(np.einsum("nd,nd->", u, v) / n - u.mean(0) @ v.mean(0))
        if not len(self.perms):
            return {"total": total, "shares": shares}
        sd = scrambled.std(1)
        return {"total": total, "shares": shares, "band": np.percentile(scrambled, [2.5, 97.5], axis=1).T,
                "z": np.where(sd > 0, (shares - scrambled.mean(1)) / np.where(sd > 0, sd, 1), np.nan)}


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
        block = 0.5 * (uc[start:start + chunk] @ v.T + u @ vc[start:start + chunk].transpose(0, 2, 1))
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
    c, n, d = parts_a.shape
    split = _GapSplit(n, d, c, stats.seed_permutations(n, n_perms, seed))
    split.residuals(slice(None), parts_a.sum(0), parts_b.sum(0))
    step = _block_rows(n, c, d, n_perms)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        split.add(rows, parts_a[:, rows], parts_b[:, rows])
    result = split.result()
    result["z_exact"] = exact_share_z(parts_a / split.na[None, :, None], split.v, split.u,
                                      parts_b / split.nb[None, :, None], result["shares"])
    return result


@dataclass(frozen=True)
class WriterShares:
    """The alignment gap at one layer split over its writers (:func:`writer_shares`).

    Attributes:
        layer: the residual split (``blocks.{layer}.hook_resid_post``).
        labels: TransformerLens' component labels (``L0H0``, ``0_mlp_out``, ``embed``, ``pos_embed``, ``bias``).
        total: the gap T.
        shares: ``[writer]``, summing to ``total``.
        band: ``[writer, 2]``, the null band of each share under random pairings (None: ``nulls=False``).
        z: ``[writer]``, each share's Monte Carlo z against its random pairings (sd ddof=0; None: ``nulls=False``).
        sum_error: largest ``|sum of writers − resid_post|`` over prompts and both languages.
        z_exact: ``[writer]``, each share against its exact permutation null (NaN without spread; None:
            ``nulls=False``).
    """

    layer: int
    labels: list[str]
    total: float
    shares: Float[np.ndarray, " writer"]
    band: Float[np.ndarray, "writer 2"] | None
    z: Float[np.ndarray, " writer"] | None
    sum_error: float
    z_exact: Float[np.ndarray, " writer"] | None

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
        if self.band is None or self.z is None or self.z_exact is None:
            lines[1] = f"{'writer':>12} {'share':>9}"
            lines += [f"{self.labels[i]:>12} {self.shares[i]:9.5f}" for i in order]
            return "\n".join(lines)
        for i in order:
            lo, hi = self.band[i]
            lines.append(f"{self.labels[i]:>12} {self.shares[i]:9.5f} [{lo:9.5f}, {hi:9.5f}] {self.z_exact[i]:7.1f} "
                         f"{self.z[i]:7.1f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def writer_shares(
    cache_a: ActivationCache, cache_b: ActivationCache, layer: int, *, n_perms: int = 200, perm_seed: int = 42,
    nulls: bool = True,
) -> WriterShares:
    """Split the alignment gap of ``blocks.{layer}.hook_resid_post`` over its writers.

    The same numbers as :func:`split_gap` of the two :func:`decomposition` s (tested), computed
    over blocks of pairs so that no ``[writer, n, d]`` array of all writers is ever held. Without
    nulls each block is decomposed once (its shares need only its own rows). With nulls a block
    is decomposed once for the residuals' norms and once more for the shares and their Monte Carlo
    bands (every pairing gathers other blocks' unit residuals); the exact-null z's then take the
    writers a group at a time over all pairs (each group's ``[writer, n, d]`` and ``[writer, n, n]``
    arrays within a fixed budget).

    Args:
        cache_a: the first language's prompts, one position per prompt, bound to the model,
            holding ``hook_embed`` (``hook_pos_embed`` for absolute positions), every layer's
            ``attn.hook_z`` (or ``attn.hook_result``) and ``hook_mlp_out`` up to ``layer``, and
            ``blocks.{layer}.hook_resid_post``.
        cache_b: the second language's prompts, row i the same problem.
        layer: the residual split.
        n_perms: random pairings for the null bands.
        perm_seed: their seed.
        nulls: False gives the shares alone (``band``, ``z`` and ``z_exact`` None): what a heatmap
            of shares needs, at a fraction of the cost.

    Raises:
        BadInputError: a missing hook, more than one position per prompt, a cache with no model,
            or caches of different numbers of prompts.
        LayerRangeError: ``layer`` outside the model.
    """
    model = cache_a.model
    if model is None:
        raise BadInputError("the cache is bound to no model: the decomposition needs W_O and the biases")
    if not 0 <= layer < model.cfg.n_layers:
        raise LayerRangeError(f"layer {layer} is out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    n, d = _rows(cache_a, layer), model.cfg.d_model
    if _rows(cache_b, layer) != n:
        raise BadInputError(f"the caches hold {n} and {_rows(cache_b, layer)} prompts: they must be the same problems")
    perms = stats.seed_permutations(n, n_perms, perm_seed) if nulls else np.empty((0, n), dtype=np.int64)
    writers = (layer + 1) * (model.cfg.n_heads + 1) + 3  # heads, MLPs, embed, pos_embed, bias: sizes the blocks
    step = _block_rows(n, writers, d, len(perms))
    blocks = [slice(start, start + step) for start in range(0, n, step)]
    split: _GapSplit | None = None
    labels: list[str] = []
    sum_error = 0.0
    for rows in blocks:  # the residuals (the writers' sums); without pairings, the shares in the same pass
        (labels, parts_a, resid_a), (labels_b, parts_b, resid_b) = (
            decomposition(select_rows(cache, rows), layer) for cache in (cache_a, cache_b))
        assert labels == labels_b
        split = split or _GapSplit(n, d, len(labels), perms)
        xa, xb = parts_a.sum(0), parts_b.sum(0)
        sum_error = max(sum_error, float(np.abs(xa - resid_a).max()), float(np.abs(xb - resid_b).max()))
        split.residuals(rows, xa, xb)
        if not nulls:
            split.add(rows, parts_a, parts_b)
    assert split is not None  # n >= 1: one block at least
    if nulls:  # every pairing gathers rows of other blocks: their unit residuals are all known now
        for rows in blocks:
            split.add(rows, decomposition(select_rows(cache_a, rows), layer)[1],
                      decomposition(select_rows(cache_b, rows), layer)[1])
    result = split.result()
    if not nulls:
        return WriterShares(layer, labels, result["total"], result["shares"], None, None, sum_error, None)
    z_exact = _exact_z_by_groups(cache_a, cache_b, layer, blocks, split, result["shares"])
    return WriterShares(layer, labels, result["total"], result["shares"], result["band"], result["z"],
                        sum_error, z_exact)


def _exact_z_by_groups(cache_a: ActivationCache, cache_b: ActivationCache, layer: int, blocks: list[slice],
                       split: _GapSplit, shares: np.ndarray) -> np.ndarray:
    """:func:`exact_share_z` of every writer, a group of writers at a time over all pairs (memory within budget)."""
    n, d = split.u.shape
    z_exact = np.empty(len(shares))
    group = max(1, _EXACT_BUDGET // (n * max(n, d)))
    for start in range(0, len(z_exact), group):
        idx = slice(start, start + group)
        uc = np.empty((len(z_exact[idx]), n, d))
        vc = np.empty_like(uc)
        for rows in blocks:
            uc[:, rows] = decomposition(select_rows(cache_a, rows), layer)[1][idx] / split.na[None, rows, None]
            vc[:, rows] = decomposition(select_rows(cache_b, rows), layer)[1][idx] / split.nb[None, rows, None]
        z_exact[idx] = exact_share_z(uc, split.v, split.u, vc, shares[idx])
    return z_exact


def _rows(cache: ActivationCache, layer: int) -> int:
    name = f"blocks.{layer}.hook_resid_post"
    if name not in cache.cache_dict:
        raise BadInputError(f"the cache has no {name!r}: run the model with that hook cached")
    return int(cache.cache_dict[name].shape[0])
