"""How much two languages' alignment is already in the embeddings, and what layer 0 adds, from caches.

Reads, at one position per prompt, the token embedding ``hook_embed``, for models with an additive
position embedding (GPT-2) also ``hook_embed + hook_pos_embed`` (what block 0 reads:
``blocks.0.hook_resid_pre``, checked), and the output of layer 0, ``blocks.0.hook_resid_post``;
each at the last real token and, for the embeddings, averaged over the real tokens without BOS.
Reports the matched-vs-scrambled statistics of each, the research script's PCA of the unit
last-token embeddings (variance explained, Cohen's d of the languages on PC0, z inside the top-k
PCs; only components above numerical rank) and the norms. Statistics with no spread to measure
(e.g. every prompt of a language ending in the same token) are null with a reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformer_lens import ActivationCache

from interp_tl import stats
from interp_tl.cache import numpy as cache_numpy
from interp_tl.cache import one_position

#: Hooks read at the last token (``hook_pos_embed`` only where the model has it).
LAST_HOOKS = ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post")
#: Hooks read averaged over the real tokens.
MEAN_HOOKS = ("hook_embed", "hook_pos_embed")


def has_pos_embed(cache: ActivationCache) -> bool:
    """Whether the cache holds an additive position embedding (GPT-2 style models)."""
    return "hook_pos_embed" in cache.cache_dict


def variant(cache: ActivationCache, with_pos: bool) -> np.ndarray:
    """``hook_embed`` (+ ``hook_pos_embed``, added in the cache's dtype as the model does), ``[n, d_model]`` float64."""
    if not with_pos:
        return cache_numpy(cache, "hook_embed")
    one_position(cache, ["hook_embed", "hook_pos_embed"])
    return (cache["hook_embed"] + cache["hook_pos_embed"])[:, 0].double().numpy()


def pca_block(
    a: np.ndarray, b: np.ndarray, n_perms: int, perm_seed: int, components: int = 10, ks: Sequence[int] = (2, 5, 10)
) -> dict[str, Any]:
    """PCA of the unit rows of ``a`` and ``b`` together: variance explained, Cohen's d on PC0, PCA-k z.

    Only components above the data's numerical rank are listed (:func:`interp_tl.stats.principal_components`);
    a PCA-k z with k above the rank, and Cohen's d without a component, are null with a reason.
    """
    ua, ub = stats.unit_rows(a), stats.unit_rows(b)
    pc = stats.principal_components(np.vstack([ua, ub]), min(components, 2 * len(ua), ua.shape[1]))
    pa, pb = pc.transform(ua), pc.transform(ub)
    pca_z: dict[str, float | None] = {}
    pca_z_exact: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for k in ks:
        if k <= pc.k:
            z = stats.matched_vs_scrambled_z(pa[:, :k], pb[:, :k], n_perms, perm_seed)
            pca_z[str(k)], pca_z_exact[str(k)] = z.as_dict()["z"], z.as_dict()["z_exact"]
        elif k <= components:
            pca_z[str(k)] = pca_z_exact[str(k)] = None
            reasons[str(k)] = f"only {pc.k} components above numerical rank"
    if pc.k:
        d = stats.cohens_d_summary(pa[:, 0], pb[:, 0])
    else:
        d = {"d": None, "reason": "no component above numerical rank"}
    return {
        "varexp": [float(x) for x in pc.explained_variance_ratio],
        "rank": pc.rank,
        "cohen_d_pc0": d["d"],
        "cohen_d_pc0_reason": d["reason"],
        "pca_k_z": pca_z,
        "pca_k_z_exact": pca_z_exact,
        "pca_k_z_reasons": reasons,
        "pc0_a": pa[:, 0] if pc.k else np.zeros(0), "pc0_b": pb[:, 0] if pc.k else np.zeros(0),
    }


def _delta(z_l0: float | None, z: float | None, reasons: Sequence[str | None]) -> tuple[float | None, str | None]:
    if z is None or z_l0 is None:
        return None, next((r for r in reasons if r), "a z is undefined")
    return z_l0 - z, None


def _z_fields(variants: Mapping[str, Any], l0_stats: Mapping[str, Any], z: str) -> dict[str, Any]:
    """The research script's z keys (``z`` = "z", Monte Carlo) or their exact-null twins (``z`` = "z_exact")."""
    raw = variants["embed"]
    delta = "delta" if z == "z" else "delta_exact"
    out: dict[str, Any] = {
        f"{z}_raw_embed_last_token": raw["last_token"][z],
        f"{z}_raw_embed_mean_no_bos": raw["mean_no_bos"][z],
        f"{z}_l0_output_last_token": l0_stats[z],
    }
    out[f"{delta}_l0_minus_embed"], out[f"{delta}_l0_minus_embed_reason"] = _delta(
        l0_stats[z], raw["last_token"][z], [raw["last_token"].get("degenerate"), l0_stats.get("degenerate")])
    if "embed_pos" in variants:
        pos = variants["embed_pos"]
        out[f"{z}_embed_pos_last_token"] = pos["last_token"][z]
        out[f"{z}_embed_pos_mean_no_bos"] = pos["mean_no_bos"][z]
        out[f"{delta}_l0_minus_embed_pos"], out[f"{delta}_l0_minus_embed_pos_reason"] = _delta(
            l0_stats[z], pos["last_token"][z], [pos["last_token"].get("degenerate"), l0_stats.get("degenerate")])
    return out


def _seed_fields(variants: Mapping[str, Any], l0_stats: Mapping[str, Any], l0_norm: float) -> dict[str, Any]:
    raw = variants["embed"]
    seed = _z_fields(variants, l0_stats, "z")
    out = {key: seed[key] for key in ("z_raw_embed_last_token", "z_raw_embed_mean_no_bos", "z_l0_output_last_token",
                                      "delta_l0_minus_embed", "delta_l0_minus_embed_reason")}
    out.update({
        "embedding_pca_varexp": raw["pca"]["varexp"],
        "embedding_cohen_d_pc0": raw["pca"]["cohen_d_pc0"],
        "embedding_cohen_d_pc0_reason": raw["pca"]["cohen_d_pc0_reason"],
        "embedding_pca_k_z": raw["pca"]["pca_k_z"],
        "norm_embed_last_token": raw["norm_last_token"],
        "norm_l0_output_last_token": l0_norm,
    })
    out["norm_ratio_l0_over_embed"] = out["norm_l0_output_last_token"] / out["norm_embed_last_token"]
    out.update({key: value for key, value in seed.items() if key not in out})
    out.update(_z_fields(variants, l0_stats, "z_exact"))
    out["embedding_pca_k_z_exact"] = raw["pca"]["pca_k_z_exact"]
    return out


def embedding_alignment(
    last_a: ActivationCache,
    last_b: ActivationCache,
    mean_a: ActivationCache,
    mean_b: ActivationCache,
    *,
    n_perms: int = 1000,
    perm_seed: int = 42,
    n_boot: int = 200,
    pca_components: int = 10,
    pca_k: Sequence[int] = (2, 5, 10),
) -> dict[str, Any]:
    """The embedding study's statistics from caches of the same problems in two languages.

    Args:
        last_a: first language at the last real token (:data:`LAST_HOOKS`).
        last_b: second language, row i the same problem.
        mean_a: first language averaged over real tokens without BOS (:data:`MEAN_HOOKS`; e.g.
            ``token_mean(cache, attention_mask=..., skip_first=prepend_bos)``).
        mean_b: the same for the second language.
        n_perms: permutations of the Monte Carlo null (1000 as the research script).
        perm_seed: their seed.
        n_boot: bootstrap resamples for the intervals (0: none).
        pca_components: PCs fitted on the unit last-token embeddings.
        pca_k: PC counts for the PCA-k alignment z.

    Returns:
        The research script's keys (``z_raw_embed_last_token``, ``z_raw_embed_mean_no_bos``,
        ``z_l0_output_last_token``, ``delta_l0_minus_embed``, ``embedding_pca_varexp``,
        ``embedding_cohen_d_pc0``, ...; Monte Carlo z), their exact-null twins
        (``z_exact_raw_embed_last_token``, ..., ``delta_exact_l0_minus_embed``,
        ``embedding_pca_k_z_exact``; what the headline uses), plus ``has_pos_embed``, ``l0_output_last_token`` (full
        statistics), ``variants`` (full statistics of ``embed`` and ``embed_pos``),
        ``embed_pos_equals_resid_pre_max_abs_error`` and ``pc0_projections``.
    """
    has_pos = has_pos_embed(last_a)
    variants: dict[str, Any] = {}
    pc0 = {}
    for name, with_pos in (("embed", False), ("embed_pos", True)):
        if with_pos and not has_pos:
            continue
        last = variant(last_a, with_pos), variant(last_b, with_pos)
        mean = variant(mean_a, with_pos), variant(mean_b, with_pos)
        pca = pca_block(*last, n_perms, perm_seed, pca_components, pca_k)
        variants[name] = {
            "hooks": ["hook_embed", "hook_pos_embed"] if with_pos else ["hook_embed"],
            "last_token": stats.alignment_summary(*last, n_perms, perm_seed, n_boot),
            "mean_no_bos": stats.alignment_summary(*mean, n_perms, perm_seed, n_boot),
            "norm_last_token": float(np.linalg.norm(last[0], axis=1).mean()),
            "pca": {k: v for k, v in pca.items() if not k.startswith("pc0_")},
        }
        pc0[name] = [pca["pc0_a"].tolist(), pca["pc0_b"].tolist()]
    l0 = [cache_numpy(c, "blocks.0.hook_resid_post") for c in (last_a, last_b)]
    l0_stats = stats.alignment_summary(*l0, n_perms, perm_seed, n_boot)
    out = _seed_fields(variants, l0_stats, float(np.linalg.norm(l0[0], axis=1).mean()))
    identity = max(float(np.abs(variant(c, has_pos) - cache_numpy(c, "blocks.0.hook_resid_pre")).max())
                   for c in (last_a, last_b))
    out.update({"has_pos_embed": has_pos, "l0_output_last_token": l0_stats,
                "embed_pos_equals_resid_pre_max_abs_error": identity, "variants": variants, "pc0_projections": pc0})
    return out
