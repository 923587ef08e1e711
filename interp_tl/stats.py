"""Statistics on paired activations: matched-vs-scrambled alignment, its exact null, CIs, retrieval.

Every statistic starts from the cosine-similarity matrix ``S = unit(a) @ unit(b).T`` of ``n``
translation pairs (row ``i`` of ``a`` and row ``i`` of ``b`` are the same item in two languages).
The test statistic is ``T(pi) = mean_i S[i, pi(i)]``: the identity gives the matched similarity,
random permutations give the scrambled null.

The Monte Carlo z reproduces the research scripts exactly: every call draws its permutations from
a fresh ``RandomState(seed)``, so all calls with the same ``n`` use the same permutations. The
exact null (Hoeffding's combinatorial CLT moments) needs no sampling and is reported beside it,
with two deterministic p-values from those moments.

The gap ``matched - null mean`` gets a studentized bootstrap interval over pairs whose resamples
use only cells with two different drawn pairs (:func:`gap_interval`); its coverage is measured by
simulation in ``bench/coverage.py`` and documented in ``docs/statistics.md``.
:func:`studentized_bootstrap` is the same interval for any statistic of paired rows.

A similarity matrix whose doubly centred part is rounding noise (:data:`SPREAD_RTOL`) carries no
pairing information: every statistic derived from it is NaN (None in the JSON-ready dicts) with
the reason in ``degenerate``.

:func:`language_subspace` is the other multi-language statistic: the directions along which the
same problem's activation moves when only its language changes (problem-centred SVD).

Paired binary outcomes (a problem solved before and after an edit, per language):
:func:`mcnemar` per stratum, :func:`stratified_mcnemar` pooled over strata (exact conditional),
:func:`item_sign_flip` for items that recur in every stratum, :func:`paired_binary_tests` all three.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from jaxtyping import Float, Int
from scipy.special import ndtr
from scipy.stats import binomtest

from interp_tl.errors import BadInputError

# Elements of S gathered per chunk of permutations: 4M float64 (32 MB) keeps memory bounded for
# large n_perms * n while leaving each chunk large enough that the Python overhead is negligible.
_GATHER_BUDGET = 1 << 22

#: "No spread": a spread (rms of the doubly centred similarity matrix, a pooled sd, a jackknife
#: se) at or below this fraction of the data's own scale is float64 rounding, not signal.
#: Measured (docs/statistics.md): float64 cosines are within 4.8e-16 of a long-double reference
#: up to d = 4096 and one-vector-per-language inputs leave rms(D) <= 1.2e-15 max|S| (~800x below);
#: the tightest real spread we know of (|c| = 57, e = 0.001) is 1.4e-9 (~1400x above).
SPREAD_RTOL = 1e-12

# Rows whose norm over- or underflows float64 are scaled by a power of two first (exact).
_NORM_TINY = 1e-150

# Largest seed numpy's RandomState accepts, plus one.
_SEED_LIMIT = 2**32


#: What the two z's of every study mean, for the JSON (``z_statistics``). One convention: every
#: Monte Carlo sd is ``ddof=0`` (the research scripts' ``np.std``), the exact null is the
#: population over all ``n!`` pairings, so both estimate the same quantity.
Z_STATISTICS = {
    "z_exact": ("exact permutation-null z: (observed - exact null mean) / exact null sd over all n! pairings "
                "(Hoeffding); deterministic, no sampling error, unchanged when the two languages are swapped. "
                "Headlines, deltas and rankings use it (keys with z_exact / _exact)."),
    "z": ("Monte Carlo permutation z, the research scripts' statistic: (observed - mean) / sd (ddof=0) over "
          "n_perms random pairings of RandomState(perm_seed); kept under the research scripts' keys for "
          "comparison, it carries sampling error and depends on which language is permuted."),
}


def _finite_float(value: float) -> float | None:
    """A plain float, or None for nan/inf so that ``json.dumps(..., allow_nan=False)`` works."""
    value = float(value)
    return value if math.isfinite(value) else None


def _pow2_exponent(peak: float) -> int:
    """0 for magnitudes whose squares are safe; else ``e`` with ``peak / 2**e`` in [0.5, 1)."""
    if peak == 0.0 or 1.0 / _NORM_TINY > peak > _NORM_TINY:
        return 0
    return int(np.frexp(peak)[1])


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
    Rows whose squared norm would over- or underflow (entries beyond ~1e154 or below ~1e-154)
    are first scaled by a power of two, which is exact; all other rows are divided by their
    plain norm, bit for bit as before.
    """
    x = _check_2d(x, "input")
    peak = np.max(np.abs(x), axis=1) if x.shape[1] else np.zeros(x.shape[0])
    zero = np.flatnonzero(peak == 0)
    if zero.size:
        raise BadInputError(
            f"row {int(zero[0])} has zero norm: a zero activation cannot be unit-normalized"
        )
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    risky = ~np.isfinite(norms[:, 0]) | (norms[:, 0] < _NORM_TINY)
    if not risky.any():
        return x / norms
    out = x / np.where(risky[:, None], 1.0, norms)
    # frexp gives peak = m * 2**e with 0.5 <= m < 1: dividing by 2**e is exact and puts the
    # largest entry in [0.5, 1), so the squares neither overflow nor lose the row to underflow.
    _, exponent = np.frexp(peak[risky])
    scaled = np.ldexp(x[risky], -exponent[:, None])
    out[risky] = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    return out


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


def _check_seed(seed: int | np.integer, name: str = "seed") -> int:
    # Before numpy sees it: numpy raises its own error for a negative seed and a float seed would
    # be truncated by int() without a word.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < _SEED_LIMIT:
        raise BadInputError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


@functools.lru_cache(maxsize=16)
def _cached_permutations(n: int, n_perms: int, seed: int | np.integer) -> np.ndarray:
    rng = np.random.RandomState(seed)
    perms = np.empty((n_perms, n), dtype=np.intp)
    # Drawn one by one, in order, because that is what reproduces the seeds' RandomState stream.
    for k in range(n_perms):
        perms[k] = rng.permutation(n)
    perms.setflags(write=False)
    return perms


