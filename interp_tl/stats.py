"""Statistics on paired activations: matched-vs-scrambled alignment, its exact null, CIs, retrieval.

Every statistic starts from the cosine-similarity matrix ``S = unit(a) @ unit(b).T`` of ``n``
translation pairs (row ``i`` of ``a`` and row ``i`` of ``b`` are the same item in two languages).
The test statistic is ``T(pi) = mean_i S[i, pi(i)]``: the identity gives the matched similarity,
random permutations give the scrambled null.

The Monte Carlo z reproduces the research scripts exactly: every call draws its permutations from
a fresh ``RandomState(seed)``, so all calls with the same ``n`` use the same permutations. The
exact null (Hoeffding's combinatorial CLT moments) needs no sampling and is reported beside it.

:func:`language_subspace` is the other multi-language statistic: the directions along which the
same problem's activation moves when only its language changes (problem-centred SVD).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Float, Int
from scipy.stats import rankdata

from interp_tl.errors import BadInputError

# Elements of S gathered per chunk of permutations: 4M float64 (32 MB) keeps memory bounded for
# large n_perms * n while leaving each chunk large enough that the Python overhead is negligible.
_GATHER_BUDGET = 1 << 22


def _finite_float(value: float) -> float | None:
    """A plain float, or None for nan/inf so that ``json.dumps(..., allow_nan=False)`` works."""
    value = float(value)
    return value if math.isfinite(value) else None


def _check_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise BadInputError(f"{what} must be a 2-D array (rows x features), got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise BadInputError(f"{what} has non-finite values (first at row {row})")
    return x


def unit_rows(x: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n d"]:
    """Divide every row by its L2 norm, in float64.

    Args:
        x: a 2-D array, one activation vector per row.

    Returns:
        A new float64 array of the same shape whose rows have unit norm.

    Raises:
        BadInputError: if ``x`` is not 2-D, has nan/inf, or a row has zero norm.

    Pitfall: float32 activations are upcast before normalizing, so results can differ from a
    float32 computation in the 7th digit; the research scripts' inputs were float64 already.
    """
    x = _check_2d(x, "input")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise BadInputError(
            f"row {int(zero[0])} has zero norm: a zero activation cannot be unit-normalized"
        )
    return x / norms


def check_pairs(
    a: Float[np.ndarray, "n_pairs d_model"],
    b: Float[np.ndarray, "n_pairs d_model"],
    min_pairs: int = 3,
) -> tuple[Float[np.ndarray, "n_pairs d_model"], Float[np.ndarray, "n_pairs d_model"]]:
    """Check that ``a`` and ``b`` are row-aligned pairs and return them as float64 arrays.

    Args:
        a: activations in the first language, one row per pair.
        b: activations in the second language, row ``i`` paired with ``a[i]``.
        min_pairs: fewest pairs accepted; below 3 a permutation null has almost no support.

    Returns:
        ``(a, b)`` as float64 arrays (no copy when they already are).

    Raises:
        BadInputError: if either is not 2-D or not finite, the row counts or widths differ, or
            there are fewer than ``min_pairs`` rows.

    Pitfall: only shapes are checked; rows in a different order still pass and silently
    destroy the alignment, so keep pairs aligned upstream.
    """
    a = _check_2d(a, "first language array")
    b = _check_2d(b, "second language array")
    if a.shape[0] != b.shape[0]:
        raise BadInputError(
            f"mismatched pairs: {a.shape[0]} rows in the first language, {b.shape[0]} in the second"
        )
    if a.shape[1] != b.shape[1]:
        raise BadInputError(
            f"mismatched widths: {a.shape[1]} features in the first language, {b.shape[1]} in the second"
        )
    if a.shape[0] < min_pairs:
        raise BadInputError(f"need at least {min_pairs} pairs for a permutation null, got {a.shape[0]}")
    return a, b


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BadInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=16)
def _cached_permutations(n: int, n_perms: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    perms = np.empty((n_perms, n), dtype=np.intp)
    # Drawn one by one, in order, because that is what reproduces the seeds' RandomState stream.
    for k in range(n_perms):
        perms[k] = rng.permutation(n)
    perms.setflags(write=False)
    return perms


def seed_permutations(n: int, n_perms: int, seed: int = 42) -> Int[np.ndarray, "n_perms n"]:
    """The permutations the research scripts drew: ``RandomState(seed).permutation(n)``, n_perms times.

    Args:
        n: number of items permuted.
        n_perms: number of permutations.
        seed: seed of the fresh ``np.random.RandomState``.

    Returns:
        An ``[n_perms, n]`` integer array, row ``k`` the ``k``-th permutation drawn.

    Pitfall: the array is cached and shared between callers, so it is read-only; copy it
    before modifying.
    """
    n = _check_count(n, "n", 1)
    n_perms = _check_count(n_perms, "n_perms", 1)
    return _cached_permutations(n, n_perms, int(seed))


def similarity(
    a: Float[np.ndarray, "n_pairs d_model"], b: Float[np.ndarray, "n_pairs d_model"]
) -> Float[np.ndarray, "n_pairs n_pairs"]:
    """Cosine-similarity matrix of the pairs: ``S[i, j] = cos(a[i], b[j])``, in float64.

    Args:
        a: activations in the first language, ``[n_pairs, d_model]``.
        b: activations in the second language, same shape, row-aligned with ``a``.

    Returns:
        ``S`` of shape ``[n_pairs, n_pairs]``; its diagonal holds the matched pairs.

    Raises:
        BadInputError: as :func:`check_pairs` and :func:`unit_rows`.

    Pitfall: S is not symmetric (rows are language a, columns language b); transpose it for
    retrieval in the other direction.
    """
    a, b = check_pairs(a, b)
    return unit_rows(a) @ unit_rows(b).T


def _perm_stats(S: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``T(pi) = mean_i S[i, pi(i)]`` for every row ``pi`` of ``perms``, chunked to bound memory."""
    n = S.shape[0]
    rows = np.arange(n)
    chunk = max(1, _GATHER_BUDGET // n)
    out = np.empty(perms.shape[0], dtype=np.float64)
    for start in range(0, perms.shape[0], chunk):
        out[start : start + chunk] = S[rows, perms[start : start + chunk]].mean(axis=1)
    return out


def _exact_null_unchecked(S: np.ndarray) -> tuple[float, float]:
    n = S.shape[0]
    row = S.mean(axis=1, keepdims=True)
    col = S.mean(axis=0, keepdims=True)
    grand = S.mean()
    D = S - row - col + grand
    var = float(np.sum(D * D)) / (n * n * (n - 1))
    # Rounding can leave a tiny negative variance on a (near-)constant S.
    return float(grand), math.sqrt(max(var, 0.0))


def exact_null(S: Float[np.ndarray, "n n"]) -> tuple[float, float]:
    """Exact mean and sd of ``T(pi) = mean_i S[i, pi(i)]`` over uniformly random permutations.

    With ``D = S - row means - column means + grand mean`` (Hoeffding's combinatorial CLT),
    ``E[T] = mean(S)`` and ``Var[T] = sum_ij D_ij^2 / (n^2 (n - 1))``.

    Args:
        S: a square ``[n, n]`` similarity matrix, ``n >= 2``.

    Returns:
        ``(mean, sd)`` of the permutation distribution of ``T``.

    Raises:
        BadInputError: if ``S`` is not square, has ``n < 2``, or is not finite.

    Pitfall: these are the moments over all ``n!`` permutations, identity included; a Monte
    Carlo null differs from them by sampling error only.
    """
    S = _check_2d(S, "similarity matrix")
    if S.shape[0] != S.shape[1] or S.shape[0] < 2:
        raise BadInputError(f"similarity matrix must be square with n >= 2, got shape {S.shape}")
    return _exact_null_unchecked(S)


def _safe_z(value: float, mean: float, sd: float) -> float:
    # A degenerate null (constant S, or n_perms == 1) has no spread: report nan, not an error.
    if not sd > 0:
        return math.nan
    return float((value - mean) / sd)


@dataclass(frozen=True)
class AlignmentZ:
    """Matched-vs-scrambled alignment of paired activations.

    Attributes:
        z: Monte Carlo z, ``(matched - scrambled_mean) / scrambled_std`` (the seeds' number).
        matched: mean cosine similarity of the matched pairs (mean of diag S).
        scrambled_mean: mean of the permutation statistics.
        scrambled_std: their standard deviation (ddof=0, as the seeds).
        n_pairs: number of pairs.
        n_perms: number of permutations drawn.
        null_mean_exact: exact mean of the permutation null.
        null_sd_exact: exact sd of the permutation null.
        z_exact: ``(matched - null_mean_exact) / null_sd_exact``.
        p_value: one-sided upper Monte Carlo p, ``(1 + #{T_perm >= matched}) / (n_perms + 1)``.
    """

    z: float
    matched: float
    scrambled_mean: float
    scrambled_std: float
    n_pairs: int
    n_perms: int
    null_mean_exact: float
    null_sd_exact: float
    z_exact: float
    p_value: float

    def as_dict(self) -> dict[str, float | int | None]:
        """The fields as plain ints and floats, with nan/inf as None (JSON-safe)."""
        out: dict[str, float | int | None] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = int(value) if isinstance(value, (int, np.integer)) else _finite_float(value)
        return out


def _alignment_from_similarity(S: np.ndarray, n_perms: int, seed: int) -> AlignmentZ:
    n = S.shape[0]
    # Computed by the same gather as the permutations, so the identity permutation gives a
    # bit-identical T and counts as ">= matched" in the p-value.
    matched = float(_perm_stats(S, np.arange(n)[None, :])[0])
    scrambled = _perm_stats(S, seed_permutations(n, n_perms, seed))
    mean, std = float(scrambled.mean()), float(scrambled.std())
    null_mean, null_sd = _exact_null_unchecked(S)
    return AlignmentZ(
        z=_safe_z(matched, mean, std),
        matched=matched,
        scrambled_mean=mean,
        scrambled_std=std,
        n_pairs=n,
        n_perms=n_perms,
        null_mean_exact=null_mean,
        null_sd_exact=null_sd,
        z_exact=_safe_z(matched, null_mean, null_sd),
        p_value=(1 + int(np.sum(scrambled >= matched))) / (n_perms + 1),
    )


def matched_vs_scrambled_z(
    a: Float[np.ndarray, "n_pairs d_model"],
    b: Float[np.ndarray, "n_pairs d_model"],
    n_perms: int = 1000,
    seed: int = 42,
) -> AlignmentZ:
    """How much closer matched pairs are than scrambled ones, as a permutation z.

    Computes ``S`` once and gathers ``T(pi) = mean_i S[i, pi(i)]`` for the permutations of
    :func:`seed_permutations`; equal to the research scripts' loop to float rounding.

    Args:
        a: activations in the first language, ``[n_pairs, d_model]``.
        b: activations in the second language, row-aligned with ``a``.
        n_perms: number of permutations in the Monte Carlo null.
        seed: seed of the fresh ``RandomState`` the permutations come from.

    Returns:
        An :class:`AlignmentZ` with the Monte Carlo z, the exact-null z and the p-value.

    Raises:
        BadInputError: as :func:`similarity`, or if ``n_perms < 1``.

    Pitfall: the permutations are the same on every call with the same ``n`` and seed, so
    repeated calls (layers, models) share one null draw and their errors are correlated;
    ``z_exact`` has no sampling error.
    """
    n_perms = _check_count(n_perms, "n_perms", 1)
    return _alignment_from_similarity(similarity(a, b), n_perms, int(seed))


def _percentile_interval(values: np.ndarray, level: float) -> list[float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [None, None]
    lo, hi = np.percentile(values, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return [_finite_float(lo), _finite_float(hi)]


def _bootstrap_counts(idx: np.ndarray, n: int) -> np.ndarray:
    counts = np.zeros((idx.shape[0], n))
    np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1.0)
    return counts


def _bootstrap_stats(S: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gap and exact z of every resample ``S[idx][:, idx]`` from its counts ``w`` (no n x n copy).

    With ``R = S w / n`` and ``C = S^T w / n`` (row and column means of the resampled matrix by
    original index) and ``g = w^T S w / n^2``, the Hoeffding sum of squares is
    ``w^T (S*S) w - n w.R^2 - n w.C^2 + n^2 g^2``.
    """
    n = S.shape[0]
    sw, stw = w @ S.T, w @ S
    grand = np.einsum("bi,bi->b", w, sw) / n**2
    sum_sq = np.einsum("bi,bi->b", w @ (S * S).T, w)
    rows = np.einsum("bi,bi->b", w, (sw / n) ** 2)
    cols = np.einsum("bi,bi->b", w, (stw / n) ** 2)
    var = np.maximum(sum_sq - n * rows - n * cols + n**2 * grand**2, 0.0) / (n * n * (n - 1))
    matched = w @ np.diagonal(S) / n
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        zs = np.where(sd > 0, (matched - grand) / np.where(sd > 0, sd, 1.0), np.nan)
    return matched - grand, zs


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    # One call for all resamples: drawing row by row from the same generator gives other indices.
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(
    a: Float[np.ndarray, "n_pairs d_model"],
    b: Float[np.ndarray, "n_pairs d_model"],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap intervals over pairs for the alignment gap and the exact-null z.

    Each resample draws ``n`` pair indices with replacement, keeping pairs together (all
    resamples come from one ``default_rng(seed).integers(0, n, size=(n_boot, n))`` call),
    and evaluates, on ``S_b = S[idx][:, idx]``, the gap ``matched - exact null mean`` and
    ``z_exact``. ``S`` is computed once.

    Args:
        a: activations in the first language, ``[n_pairs, d_model]``.
        b: activations in the second language, row-aligned with ``a``.
        n_boot: number of resamples.
        seed: seed of the resampling generator.
        level: coverage of the two-sided interval, in (0, 1).

    Returns:
        ``{"gap": [lo, hi], "z_exact": [lo, hi], "n_boot", "level", "seed"}``; an interval
        end is None only if no resample gave a finite value.

    Raises:
        BadInputError: as :func:`similarity`, or if ``n_boot < 1`` or ``level`` is outside (0, 1).

    Pitfall: the permutation null of a resample treats its ``n`` rows as distinct items, so a
    pair drawn twice contributes its matched similarity to "mismatched" cells too; this raises
    the null mean a little and makes the gap interval slightly conservative.
    """
    n_boot = _check_count(n_boot, "n_boot", 1)
    if not 0.0 < level < 1.0:
        raise BadInputError(f"level must be in (0, 1), got {level!r}")
    return _bootstrap_from_similarity(similarity(a, b), n_boot, int(seed), float(level))


def _bootstrap_from_similarity(S: np.ndarray, n_boot: int, seed: int, level: float) -> dict[str, Any]:
    counts = _bootstrap_counts(_bootstrap_indices(S.shape[0], n_boot, seed), S.shape[0])
    gaps, zs = _bootstrap_stats(S, counts)
    return {
        "gap": _percentile_interval(gaps, level),
        "z_exact": _percentile_interval(zs, level),
        "n_boot": n_boot,
        "level": float(level),
        "seed": int(seed),
    }


def _retrieval_from_similarity(S: np.ndarray) -> dict[str, float | int]:
    n = S.shape[0]
    diag = np.diagonal(S)
    off = S[~np.eye(n, dtype=bool)]
    # Mann-Whitney: AUC = (rank sum of positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg),
    # average ranks giving ties 1/2.
    ranks = rankdata(np.concatenate([diag, off]))
    auc = (ranks[:n].sum() - n * (n + 1) / 2.0) / (n * off.size)
    rows = np.arange(n)
    above = (S > diag[:, None]).sum(axis=1)
    ties = (S == diag[:, None]).sum(axis=1) - 1
    return {
        "auc": float(auc),
        "top1_a_to_b": float(np.mean(np.argmax(S, axis=1) == rows)),
        "top1_b_to_a": float(np.mean(np.argmax(S, axis=0) == rows)),
        "mean_rank_a_to_b": float(np.mean(1.0 + above + 0.5 * ties)),
        "n_pairs": int(n),
    }


def retrieval_auc(
    a: Float[np.ndarray, "n_pairs d_model"], b: Float[np.ndarray, "n_pairs d_model"]
) -> dict[str, float | int]:
    """How well similarity retrieves the translation of each item.

    Args:
        a: activations in the first language, ``[n_pairs, d_model]``.
        b: activations in the second language, row-aligned with ``a``.

    Returns:
        ``auc``: probability that a matched pair's similarity (diag S) exceeds a mismatched
        one's (all off-diagonal S), ties 1/2; ``top1_a_to_b``: fraction of rows ``i`` with
        ``argmax_j S[i, j] == i``; ``top1_b_to_a``: the same down columns;
        ``mean_rank_a_to_b``: mean rank of the match within its row (1 = best, ties averaged);
        ``n_pairs``.

    Raises:
        BadInputError: as :func:`similarity`.

    Pitfall: on ties ``argmax`` takes the first index, so top-1 counts a tied match as a hit
    only when no tied column comes before it, while the AUC and mean rank split ties evenly.
    """
    return _retrieval_from_similarity(similarity(a, b))


def _check_1d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise BadInputError(f"{what} must be 1-D, got shape {x.shape}")
    if x.size == 0:
        raise BadInputError(f"{what} is empty: Cohen's d needs at least one value per group")
    if not np.all(np.isfinite(x)):
        raise BadInputError(f"{what} has non-finite values")
    return x


def cohens_d(x: Float[np.ndarray, " n_x"], y: Float[np.ndarray, " n_y"]) -> float:
    """Cohen's d as the seeds define it: ``(mean(x) - mean(y)) / sqrt((var(x) + var(y)) / 2)``.

    Args:
        x: first group, 1-D.
        y: second group, 1-D.

    Returns:
        The standardized mean difference, or nan when the pooled sd is 0.

    Raises:
        BadInputError: if either input is empty, not 1-D, or not finite.

    Pitfall: variances are ``ddof=0`` and the pooling is unweighted by group size, which is
    not the textbook pooled sd when the groups differ in size; kept for comparability.
    """
    x = _check_1d(x, "first group")
    y = _check_1d(y, "second group")
    pooled = math.sqrt((float(np.var(x)) + float(np.var(y))) / 2.0)
    if pooled == 0.0:
        return math.nan
    return (float(np.mean(x)) - float(np.mean(y))) / pooled


def alignment_summary(
    a: Float[np.ndarray, "n_pairs d_model"],
    b: Float[np.ndarray, "n_pairs d_model"],
    n_perms: int = 1000,
    seed: int = 42,
    n_boot: int = 0,
) -> dict[str, Any]:
    """Everything about one pair of activation sets, as a JSON-safe dict.

    Args:
        a: activations in the first language, ``[n_pairs, d_model]``.
        b: activations in the second language, row-aligned with ``a``.
        n_perms: permutations for the Monte Carlo null.
        seed: seed of the permutations (not of the bootstrap).
        n_boot: bootstrap resamples; 0 skips the intervals.

    Returns:
        :meth:`AlignmentZ.as_dict` plus ``"retrieval"`` (:func:`retrieval_auc`) and, when
        ``n_boot > 0``, ``"ci"`` (:func:`bootstrap_ci` with its default seed 0).

    Raises:
        BadInputError: as :func:`matched_vs_scrambled_z` and :func:`bootstrap_ci`.

    Pitfall: the bootstrap seed is fixed at bootstrap_ci's default, independent of ``seed``,
    so changing ``seed`` changes the permutation null but not the resamples.
    """
    n_perms = _check_count(n_perms, "n_perms", 1)
    n_boot = _check_count(n_boot, "n_boot", 0)
    S = similarity(a, b)
    out: dict[str, Any] = _alignment_from_similarity(S, n_perms, int(seed)).as_dict()
    out["retrieval"] = _retrieval_from_similarity(S)
    if n_boot > 0:
        out["ci"] = _bootstrap_from_similarity(S, n_boot, seed=0, level=0.95)
    return out


@dataclass(frozen=True)
class LanguageSubspace:
    """Directions along which the same problem moves when only its language changes.

    Attributes:
        axes: ``[d_model, k]`` orthonormal columns, the top-k right singular vectors of the
            problem-centred activations (sign fixed: the largest-magnitude entry of each is positive).
        singular_values: every singular value of the centred data, descending (the scree).
        variance_explained: fraction of the centred data's squared norm on the k axes.
        scree: each singular value's fraction of the squared norm (sums to 1).
        rank: numerical rank of the centred data (at most ``n_problems × (n_langs − 1)``).
    """

    axes: Float[np.ndarray, "d_model k"]
    singular_values: Float[np.ndarray, " r"]
    variance_explained: float
    scree: Float[np.ndarray, " r"]
    rank: int

    @property
    def k(self) -> int:
        """Number of axes kept."""
        return self.axes.shape[1]


def problem_centred(acts: Float[np.ndarray, "n_problems n_langs d"]) -> Float[np.ndarray, "n_deviations d"]:
    """Each problem's activations minus that problem's mean over languages, stacked ``[n·L, d]``."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 3:
        raise BadInputError(f"expected activations [n_problems, n_langs, d_model], got shape {acts.shape}")
    if acts.shape[1] < 2:
        raise BadInputError(f"a language subspace needs at least two languages, got {acts.shape[1]}")
    if not np.isfinite(acts).all():
        raise BadInputError("activations contain NaN or infinite values")
    return (acts - acts.mean(axis=1, keepdims=True)).reshape(-1, acts.shape[-1])


def language_subspace(
    acts: Float[np.ndarray, "n_problems n_langs d"], k: int | None = 10, min_variance: float | None = None
) -> LanguageSubspace:
    """Top-k language axes: centre each problem across languages, SVD, keep the leading directions.

    Args:
        acts: one activation per problem and language (e.g. last-token ``hook_resid_post``).
        k: axes to keep (default 10, as the research script); ignored when ``min_variance``
            is given.
        min_variance: the rule alternative to k: the smallest k whose axes explain at least
            this fraction of the centred data's squared norm.

    Raises:
        BadInputError: k < 1, k ≥ d_model, k above the data's rank, min_variance outside (0, 1],
            fewer than two languages, or non-finite activations.

    Pitfall: the axes live in the residual basis of the activations (raw, or centred for a
    LayerNorm model with ``center_writing_weights``); see :mod:`interp_tl.surgery`.
    """
    dev = problem_centred(acts)
    d = dev.shape[1]
    _, s, vt = np.linalg.svd(dev, full_matrices=False)
    total = float((s**2).sum())
    if total == 0:
        raise BadInputError("the activations do not vary across languages: no language subspace")
    rank = int((s > s[0] * max(dev.shape) * np.finfo(np.float64).eps).sum())
    scree = s**2 / total
    if min_variance is not None:
        if not 0 < min_variance <= 1:
            raise BadInputError(f"min_variance must be in (0, 1], got {min_variance}")
        k = int(np.searchsorted(np.cumsum(scree), min_variance - 1e-12) + 1)
    if k is None or k < 1:
        raise BadInputError(f"k must be at least 1, got {k}")
    if k >= d:
        raise BadInputError(f"k = {k} must be below d_model = {d}")
    if k > rank:
        raise BadInputError(f"k = {k} is above the rank {rank} of the problem-centred activations")
    axes = vt[:k].T.copy()
    flip = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
    axes *= flip
    return LanguageSubspace(axes, s, float(scree[:k].sum()), scree, rank)
