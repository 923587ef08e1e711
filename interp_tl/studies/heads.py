"""Which heads carry the cross-lingual alignment: the additive per-writer split, ablations, one head at a time.

**Split.** :func:`interp_tl.analyses.shares.writer_shares` splits the alignment gap of the last-token
residual after a layer over TransformerLens' decomposition (every head, every MLP, the embeddings,
the attention biases); the shares add up to the gap exactly, and each has a null band from random
pairings (``band``: what the share looks like when nothing is paired, not an interval for the
share), a Monte Carlo z against those pairings (``z``) and an exact-null z (``z_exact``).

**Causal check.** Ablating a head (``zero`` or ``mean``: its ``hook_z`` replaced by zeros or by its
mean over all real positions of the prompts) and reporting the change of the alignment z at every
layer from the head's on: ``delta_z_exact`` (exact-null z, deterministic) beside ``delta_z``
(Monte Carlo z: its differences carry permutation noise of a few tenths).

**One head** (:func:`head_report`, ``interp-tl head L.H``): its share, its ablation, where its last
token looks by token class, its attention-Jacobian numbers and its nearest heads in the adjacent
layers (per-head W_QK / W_OV distances).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from interp_tl.errors import BadInputError, LayerRangeError
from interp_tl.figures import figure, layer_head_heatmap
from interp_tl.results import StudyResult, finite_or_none
from interp_tl.studies.base import PromptSettings, Study, check_int, study_provenance

if TYPE_CHECKING:
    from interp_tl.analyses import shares as writer
    from interp_tl.tokens import ParallelPrompts

Ablation = Literal["zero", "mean"]


@dataclass(frozen=True, kw_only=True)
class HeadsConfig(PromptSettings):
    """Settings of the per-head study.

    Attributes:
        layer: residual layer whose alignment is split (None: the last layer).
        n_perms: random pairings for each share's null band.
        perm_seed: RandomState seed of the pairings.
        top: heads checked by ablation (largest shares).
        ablation: zero or mean.
    """

    layer: int | None = None
    n_perms: int = 200
    perm_seed: int = 42
    top: int = 3
    ablation: Ablation = "mean"

    def __post_init__(self) -> None:
        check_int(self.n_perms, "n_perms", 2)
        check_int(self.perm_seed, "perm_seed", 0)
        check_int(self.top, "top", 0)
        if self.layer is not None:
            check_int(self.layer, "layer", 0)
        if self.ablation not in ("zero", "mean"):
            raise BadInputError(f"unknown ablation {self.ablation!r}: zero or mean")
        super().__post_init__()


def split_layer(model, layer: int | None) -> int:
    """The residual layer to split: ``layer``, or the last one; :class:`LayerRangeError` outside the model."""
    n = model.cfg.n_layers
    layer = n - 1 if layer is None else int(layer)
    if not 0 <= layer < n:
        raise LayerRangeError(f"layer {layer} is out of range: the model has layers 0..{n - 1}")
    return layer


def prepare(model, config: HeadsConfig) -> ParallelPrompts:
    """The problem set in the config's two languages, tokenized for ``model``."""
    from interp_tl.tokens import parallel_prompts

    return parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)


def hooks(model, config: HeadsConfig) -> list[str]:
    """The writers of the split layer's residual (TransformerLens' decomposition needs them)."""
    from interp_tl.analyses import shares as writer

    return writer.hook_names(model, split_layer(model, config.layer))


def extract_caches(model, config: HeadsConfig, prompts: ParallelPrompts, progress: bool = False) -> dict:
    """``{"last": cache}``: the writers of both languages' prompts at their last real token."""
    from interp_tl.cache import extract

    return {"last": extract(model, prompts.stacked(), hooks(model, config), config.batch_size, "last", progress,
                            "heads: extracting last-token writers")}


def split(model, config: HeadsConfig, prompts: ParallelPrompts, caches: dict) -> writer.WriterShares:
    """:func:`interp_tl.analyses.shares.writer_shares` of the config's layer from the study's cache."""
    from interp_tl.analyses import shares as writer
    from interp_tl.cache import split_languages

    by_lang = split_languages(caches["last"], prompts.langs)
    a, b = prompts.langs
    return writer.writer_shares(by_lang[a], by_lang[b], split_layer(model, config.layer), n_perms=config.n_perms,
                                perm_seed=config.perm_seed)