def seed_permutations(n: int, n_perms: int, seed: int | np.integer = 42) -> Int[np.ndarray, "n_perms n"]:
    """The permutations the research scripts drew: ``RandomState(seed).permutation(n)``, n_perms times.

    Args:
        n: number of items permuted.
        n_perms: number of permutations.
        seed: seed of the fresh ``np.random.RandomState``.

    Returns:
        An ``[n_perms, n]`` integer array, row ``k`` the ``k``-th permutation drawn.

    Raises:
        BadInputError: if ``n`` or ``n_perms`` is not an integer >= 1, or ``seed`` is not an
            integer in ``[0, 2**32)`` (bools and floats are refused, not truncated).

    Pitfall: the array is cached and shared between callers, so it is read-only; copy it
    before modifying.
    """
    n = _check_count(n, "n", 1)
    n_perms = _check_count(n_perms, "n_perms", 1)
    return _cached_permutations(n, n_perms, _check_seed(seed))


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
    exponent = _pow2_exponent(float(np.max(np.abs(S))))
    if exponent:
        # Squares of entries beyond ~1e+-154 over/underflow: work on S / 2**e (exact) and scale back.
        mean, sd = _exact_null_unchecked(np.ldexp(S, -exponent))
        return math.ldexp(mean, exponent), math.ldexp(sd, exponent)
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
    return _exact_null_unchecked(_check_square(S))


def _safe_z(value: float, mean: float, sd: float) -> float:
    # A degenerate null (constant S, or n_perms == 1) has no spread: report nan, not an error.
    if not sd > 0:
        return math.nan
    return float((value - mean) / sd)


def no_spread_reason(spread: float, scale: float, what: str) -> str | None:
    """Why ``spread`` counts as no spread at all relative to ``scale``; None when it has some.

    The module's one rule: ``spread <= SPREAD_RTOL * scale`` (NaN included) is float64 rounding,
    not data, and every statistic divided by that spread is reported as NaN / None.

    Args:
        spread: a non-negative spread (an sd, an rms, a singular value).
        scale: the magnitude of the numbers the spread comes from (e.g. their largest ``|value|``).
        what: the thing that has no spread, for the message.

    Returns:
        A one-line reason meant for the JSON, or None.

    Pitfall: the scale must be the magnitude of the stored numbers, not of their spread: a large
    shared offset makes the same absolute spread "no spread", because float64 cannot hold it.
    """
    if spread > SPREAD_RTOL * scale:
        return None
    return f"{what} has no spread: {spread:.3g} <= {SPREAD_RTOL:g} x its scale {scale:.3g} (float64 rounding)"


def _similarity_reason(S: np.ndarray, null_sd: float) -> str | None:
    # Every pairing statistic sees S only through D = S - row - col + grand (plus the grand mean),
    # and rms(D) = null_sd * sqrt(n - 1) (see _exact_null_unchecked).
    rms = null_sd * math.sqrt(S.shape[0] - 1)
    return no_spread_reason(rms, float(np.max(np.abs(S))), "the similarity matrix minus its row and column means")


def _check_square(S: np.ndarray, minimum: int = 2) -> np.ndarray:
    S = _check_2d(S, "similarity matrix")
    if S.shape[0] != S.shape[1] or S.shape[0] < minimum:
        raise BadInputError(f"similarity matrix must be square with n >= {minimum}, got shape {S.shape}")
    return S


def similarity_spread_reason(S: Float[np.ndarray, "n n"]) -> str | None:
    """Why ``S`` carries no pairing information (None when it does).

    ``T(pi) = mean_i S[i, pi(i)]`` differs between pairings only through the doubly centred
    ``D = S - row means - column means + grand mean``; when the rms of ``D`` is at most
    :data:`SPREAD_RTOL` times ``max |S|`` the differences are rounding and z, z_exact, the
    p-values, the gap and its interval, and retrieval are all NaN / None with this reason.

    Args:
        S: a square ``[n, n]`` similarity matrix, ``n >= 2``.

    Returns:
        A one-line reason, or None.

    Raises:
        BadInputError: as :func:`exact_null`.

    Pitfall: one language's rows all equal (e.g. every prompt ends in the same token) is enough:
    ``S[i, j]`` then depends on ``j`` only, and ``D`` is zero.
    """
    S = _check_square(S)
    return _similarity_reason(S, _exact_null_unchecked(S)[1])


def _exact_p_values(z_exact: float) -> tuple[float, float]:
    if math.isnan(z_exact):
        return math.nan, math.nan
    # Cantelli: P(T - mu >= z sigma) <= 1 / (1 + z^2) for any distribution with these moments.
    return float(ndtr(-z_exact)), (1.0 / (1.0 + z_exact * z_exact) if z_exact > 0 else 1.0)


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
        gap: ``matched - null_mean_exact`` (= ``(1 - 1/n)`` x (matched - mean off-diagonal S)).
        p_normal: ``P(N(0, 1) >= z_exact)``, the exact-null p by Hoeffding's combinatorial CLT
            (deterministic; an approximation, poor far in the tail).
        p_bound: ``1 / (1 + z_exact^2)`` (1 when ``z_exact <= 0``), Cantelli's bound: a
            guaranteed upper bound on the exact permutation p over all ``n!`` pairings.
        degenerate: why the pairings cannot be told apart (then z, z_exact, p_value, gap,
            p_normal and p_bound are NaN); None normally.
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
    gap: float
    p_normal: float
    p_bound: float
    degenerate: str | None

    def as_dict(self) -> dict[str, float | int | str | None]:
        """The fields as plain ints, floats and strings, with nan/inf as None (JSON-safe)."""
        out: dict[str, float | int | str | None] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None or isinstance(value, str):
                out[field.name] = value
            else:
                out[field.name] = int(value) if isinstance(value, (int, np.integer)) else _finite_float(value)
        return out


def _alignment_from_similarity(S: np.ndarray, n_perms: int, seed: int | np.integer) -> AlignmentZ:
    n = S.shape[0]
    # Computed by the same gather as the permutations, so the identity permutation gives a
    # bit-identical T and counts as ">= matched" in the p-value.
    matched = float(_perm_stats(S, np.arange(n)[None, :])[0])
    scrambled = _perm_stats(S, seed_permutations(n, n_perms, seed))
    mean, std = float(scrambled.mean()), float(scrambled.std())
    null_mean, null_sd = _exact_null_unchecked(S)
    reason = _similarity_reason(S, null_sd)
    if reason is None:
        z, z_exact = _safe_z(matched, mean, std), _safe_z(matched, null_mean, null_sd)
        p_value, gap = (1 + int(np.sum(scrambled >= matched))) / (n_perms + 1), matched - null_mean
    else:
        z = z_exact = p_value = gap = math.nan
    p_normal, p_bound = _exact_p_values(z_exact)
    return AlignmentZ(
        z=z,
        matched=matched,
        scrambled_mean=mean,
        scrambled_std=std,
        n_pairs=n,
        n_perms=n_perms,
        null_mean_exact=null_mean,
        null_sd_exact=null_sd,
        z_exact=z_exact,
        p_value=p_value,
        gap=gap,
        p_normal=p_normal,
        p_bound=p_bound,
        degenerate=reason,
    )


