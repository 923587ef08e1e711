"""Per-layer alignment of two languages' last-token residuals: attention vs MLP, from caches.

For every layer ``L`` it reads ``blocks.L.hook_resid_pre`` (h_pre), ``hook_attn_out`` (the attention
write) and ``hook_mlp_out`` (the MLP write) of both languages, rebuilds the residual after attention
(h_pre + attn) and after the MLP (h_pre + attn + mlp), and computes the matched-vs-scrambled
statistics of each (and of each write alone): Monte Carlo z (the research scripts'), exact-null z,
p, bootstrap interval of the gap, retrieval AUC. Δz per sublayer is the research scripts'
attribution; cosines do not add, so Δz is not an additive decomposition (the additive split is
:mod:`interp_tl.analyses.shares`).

Two z's per key: the research scripts' names (``z_post_mlp``, ``dz_attn``, ``total_dz_attn``)
keep the Monte Carlo z, for comparison with their files; the twin with ``z`` replaced by
``z_exact`` (``z_exact_post_mlp``, ``dz_exact_attn``, ``total_dz_exact_attn``; counts without a
z in the name get ``_exact``) is the exact permutation-null z: no sampling error, the same for
any permutation seed and when the two languages are swapped. Headlines use the exact twins.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits
from transformer_lens import ActivationCache

from interp_tl import stats
from interp_tl.cache import numpy as cache_numpy
from interp_tl.cache import one_position
from interp_tl.errors import BadInputError

#: Hook points read at every layer.
HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
#: Stages of a layer, by the research scripts' key suffix.
STAGES = ("pre", "post_attn", "post_mlp", "attn_alone", "mlp_alone")
_LAYER = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


def hook_names(layers: Sequence[int]) -> list[str]:
    """The hooks :func:`layer_alignment` reads for ``layers``."""
    return [f"blocks.{layer}.{hook}" for layer in layers for hook in HOOKS]


def cached_layers(cache: ActivationCache) -> list[int]:
    """Layers whose ``hook_resid_pre`` the cache holds, ascending."""
    return sorted(int(m.group(1)) for name in cache.cache_dict if (m := _LAYER.match(name)))


def stage_vectors(cache: ActivationCache, layer: int) -> dict[str, np.ndarray]:
    """``{stage: [n, d_model] float64}``: h_pre, h_pre + attn, h_pre + attn + mlp, attn, mlp at ``layer``."""
    pre = cache_numpy(cache, f"blocks.{layer}.hook_resid_pre")
    attn = cache_numpy(cache, f"blocks.{layer}.hook_attn_out")
    mlp = cache_numpy(cache, f"blocks.{layer}.hook_mlp_out")
    return {"pre": pre, "post_attn": pre + attn, "post_mlp": pre + attn + mlp, "attn_alone": attn, "mlp_alone": mlp}


_T = TypeVar("_T")


def per_layer(fn: Callable[[int], _T], layers: Sequence[int]) -> list[_T]:
    """``[fn(layer) for layer in layers]``, the layers on a thread per core, each with a one-thread BLAS.

    Most of a layer's statistics are single-threaded numpy (sorts, gathers, elementwise), which
    releases the GIL: one layer per core beats one layer at a time with a multi-threaded BLAS.
    Each layer's numbers do not depend on the order or the threads (tested: identical to the
    serial loop). Pitfall: while it runs, the process's BLAS is limited to one thread.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(len(layers), cores)
    if workers < 2:
        return [fn(layer) for layer in layers]
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(fn, layers))
    _release_thread_arenas()
    return out


def _release_thread_arenas() -> None:
    """Hand the memory the worker threads freed back to the system (glibc keeps it in per-thread arenas).

    Without it the process's peak counts the layers' freed arrays again under whatever runs next.
    A no-op where the C library is not glibc.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # no such C library, no malloc_trim, no process handle (Windows)
        pass


def _sub(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def _z_keys(z: Mapping[str, float | None], prefix: str) -> dict[str, float | None]:
    """The research scripts' per-layer z keys (``prefix`` "z") or their exact-null twins ("z_exact")."""
    d = "d" + prefix
    return {
        f"{prefix}_pre": z["pre"],
        f"{prefix}_post_attn": z["post_attn"],
        f"{prefix}_post_mlp": z["post_mlp"],
        f"{d}_attn": _sub(z["post_attn"], z["pre"]),
        f"{d}_mlp": _sub(z["post_mlp"], z["post_attn"]),
        f"{prefix}_attn_correction_alone": z["attn_alone"],
        f"{prefix}_mlp_correction_alone": z["mlp_alone"],
    }