def _ablation_hook(kind: Ablation, head: int, mean: np.ndarray | None):
    import torch
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0 if kind == "zero" else torch.as_tensor(mean, dtype=z.dtype, device=z.device)
        return z

    return hook


def head_mean_z(model, prompts: ParallelPrompts, layer: int, head: int, batch_size: int) -> np.ndarray:
    """Mean ``hook_z`` of one head over every real position of the prompts in all their languages.

    Summed in sorted language order, so the mean (and every ablation result) does not depend on
    the order the languages are given in.
    """
    from interp_tl.cache import extract

    name = f"blocks.{layer}.attn.hook_z"
    rows = []
    for lang in sorted(prompts.langs):
        tokens = prompts.tokens[lang]
        z = extract(model, tokens, [name], batch_size, reduce="all")[name]
        width = z.shape[1]
        rows += [z[i, width - length:, head].numpy() for i, length in enumerate(tokens.lengths)]
    return np.concatenate(rows).mean(0)


def ablation_effect(model, prompts: ParallelPrompts, layer: int, head: int, kind: Ablation = "mean",
                    batch_size: int = 32, n_perms: int = 200, perm_seed: int = 42) -> dict[str, Any]:
    """Alignment z (resid_post, last token) at layers ``layer..`` with and without the head ablated.

    Returns:
        ``layers``, ``ablation``; the exact-null z intact and ablated and their difference
        (``intact_exact``, ``ablated_exact``, ``delta_z_exact``: deterministic, what headlines and
        rankings use); and the same with the Monte Carlo z (``intact``, ``ablated``, ``delta_z``;
        ``n_perms`` pairings of ``RandomState(perm_seed)``), whose differences carry its sampling error.
    """
    from interp_tl import stats
    from interp_tl.cache import extract

    if kind not in ("zero", "mean"):
        raise BadInputError(f"unknown ablation {kind!r}: zero or mean")
    if not 0 <= head < model.cfg.n_heads:
        raise BadInputError(f"head {head} is out of range: the model has heads 0..{model.cfg.n_heads - 1}")
    mean = head_mean_z(model, prompts, layer, head, batch_size) if kind == "mean" else None
    names = [f"blocks.{i}.hook_resid_post" for i in range(layer, model.cfg.n_layers)]
    ablate = [(f"blocks.{layer}.attn.hook_z", _ablation_hook(kind, head, mean))]
    a, b = prompts.langs[:2]
    out: dict[str, list[float | None]] = {}
    for label, extra in (("intact", ()), ("ablated", ablate)):
        caches = {lang: extract(model, prompts.tokens[lang], names, batch_size, fwd_hooks=extra) for lang in (a, b)}
        zs = [stats.matched_vs_scrambled_z(caches[a][n][:, 0].numpy(), caches[b][n][:, 0].numpy(), n_perms=n_perms,
                                           seed=perm_seed) for n in names]
        out[label] = [finite_or_none(z.z) for z in zs]
        out[f"{label}_exact"] = [finite_or_none(z.z_exact) for z in zs]

    def delta(key: str) -> list[float | None]:
        return [None if x is None or y is None else x - y for x, y in zip(out[f"ablated{key}"], out[f"intact{key}"])]

    return {"layers": list(range(layer, model.cfg.n_layers)), "ablation": kind, **out,
            "delta_z": delta(""), "delta_z_exact": delta("_exact")}


def analyse(model, config: HeadsConfig, prompts: ParallelPrompts, caches: dict, progress: bool = False
            ) -> StudyResult:
    """The split from the study's cache, then ablations of the top heads (these run the model)."""
    from interp_tl import stats
    from interp_tl.analyses import shares as writer

    shares = split(model, config, prompts, caches)
    heads = [i for i, label in enumerate(shares.labels) if writer.head_of(label) is not None]
    top = sorted(heads, key=lambda i: -shares.shares[i])[: config.top]
    ablations = {}
    for i in top:
        layer, head = writer.head_of(shares.labels[i])
        ablations[shares.labels[i]] = ablation_effect(model, prompts, layer, head, config.ablation, config.batch_size,
                                                      config.n_perms, config.perm_seed)
    data = {
        "layer": shares.layer, "languages": list(prompts.langs), "total": shares.total,
        "z_statistics": dict(stats.Z_STATISTICS),
        "writers": [{"name": n, "share": float(s), "band": [float(x) for x in band], "z_exact": finite_or_none(ze),
                     "z": finite_or_none(z)}
                    for n, s, band, ze, z in zip(shares.labels, shares.shares, shares.band, shares.z_exact, shares.z)],
        "head_shares": shares.head_grid(model.cfg.n_heads).tolist(),
        "shares_sum_error": float(abs(shares.shares.sum() - shares.total)),
        "writers_sum_max_abs_error": shares.sum_error,
        "ablations": ablations,
    }
    prov = study_provenance(model, "heads", config, prompts.identity(), layer=shares.layer)
    return StudyResult("heads", data, prov)


