"""The language subspace from caches: the directions along which a problem moves when only its language changes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from jaxtyping import Float
from transformer_lens import ActivationCache

from interp_tl import stats
from interp_tl.cache import numpy as cache_numpy
from interp_tl.errors import BadInputError


def stacked(caches: Mapping[str, ActivationCache], hook: str) -> Float[np.ndarray, "n_problems n_langs d_model"]:
    """One hook of several languages' caches (row i the same problem in each) as ``[n, n_langs, d]`` float64."""
    if len(caches) < 2:
        raise BadInputError(f"a language subspace needs at least two languages, got {len(caches)}")
    arrays = [cache_numpy(cache, hook) for cache in caches.values()]
    if len({a.shape for a in arrays}) != 1:
        raise BadInputError(f"the languages' caches hold different numbers of prompts: {[a.shape for a in arrays]}")
    return np.stack(arrays, axis=1)


def language_subspace(
    caches: Mapping[str, ActivationCache], hook: str, *, k: int | None = 10, min_variance: float | None = None
) -> stats.LanguageSubspace:
    """Top-k language axes of ``hook`` (problem-centred SVD, :func:`interp_tl.stats.language_subspace`).

    Args:
        caches: ``{language: cache}``, one position per prompt, the same problems in the same order.
        hook: e.g. ``blocks.3.hook_resid_post``.
        k: axes to keep; ignored when ``min_variance`` is given.
        min_variance: keep the smallest k explaining at least this fraction.

    Raises:
        BadInputError: fewer than two languages, unequal caches, k above the data's rank, ...
    """
    return stats.language_subspace(stacked(caches, hook), k=k, min_variance=min_variance)