def layer_entry(
    cache_a: ActivationCache, cache_b: ActivationCache, layer: int, *, n_perms: int = 500, perm_seed: int = 42,
    n_boot: int = 200,
) -> dict[str, Any]:
    """One element of the research scripts' ``layer_results`` (same keys), their exact-null twins, full statistics.

    The research scripts' keys (``z_pre``, ``dz_attn``, ...) keep the Monte Carlo z; each has an
    exact-null twin with ``z`` replaced by ``z_exact`` (``z_exact_pre``, ``dz_exact_attn``, ...):
    deterministic, and unchanged when the two languages are swapped.
    """
    va, vb = stage_vectors(cache_a, layer), stage_vectors(cache_b, layer)
    full = {stage: stats.alignment_summary(va[stage], vb[stage], n_perms, perm_seed, n_boot) for stage in STAGES}
    norm = {stage: float(np.linalg.norm(va[stage], axis=1).mean()) for stage in ("pre", "attn_alone", "mlp_alone")}
    return {
        "layer": layer,
        **_z_keys({stage: full[stage]["z"] for stage in STAGES}, "z"),
        "norm_h_pre": norm["pre"],
        "norm_attn_delta": norm["attn_alone"],
        "norm_mlp_delta": norm["mlp_alone"],
        "matched_cos_pre": full["pre"]["matched"],
        "matched_cos_post_attn": full["post_attn"]["matched"],
        "matched_cos_post_mlp": full["post_mlp"]["matched"],
        **_z_keys({stage: full[stage]["z_exact"] for stage in STAGES}, "z_exact"),
        "stats": full,
    }


def _totals(layer_results: Sequence[Mapping[str, Any]], z: str, suffix: str) -> dict[str, Any]:
    d = "d" + z
    dz_attn = [r[f"{d}_attn"] or 0.0 for r in layer_results]
    dz_mlp = [r[f"{d}_mlp"] or 0.0 for r in layer_results]
    total_attn, total_mlp = float(sum(dz_attn)), float(sum(dz_mlp))
    return {
        f"total_{d}_attn": total_attn,
        f"total_{d}_mlp": total_mlp,
        f"ratio{suffix}_attn_mlp": total_attn / total_mlp if total_mlp else None,
        f"attn_dominant_layers{suffix}": sum(a > m and a > 0.5 for a, m in zip(dz_attn, dz_mlp)),
        f"mlp_dominant_layers{suffix}": sum(m > a and m > 0.5 for a, m in zip(dz_attn, dz_mlp)),
        f"attn_aligned_layers{suffix}": sum((r[f"{z}_attn_correction_alone"] or 0.0) > 3.0 for r in layer_results),
        f"mlp_aligned_layers{suffix}": sum((r[f"{z}_mlp_correction_alone"] or 0.0) > 3.0 for r in layer_results),
    }