def matched_vs_scrambled_z(
    a: Float[np.ndarray, "n_pairs d_model"],
    b: Float[np.ndarray, "n_pairs d_model"],
    n_perms: int = 1000,
    seed: int | np.integer = 42,
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
        An :class:`AlignmentZ` with the Monte Carlo z, the exact-null z, the p-values and the
        gap; all NaN with a reason in ``degenerate`` when ``S`` has no spread
        (:func:`similarity_spread_reason`).

    Raises:
        BadInputError: as :func:`similarity`, if ``n_perms < 1``, or ``seed`` is not an integer
            in ``[0, 2**32)``.

    Pitfall: the permutations are the same on every call with the same ``n`` and seed, so
    repeated calls (layers, models) share one null draw and their errors are correlated;
    ``z_exact`` has no sampling error.
    """
    n_perms = _check_count(n_perms, "n_perms", 1)
    return _alignment_from_similarity(similarity(a, b), n_perms, _check_seed(seed))


@dataclass(frozen=True)
class BootstrapInterval:
    """A bootstrap confidence interval and what produced it.

    Attributes:
        estimate: the statistic on the sample.
        lo: lower end (NaN when ``reason`` is set).
        hi: upper end (NaN when ``reason`` is set).
        se: jackknife standard error of the statistic on the sample.
        level: nominal two-sided coverage.
        n_boot: resamples drawn.
        n_used: resamples whose studentized value was finite (the quantiles come from these).
        seed: seed of the resampling generator (:func:`resample_indices`).
        method: how the interval was made.
        reason: why there is no interval; None when there is one.
    """

    estimate: float
    lo: float
    hi: float
    se: float
    level: float
    n_boot: int
    n_used: int
    seed: int | np.integer
    method: str
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        """``estimate``, ``interval`` ``[lo, hi]``, ``se`` and the settings; NaN as None (JSON-safe)."""
        return {
            "estimate": _finite_float(self.estimate),
            "interval": [_finite_float(self.lo), _finite_float(self.hi)],
            "se": _finite_float(self.se),
            "level": float(self.level),
            "n_boot": int(self.n_boot),
            "n_used": int(self.n_used),
            "seed": int(self.seed),
            "method": self.method,
            "reason": self.reason,
        }


#: :attr:`BootstrapInterval.method` of :func:`studentized_bootstrap`.
STUDENTIZED = "studentized bootstrap over pairs, jackknife se"
#: :attr:`BootstrapInterval.method` of :func:`gap_interval` (the gap's resamples skip same-pair cells).
GAP_METHOD = STUDENTIZED + ", cells of two different drawn pairs"


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < level < 1.0:
        raise BadInputError(f"level must be in (0, 1), got {level!r}")
    return float(level)


def resample_indices(n: int, n_boot: int, seed: int | np.integer = 0) -> Int[np.ndarray, "n_boot n"]:
    """Row indices of every bootstrap resample, pairs kept together.

    Args:
        n: rows (pairs) in the sample.
        n_boot: resamples.
        seed: seed of ``np.random.default_rng``.

    Returns:
        ``default_rng(seed).integers(0, n, size=(n_boot, n))``: one call for all resamples
        (drawing row by row from the same generator gives other indices).

    Raises:
        BadInputError: if ``n`` or ``n_boot`` is not an integer >= 1, or the seed is invalid.

    Pitfall: analyses that should share resamples (e.g. the shares of one gap) must use the same
    seed and ``n``; a different ``n_boot`` changes every resample, not just their number.
    """
    n = _check_count(n, "n", 1)
    n_boot = _check_count(n_boot, "n_boot", 1)
    return np.random.default_rng(_check_seed(seed)).integers(0, n, size=(n_boot, n))


def studentized_interval(
    estimate: float,
    se: float,
    boot_estimates: Float[np.ndarray, " n_boot"],
    boot_ses: Float[np.ndarray, " n_boot"],
    level: float = 0.95,
) -> tuple[float, float, int]:
    """Bootstrap-t interval from its ingredients.

    With ``t_b = (boot_estimates[b] - estimate) / boot_ses[b]`` over the resamples where it is
    finite, the interval is ``[estimate - q(1 - alpha/2) se, estimate - q(alpha/2) se]`` with
    ``q`` the empirical quantiles of ``t`` (``np.percentile``, linear) and ``alpha = 1 - level``.

    Args:
        estimate: the statistic on the sample.
        se: its standard error on the sample (same estimator as ``boot_ses``).
        boot_estimates: the statistic on each resample.
        boot_ses: its standard error on each resample.
        level: nominal two-sided coverage, in (0, 1).

    Returns:
        ``(lo, hi, n_used)``; ``lo`` and ``hi`` are NaN when ``se`` is not positive or no
        ``t_b`` is finite.

    Raises:
        BadInputError: if ``level`` is outside (0, 1).

    Pitfall: a common factor in the se estimator cancels (e.g. the jackknife's upward bias for
    U-statistics); an se that is biased differently on resamples than on the sample does not.
    """
    level = _check_level(level)
    boot = np.asarray(boot_estimates, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (boot - estimate) / np.asarray(boot_ses, dtype=np.float64)
    t = t[np.isfinite(t)]
    if t.size == 0 or not (se > 0 and math.isfinite(se)):
        return math.nan, math.nan, int(t.size)
    q_lo, q_hi = np.percentile(t, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(estimate - q_hi * se), float(estimate - q_lo * se), int(t.size)


def jackknife_se(leave_one_out: Float[np.ndarray, " n"]) -> float:
    """Jackknife standard error ``sqrt((n - 1) / n * sum_i (theta_(i) - mean)^2)``.

    Args:
        leave_one_out: the statistic with each of the ``n`` rows left out in turn.

    Returns:
        The standard error (NaN if a value is not finite or ``n < 2``).

    Pitfall: centred before squaring, so a large common offset costs no precision.
    """
    values = np.asarray(leave_one_out, dtype=np.float64)
    if values.ndim != 1 or values.size < 2 or not np.all(np.isfinite(values)):
        return math.nan
    n = values.size
    return math.sqrt((n - 1) / n * float(np.sum((values - values.mean()) ** 2)))


def jackknifed(estimator: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], tuple[float, float]]:
    """Turn ``estimator(rows) -> value`` into ``statistic(rows) -> (value, jackknife se)``.

    The se leaves out each position of ``rows`` in turn (a row drawn twice is left out twice),
    so it costs ``len(rows) + 1`` calls; pass the result to :func:`studentized_bootstrap`.
    """

    def statistic(rows: np.ndarray) -> tuple[float, float]:
        rows = np.asarray(rows)
        keep = ~np.eye(rows.size, dtype=bool)
        loo = np.array([estimator(rows[mask]) for mask in keep])
        return float(estimator(rows)), jackknife_se(loo)

    return statistic


def _interval_reason(se: float, n_used: int, n_boot: int, what: str, scale: float = 0.0) -> str | None:
    what_se = f"the jackknife standard error of the {what}"
    if not math.isfinite(se):
        return f"{what_se} is {se:.3g}"
    reason = no_spread_reason(se, scale, what_se)
    if reason is not None:
        return reason
    if 2 * n_used < n_boot:
        return f"only {n_used} of {n_boot} resamples gave a defined studentized {what} (too few distinct pairs)"
    return None


def studentized_bootstrap(
    statistic: Callable[[np.ndarray], tuple[float, float]],
    n: int,
    n_boot: int = 1000,
    seed: int | np.integer = 0,
    level: float = 0.95,
) -> BootstrapInterval:
    """Studentized (bootstrap-t) interval over rows for any statistic of paired rows.

    Args:
        statistic: ``statistic(rows) -> (estimate, se)`` on the sample's rows ``rows`` (an
            integer array of length ``n``, drawn with replacement); :func:`jackknifed` makes one
            from a plain estimator.
        n: rows in the sample; the sample itself is ``statistic(np.arange(n))``.
        n_boot: resamples (:func:`resample_indices`).
        seed: seed of the resamples.
        level: nominal two-sided coverage, in (0, 1).

    Returns:
        A :class:`BootstrapInterval` (method :data:`STUDENTIZED`); no interval (NaN ends, a
        reason) when the sample's se is not positive or fewer than half the resamples gave a
        finite studentized value.

    Raises:
        BadInputError: on an invalid ``n``, ``n_boot``, ``seed`` or ``level``.

    Pitfall: the statistic must treat a row drawn twice as two observations of one unit; a
    statistic over pairs of rows should skip the pairs of a row with its own copy, as
    :func:`gap_interval` does, or the resamples are biased. Coverage is only measured for the gap.
    """
    level = _check_level(level)
    idx = resample_indices(n, n_boot, seed)
    estimate, se = (float(v) for v in statistic(np.arange(idx.shape[1])))
    boot = np.array([statistic(rows) for rows in idx], dtype=np.float64).reshape(idx.shape[0], 2)
    lo, hi, used = studentized_interval(estimate, se, boot[:, 0], boot[:, 1], level)
    reason = _interval_reason(se, used, idx.shape[0], "statistic")
    if reason is not None:
        lo = hi = math.nan
    return BootstrapInterval(estimate, lo, hi, se, level, idx.shape[0], used, int(seed), STUDENTIZED, reason)


#: :attr:`BootstrapInterval.method` of :func:`mean_intervals`.
MEAN_METHOD = STUDENTIZED + " (of a mean over units: the jackknife se is sd / sqrt(n))"


def mean_intervals(
    values: Float[np.ndarray, "n k"], n_boot: int = 1000, seed: int | np.integer = 0, level: float = 0.95
) -> list[BootstrapInterval]:
    """Studentized bootstrap interval of the mean of every column, all on the same resamples of the rows.

    Rows are the units resampled (e.g. problems); each column is one statistic's per-unit value
    (e.g. a probability per problem at one layer). The interval is the one of
    :func:`studentized_bootstrap` with ``jackknifed(np.mean)`` (tested equal to 1e-10), computed
    for all columns at once: with counts ``w`` of each resample and ``c = x - mean(x)``, the
    resample's mean is ``mean(x) + w·c / n`` and its jackknife se ``sd(ddof=1) / sqrt(n)`` (the
    jackknife se of a mean in closed form) from ``w·c`` and ``w·c²``. Coverage on data shaped
    like the lens study's probabilities is measured in ``bench/coverage_mean.py``
    (``docs/statistics.md``).

    Args:
        values: ``[n units, k statistics]``, finite.
        n_boot: resamples (:func:`resample_indices`; the same ``n``, ``n_boot`` and ``seed`` give
            the same resamples as every other interval of the module).
        seed: seed of the resamples.
        level: nominal two-sided coverage, in (0, 1).

    Returns:
        One :class:`BootstrapInterval` per column (method :data:`MEAN_METHOD`); no interval (NaN
        ends, a reason) for a column without spread (e.g. every value equal) or with fewer than
        two rows.

    Raises:
        BadInputError: ``values`` not 2-D or not finite; invalid ``n_boot``, ``seed`` or ``level``.
    """
    x = _check_2d(values, "values")
    level = _check_level(level)
    n, k = x.shape
    idx = resample_indices(n, n_boot, seed)
    centre = x.mean(axis=0)
    c = x - centre  # centred before squaring: a shared offset costs no precision
    with np.errstate(divide="ignore", invalid="ignore"):
        se = c.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full(k, math.nan)
        boot_means, boot_ses = np.empty((idx.shape[0], k)), np.empty((idx.shape[0], k))
        chunk = max(1, _GATHER_BUDGET // max(1, n))
        for start in range(0, idx.shape[0], chunk):
            w = _resample_counts(idx[start:start + chunk], n)
            shift = w @ c / n
            var = np.maximum(w @ (c * c) / n - shift**2, 0.0) * (n / (n - 1) if n > 1 else math.nan)
            boot_means[start:start + chunk] = centre + shift
            boot_ses[start:start + chunk] = np.sqrt(var / n)
    out = []
    for j in range(k):
        lo, hi, used = studentized_interval(float(centre[j]), float(se[j]), boot_means[:, j], boot_ses[:, j], level)
        reason = _interval_reason(float(se[j]), used, idx.shape[0], "mean", float(np.max(np.abs(x[:, j]))))
        if reason is not None:
            lo = hi = math.nan
        out.append(BootstrapInterval(float(centre[j]), lo, hi, float(se[j]), level, idx.shape[0], used, int(seed),
                                     MEAN_METHOD, reason))
    return out


def _resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    flat = (idx + n * np.arange(idx.shape[0])[:, None]).ravel()
    return np.bincount(flat, minlength=idx.shape[0] * n).reshape(idx.shape[0], n).astype(np.float64)


def _distinct_cell_gaps(C: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per resample (counts ``w``): ``delta`` and its jackknife variance over the resample's draws.

    ``delta = mean of drawn diagonal cells - mean of cells (k, l) whose drawn pairs differ``;
    on the sample (``w = 1``) it equals ``gap / (1 - 1/n)``. Leaving out one draw of pair ``i``
    changes ``w_i`` by one, so every leave-one-out value is O(1) from ``C w`` and ``C^T w``.
    """
    n = C.shape[0]
    dg = np.diagonal(C)
    cw, ctw = w @ C.T, w @ C
    total = np.einsum("bi,bi->b", w, cw)  # sum over all drawn cells, w^T C w
    w2 = w * w
    same, n_same = w2 @ dg, w2.sum(axis=1)  # cells whose two draws are the same pair
    diag = w @ dg
    m = n - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = diag / n - (total - same) / (n * n - n_same)
        loo_cells = (total[:, None] - cw - ctw + dg) - (same[:, None] - (2.0 * w - 1.0) * dg)
        loo_count = m * m - (n_same[:, None] - 2.0 * w + 1.0)
        loo = np.where(w > 0, (diag[:, None] - dg) / m - loo_cells / loo_count, 0.0)
        mean = np.sum(w * loo, axis=1) / n
        var = (n - 1) / n * np.sum(w * (loo - mean[:, None]) ** 2, axis=1)
    return delta, np.where(np.isfinite(var), var, np.nan)


