"""Alignment study: where along the depth zh/en last-token residuals align, attention vs MLP.

Port of the research script ``attn_vs_ffn_alignment.py`` onto hook points. For every layer ``L``
it reads the last real token of ``blocks.L.hook_resid_pre`` (h_pre), ``hook_attn_out`` (the
attention write) and ``hook_mlp_out`` (the MLP write) for each language, rebuilds the residual
after attention (h_pre + attn) and after the MLP (h_pre + attn + mlp), and computes the
matched-vs-scrambled z of each (and of each write alone). Δz per sublayer is the seeds'
attribution; cosines do not add, so Δz is not an additive decomposition.

``blocks.L.hook_resid_post`` is read as well, to check that h_pre + attn + mlp = resid_post at
every layer (reported as ``resid_sum_max_abs_error``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from jaxtyping import Float

from interp_tl import stats
from interp_tl.activations import check_layers, extract, layer_hook_names
from interp_tl.studies.common import StudyResult, finite_or_none, parallel_prompts, run_provenance

HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
METHODOLOGY = "Unit-normalized matched-vs-scrambled z-score on cumulative residual stream"
#: Stages of a layer, by the seeds' key suffix.
STAGES = ("pre", "post_attn", "post_mlp", "attn_alone", "mlp_alone")


@dataclass(frozen=True)
class AlignmentConfig:
    """Settings of the alignment study (the CLI's flags map onto these one to one).

    Attributes:
        n_pairs: problems per language (multiple of 5; 200 as the seeds).
        langs: the two languages compared (zh en as the seeds).
        seed: problem-set seed (42 is the evaluation set).
        n_perms: permutations of the Monte Carlo null (500 as the seed).
        perm_seed: RandomState seed of the permutations (42 as the seeds).
        layers: layers to analyse (None: all).
        batch_size: prompts per forward pass.
        prepend_bos: put BOS before each prompt (None: the model's default).
        n_boot: bootstrap resamples over pairs for the CIs (0: none).
        head_shares: also split the alignment gap at the last analysed layer additively over its
            writers (every head, MLP, embedding; :mod:`interp_tl.studies.heads`) for the layer x
            head heatmap (one more pass over the prompts).
    """

    n_pairs: int = 200
    langs: tuple[str, str] = ("zh", "en")
    seed: int = 42
    n_perms: int = 500
    perm_seed: int = 42
    layers: tuple[int, ...] | None = None
    batch_size: int = 32
    prepend_bos: bool | None = None
    n_boot: int = 200
    head_shares: bool = True


LayerActs = Mapping[str, Float[np.ndarray, "n_pairs d_model"]]


def extract_alignment_activations(
    model, config: AlignmentConfig = AlignmentConfig(), progress: bool = False
) -> tuple[Any, list[int], dict[str, dict[str, np.ndarray]]]:
    """Run both languages through the model once and keep the last-token vectors the study needs.

    Returns:
        ``(prompts, layers, acts)`` with ``acts[lang][f"blocks.{L}.{hook}"]`` of shape
        ``[n_pairs, d_model]`` for every hook of :data:`HOOKS`.
    """
    layers = check_layers(model, config.layers)
    prompts = parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)
    a, b = prompts.langs
    both = prompts.tokens[a] + prompts.tokens[b]
    out = extract(model, both, layer_hook_names(model, HOOKS, layers), config.batch_size, "last", progress, "alignment")
    n = prompts.n
    acts = {a: {k: v[:n] for k, v in out.items()}, b: {k: v[n:] for k, v in out.items()}}
    return prompts, layers, acts


def _stage_vectors(acts: LayerActs, layer: int) -> dict[str, np.ndarray]:
    pre = acts[f"blocks.{layer}.hook_resid_pre"].astype(np.float64)
    attn = acts[f"blocks.{layer}.hook_attn_out"].astype(np.float64)
    mlp = acts[f"blocks.{layer}.hook_mlp_out"].astype(np.float64)
    return {"pre": pre, "post_attn": pre + attn, "post_mlp": pre + attn + mlp, "attn_alone": attn, "mlp_alone": mlp}


def layer_entry(acts_a: LayerActs, acts_b: LayerActs, layer: int, config: AlignmentConfig) -> dict[str, Any]:
    """One element of the seeds' ``layer_results`` (same keys), plus full statistics per stage."""
    va, vb = _stage_vectors(acts_a, layer), _stage_vectors(acts_b, layer)
    full = {stage: stats.alignment_summary(va[stage], vb[stage], config.n_perms, config.perm_seed, config.n_boot)
            for stage in STAGES}
    z = {stage: full[stage]["z"] for stage in STAGES}
    norm = {stage: float(np.linalg.norm(va[stage], axis=1).mean()) for stage in ("pre", "attn_alone", "mlp_alone")}
    return {
        "layer": layer,
        "z_pre": z["pre"],
        "z_post_attn": z["post_attn"],
        "z_post_mlp": z["post_mlp"],
        "dz_attn": _sub(z["post_attn"], z["pre"]),
        "dz_mlp": _sub(z["post_mlp"], z["post_attn"]),
        "z_attn_correction_alone": z["attn_alone"],
        "z_mlp_correction_alone": z["mlp_alone"],
        "norm_h_pre": norm["pre"],
        "norm_attn_delta": norm["attn_alone"],
        "norm_mlp_delta": norm["mlp_alone"],
        "matched_cos_pre": full["pre"]["matched"],
        "matched_cos_post_attn": full["post_attn"]["matched"],
        "matched_cos_post_mlp": full["post_mlp"]["matched"],
        "stats": full,
    }


def _sub(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def summarize(layer_results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The seeds' ``summary`` (same keys and thresholds: dominant if Δz > 0.5, aligned if z > 3)."""
    dz_attn = [r["dz_attn"] or 0.0 for r in layer_results]
    dz_mlp = [r["dz_mlp"] or 0.0 for r in layer_results]
    total_attn, total_mlp = float(sum(dz_attn)), float(sum(dz_mlp))
    return {
        "total_dz_attn": total_attn,
        "total_dz_mlp": total_mlp,
        "ratio_attn_mlp": total_attn / total_mlp if total_mlp else None,
        "attn_dominant_layers": sum(a > m and a > 0.5 for a, m in zip(dz_attn, dz_mlp)),
        "mlp_dominant_layers": sum(m > a and m > 0.5 for a, m in zip(dz_attn, dz_mlp)),
        "attn_aligned_layers": sum((r["z_attn_correction_alone"] or 0.0) > 3.0 for r in layer_results),
        "mlp_aligned_layers": sum((r["z_mlp_correction_alone"] or 0.0) > 3.0 for r in layer_results),
    }


def resid_sum_error(acts: LayerActs, layers: Sequence[int]) -> dict[str, float]:
    """Largest ``|resid_pre + attn_out + mlp_out − resid_post|`` over layers and prompts, abs and relative."""
    worst_abs, worst_rel = 0.0, 0.0
    for layer in layers:
        parts = _stage_vectors(acts, layer)["post_mlp"]
        post = acts[f"blocks.{layer}.hook_resid_post"].astype(np.float64)
        err = float(np.abs(parts - post).max())
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / max(float(np.abs(post).max()), 1e-30))
    return {"max_abs": worst_abs, "max_rel": worst_rel}


def alignment_from_activations(
    acts_a: LayerActs, acts_b: LayerActs, layers: Sequence[int], config: AlignmentConfig = AlignmentConfig()
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The study's statistics from already extracted last-token activations (no model).

    Args:
        acts_a: ``{f"blocks.{L}.{hook}": [n_pairs, d_model]}`` for every hook of :data:`HOOKS`
            (``hook_resid_post`` optional) and layer, first language; row i = problem i.
        acts_b: the same for the second language, row-aligned with ``acts_a``.
        layers: the layers to analyse.
        config: statistics settings (``n_perms``, ``perm_seed``, ``n_boot``).

    Returns:
        ``(layer_results, summary)`` as in the seeds' JSON.
    """
    layer_results = [layer_entry(acts_a, acts_b, layer, config) for layer in layers]
    return layer_results, summarize(layer_results)


def activation_arrays(acts: Mapping[str, LayerActs], layers: Sequence[int]) -> dict[str, np.ndarray]:
    """The seeds' npz keys: ``{lang}_attn_delta_L{l}``, ``{lang}_mlp_delta_L{l}``, ``{lang}_h_pre_L{l}``."""
    out = {}
    for lang, lang_acts in acts.items():
        for layer in layers:
            out[f"{lang}_attn_delta_L{layer}"] = lang_acts[f"blocks.{layer}.hook_attn_out"]
            out[f"{lang}_mlp_delta_L{layer}"] = lang_acts[f"blocks.{layer}.hook_mlp_out"]
            out[f"{lang}_h_pre_L{layer}"] = lang_acts[f"blocks.{layer}.hook_resid_pre"]
    return out


def run_alignment(
    model, config: AlignmentConfig = AlignmentConfig(), progress: bool = False, keep_activations: bool = False
) -> StudyResult:
    """Run the alignment study on a HookedTransformer.

    Args:
        model: any HookedTransformer (from :func:`interp_tl.models.load_model` or your own).
        config: see :class:`AlignmentConfig`.
        progress: show a progress bar over batches.
        keep_activations: put the seeds' npz arrays into ``result.arrays``.

    Returns:
        A :class:`StudyResult` whose ``data`` has the seeds' keys (``model``, ``n_problems``,
        ``n_layers``, ``hidden_size``, ``methodology``, ``layer_results``, ``summary``) plus
        ``resid_sum_max_abs_error``.

    Pitfall: on LayerNorm models with TransformerLens' default processing every residual hook
    is mean-centred, so z differs from the raw model's; load with ``processing="none"`` to
    compare with the seeds.
    """
    prompts, layers, acts = extract_alignment_activations(model, config, progress)
    a, b = prompts.langs
    layer_results, summary = alignment_from_activations(acts[a], acts[b], layers, config)
    check = {lang: resid_sum_error(acts[lang], layers) for lang in prompts.langs}
    summary["resid_sum_max_abs_error"] = max(c["max_abs"] for c in check.values())
    summary["resid_sum_max_rel_error"] = max(c["max_rel"] for c in check.values())
    data = {
        "model": model.cfg.model_name,
        "n_problems": prompts.n,
        "n_layers": model.cfg.n_layers,
        "hidden_size": model.cfg.d_model,
        "languages": list(prompts.langs),
        "methodology": METHODOLOGY,
        "layer_results": layer_results,
        "summary": summary,
    }
    if config.head_shares:
        data["head_shares"] = head_share_grid(model, prompts, max(layers), config)
    provenance = run_provenance(model, prompts, study="alignment", layers=layers, config=asdict(config),
                                hooks=[f"blocks.L.{h}" for h in HOOKS], token="last real token")
    arrays = activation_arrays(acts, layers) if keep_activations else {}
    return StudyResult("alignment", data, provenance, arrays)


def head_share_grid(model, prompts, layer: int, config: AlignmentConfig) -> dict:
    """Per-head shares of the alignment gap at ``layer`` (``[layer + 1, n_heads]``) and the other writers."""
    from interp_tl.studies.heads import head_of, share_grid, split_alignment

    names, split, _ = split_alignment(model, prompts, layer, config.n_perms, config.perm_seed, config.batch_size)
    grid = share_grid(names, split["shares"], layer, model.cfg.n_heads)
    others = {n: float(x) for n, x in zip(names, split["shares"]) if head_of(n) is None}
    heads = [[finite_or_none(x) for x in row] for row in grid]
    return {"layer": layer, "total": split["total"], "heads": heads, "other_writers": others}


__all__ = [
    "AlignmentConfig", "head_share_grid", "HOOKS", "STAGES", "alignment_from_activations",
    "extract_alignment_activations",
    "layer_entry", "resid_sum_error", "run_alignment", "summarize",
]
