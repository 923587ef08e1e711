"""Alignment study: where along the depth two languages' last-token residuals align, attention vs MLP.

Port of the research script ``attn_vs_ffn_alignment.py`` onto hook points: one extraction of the
problem set in both languages into a last-token cache, then
:func:`interp_tl.analyses.alignment.layer_alignment` (z of resid_pre, +attention, +MLP, each write
alone, Δz, exact null, p, CI, AUC) and, at the last analysed layer,
:func:`interp_tl.analyses.shares.writer_shares` (the additive split of the gap over every head,
MLP and embedding, for the layer x head heatmap), read from the same cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from interp_tl.figures import figure, layer_head_heatmap, nan_array, title
from interp_tl.results import StudyResult, finite_or_none
from interp_tl.studies.base import NullSettings, PromptSettings, Study, study_provenance

if TYPE_CHECKING:
    from interp_tl.analyses import shares as writer
    from interp_tl.tokens import ParallelPrompts

METHODOLOGY = "Unit-normalized matched-vs-scrambled z-score on cumulative residual stream"


@dataclass(frozen=True, kw_only=True)
class AlignmentConfig(PromptSettings, NullSettings):
    """Settings of the alignment study.

    Attributes:
        layers: layers to analyse, e.g. 0-3,8 (None: all).
        head_shares: also split the alignment gap at the last analysed layer additively over its
            writers (every head, MLP, embedding) for the layer x head heatmap.
    """

    layers: tuple[int, ...] | None = None
    head_shares: bool = True


def prepare(model, config: AlignmentConfig) -> ParallelPrompts:
    """The problem set in the config's two languages, tokenized for ``model``."""
    from interp_tl.tokens import parallel_prompts

    return parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)


def hooks(model, config: AlignmentConfig) -> list[str]:
    """Every hook the study reads (the residual stages of each layer; the writers for the head shares)."""
    from interp_tl.analyses import alignment as align
    from interp_tl.analyses import shares as writer
    from interp_tl.cache import check_layers

    layers = check_layers(model, config.layers)
    names = align.hook_names(layers)
    if config.head_shares:
        names += writer.hook_names(model, max(layers))
    return list(dict.fromkeys(names))


def extract_caches(model, config: AlignmentConfig, prompts: ParallelPrompts, progress: bool = False) -> dict:
    """``{"last": cache}``: both languages' prompts (first language first) at their last real token."""
    from interp_tl.cache import extract

    cache = extract(model, prompts.stacked(), hooks(model, config), config.batch_size, "last", progress,
                    "alignment: extracting last-token activations")
    return {"last": cache}


def head_share_grid(shares: writer.WriterShares, n_heads: int) -> dict[str, Any]:
    """The heatmap's data: per-head shares ``[layer + 1, n_heads]`` and every other writer's share."""
    from interp_tl.analyses import shares as writer

    grid = shares.head_grid(n_heads)
    others = {label: float(x) for label, x in zip(shares.labels, shares.shares) if writer.head_of(label) is None}
    return {"layer": shares.layer, "total": shares.total, "heads": [[finite_or_none(x) for x in row] for row in grid],
            "other_writers": others}


def analyse(model, config: AlignmentConfig, prompts: ParallelPrompts, caches: dict, progress: bool = False
            ) -> StudyResult:
    """The study's statistics from its last-token cache (:func:`extract_caches`)."""
    from interp_tl import stats
    from interp_tl.analyses import alignment as align
    from interp_tl.analyses import shares as writer
    from interp_tl.cache import check_layers, split_languages

    layers = check_layers(model, config.layers)
    by_lang = split_languages(caches["last"], prompts.langs)
    a, b = prompts.langs
    table = align.layer_alignment(by_lang[a], by_lang[b], layers=layers, n_perms=config.n_perms,
                                  perm_seed=config.perm_seed, n_boot=config.n_boot)
    data = {
        "model": model.cfg.model_name,
        "n_problems": prompts.n,
        "n_layers": model.cfg.n_layers,
        "hidden_size": model.cfg.d_model,
        "languages": list(prompts.langs),
        "methodology": METHODOLOGY,
        "z_statistics": dict(stats.Z_STATISTICS),
        "layer_results": table.layer_results,
        "summary": table.summary,
    }
    if config.head_shares:
        split = writer.writer_shares(by_lang[a], by_lang[b], max(layers), nulls=False)
        data["head_shares"] = head_share_grid(split, model.cfg.n_heads)
    prov = study_provenance(model, "alignment", config, prompts.identity(), layers=layers,
                            hooks=[f"blocks.L.{h}" for h in align.HOOKS], token="last real token")
    return StudyResult("alignment", data, prov)