def _gap_bootstrap(C: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = C.shape[0]
    # About ten [chunk, n] arrays are alive at once; keep them near _GATHER_BUDGET elements in all.
    chunk = max(1, _GATHER_BUDGET // (8 * n))
    delta, var = np.empty(idx.shape[0]), np.empty(idx.shape[0])
    for start in range(0, idx.shape[0], chunk):
        part = slice(start, start + chunk)
        delta[part], var[part] = _distinct_cell_gaps(C, _resample_counts(idx[part], n))
    return delta, var


def _gap_interval_unchecked(S: np.ndarray, n_boot: int, seed: int | np.integer, level: float,
                            null_sd: float | None = None) -> BootstrapInterval:
    """:func:`gap_interval` of checked arguments; ``null_sd``: S's exact-null sd where the caller has it."""
    n = S.shape[0]
    reason = _similarity_reason(S, _exact_null_unchecked(S)[1] if null_sd is None else null_sd)
    if reason is not None:
        return BootstrapInterval(math.nan, math.nan, math.nan, math.nan, level, n_boot, 0, seed, GAP_METHOD, reason)
    # The gap and its resamples do not change when a constant is added to S; removing the grand
    # mean first keeps bunched cosines (all near 1) from cancelling in the sums.
    C = S - S.mean()
    (delta,), (var,) = _distinct_cell_gaps(C, np.ones((1, n)))
    se = math.sqrt(var) if var >= 0 else math.nan
    boot, boot_var = _gap_bootstrap(C, resample_indices(n, n_boot, seed))
    lo, hi, used = studentized_interval(delta, se, boot, np.sqrt(boot_var), level)
    reason = _interval_reason(se, used, n_boot, "gap", float(np.max(np.abs(S))))
    if reason is not None:
        lo = hi = math.nan
    factor = 1.0 - 1.0 / n  # gap = (1 - 1/n) delta
    return BootstrapInterval(float(factor * delta), factor * lo, factor * hi, factor * se, level, n_boot, used, seed,
                             GAP_METHOD, reason)


def gap_interval(
    S: Float[np.ndarray, "n n"], n_boot: int = 1000, seed: int | np.integer = 0, level: float = 0.95
) -> BootstrapInterval:
    """Confidence interval for the gap ``mean diag S - mean S`` of any square pair matrix.

    The gap is ``(1 - 1/n) (mean_i S_ii - mean_{i != j} S_ij)``; the interval targets its
    expectation ``(1 - 1/n) (E S_ii - E S_ij)`` over draws of ``n`` pairs. Each resample draws
    ``n`` pairs with replacement (:func:`resample_indices`) and recomputes the gap from the
    drawn diagonal cells and only those off-diagonal cells whose two drawn pairs differ (a pair
    drawn twice would otherwise put ``S_ii`` among the mismatched cells and pull every resample
    down). The interval is studentized (:func:`studentized_interval`) with the jackknife se of
    each resample, computed in closed form. Coverage at 95% nominal is measured in
    ``bench/coverage.py`` (93-97.5% on the grid of ``docs/statistics.md``).

    Args:
        S: ``[n, n]`` matrix, ``S[i, j]`` between pair ``i``'s first and pair ``j``'s second
            item (cosines for the alignment; a writer's share matrix works the same), ``n >= 3``.
        n_boot: resamples.
        seed: seed of the resamples.
        level: nominal two-sided coverage, in (0, 1).

    Returns:
        A :class:`BootstrapInterval` of the gap (method :data:`GAP_METHOD`); no interval (NaN,
        with a reason) when ``S`` has no spread (:func:`similarity_spread_reason`), the jackknife
        se is 0, or fewer than half the resamples are usable (``n`` of 3 or 4).

    Raises:
        BadInputError: if ``S`` is not square with ``n >= 3`` or not finite, or on an invalid
            ``n_boot``, ``seed`` or ``level``.

    Pitfall: the interval is for the gap, which is (nearly) free of ``n``; z grows like
    sqrt(n) at a fixed gap, so there is no z interval: test with ``p_bound`` / ``p_normal``.
    """
    S = _check_square(S, minimum=3)
    n_boot = _check_count(n_boot, "n_boot", 1)
    return _gap_interval_unchecked(S, n_boot, _check_seed(seed), _check_level(level))


def _ci_dict(interval: BootstrapInterval) -> dict[str, Any]:
    out = interval.as_dict()
    return {
        "gap": out["interval"],
        "gap_estimate": out["estimate"],
        "gap_se": out["se"],
        "method": out["method"],
        "n_boot": out["n_boot"],
        "n_used": out["n_used"],
        "level": out["level"],
        "seed": out["seed"],
        "reason": out["reason"],
    }


def bootstrap_ci(
    a: Float[np.ndarray, "n_pairs d_model"],
    b: Float[np.ndarray, "n_pairs d_model"],
    n_boot: int = 1000,
    seed: int | np.integer = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Bootstrap interval over pairs for the alignment gap ``matched - null_mean_exact``.

    :func:`gap_interval` of ``S = similarity(a, b)``: a studentized bootstrap whose resamples
    use only cells of two different drawn pairs (resamples from one
    ``default_rng(seed).integers(0, n, size=(n_boot, n))`` call, as before).

    Args:
        a: activations in the first language, ``[n_pairs, d_model]``.
        b: activations in the second language, row-aligned with ``a``.
        n_boot: number of resamples.
        seed: seed of the resampling generator.
        level: coverage of the two-sided interval, in (0, 1).

    Returns:
        ``{"gap": [lo, hi], "gap_estimate", "gap_se", "method", "n_boot", "n_used", "level",
        "seed", "reason"}``; ``gap`` is ``[None, None]`` with a ``reason`` when there is no
        interval (see :func:`gap_interval`). There is no z interval any more (the old
        ``"z_exact"`` key): see :func:`gap_interval`.

    Raises:
        BadInputError: as :func:`similarity` and :func:`gap_interval`.

    Pitfall: the interval is for the expected gap at this ``n``, ``(1 - 1/n)`` times the
    expected matched-minus-mismatched cosine; compare gaps of different ``n`` after dividing
    by ``1 - 1/n``.
    """
    n_boot = _check_count(n_boot, "n_boot", 1)
    seed, level = _check_seed(seed), _check_level(level)
    return _ci_dict(_gap_interval_unchecked(similarity(a, b), n_boot, seed, level))


def _retrieval_from_similarity(S: np.ndarray, reason: str | None) -> dict[str, float | int | str | None]:
    n = S.shape[0]
    if reason is not None:
        return {"auc": None, "top1_a_to_b": None, "top1_b_to_a": None, "mean_rank_a_to_b": None,
                "n_pairs": int(n), "degenerate": reason}
    diag = np.diagonal(S)
    off = np.sort(S[~np.eye(n, dtype=bool)])
    # Mann-Whitney: AUC = (rank sum of positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg) with average
    # ranks, i.e. the mismatched pairs below each matched one, ties counting 1/2 (exact counts:
    # one sort and two binary searches instead of ranking all n^2 values; tested equal to the ranks)
    below = np.searchsorted(off, diag, side="left")
    at_or_below = np.searchsorted(off, diag, side="right")
    auc = float(below.sum() + 0.5 * (at_or_below - below).sum()) / (n * off.size)
    rows = np.arange(n)
    above = (S > diag[:, None]).sum(axis=1)
    ties = (S == diag[:, None]).sum(axis=1) - 1
    return {
        "auc": float(auc),
        "top1_a_to_b": float(np.mean(np.argmax(S, axis=1) == rows)),
        "top1_b_to_a": float(np.mean(np.argmax(S, axis=0) == rows)),
        "mean_rank_a_to_b": float(np.mean(1.0 + above + 0.5 * ties)),
        "n_pairs": int(n),
        "degenerate": None,
    }


def retrieval_auc(
    a: Float[np.ndarray, "n_pairs d_model"], b: Float[np.ndarray, "n_pairs d_model"]
) -> dict[str, float | int | str | None]:
    """How well similarity retrieves the translation of each item.

    Args:
        a: activations in the first language, ``[n_pairs, d_model]``.
        b: activations in the second language, row-aligned with ``a``.

    Returns:
        ``auc``: probability that a matched pair's similarity (diag S) exceeds a mismatched
        one's (all off-diagonal S), ties 1/2; ``top1_a_to_b``: fraction of rows ``i`` with
        ``argmax_j S[i, j] == i``; ``top1_b_to_a``: the same down columns;
        ``mean_rank_a_to_b``: mean rank of the match within its row (1 = best, ties averaged);
        ``n_pairs``; ``degenerate``: None, or the reason why the four statistics are None
        (:func:`similarity_spread_reason`: the ranking would be rounding noise).

    Raises:
        BadInputError: as :func:`similarity`.

    Pitfall: on ties ``argmax`` takes the first index, so top-1 counts a tied match as a hit
    only when no tied column comes before it, while the AUC and mean rank split ties evenly.
    """
    S = similarity(a, b)
    return _retrieval_from_similarity(S, _similarity_reason(S, _exact_null_unchecked(S)[1]))


def _check_1d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise BadInputError(f"{what} must be 1-D, got shape {x.shape}")
    if x.size == 0:
        raise BadInputError(f"{what} is empty: Cohen's d needs at least one value per group")
    if not np.all(np.isfinite(x)):
        raise BadInputError(f"{what} has non-finite values")
    return x


def _pow2_rescaled(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    # Dividing every array by one power of two is exact and leaves ratios (Cohen's d, cosines,
    # fractions of variance) bit-identical.
    exponent = _pow2_exponent(max(float(np.max(np.abs(x))) if x.size else 0.0 for x in arrays))
    return tuple(np.ldexp(x, -exponent) for x in arrays) if exponent else arrays


def _cohens_d_and_reason(x: np.ndarray, y: np.ndarray) -> tuple[float, str | None]:
    x, y = _pow2_rescaled(_check_1d(x, "first group"), _check_1d(y, "second group"))
    pooled = math.sqrt((float(np.var(x)) + float(np.var(y))) / 2.0)
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))))
    reason = no_spread_reason(pooled, scale, "the pooled within-group sd")
    if reason is not None:
        return math.nan, reason
    return (float(np.mean(x)) - float(np.mean(y))) / pooled, None


def cohens_d(x: Float[np.ndarray, " n_x"], y: Float[np.ndarray, " n_y"]) -> float:
    """Cohen's d as the seeds define it: ``(mean(x) - mean(y)) / sqrt((var(x) + var(y)) / 2)``.

    Args:
        x: first group, 1-D.
        y: second group, 1-D.

    Returns:
        The standardized mean difference, or nan when the pooled sd has no spread
        (:func:`no_spread_reason` against the largest ``|value|``); :func:`cohens_d_summary`
        says why.

    Raises:
        BadInputError: if either input is empty, not 1-D, or not finite.

    Pitfall: variances are ``ddof=0`` and the pooling is unweighted by group size, which is
    not the textbook pooled sd when the groups differ in size; kept for comparability.
    """
    return _cohens_d_and_reason(x, y)[0]


def cohens_d_summary(x: Float[np.ndarray, " n_x"], y: Float[np.ndarray, " n_y"]) -> dict[str, float | str | None]:
    """:func:`cohens_d` for the JSON: ``{"d": value or None, "reason": None or why there is none}``.

    Raises:
        BadInputError: as :func:`cohens_d`.
    """
    d, reason = _cohens_d_and_reason(x, y)
    return {"d": _finite_float(d), "reason": reason}


def alignment_summary(
    a: Float[np.ndarray, "n_pairs d_model"],
    b: Float[np.ndarray, "n_pairs d_model"],
    n_perms: int = 1000,
    seed: int | np.integer = 42,
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
    seed = _check_seed(seed)
    S = similarity(a, b)
    result = _alignment_from_similarity(S, n_perms, seed)
    out: dict[str, Any] = result.as_dict()
    out["retrieval"] = _retrieval_from_similarity(S, result.degenerate)
    if n_boot > 0:
        out["ci"] = _ci_dict(_gap_interval_unchecked(S, n_boot, 0, 0.95, result.null_sd_exact))
    return out


@dataclass(frozen=True)
class PrincipalComponents:
    """Principal components above the data's numerical rank.

    Attributes:
        components: ``[k, d]`` orthonormal rows (sign as scikit-learn: the largest-magnitude
            entry of each is positive).
        explained_variance_ratio: each kept component's fraction of the total variance.
        singular_values: the kept singular values of the centred data.
        mean: the column means that were removed.
        rank: numerical rank of the centred data; ``k = min(n_components, rank)``.
        n_requested: the number of components asked for.
    """

    components: Float[np.ndarray, "k d"]
    explained_variance_ratio: Float[np.ndarray, " k"]
    singular_values: Float[np.ndarray, " k"]
    mean: Float[np.ndarray, " d"]
    rank: int
    n_requested: int

    @property
    def k(self) -> int:
        """Number of components kept."""
        return self.components.shape[0]

    def transform(self, x: Float[np.ndarray, "m d"]) -> Float[np.ndarray, "m k"]:
        """Scores of ``x`` on the kept components (after removing :attr:`mean`)."""
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T


def principal_components(x: Float[np.ndarray, "n d"], n_components: int) -> PrincipalComponents:
    """PCA (centred SVD) that lists only components above numerical rank.

    A component counts when its singular value exceeds ``max(n, d) * eps * ||x||_F`` (the
    uncentred data's Frobenius norm: centring leaves rounding of that size, so a relative-to-
    the-largest rule would keep noise when every row is nearly the same). Kept components equal
    ``sklearn.decomposition.PCA(svd_solver="full")``'s, ratios over the total variance as there.

    Args:
        x: ``[n, d]`` data, one observation per row.
        n_components: components asked for, ``>= 1``.

    Returns:
        :class:`PrincipalComponents` with ``k = min(n_components, rank)`` components (``k`` may
        be 0: then Cohen's d and z on the components have no data, say so instead).

    Raises:
        BadInputError: if ``x`` is not a finite 2-D array or ``n_components < 1``.

    Pitfall: with few distinct rows (e.g. few distinct last tokens) the rank is small and
    the fractions of the kept components already sum to ~1; components past it (1e-29 of the
    variance) would be rounding directions with arbitrary signs.
    """
    x = _check_2d(x, "data")
    n_components = _check_count(n_components, "n_components", 1)
    (x,) = _pow2_rescaled(x)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    tol = max(x.shape) * np.finfo(np.float64).eps * float(np.linalg.norm(x))
    rank = int(np.sum(s > tol))
    k = min(n_components, rank)
    total = float(np.sum(s**2))
    components = vt[:k].copy()
    components *= np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])[:, None]
    ratio = s[:k] ** 2 / total if k else np.zeros(0)
    return PrincipalComponents(components, ratio, s[:k].copy(), mean, rank, n_components)


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
    # Activations beyond ~1e154 would overflow s**2: decompose dev / 2**e (exact), report s * 2**e.
    exponent = _pow2_exponent(float(np.max(np.abs(dev))) if dev.size else 0.0)
    _, s, vt = np.linalg.svd(np.ldexp(dev, -exponent) if exponent else dev, full_matrices=False)
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
    return LanguageSubspace(axes, np.ldexp(s, exponent) if exponent else s, float(scree[:k].sum()), scree, rank)


# Paired binary outcomes (e.g. a problem solved before and after an edit).

#: One outcome per item: True (success), False, or None (undefined; its pair is left out).
Outcomes = Sequence[bool | np.bool_ | None]

#: How :func:`stratified_mcnemar` pools the strata, in words for the JSON.
POOLED_MCNEMAR_METHOD = ("exact conditional test over the discordant pairs pooled across strata (stratified "
                         "McNemar): given each stratum's discordant count, the losses are Binomial(total "
                         "discordant, 1/2) under the null; two-sided")
#: How :func:`item_sign_flip` treats the items, in words for the JSON.
ITEM_SIGN_FLIP_METHOD = ("exact sign-flip test by item: each item's gained - lost summed over the strata, "
                         "the before/after labels of an item swapped in all strata at once under the null "
                         "(all 2^n flips); two-sided")


def _paired_lists(before: Outcomes, after: Outcomes, what: str) -> list[tuple[bool, bool]]:
    """The pairs where both outcomes are known (None: undefined, e.g. an output with no letters)."""
    if len(before) != len(after):
        raise BadInputError(f"{what}: {len(before)} outcomes before, {len(after)} after; they must pair up")
    return [(bool(x), bool(y)) for x, y in zip(before, after) if x is not None and y is not None]


def _two_sided_binomial(lost: int, discordant: int) -> float:
    if discordant == 0:
        return 1.0
    return float(binomtest(min(lost, discordant - lost), discordant, 0.5).pvalue)


def mcnemar(before: Outcomes, after: Outcomes) -> dict[str, Any]:
    """Exact McNemar test of paired binary outcomes.

    Args:
        before: one outcome per item (True: success); None marks an undefined outcome, and its
            pair is left out.
        after: the same items' outcomes after the change.

    Returns:
        ``lost`` (True before, False after), ``gained``, ``n_pairs`` (pairs with both outcomes
        known) and ``p_value``: two-sided exact binomial p over the ``lost + gained`` discordant
        pairs (1 when there are none).

    Raises:
        BadInputError: the two lists have different lengths.
    """
    pairs = _paired_lists(before, after, "mcnemar")
    lost = sum(x and not y for x, y in pairs)
    gained = sum(y and not x for x, y in pairs)
    return {"lost": int(lost), "gained": int(gained), "n_pairs": len(pairs),
            "p_value": _two_sided_binomial(lost, lost + gained)}


def stratified_mcnemar(
    before: Mapping[str, Outcomes], after: Mapping[str, Outcomes]
) -> dict[str, Any]:
    """The strata's McNemar tests pooled into one exact test (e.g. one stratum per language).

    Under the null that, in every stratum, a discordant pair is as likely lost as gained, the
    losses of stratum s given its ``n_s`` discordant pairs are Binomial(n_s, 1/2), independent
    across strata, so the total loss given the total discordant count is Binomial(Σ n_s, 1/2):
    the exact conditional test needs no large-sample approximation however few pairs each
    stratum has. It treats the pairs as independent; when the same items recur in every stratum
    (the same problems in every language), :func:`item_sign_flip` is the test that allows for that.

    Args:
        before: ``{stratum: outcomes}`` (None: undefined, left out with its pair).
        after: the same strata and items after the change.

    Returns:
        ``lost``, ``gained``, ``discordant``, ``n_pairs``, ``n_strata``, ``p_value`` and ``method``.

    Raises:
        BadInputError: the strata differ, or a stratum's lists have different lengths.
    """
    if set(before) != set(after):
        raise BadInputError(f"strata differ: {sorted(before)} before, {sorted(after)} after")
    per = [mcnemar(before[s], after[s]) for s in before]
    lost, gained = sum(t["lost"] for t in per), sum(t["gained"] for t in per)
    return {"lost": lost, "gained": gained, "discordant": lost + gained, "n_pairs": sum(t["n_pairs"] for t in per),
            "n_strata": len(per), "p_value": _two_sided_binomial(lost, lost + gained),
            "method": POOLED_MCNEMAR_METHOD}


def _sign_flip_counts(totals: Sequence[int]) -> dict[int, int]:
    """``{s: number of sign vectors e with sum_i e_i totals_i = s}`` over all ``2^n`` vectors (exact ints)."""
    counts = {0: 1}
    for t in totals:
        nxt: dict[int, int] = {}
        for s, c in counts.items():
            for v in (s + t, s - t):
                nxt[v] = nxt.get(v, 0) + c
        counts = nxt
    return counts


def item_sign_flip(
    before: Mapping[str, Outcomes], after: Mapping[str, Outcomes]
) -> dict[str, Any]:
    """Exact paired test that allows the same items to recur in every stratum.

    Item i's difference is ``D_i = Σ_s (after_s[i] − before_s[i])`` (gained minus lost over
    the strata; undefined outcomes count 0). Under the null the before/after labels of an item
    are exchangeable in all strata at once, so ``Σ_i D_i`` is distributed as ``Σ_i ±D_i`` over
    all ``2^n`` sign vectors; the distribution is computed exactly (integer counts).

    Args:
        before: ``{stratum: outcomes}``, every stratum the same items in the same order.
        after: the same after the change.

    Returns:
        ``gained_minus_lost`` (the statistic), ``n_items``, ``items_changed`` (items with
        ``D_i != 0``), ``p_value`` (two-sided: ``P(|Σ ±D_i| >= |observed|)``) and ``method``.

    Raises:
        BadInputError: the strata differ or hold different numbers of items.
    """
    if set(before) != set(after):
        raise BadInputError(f"strata differ: {sorted(before)} before, {sorted(after)} after")
    sizes = {len(v) for v in (*before.values(), *after.values())}
    if len(sizes) != 1:
        raise BadInputError(f"every stratum must hold the same items: sizes {sorted(sizes)}")
    n = sizes.pop()
    totals = [sum(int(bool(after[s][i])) - int(bool(before[s][i])) for s in before
                  if before[s][i] is not None and after[s][i] is not None) for i in range(n)]
    observed = sum(totals)
    counts = _sign_flip_counts([abs(t) for t in totals if t])
    extreme = sum(c for s, c in counts.items() if abs(s) >= abs(observed))
    return {"gained_minus_lost": int(observed), "n_items": n, "items_changed": sum(1 for t in totals if t),
            "p_value": float(Fraction(extreme, sum(counts.values()))), "method": ITEM_SIGN_FLIP_METHOD}


def paired_binary_tests(
    before: Mapping[str, Outcomes], after: Mapping[str, Outcomes]
) -> dict[str, Any]:
    """Per stratum :func:`mcnemar`, pooled :func:`stratified_mcnemar` and :func:`item_sign_flip`.

    For any paired binary outcome by stratum: accuracy per language before/after an edit, or
    whether an output stays in its prompt's language (None where undefined).

    Returns:
        ``{"per_stratum": {stratum: mcnemar}, "pooled": stratified_mcnemar, "by_item": item_sign_flip}``.
    """
    return {"per_stratum": {s: mcnemar(before[s], after[s]) for s in before},
            "pooled": stratified_mcnemar(before, after), "by_item": item_sign_flip(before, after)}


# ---------------------------------------------------------------------------------------------
# binomial fractions


#: How :func:`binomial_interval` makes its interval, in words for the JSON.
CLOPPER_PEARSON = ("Clopper-Pearson exact binomial interval: coverage >= level for every true fraction "
                   "(independent trials)")


def binomial_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a fraction ``successes / trials`` of independent trials.

    ``[Beta(alpha/2; k, n - k + 1), Beta(1 - alpha/2; k + 1, n - k)]`` quantiles (0 and 1 at the
    ends ``k = 0``, ``k = n``), equal to ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``
    (tested). Its coverage is at least ``level`` for every true fraction (tested exactly by
    summing the binomial distribution over a grid of fractions).

    Args:
        successes: ``k``, an integer in ``[0, trials]``.
        trials: ``n >= 0``; with no trials the interval is ``(0, 1)``.
        level: nominal two-sided coverage, in (0, 1).

    Returns:
        ``(lo, hi)``.

    Raises:
        BadInputError: counts that are not integers, negative, or ``successes > trials``; bad level.

    Pitfall: the trials must be independent; a fraction pooled over items that recur (the
    same problem in several languages) is not a binomial count.
    """
    from scipy.stats import beta

    level = _check_level(level)
    n = _check_count(trials, "trials", 0)
    k = _check_count(successes, "successes", 0)
    if k > n:
        raise BadInputError(f"successes must be at most trials, got {k} of {n}")
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


#: How :func:`first_crossing` makes its confidence set, in words for the JSON.
FIRST_CROSSING_METHOD = ("first index whose fraction exceeds the threshold; confidence set [first index whose "
                         "upper bound exceeds it, first index whose lower bound exceeds it] from Clopper-Pearson "
                         "intervals Bonferroni-adjusted over the indices, so it holds the true first crossing with "
                         "probability >= level (no monotonicity assumed); an end past the last index is null")


def first_crossing(
    successes: Sequence[int], trials: Sequence[int], threshold: float = 0.5, level: float = 0.95
) -> dict[str, Any]:
    """Where a sequence of fractions (e.g. one per layer) first exceeds ``threshold``, with a confidence set.

    Args:
        successes: ``k_i`` per index.
        trials: ``n_i`` per index (independent trials within an index).
        threshold: the fraction to exceed, in [0, 1).
        level: simultaneous coverage of the set.

    Returns:
        ``estimate`` (first ``i`` with ``k_i / n_i > threshold``, None if none), ``set``
        ``[lo, hi]`` (``lo``: first ``i`` whose upper bound exceeds the threshold; ``hi``: first
        ``i`` whose lower bound does; None for "past the last index"), ``level``, ``threshold``
        and ``method``. With all intervals holding their fractions at once (probability >=
        ``level`` by Bonferroni), the true first crossing ``i*`` (past the end if none) lies in
        ``[lo, hi]``: ``p_{i*} > threshold`` puts ``lo <= i*``, and ``p_hi >= lower_hi > threshold``
        puts ``i* <= hi``. Its coverage is checked by simulation in ``tests/unit/test_lens_stats.py``.

    Raises:
        BadInputError: lists of different lengths or empty, a threshold outside [0, 1), bad counts.
    """
    if len(successes) != len(trials) or not len(trials):
        raise BadInputError(f"need one count of trials per count of successes, got {len(successes)} and "
                            f"{len(trials)}")
    if not 0.0 <= threshold < 1.0:
        raise BadInputError(f"threshold must be in [0, 1), got {threshold!r}")
    level = _check_level(level)
    each = 1.0 - (1.0 - level) / len(trials)
    bounds = [binomial_interval(k, n, each) for k, n in zip(successes, trials)]

    def first(flags: Sequence[bool]) -> int | None:
        return next((i for i, hit in enumerate(flags) if hit), None)

    return {"estimate": first([n > 0 and k / n > threshold for k, n in zip(successes, trials)]),
            "set": [first([hi > threshold for _, hi in bounds]), first([lo > threshold for lo, _ in bounds])],
            "level": level, "threshold": threshold, "method": FIRST_CROSSING_METHOD}
