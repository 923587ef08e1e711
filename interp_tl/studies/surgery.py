"""Kernel surgery: project a language subspace out of what chosen layers' MLPs write; what changes.

Port of the research script ``expAG_kernel_surgery.py`` onto hook points and
:mod:`interp_tl.edits`, and beyond its single before/after comparison:

1. **Subspace** per edited layer: last-token ``blocks.L.hook_resid_post`` (or another hook) of
   ``n_pairs`` problems in every language of ``langs`` (a cache), centred per problem across
   languages, SVD, top-k axes (:func:`interp_tl.analyses.subspace.language_subspace`). Fitted on
   the model that is edited, so the axes are in its residual basis (raw, or centred under
   ``center_writing_weights``).
2. **Edit**: ``W_out <- W_out @ (I - alpha U U^T)``, ``b_out`` likewise, inside a context manager
   that restores the weights bit-exactly (:func:`interp_tl.edits.projected_mlp_writes`).
3. **Evaluation** (:func:`interp_tl.generation.evaluate_generation`): greedy generation on the
   seed's test set (first ``eval_per_category`` problems of each category) in every language:
   accuracy (answer among the generated numbers, as the seed), first-answer position, output
   language (:mod:`interp_tl.langid`); for the baseline, the surgery and a **random subspace of
   the same rank** per layer (control); exact McNemar tests of baseline vs surgery and vs control
   per language; a **dose-response sweep** over k and alpha (language and random subspaces);
   teacher-forced next-token loss on held-out problems (``loss_seed``) before and after.

Default layers: the seed edited L9-L26 of Qwen2.5-3B's 36 layers; other models get the same
fraction of depth, ``round(9/36 n)`` to ``round(27/36 n) - 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest
from transformer_lens import ActivationCache

from interp_tl.analyses.subspace import language_subspace
from interp_tl.batching import ParallelPrompts, parallel_prompts
from interp_tl.cache import check_layers, extract, split_languages
from interp_tl.edits import Basis, projected_mlp_writes, residual_basis
from interp_tl.errors import BadInputError
from interp_tl.figures import figure
from interp_tl.generation import evaluate_generation, next_token_loss
from interp_tl.prompts import generate_problems, seed_test_problems
from interp_tl.results import StudyResult
from interp_tl.studies.base import PromptSettings, Study, all_languages, check_int, study_provenance

#: The seed's block: layers 9..26 of a 36-layer model.
SEED_LAYERS = (9, 27, 36)


@dataclass(frozen=True, kw_only=True)
class SurgeryConfig(PromptSettings):
    """Settings of the kernel-surgery study.

    Attributes:
        n_pairs: problems per language the language subspace is fitted on.
        langs: languages of the fit and of the evaluation (default all seven, as the research script).
        seed: problem-set seed of the fit (42 as the research script).
        layers: edited layers, e.g. 1-2 (None: the research script's L9-L26 of 36 as a fraction of depth).
        k: language axes removed per layer (10 as the research script); ignored with min_variance.
        min_variance: choose k by rule: per layer the smallest k whose axes explain this fraction of the
            problem-centred variance; the study uses the largest over the edited layers.
        alpha: strength of the projection in [0, 1] (1 as the research script).
        fit_hook: hook whose last-token activations define the subspace at each edited layer.
        eval_per_category: test problems per category (4 as the research script).
        max_new_tokens: generation budget (128 as the research script; cut to what the context leaves).
        sweep_k: k values of the dose-response sweep, e.g. 1,2,5,10 (values above the data's rank are dropped).
        sweep_alpha: alpha values of the sweep, e.g. 0.25,0.5,1.
        loss_n: problems for the next-token loss before/after.
        loss_seed: their problem-set seed.
        control_seed: seed of the random control subspaces.
    """

    langs: tuple[str, ...] = all_languages()
    layers: tuple[int, ...] | None = None
    k: int = 10
    min_variance: float | None = None
    alpha: float = 1.0
    fit_hook: str = "hook_resid_post"
    eval_per_category: int = 4
    max_new_tokens: int = 128
    sweep_k: tuple[int, ...] = (1, 2, 5, 10)
    sweep_alpha: tuple[float, ...] = (0.25, 0.5, 1.0)
    loss_n: int = 50
    loss_seed: int = 7
    control_seed: int = 0

    n_langs = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sweep_k", tuple(self.sweep_k))
        object.__setattr__(self, "sweep_alpha", tuple(float(a) for a in self.sweep_alpha))
        if not 0.0 <= self.alpha <= 1.0 or any(not 0.0 <= a <= 1.0 for a in self.sweep_alpha):
            raise BadInputError(f"alpha must be in [0, 1], got {self.alpha} (sweep {list(self.sweep_alpha)})")
        if self.min_variance is not None and not 0 < self.min_variance <= 1:
            raise BadInputError(f"min_variance must be in (0, 1], got {self.min_variance}")
        check_int(self.k, "k", 1)
        for k in self.sweep_k:
            check_int(k, "sweep_k", 1)
        check_int(self.max_new_tokens, "max_new_tokens", 1)
        check_int(self.eval_per_category, "eval_per_category", 1)
        if self.eval_per_category > 40:
            raise BadInputError(f"eval_per_category must be at most 40 (the set has 40 per category), "
                                f"got {self.eval_per_category}")
        if check_int(self.loss_n, "loss_n", 5) % 5:
            raise BadInputError(f"loss_n must be a positive multiple of 5, got {self.loss_n}")
        check_int(self.loss_seed, "loss_seed", 0)
        check_int(self.control_seed, "control_seed", 0)
        super().__post_init__()


def default_layers(n_layers: int) -> list[int]:
    """The seed's L9-L26 of 36 as a fraction of depth: ``round(9/36 n) .. round(27/36 n) - 1``."""
    lo, hi, depth = SEED_LAYERS
    start, stop = round(lo / depth * n_layers), round(hi / depth * n_layers)
    return list(range(start, max(stop, start + 1)))


def edited_layers(model, config: SurgeryConfig) -> list[int]:
    """The layers the study edits (checked against the model); k checked against d_model."""
    layers = check_layers(model, config.layers) if config.layers is not None else default_layers(model.cfg.n_layers)
    if not config.k < model.cfg.d_model:
        raise BadInputError(f"k = {config.k} must be between 1 and d_model - 1 = {model.cfg.d_model - 1}")
    return layers


def prepare(model, config: SurgeryConfig) -> ParallelPrompts:
    """The fit problems in every language of the config, tokenized for ``model``."""
    return parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)


def hooks(model, config: SurgeryConfig) -> list[str]:
    """The fit hook at every edited layer."""
    return [f"blocks.{layer}.{config.fit_hook}" for layer in edited_layers(model, config)]


def extract_caches(model, config: SurgeryConfig, prompts: ParallelPrompts, progress: bool = False) -> dict:
    """``{"fit": cache}``: the fit hook at each edited layer, last real token, every language (in ``langs`` order)."""
    names = hooks(model, config)
    per_lang = [extract(model, prompts.tokens[lang], names, config.batch_size, progress=progress,
                        desc=f"surgery: fitting the language subspace ({lang})") for lang in prompts.langs]
    joined = {name: torch.cat([c[name] for c in per_lang]) for name in names}
    return {"fit": ActivationCache(joined, model)}


def random_bases(model, layers: list[int], k: int, seed: int) -> dict[int, Basis]:
    """A random orthonormal k-dim basis per layer in the model's residual basis (the control)."""
    kind = residual_basis(model)
    out = {}
    for layer in layers:
        g = np.random.default_rng([seed, layer]).normal(size=(model.cfg.d_model, k))
        if kind == "centred":
            g -= g.mean(0, keepdims=True)
        out[layer] = Basis(np.linalg.qr(g)[0], kind)
    return out


def mcnemar(before: list[bool], after: list[bool]) -> dict[str, Any]:
    """Exact McNemar test on paired outcomes: discordant counts and the two-sided binomial p."""
    lost = sum(x and not y for x, y in zip(before, after))
    gained = sum(y and not x for x, y in zip(before, after))
    p = 1.0 if lost + gained == 0 else float(binomtest(min(lost, gained), lost + gained, 0.5).pvalue)
    return {"lost": int(lost), "gained": int(gained), "p_value": p}


def _strip(results: Mapping[str, dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "correct_mask"} for r in results.values()]


def _mean_accuracy(results: Mapping[str, dict]) -> float:
    return float(np.mean([r["accuracy"] for r in results.values()]))


def _subspaces(model, config: SurgeryConfig, layers: list[int], by_lang: Mapping[str, ActivationCache]):
    names = {layer: f"blocks.{layer}.{config.fit_hook}" for layer in layers}
    rule = None
    if config.min_variance is not None:
        per_layer = {layer: language_subspace(by_lang, names[layer], min_variance=config.min_variance).k
                     for layer in layers}
        rule = {"min_variance": config.min_variance, "k_per_layer": {str(k): v for k, v in per_layer.items()}}
        config = replace(config, k=max(per_layer.values()))
    subspaces = {layer: language_subspace(by_lang, names[layer], k=config.k) for layer in layers}  # k > rank: error
    rank = min(s.rank for s in subspaces.values())
    sweep_k = sorted(set(config.sweep_k) | {config.k})
    dropped = [k for k in sweep_k if k > rank or k >= model.cfg.d_model]
    sweep_k = [k for k in sweep_k if k not in dropped]
    if max(sweep_k) > config.k:
        subspaces = {layer: language_subspace(by_lang, names[layer], k=max(sweep_k)) for layer in layers}
    return subspaces, sweep_k, dropped, config, rule


def analyse(model, config: SurgeryConfig, prompts: ParallelPrompts, caches: dict, progress: bool = False
            ) -> StudyResult:
    """Subspaces from the fit cache, then the edits and their evaluations (these run the model)."""
    layers = edited_layers(model, config)
    by_lang = split_languages(caches["fit"], prompts.langs)
    subspaces, sweep_k, dropped, config, rule = _subspaces(model, config, layers, by_lang)
    kind = residual_basis(model)

    def bases(k: int) -> dict[int, Basis]:
        return {layer: Basis(s.axes[:, :k], kind) for layer, s in subspaces.items()}

    problems = seed_test_problems(config.eval_per_category)
    loss_problems = generate_problems(config.loss_n, config.loss_seed)

    def evaluate(edit, label: str) -> tuple[dict, dict]:
        with edit:
            gen = evaluate_generation(model, problems, config.langs, config.max_new_tokens, config.batch_size,
                                      config.prepend_bos, label)
            loss = next_token_loss(model, loss_problems, config.langs, config.batch_size, config.prepend_bos)
        return gen, loss

    baseline, loss_base = evaluate(nullcontext(), "baseline")
    surgery, loss_surg = evaluate(projected_mlp_writes(model, layers, bases(config.k), config.alpha), "surgery")
    control_bases = random_bases(model, layers, config.k, config.control_seed)
    control, loss_ctrl = evaluate(projected_mlp_writes(model, layers, control_bases, config.alpha), "random_control")
    done = {(config.k, config.alpha, "language"): surgery, (config.k, config.alpha, "random"): control}
    sweep = []
    for k in sweep_k:
        for alpha in config.sweep_alpha:
            for name, b in (("language", bases(k)), ("random", random_bases(model, layers, k, config.control_seed))):
                res = done.get((k, alpha, name))
                if res is None:  # the study's own (k, alpha) was generated above
                    with projected_mlp_writes(model, layers, b, alpha):
                        res = evaluate_generation(model, problems, config.langs, config.max_new_tokens,
                                                  config.batch_size, config.prepend_bos)
                sweep.append({"k": k, "alpha": alpha, "subspace": name, "mean_accuracy": _mean_accuracy(res),
                              "accuracy": {lang: r["accuracy"] for lang, r in res.items()}})
    paired = {lang: {"surgery_vs_baseline": mcnemar(baseline[lang]["correct_mask"], surgery[lang]["correct_mask"]),
                     "control_vs_baseline": mcnemar(baseline[lang]["correct_mask"], control[lang]["correct_mask"])}
              for lang in config.langs}
    data = {
        "experiment": "kernel_surgery",
        "surgery_layers": layers,
        "n_lang_dims": config.k,
        "k_rule": rule,
        "alpha": config.alpha,
        "n_test_problems": len(problems),
        "max_new_tokens": config.max_new_tokens,
        "baseline": _strip(baseline),
        "surgery": _strip(surgery),
        "random_control": _strip(control),
        "paired_tests": paired,
        "sweep": sweep,
        "sweep_k_dropped_above_rank": dropped,
        "loss": {"held_out": {"n": config.loss_n, "seed": config.loss_seed},
                 "baseline": loss_base, "surgery": loss_surg, "random_control": loss_ctrl},
        "subspace": {str(layer): {"variance_explained": float(s.scree[: config.k].sum()),
                                  "scree": [float(x) for x in s.scree[:20]], "rank": s.rank}
                     for layer, s in subspaces.items()},
        "residual_basis": kind,
        "summary": {"baseline_mean_accuracy": _mean_accuracy(baseline),
                    "surgery_mean_accuracy": _mean_accuracy(surgery),
                    "random_control_mean_accuracy": _mean_accuracy(control)},
    }
    prov = study_provenance(
        model, "surgery", config, {**prompts.identity(), "hook": config.fit_hook}, layers=layers,
        edit={"kind": "mlp_write_projection", "residual_basis": kind, "restored": True},
        evaluation={"set": "seed_test_problems", "per_category": config.eval_per_category, "seed": 42,
                    "languages": list(config.langs)},
        loss_problems={"n": config.loss_n, "seed": config.loss_seed})
    return StudyResult("surgery", data, prov)


def run_surgery(model, config: SurgeryConfig = SurgeryConfig(), progress: bool = False) -> StudyResult:
    """Run the kernel-surgery study on a HookedTransformer (its weights are restored afterwards).

    Returns:
        A :class:`StudyResult` whose ``data`` has the research script's keys (``experiment``,
        ``surgery_layers``, ``n_lang_dims``, ``n_test_problems``, ``max_new_tokens``, ``baseline``
        and ``surgery`` as lists of per-language results with ``correct``, ``total``,
        ``accuracy``, ``mean_fat``, ``outputs``, ``lang_preservation``) plus ``random_control``,
        ``paired_tests``, ``sweep``, ``loss`` and ``subspace``.

    Raises:
        BadInputError: alpha outside [0, 1], k >= d_model or above the data's rank, unknown
            languages. LayerRangeError: a layer out of range.
    """
    edited_layers(model, config)
    prompts = prepare(model, config)
    return analyse(model, config, prompts, extract_caches(model, config, prompts, progress), progress)


def plot(result: StudyResult):
    """Accuracy and language preservation per language (baseline / surgery / random control) and the dose-response."""
    data = result.data
    conditions = (("baseline", "baseline"), ("surgery", "surgery"), ("random_control", "random control"))
    langs = [r["lang"] for r in data["baseline"]]
    x = np.arange(len(langs))
    fig = figure((15, 4))
    ax_acc, ax_lang, ax_sweep = fig.subplots(1, 3)
    width = 0.27
    for i, (key, label) in enumerate(conditions):
        rows = data[key]
        ax_acc.bar(x + (i - 1) * width, [r["accuracy"] for r in rows], width, label=label)
        kept = [r["lang_preservation"]["preserved"] for r in rows]
        ax_lang.bar(x + (i - 1) * width, [np.nan if v is None else v for v in kept], width, label=label)
    ax_acc.set_xticks(x, langs)
    ax_acc.set(ylim=(0, 1.05), ylabel="accuracy (answer among generated numbers)", title="accuracy")
    ax_acc.legend(fontsize=7)
    ax_lang.set_xticks(x, langs)
    ax_lang.set(ylim=(0, 1.05), ylabel="outputs in the prompt's language", title="language preservation")
    if all(r["lang_preservation"]["preserved"] is None for key, _ in conditions for r in data[key]):
        ax_lang.text(0.5, 0.5, "no output has letters\n(answers are digits only)", ha="center", va="center",
                     transform=ax_lang.transAxes, fontsize=8)
    for kind, style in (("language", "-"), ("random", "--")):
        for alpha in sorted({s["alpha"] for s in data["sweep"]}):
            pts = sorted((s["k"], s["mean_accuracy"]) for s in data["sweep"]
                         if s["subspace"] == kind and s["alpha"] == alpha)
            if pts:
                ax_sweep.plot(*zip(*pts), style, marker="o", ms=3, label=f"{kind} α={alpha:g}")
    ax_sweep.axhline(data["summary"]["baseline_mean_accuracy"], color="k", lw=0.8, label="baseline")
    ax_sweep.set(ylim=(0, 1.05), xscale="log", xlabel="k (axes removed per layer)", ylabel="mean accuracy",
                 title="dose-response")
    ax_sweep.legend(fontsize=6)
    model = result.provenance["model"]
    fig.suptitle(f"{model['name']} ({model['processing']}), layers {data['surgery_layers']}, "
                 f"k={data['n_lang_dims']}, α={data['alpha']:g}, {data['n_test_problems']} problems", fontsize=9)
    return fig


def headline(result: StudyResult) -> str:
    """Mean accuracy of the baseline, the surgery and the random control."""
    data = result.data
    s = data["summary"]
    return (f"mean accuracy baseline {s['baseline_mean_accuracy']:.3f}, surgery {s['surgery_mean_accuracy']:.3f}, "
            f"random control {s['random_control_mean_accuracy']:.3f} (layers {data['surgery_layers']}, "
            f"k={data['n_lang_dims']})")


STUDY = Study(
    name="surgery", summary="language subspace projected out of MLP writes: generation before/after, controls",
    config=SurgeryConfig, run=run_surgery, plot=plot, headline=headline, hooks=hooks, prepare=prepare,
    extract=extract_caches, analyse=analyse, check=edited_layers, docs="docs/studies/surgery.md",
)