def summarize(layer_results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The research scripts' ``summary`` (same keys and thresholds: dominant if Δz > 0.5, aligned if z > 3).

    The research scripts' keys total the Monte Carlo Δz; the same totals and counts of the
    exact-null z follow under ``total_dz_exact_attn``, ``total_dz_exact_mlp``,
    ``ratio_exact_attn_mlp`` and ``..._layers_exact`` (what the headline reports).
    """
    return {**_totals(layer_results, "z", ""), **_totals(layer_results, "z_exact", "_exact")}


def resid_sum_error(cache: ActivationCache, layers: Sequence[int]) -> dict[str, float]:
    """Largest ``|resid_pre + attn_out + mlp_out − resid_post|`` over layers and prompts, abs and relative."""
    worst_abs, worst_rel = 0.0, 0.0
    for layer in layers:
        parts = stage_vectors(cache, layer)["post_mlp"]
        post = cache_numpy(cache, f"blocks.{layer}.hook_resid_post")
        err = float(np.abs(parts - post).max())
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / max(float(np.abs(post).max()), 1e-30))
    return {"max_abs": worst_abs, "max_rel": worst_rel}


@dataclass(frozen=True)
class LayerAlignment:
    """Per-layer alignment of two languages (:func:`layer_alignment`).

    Attributes:
        layer_results: per layer, the research scripts' keys (``z_pre``, ``z_post_attn``,
            ``z_post_mlp``, ``dz_attn``, ``dz_mlp``, ``z_attn_correction_alone``, ...; Monte
            Carlo z), their exact-null twins (``z_exact_pre``, ..., ``dz_exact_attn``, ...) and
            ``stats`` (every stage's full statistics).
        summary: totals of Δz and counts of attention/MLP dominated layers (the research
            scripts' summary, Monte Carlo; ``total_dz_exact_attn``, ... for the exact-null z),
            plus the ``resid_pre + attn + mlp = resid_post`` check.
    """

    layer_results: list[dict[str, Any]]
    summary: dict[str, Any]

    def table(self) -> str:
        """The table as text: layer, exact-null z before/after attention/after MLP, Δz, Monte Carlo z after the MLP."""
        head = (f"{'layer':>5} {'z_pre':>8} {'z_attn':>8} {'z_mlp':>8} {'dz_attn':>8} {'dz_mlp':>8} {'mc_z_mlp':>8}"
                "   (exact-null z; mc: Monte Carlo)")
        lines = [head]
        for r in self.layer_results:
            cells = [r["z_exact_pre"], r["z_exact_post_attn"], r["z_exact_post_mlp"], r["dz_exact_attn"],
                     r["dz_exact_mlp"], r["z_post_mlp"]]
            lines.append(f"{r['layer']:>5} " + " ".join("     n/a" if c is None else f"{c:8.2f}" for c in cells))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def layer_alignment(
    cache_a: ActivationCache,
    cache_b: ActivationCache,
    *,
    layers: Sequence[int] | None = None,
    n_perms: int = 500,
    perm_seed: int = 42,
    n_boot: int = 200,
) -> LayerAlignment:
    """The alignment study's per-layer statistics from two caches of the same problems.

    Args:
        cache_a: the first language's prompts, one position per prompt (e.g.
            ``last_token(cache, attention_mask=...)``), holding ``blocks.L.hook_resid_pre``,
            ``hook_attn_out``, ``hook_mlp_out`` (and ``hook_resid_post`` for the sum check).
        cache_b: the second language's prompts, row i the same problem as ``cache_a``'s row i.
        layers: the layers to analyse (default: every layer both caches hold).
        n_perms: permutations of the Monte Carlo null.
        perm_seed: RandomState seed of the permutations (42 as the research scripts).
        n_boot: bootstrap resamples for the intervals (0: none).

    Raises:
        BadInputError: a missing hook, more than one position per prompt, different numbers
            of prompts, or fewer than 3 pairs.
    """
    if layers is None:
        layers = sorted(set(cached_layers(cache_a)) & set(cached_layers(cache_b)))
    layers = [int(x) for x in layers]
    if not layers:
        raise BadInputError("no layer to analyse: the caches hold no blocks.L.hook_resid_pre")
    needed = [f"blocks.{layer}.{hook}" for layer in layers for hook in HOOKS[:3]]
    one_position(cache_a, needed)
    one_position(cache_b, needed)
    rows = per_layer(lambda layer: layer_entry(cache_a, cache_b, layer, n_perms=n_perms, perm_seed=perm_seed,
                                               n_boot=n_boot), layers)
    summary = summarize(rows)
    if all(f"blocks.{layer}.hook_resid_post" in c.cache_dict for c in (cache_a, cache_b) for layer in layers):
        check = [resid_sum_error(c, layers) for c in (cache_a, cache_b)]
        summary["resid_sum_max_abs_error"] = max(c["max_abs"] for c in check)
        summary["resid_sum_max_rel_error"] = max(c["max_rel"] for c in check)
    return LayerAlignment(rows, summary)