def run_heads(model, config: HeadsConfig = HeadsConfig(), progress: bool = False) -> StudyResult:
    """Per-writer shares of the alignment at one layer, with null bands, and ablations of the top heads."""
    prompts = prepare(model, config)
    return analyse(model, config, prompts, extract_caches(model, config, prompts, progress), progress)


def parse_head(name: str) -> tuple[int, int]:
    """``"2.3"``, ``"L2.H3"`` or ``"L2H3"`` -> ``(2, 3)``."""
    text = name.upper().replace("L", "").replace("H", ".").replace("..", ".")
    try:
        layer, head = text.split(".")
        return int(layer), int(head)
    except ValueError:
        raise BadInputError(f"a head is written L.H, e.g. 2.3, got {name!r}") from None


def head_in_model(model, head: str) -> tuple[int, int]:
    """``(layer, head)`` of ``"L.H"``, checked against ``model.cfg``.

    Raises:
        BadInputError: a malformed head or a head the model does not have (LayerRangeError for
            the layer).
    """
    layer, h = parse_head(head)
    if not 0 <= layer < model.cfg.n_layers:
        raise LayerRangeError(f"layer {layer} is out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    if not 0 <= h < model.cfg.n_heads:
        raise BadInputError(f"head {h} is out of range: the model has heads 0..{model.cfg.n_heads - 1}")
    return layer, h


def _token_class(model, token_id: int, bos: int | None) -> str:
    if bos is not None and token_id == bos:
        return "bos"
    text = model.tokenizer.decode([token_id])
    if any(c.isdigit() for c in text):
        return "digits"
    if any(c.isalpha() for c in text):
        return "letters"
    return "other"


def _last_rows(model, tokens, layer: int, head: int, batch_size: int) -> dict[int, np.ndarray]:
    """Per prompt, the head's attention from the last token over the prompt's real positions."""
    import torch

    from interp_tl.batching import batches

    name = f"blocks.{layer}.attn.hook_pattern"
    rows: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        for batch in batches(model, tokens, batch_size):
            _, cache = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask, return_type=None,
                                            stop_at_layer=layer + 1, names_filter=[name])
            last = cache[name][:, head, -1].double().cpu().numpy()
            for j, row in enumerate(batch.rows):
                rows[int(row)] = last[j, last.shape[1] - int(batch.lengths[j]):]
    return rows


def attention_stats(model, prompts: ParallelPrompts, layer: int, head: int, batch_size: int = 32) -> dict[str, Any]:
    """The head's last-token attention on the prompts: entropy, first-position mass, mass per token class."""
    out = {}
    for lang in prompts.langs:
        tokens = prompts.tokens[lang]
        rows = _last_rows(model, tokens, layer, head, batch_size)
        classes: dict[str, list[float]] = {"bos": [], "digits": [], "letters": [], "other": []}
        entropy, first = [], []
        for i in np.argsort(tokens.lengths, kind="stable"):  # the batches' order, so sums run as before
            att = rows[int(i)]
            entropy.append(float(-(att * np.log(np.clip(att, 1e-30, None))).sum()))
            first.append(float(att[0]))
            mass: dict[str, float] = {k: 0.0 for k in classes}
            for t, p in zip(tokens.ids[int(i)], att):
                mass[_token_class(model, t, tokens.bos_id)] += float(p)
            for k in classes:
                classes[k].append(mass[k])
        out[lang] = {"entropy": float(np.mean(entropy)), "first_position_mass": float(np.mean(first)),
                     "mass_by_token_class": {k: float(np.mean(v)) for k, v in classes.items()}}
    return out