def run_alignment(model, config: AlignmentConfig = AlignmentConfig(), progress: bool = False) -> StudyResult:
    """Run the alignment study on a HookedTransformer.

    Args:
        model: any HookedTransformer (from :func:`interp_tl.models.load_model` or your own).
        config: see :class:`AlignmentConfig`.
        progress: show progress bars.

    Returns:
        A :class:`StudyResult` whose ``data`` has the research scripts' keys (``model``,
        ``n_problems``, ``n_layers``, ``hidden_size``, ``methodology``, ``layer_results``,
        ``summary``; their z keys hold the Monte Carlo z) with the exact-null twins
        (``z_exact_post_mlp``, ``dz_exact_attn``, ``total_dz_exact_attn``, ...), plus
        ``languages``, ``z_statistics`` (what the two z's are) and ``head_shares``.

    Pitfall: on LayerNorm models with TransformerLens' default processing every residual hook
    is mean-centred, so z differs from the raw model's; load with ``processing="none"`` to
    compare with the research scripts.
    """
    prompts = prepare(model, config)
    return analyse(model, config, prompts, extract_caches(model, config, prompts, progress), progress)


def plot(result: StudyResult):
    """Exact-null z per layer before/after attention/after MLP (left), Δz of attention vs MLP (middle), head shares."""
    from matplotlib.ticker import MaxNLocator

    rows = result.data["layer_results"]
    layers = np.array([r["layer"] for r in rows])

    def value(key: str) -> np.ndarray:
        return nan_array([r[key] for r in rows])

    shares = result.data.get("head_shares")
    fig = figure((15, 4) if shares else (11, 4))
    if shares:
        left, right, heat = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 3, 2]})
        layer_head_heatmap(fig, heat, nan_array(shares["heads"]), f"head shares of the gap at layer {shares['layer']}",
                           signed=True, label="share of the gap")
    else:
        left, right = fig.subplots(1, 2)
    for key, label in (("z_exact_pre", "resid_pre"), ("z_exact_post_attn", "+ attn"), ("z_exact_post_mlp", "+ mlp")):
        left.plot(layers, value(key), marker="o", ms=3, label=label)
    left.axhline(0, color="grey", lw=0.5)
    left.set(xlabel="layer", ylabel="matched-vs-scrambled z (exact null)", title="alignment of the residual")
    left.legend()
    width = 0.4
    right.bar(layers - width / 2, value("dz_exact_attn"), width, label="Δz attention")
    right.bar(layers + width / 2, value("dz_exact_mlp"), width, label="Δz MLP")
    right.axhline(0, color="grey", lw=0.5)
    right.set(xlabel="layer", ylabel="Δz (exact null)", title="Δz per sublayer (not additive)")
    right.legend()
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title(result), fontsize=9)
    return fig


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def headline(result: StudyResult) -> str:
    """Where the two languages align most, and what attention and the MLPs add, in exact-null z (order-free)."""
    data = result.data
    rows = data["layer_results"]
    zs = [r["z_exact_post_mlp"] for r in rows]
    best = max(range(len(zs)), key=lambda i: -np.inf if zs[i] is None else zs[i])
    s = data["summary"]
    a, b = sorted(data.get("languages", ["a", "b"]))  # the order the languages were given does not matter
    return (f"{a} and {b} last-token residuals align most after layer {rows[best]['layer']} "
            f"(exact-null z {_num(zs[best], '.1f')}); summed over layers, attention changes the alignment by "
            f"{_num(s['total_dz_exact_attn'], '+.1f')} z and the MLPs by {_num(s['total_dz_exact_mlp'], '+.1f')}")


def table(result: StudyResult) -> tuple[list[str], list[list[Any]]]:
    """Per layer, the exact-null z before / after attention / after the MLP and the two Δz."""
    keys = ["z_exact_pre", "z_exact_post_attn", "z_exact_post_mlp", "dz_exact_attn", "dz_exact_mlp"]
    return ["layer", *keys], [[r["layer"], *(r[k] for k in keys)] for r in result.data["layer_results"]]


STUDY = Study(
    name="alignment", summary="per-layer alignment of two languages' last-token residuals, attention vs MLP",
    config=AlignmentConfig, run=run_alignment, plot=plot, headline=headline, hooks=hooks, prepare=prepare,
    extract=extract_caches, analyse=analyse, check=hooks, docs="docs/studies/alignment.md",
    table=table,
)