def head_patterns(model, prompts: ParallelPrompts, layer: int, head: int, problem: int = 0) -> dict[str, Any]:
    """The head's whole attention pattern on one problem's prompt in each language (for the report's figure).

    Returns:
        ``{lang: {"prompt": text, "tokens": [token strings], "pattern": [query][key] weights}}``, the
        prompt run alone (no padding), BOS included when it was prepended.
    """
    import torch

    name = f"blocks.{layer}.attn.hook_pattern"
    out = {}
    with torch.inference_mode():
        for lang in prompts.langs:
            ids = list(prompts.tokens[lang].ids[problem])
            tokens = torch.tensor([ids], device=model.cfg.device)
            _, cache = model.run_with_cache(tokens, return_type=None, stop_at_layer=layer + 1, names_filter=[name])
            pattern = cache[name][0, head].double().cpu().numpy()
            out[lang] = {"prompt": prompts.texts(lang)[problem],
                         "tokens": [model.tokenizer.decode([t]) for t in ids],
                         "pattern": pattern.tolist()}
    return out


def head_report(model, head: str, config: HeadsConfig = HeadsConfig()) -> dict[str, Any]:
    """Everything about one head (``"L.H"``): share, ablation, attention statistics, Jacobian, neighbours.

    Attention statistics on the parallel prompts (both languages, last token's query row):
    entropy, mass on the first position, and where the last token looks by token class (BOS,
    digits, letters, other). The Jacobian numbers come from
    :func:`interp_tl.analyses.jacobian.jacobian_statistics` on 20 problems in the two languages;
    the neighbours from the per-head W_QK / W_OV distances to heads of the adjacent layers;
    ``patterns``: the head's whole attention pattern on the first problem in each language
    (:func:`head_patterns`).
    """
    from interp_tl import stats
    from interp_tl.analyses.jacobian import jacobian_statistics
    from interp_tl.gauge import head_invariants
    from interp_tl.tokens import tokenize

    layer, h = head_in_model(model, head)
    prompts = prepare(model, config)
    shares = split(model, config, prompts, extract_caches(model, config, prompts))
    label = f"L{layer}H{h}"
    share = None
    if label in shares.labels:
        i = shares.labels.index(label)
        share = {"layer_of_residual": shares.layer, "share": float(shares.shares[i]), "total": shares.total,
                 "band": [float(x) for x in shares.band[i]], "z_exact": finite_or_none(shares.z_exact[i]),
                 "z": finite_or_none(shares.z[i])}
    report = {"head": label, "share": share, "z_statistics": dict(stats.Z_STATISTICS),
              "ablation": ablation_effect(model, prompts, layer, h, config.ablation, config.batch_size,
                                          config.n_perms, config.perm_seed),
              "attention": attention_stats(model, prompts, layer, h, config.batch_size),
              "patterns": head_patterns(model, prompts, layer, h)}
    from interp_tl.prompts import generate_problems

    problems = generate_problems(20, config.seed, prompts.langs)
    texts = [p.prompts[lang] + f" {p.answer}" for p in problems for lang in prompts.langs]
    jac = jacobian_statistics(model, tokenize(model, texts, config.prepend_bos), weight_gradients=False)
    report["jacobian"] = {k: jac[k][layer][h] for k in ("r_diag", "cos_diag", "cos_ste", "mean_max_attention",
                                                        "row_entropy")}
    report["neighbours"] = {}
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            inv = head_invariants(model, layer, other)
            report["neighbours"][f"L{other}"] = {
                k: {"closest_head": int(np.argmin(inv[k]["distance"][h])),
                    "distance": float(min(inv[k]["distance"][h]))}
                for k in ("W_QK", "W_OV")}
    return report


def head_lines(report: dict) -> list[str]:
    """The head report in a few printed lines (what ``interp-tl head`` prints and the HTML report shows)."""
    share, abl, name = report["share"], report["ablation"], report["head"]
    lines = [f"head {name}:"]
    if share:
        lines.append(f"  share of the alignment gap at layer {share['layer_of_residual']}: {share['share']:.5f} "
                     f"of {share['total']:.5f} (null band {share['band'][0]:.5f}..{share['band'][1]:.5f}, "
                     f"exact-null z {share['z_exact']:.1f})")
    lines.append(f"  {abl['ablation']} ablation, change of the exact-null z at layers {abl['layers']}: "
                 + ", ".join(f"{d:+.2f}" for d in abl["delta_z_exact"]))
    for lang, att in report["attention"].items():
        classes = ", ".join(f"{k} {v:.2f}" for k, v in att["mass_by_token_class"].items())
        lines.append(f"  {lang}: last-token attention entropy {att['entropy']:.2f}, first position "
                     f"{att['first_position_mass']:.2f}; by token class: {classes}")
    jac = report["jacobian"]
    lines.append(f"  Jacobian: cos_diag {jac['cos_diag']:.3f}, cos_ste {jac['cos_ste']:.3f}, "
                 f"r_diag {jac['r_diag']:.3f}")
    for other, inv in report["neighbours"].items():
        lines.append(f"  closest in {other}: W_QK H{inv['W_QK']['closest_head']} ({inv['W_QK']['distance']:.3f}), "
                     f"W_OV H{inv['W_OV']['closest_head']} ({inv['W_OV']['distance']:.3f})")
    return lines


#: Writers drawn one by one in the heads figure; the rest are summed into one bar.
PLOTTED_WRITERS = 24


def plot(result: StudyResult):
    """Per-head shares of the alignment gap (layer x head heatmap) and the largest writers with null bands.

    The right panel shows the :data:`PLOTTED_WRITERS` writers with the largest |share| (in the
    model's order) and one bar for the sum of all others, so it reads at GPT-2 scale (170 writers).
    """
    data = result.data
    grid = np.array(data["head_shares"], dtype=float)
    writers = data["writers"]
    shown = sorted(sorted(range(len(writers)), key=lambda i: -abs(writers[i]["share"]))[:PLOTTED_WRITERS])
    rest = [w["share"] for i, w in enumerate(writers) if i not in set(shown)]
    rows = [writers[i] for i in shown]
    fig = figure((13, 4 + 0.16 * len(rows)))
    left, right = fig.subplots(1, 2)
    layer_head_heatmap(fig, left, grid, f"head shares of the gap at layer {data['layer']}", signed=True,
                       label="share of the gap")
    names = [w["name"] for w in rows] + ([f"{len(rest)} other writers"] if rest else [])
    values = [w["share"] for w in rows] + ([sum(rest)] if rest else [])
    y = np.arange(len(values))
    right.barh(y, values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
    right.hlines(y[: len(rows)], [w["band"][0] for w in rows], [w["band"][1] for w in rows], color="k", lw=2,
                 label="null band (random pairings)")
    right.set_yticks(y, names, fontsize=7)
    right.invert_yaxis()
    right.set(xlabel="share of the gap (matched − null mean cosine)",
              title=f"largest writers (all {len(writers)} sum to {data['total']:.3f})")
    right.legend(fontsize=7, loc="lower right")
    model = result.provenance["model"]
    fig.suptitle(f"{model['name']} ({model['processing']}), {'/'.join(data['languages'])}", fontsize=9)
    return fig


def headline(result: StudyResult) -> str:
    """How much of the gap the MLPs and the heads carry, the head with the largest share and its ablation."""
    from interp_tl.analyses import shares as writer

    data = result.data
    heads = [w for w in data["writers"] if writer.head_of(w["name"]) is not None]
    mlps = sum(w["share"] for w in data["writers"] if w["name"].endswith("_mlp_out"))
    best = max(heads, key=lambda w: w["share"])
    z = "n/a" if best["z_exact"] is None else f"{best['z_exact']:.1f}"
    text = (f"of the alignment gap {data['total']:.4f} after layer {data['layer']}, the MLPs carry {mlps:.4f} and "
            f"all heads {sum(w['share'] for w in heads):.4f}; the largest head share is {best['name']}'s "
            f"{best['share']:.4f} (exact-null z {z})")
    ablation = data["ablations"].get(best["name"])
    if ablation and ablation["delta_z_exact"][-1] is not None:
        text += (f"; {ablation['ablation']}-ablating it moves the exact-null z at layer {data['layer']} by "
                 f"{ablation['delta_z_exact'][-1]:+.2f}")
    return text


#: Writers listed in the heads study's key table (largest shares first).
TABLE_WRITERS = 10


def table(result: StudyResult) -> tuple[list[str], list[list[Any]]]:
    """The writers with the largest shares of the gap: share, null band, exact-null and Monte Carlo z."""
    writers = sorted(result.data["writers"], key=lambda w: -w["share"])[:TABLE_WRITERS]
    return (["writer", "share", "band_low", "band_high", "z_exact", "z"],
            [[w["name"], w["share"], w["band"][0], w["band"][1], w["z_exact"], w["z"]] for w in writers])


STUDY = Study(
    name="heads", summary="additive per-head shares of the alignment, with ablations of the top heads",
    config=HeadsConfig, run=run_heads, plot=plot, headline=headline, hooks=hooks, prepare=prepare,
    extract=extract_caches, analyse=analyse, check=hooks, docs="docs/studies/heads.md",
    table=table,
)
