"""Kernel surgery: project a language subspace out of what chosen layers' MLPs write; what changes.

Port of the research script ``expAG_kernel_surgery.py`` onto hook points and
:mod:`interp_tl.edits`, and beyond its single before/after comparison:

1. **Subspace** per edited layer: last-token ``blocks.L.hook_resid_post`` (or another hook) of
   ``n_pairs`` problems in every language of ``langs`` (a cache), centred per problem across
   languages, SVD, top-k axes (:func:`interp_tl.analyses.subspace.language_subspace`). Fitted on
   the model that is edited, so the axes are in its residual basis (raw, or centred under
   ``center_writing_weights``). Drawn problems that the study also evaluates (generation test
   set or loss set; same template and numbers) are replaced by fresh draws of their category,
   so the fit is disjoint from every evaluated problem (``fit_set``).
2. **Edit**: ``W_out <- W_out @ (I - alpha U U^T)``, ``b_out`` likewise, inside a context manager
   that restores the weights bit-exactly (:func:`interp_tl.edits.projected_mlp_writes`).
3. **Evaluation** (:func:`interp_tl.generation.evaluate_generation`): greedy generation on the
   seed's test set (first ``eval_per_category`` problems of each category) in every language:
   accuracy (answer among the generated numbers, as the seed), first-answer position, output
   language (:mod:`interp_tl.langid`); for the baseline, the surgery and two controls per layer:
   a **random subspace of the same rank** (uniformly random directions) and an **energy-matched**
   one (random directions tilted towards the MLP write's own variance until they remove the same
   fraction of its energy as the language axes at the fit positions,
   :func:`interp_tl.edits.energy_matched_basis`); exact McNemar tests per language and, pooled
   over languages, an exact stratified McNemar test and an exact sign-flip test by problem
   (:func:`interp_tl.stats.paired_binary_tests`); a **dose-response sweep** over k and alpha
   (language, random and energy-matched subspaces), of accuracy and of answer language; the same
   paired tests for the language outcome (the output identified as the prompt's language by
   :mod:`interp_tl.langid`); teacher-forced ``answer_loss`` (:data:`interp_tl.generation.ANSWER_LOSS`),
   ``number_loss`` and ``sequence_loss`` on the loss set (``loss_n`` problems of ``loss_seed``)
   before and after. For ``interp-tl/polyglot-toy`` the JSON counts, per category, the
   (problem, language) pairs of the evaluation and loss sets that its training stream contained
   (:func:`interp_tl.training_stream.trained_pairs`; ``evaluation_trained_pairs``,
   ``loss.trained_pairs``); combinatorics is always trained on (memorisation).

Default layers: the seed edited L9-L26 of Qwen2.5-3B's 36 layers; other models get the same
fraction of depth, ``round(9/36 n)`` to ``round(27/36 n) - 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from interp_tl.errors import BadInputError
from interp_tl.figures import figure
from interp_tl.prompts import (
    Problem,
    generate_problems,
    generate_problems_excluding,
    overlap_count,
    problem_set_id,
    seed_test_problems,
)
from interp_tl.results import StudyResult
from interp_tl.studies.base import PromptSettings, Study, all_languages, check_int, study_provenance
from interp_tl.tokens import ParallelPrompts

if TYPE_CHECKING:
    from transformer_lens import ActivationCache

    from interp_tl.edits import Basis, MatchedBasis

#: The seed's block: layers 9..26 of a 36-layer model.
SEED_LAYERS = (9, 27, 36)


@dataclass(frozen=True, kw_only=True)
class SurgeryConfig(PromptSettings):
    """Settings of the kernel-surgery study.

    Attributes:
        n_pairs: problems per language the language subspace is fitted on (evaluated ones replaced by fresh draws).
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
        loss_n: problems for the answer loss before/after (generate_problems(loss_n, loss_seed)).
        loss_seed: their problem-set seed.
        control_seed: seed of the random and energy-matched control subspaces.
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
    from interp_tl.cache import check_layers

    layers = check_layers(model, config.layers) if config.layers is not None else default_layers(model.cfg.n_layers)
    if not config.k < model.cfg.d_model:
        raise BadInputError(f"k = {config.k} must be between 1 and d_model - 1 = {model.cfg.d_model - 1}")
    return layers


@dataclass(frozen=True)
class FitPrompts(ParallelPrompts):
    """The problems the language subspace is fitted on: the drawn set, evaluated problems replaced.

    Attributes:
        n_replaced: drawn problems that the study also evaluates (generation test set or loss
            set; same template and numbers), each replaced by a fresh draw of its category
            (:func:`interp_tl.prompts.generate_problems_excluding`).
    """

    n_replaced: int

    def identity(self) -> dict[str, object]:
        """What regenerates these prompts: the drawn set's id, the replacement rule, languages, BOS."""
        first = self.tokens[self.langs[0]]
        return {**problem_set_id(self.n, self.seed), "languages": list(self.langs),
                "prepend_bos": first.prepend_bos, "bos_token_id": first.bos_id,
                "evaluated_problems": REPLACEMENT_RULE, "n_replaced": self.n_replaced}


#: How the fit set is kept apart from the evaluated problems, in words for the JSON.
REPLACEMENT_RULE = ("drawn problems also in the evaluation or loss sets are replaced by the next draw of the same "
                    "category from the same generator")


def evaluated_problems(config: SurgeryConfig) -> dict[str, list[Problem]]:
    """Every problem the study evaluates: ``evaluation`` (generation) and ``loss`` (next-token loss)."""
    return {"evaluation": seed_test_problems(config.eval_per_category, langs=config.langs),
            "loss": generate_problems(config.loss_n, config.loss_seed, config.langs)}


def prepare(model, config: SurgeryConfig) -> FitPrompts:
    """The fit problems in every language of the config, disjoint from every evaluated problem, tokenized."""
    from interp_tl.tokens import tokenize

    held = [p for problems in evaluated_problems(config).values() for p in problems]
    fit, replaced = generate_problems_excluding(config.n_pairs, config.seed, held, config.langs)
    tokens = {lang: tokenize(model, [p.prompts[lang] for p in fit], config.prepend_bos) for lang in config.langs}
    return FitPrompts(tuple(fit), MappingProxyType(tokens), config.langs, config.seed, replaced)


def fit_set(config: SurgeryConfig, prompts: ParallelPrompts) -> dict[str, Any]:
    """The fit set's record: how many drawn problems were evaluated ones, and its overlap (recounted) with each set."""
    held = evaluated_problems(config)
    drawn = generate_problems(config.n_pairs, config.seed, config.langs)
    return {"problems": problem_set_id(config.n_pairs, config.seed), "rule": REPLACEMENT_RULE,
            "n_fit": prompts.n,
            "replaced": {name: overlap_count(drawn, problems) for name, problems in held.items()},
            **{f"overlap_with_{name}": overlap_count(prompts.problems, problems) for name, problems in held.items()}}


def hooks(model, config: SurgeryConfig) -> list[str]:
    """The fit hook and the MLP write (for the energy-matched control) at every edited layer."""
    layers = edited_layers(model, config)
    return [f"blocks.{layer}.{config.fit_hook}" for layer in layers] + [f"blocks.{layer}.hook_mlp_out"
                                                                         for layer in layers]


def extract_caches(model, config: SurgeryConfig, prompts: ParallelPrompts, progress: bool = False) -> dict:
    """``{"fit": cache}``: :func:`hooks` at the last real token of the fit prompts, every language (``langs`` order)."""
    import torch
    from transformer_lens import ActivationCache

    from interp_tl.cache import extract

    names = list(dict.fromkeys(hooks(model, config)))
    per_lang = [extract(model, prompts.tokens[lang], names, config.batch_size, progress=progress,
                        desc=f"surgery: fitting the language subspace ({lang})") for lang in prompts.langs]
    joined = {name: torch.cat([c[name] for c in per_lang]) for name in names}
    return {"fit": ActivationCache(joined, model)}


def random_bases(model, layers: list[int], k: int, seed: int) -> dict[int, Basis]:
    """A random orthonormal k-dim basis per layer in the model's residual basis (the control)."""
    from interp_tl.edits import Basis, residual_basis

    kind = residual_basis(model)
    out = {}
    for layer in layers:
        g = np.random.default_rng([seed, layer]).normal(size=(model.cfg.d_model, k))
        if kind == "centred":
            g -= g.mean(0, keepdims=True)
        out[layer] = Basis(np.linalg.qr(g)[0], kind)
    return out


def _strip(results: Mapping[str, dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("correct_mask", "language_mask")} for r in results.values()]


def _mean_accuracy(results: Mapping[str, dict]) -> float:
    return float(np.mean([r["accuracy"] for r in results.values()]))


def _mean_in_language(results: Mapping[str, dict]) -> float:
    """Mean over languages of the fraction of outputs identified as the prompt's language."""
    return float(np.mean([r["lang_preservation"]["in_language"] for r in results.values()]))


def _subspaces(model, config: SurgeryConfig, layers: list[int], by_lang: Mapping[str, ActivationCache]):
    from interp_tl.analyses.subspace import language_subspace
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


#: The evaluated conditions, in the JSON's and the figure's order.
CONDITIONS = ("baseline", "surgery", "random_control", "energy_matched_control")
#: Paired comparisons: name -> (before, after); "lost" counts problems right before and wrong after.
COMPARISONS = {
    "surgery_vs_baseline": ("baseline", "surgery"),
    "control_vs_baseline": ("baseline", "random_control"),
    "energy_matched_vs_baseline": ("baseline", "energy_matched_control"),
    "surgery_vs_energy_matched": ("energy_matched_control", "surgery"),
}
#: Where the removed energy is measured and matched.
ENERGY_POSITIONS = ("blocks.L.hook_mlp_out of the unedited model at the last real token of every fit prompt in "
                    "every language (the positions the language axes are fitted on), each layer on its own")


def mlp_writes(model, layers: list[int], by_lang: Mapping[str, ActivationCache]) -> dict[int, np.ndarray]:
    """Per edited layer, the MLP write at the fit positions, ``[n_fit · n_langs, d_model]`` float64."""
    from interp_tl.analyses.subspace import stacked

    return {layer: stacked(by_lang, f"blocks.{layer}.hook_mlp_out").reshape(-1, model.cfg.d_model)
            for layer in layers}


def matched_bases(
    writes: Mapping[int, np.ndarray], language: Mapping[int, Basis], seed: int
) -> dict[int, MatchedBasis]:
    """Per layer an energy-matched control for the language axes (:func:`interp_tl.edits.energy_matched_basis`)."""
    from interp_tl.edits import energy_matched_basis

    return {layer: energy_matched_basis(writes[layer], basis, [seed, layer, basis.k])
            for layer, basis in language.items()}


def energy_report(writes: Mapping[int, np.ndarray], language: Mapping[int, Basis], random: Mapping[int, Basis],
                  matched: Mapping[int, MatchedBasis]) -> dict[str, Any]:
    """Per layer the fraction of the MLP write's energy each condition's axes remove (α = 1), and the match."""
    from interp_tl.edits import MATCH_RTOL, removed_energy

    per_layer = {}
    for layer, w in writes.items():
        m = matched[layer]
        per_layer[str(layer)] = {
            "language": removed_energy(w, language[layer].axes),
            "random_control": removed_energy(w, random[layer].axes),
            "energy_matched_control": m.achieved,
            "matched": m.matched, "tilt": m.tilt, "isotropic_draw": m.isotropic, "covariance_draw": m.covariance,
            "overlap_with_language": m.overlap,
            "random_control_overlap_with_language": float(
                np.linalg.norm(language[layer].axes.T @ random[layer].axes) ** 2 / language[layer].k),
        }
    return {"positions": ENERGY_POSITIONS, "alpha": 1.0, "match_rtol": MATCH_RTOL, "per_layer": per_layer}


def paired_tests(results: Mapping[str, Mapping[str, dict]], langs, outcome: str = "correct_mask"
                 ) -> tuple[dict, dict]:
    """Per language McNemar tests of :data:`COMPARISONS`, and the pooled tests across languages.

    Args:
        results: per condition, :func:`interp_tl.generation.evaluate_generation`'s results.
        langs: the languages.
        outcome: the per-problem binary outcome: ``correct_mask`` (accuracy) or ``language_mask``
            (the output identified as the prompt's language).

    Returns:
        ``{lang: {comparison: mcnemar}}`` and ``{"methods": {...}, "tests": {comparison:
        {"pooled": stratified McNemar, "by_problem": sign-flip by problem}}}``.
    """
    from interp_tl import stats

    masks = {cond: {lang: res[lang][outcome] for lang in langs} for cond, res in results.items()}
    tests = {name: stats.paired_binary_tests(masks[before], masks[after])
             for name, (before, after) in COMPARISONS.items()}
    per_lang = {lang: {name: tests[name]["per_stratum"][lang] for name in COMPARISONS} for lang in langs}

    def bare(test: dict) -> dict:
        return {k: v for k, v in test.items() if k != "method"}

    pooled = {"methods": {"pooled": stats.POOLED_MCNEMAR_METHOD, "by_problem": stats.ITEM_SIGN_FLIP_METHOD},
              "tests": {name: {"pooled": bare(t["pooled"]), "by_problem": bare(t["by_item"])}
                        for name, t in tests.items()}}
    return per_lang, pooled


def _sweep(model, config: SurgeryConfig, layers, problems, sweep_k, conditions, done, progress: bool = False
           ) -> list[dict]:
    from tqdm.auto import tqdm

    from interp_tl.edits import projected_mlp_writes
    from interp_tl.generation import evaluate_generation

    sweep = []
    bar = tqdm(total=len(sweep_k) * len(config.sweep_alpha) * 3, desc="surgery: dose-response sweep (k x alpha)",
               unit="edit", disable=not progress, leave=False)
    for k in sweep_k:
        bases = conditions(k)
        for alpha in config.sweep_alpha:
            for name, b in bases.items():
                res = done.get((k, alpha, name))
                if res is None:  # the study's own (k, alpha) was generated already
                    with projected_mlp_writes(model, layers, b, alpha):
                        res = evaluate_generation(model, problems, config.langs, config.max_new_tokens,
                                                  config.batch_size, config.prepend_bos)
                sweep.append({"k": k, "alpha": alpha, "subspace": name, "mean_accuracy": _mean_accuracy(res),
                              "accuracy": {lang: r["accuracy"] for lang, r in res.items()},
                              "mean_in_language": _mean_in_language(res),
                              "in_language": {lang: r["lang_preservation"]["in_language"] for lang, r in res.items()}})
                bar.update()
    bar.close()
    return sweep


def analyse(model, config: SurgeryConfig, prompts: ParallelPrompts, caches: dict, progress: bool = False
            ) -> StudyResult:
    """Subspaces and MLP writes from the fit cache, then the edits and their evaluations (these run the model)."""
    from interp_tl.cache import split_languages
    from interp_tl.edits import Basis, projected_mlp_writes, residual_basis
    from interp_tl.generation import ANSWER_LOSS, NUMBER_LOSS, SEQUENCE_LOSS, evaluate_generation, next_token_loss
    from interp_tl.training_stream import model_trained_pairs

    layers = edited_layers(model, config)
    by_lang = split_languages(caches["fit"], prompts.langs)
    subspaces, sweep_k, dropped, config, rule = _subspaces(model, config, layers, by_lang)
    kind = residual_basis(model)
    writes = mlp_writes(model, layers, by_lang)
    matched_by_k: dict[int, dict[int, MatchedBasis]] = {}

    def conditions(k: int) -> dict[str, dict[int, Basis]]:
        language = {layer: Basis(s.axes[:, :k], kind) for layer, s in subspaces.items()}
        if k not in matched_by_k:
            matched_by_k[k] = matched_bases(writes, language, config.control_seed)
        matched = matched_by_k[k]
        return {"language": language, "random": random_bases(model, layers, k, config.control_seed),
                "energy_matched": {layer: m.basis for layer, m in matched.items()}}

    problems = seed_test_problems(config.eval_per_category, langs=config.langs)
    loss_problems = generate_problems(config.loss_n, config.loss_seed, config.langs)

    def evaluate(edit, label: str) -> tuple[dict, dict]:
        with edit:
            gen = evaluate_generation(model, problems, config.langs, config.max_new_tokens, config.batch_size,
                                      config.prepend_bos, label)
            loss = next_token_loss(model, loss_problems, config.langs, config.batch_size, config.prepend_bos)
        return gen, loss

    main = conditions(config.k)
    edits = {"baseline": nullcontext(), "surgery": main["language"], "random_control": main["random"],
             "energy_matched_control": main["energy_matched"]}
    results, losses = {}, {}
    from tqdm.auto import tqdm

    for cond in tqdm(CONDITIONS, desc="surgery: generating (baseline, surgery, controls)", unit="condition",
                     disable=not progress, leave=False):
        edit = edits[cond] if cond == "baseline" else projected_mlp_writes(model, layers, edits[cond], config.alpha)
        results[cond], losses[cond] = evaluate(edit, cond)
    done = {(config.k, config.alpha, name): results[cond] for name, cond in
            (("language", "surgery"), ("random", "random_control"), ("energy_matched", "energy_matched_control"))}
    sweep = _sweep(model, config, layers, problems, sweep_k, conditions, done, progress)
    per_lang, pooled = paired_tests(results, config.langs)
    per_lang_language, pooled_language = paired_tests(results, config.langs, "language_mask")
    data = {
        "experiment": "kernel_surgery",
        "surgery_layers": layers,
        "n_lang_dims": config.k,
        "k_rule": rule,
        "alpha": config.alpha,
        "n_test_problems": len(problems),
        "max_new_tokens": config.max_new_tokens,
        **{cond: _strip(results[cond]) for cond in CONDITIONS},
        "paired_tests": per_lang,
        "paired_tests_pooled": pooled,
        "paired_tests_language": per_lang_language,
        "paired_tests_language_pooled": pooled_language,
        "sweep": sweep,
        "sweep_k_dropped_above_rank": dropped,
        "loss": {"problems": {"n": config.loss_n, "seed": config.loss_seed},
                 "definitions": {"answer_loss": ANSWER_LOSS, "number_loss": NUMBER_LOSS,
                                 "sequence_loss": SEQUENCE_LOSS},
                 "trained_pairs": model_trained_pairs(model, loss_problems, config.langs), **losses},
        "evaluation_trained_pairs": model_trained_pairs(model, problems, config.langs),
        "subspace": {str(layer): {"variance_explained": float(s.scree[: config.k].sum()),
                                  "scree": [float(x) for x in s.scree[:20]], "rank": s.rank}
                     for layer, s in subspaces.items()},
        "removed_energy": energy_report(writes, main["language"], main["random"], matched_by_k[config.k]),
        "fit_set": fit_set(config, prompts),
        "residual_basis": kind,
        "summary": {**{f"{cond}_mean_accuracy": _mean_accuracy(results[cond]) for cond in CONDITIONS},
                    **{f"{cond}_mean_in_language": _mean_in_language(results[cond]) for cond in CONDITIONS},
                    **{f"{cond}_mean_answer_loss": float(np.mean([v["answer_loss"] for v in losses[cond].values()]))
                       for cond in CONDITIONS}},
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
        ``accuracy``, ``mean_fat``, ``outputs``, ``lang_preservation``) plus ``random_control``
        and ``energy_matched_control`` (same lists), ``removed_energy`` (per layer the fraction of
        the MLP write's energy each condition removes), ``fit_set`` (drawn problems that were
        evaluated ones and replaced, overlap with the evaluated sets: 0), ``paired_tests`` (per
        language), ``paired_tests_pooled`` (across languages), ``paired_tests_language`` and
        ``paired_tests_language_pooled`` (the same for the answer's language), ``sweep`` (accuracy and
        language per k and alpha), ``loss`` (``answer_loss``, ``number_loss``, ``sequence_loss`` per
        condition and language, their definitions, ``trained_pairs``), ``evaluation_trained_pairs``
        and ``subspace``.

    Raises:
        BadInputError: alpha outside [0, 1], k >= d_model or above the data's rank, unknown
            languages. LayerRangeError: a layer out of range.
    """
    edited_layers(model, config)
    prompts = prepare(model, config)
    return analyse(model, config, prompts, extract_caches(model, config, prompts, progress), progress)


def _dose_response(ax, data: dict, key: str, baseline: float, ylabel: str, title: str) -> None:
    """One dose-response panel: ``key`` (mean over languages) against k, per subspace and alpha."""
    colours = {"language": "tab:orange", "random": "tab:green", "energy_matched": "tab:red"}
    alphas = sorted({s["alpha"] for s in data["sweep"]}, reverse=True)
    styles = dict(zip(alphas, ("-", "--", ":", "-.")))
    for kind, colour in colours.items():
        for alpha in alphas:
            pts = sorted((s["k"], s[key]) for s in data["sweep"]
                         if s["subspace"] == kind and s["alpha"] == alpha and s.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), styles.get(alpha, "-"), color=colour, marker="o", ms=3,
                        label=f"{kind.replace('_', '-')} axes, α={alpha:g}")
    ax.axhline(baseline, color="k", lw=0.8, label="baseline")
    ks = sorted({s["k"] for s in data["sweep"]})
    ax.set(ylim=(0, 1.05), xscale="log", xlabel="k (axes removed per layer)", ylabel=ylabel, title=title)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()


def plot(result: StudyResult):
    """Accuracy and answer language per language (baseline / surgery / controls) and both dose-responses."""
    data = result.data
    labels = {"baseline": "baseline", "surgery": "surgery", "random_control": "random control",
              "energy_matched_control": "energy-matched control"}
    conditions = [(key, labels[key]) for key in CONDITIONS if key in data]
    langs = [r["lang"] for r in data["baseline"]]
    x = np.arange(len(langs))
    fig = figure((20, 5.5))
    ax_acc, ax_lang, ax_sweep, ax_sweep_lang = fig.subplots(1, 4)
    width = 0.8 / len(conditions)
    for i, (key, label) in enumerate(conditions):
        rows = data[key]
        offset = (i - (len(conditions) - 1) / 2) * width
        ax_acc.bar(x + offset, [r["accuracy"] for r in rows], width, label=label)
        ax_lang.bar(x + offset, [r["lang_preservation"]["in_language"] for r in rows], width, label=label)
    ax_acc.set_xticks(x, langs)
    ax_acc.set(ylim=(0, 1.05), ylabel="accuracy (answer among generated numbers)", title="accuracy")
    ax_acc.legend(fontsize=7)
    ax_lang.set_xticks(x, langs)
    ax_lang.set(ylim=(0, 1.05), ylabel="outputs identified as the prompt's language (langid)",
                title="language preservation")
    if all(r["lang_preservation"]["with_letters"] == 0 for key, _ in conditions for r in data[key]):
        ax_lang.text(0.5, 0.5, "no output has letters\n(answers are digits only)", ha="center", va="center",
                     transform=ax_lang.transAxes, fontsize=8)
    summary = data["summary"]
    _dose_response(ax_sweep, data, "mean_accuracy", summary["baseline_mean_accuracy"], "mean accuracy",
                   "dose-response: accuracy")
    _dose_response(ax_sweep_lang, data, "mean_in_language", summary["baseline_mean_in_language"],
                   "mean fraction in the prompt's language", "dose-response: language")
    ax_sweep.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    model = result.provenance["model"]
    fig.suptitle(f"{model['name']} ({model['processing']}), layers {data['surgery_layers']}, "
                 f"k={data['n_lang_dims']}, α={data['alpha']:g}, {data['n_test_problems']} problems", fontsize=9)
    return fig


def headline(result: StudyResult) -> str:
    """What removing the language axes does to accuracy and answer language, against the controls, with exact p."""
    data = result.data
    s = data["summary"]
    pooled = data["paired_tests_pooled"]["tests"]
    lang = data["paired_tests_language_pooled"]["tests"]
    layers = data["surgery_layers"]
    where = f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
    return (f"removing {data['n_lang_dims']} language axes from the MLP writes of {where}: mean accuracy "
            f"{s['baseline_mean_accuracy']:.3f} -> {s['surgery_mean_accuracy']:.3f} (pooled exact p "
            f"{pooled['surgery_vs_baseline']['pooled']['p_value']:.2g}); random axes "
            f"{s['random_control_mean_accuracy']:.3f}, energy-matched axes "
            f"{s['energy_matched_control_mean_accuracy']:.3f} (p vs surgery "
            f"{pooled['surgery_vs_energy_matched']['pooled']['p_value']:.2g}); answers in the prompt's language "
            f"{s['baseline_mean_in_language']:.3f} -> {s['surgery_mean_in_language']:.3f} (p "
            f"{lang['surgery_vs_baseline']['pooled']['p_value']:.2g}), random axes "
            f"{s['random_control_mean_in_language']:.3f}, energy-matched "
            f"{s['energy_matched_control_mean_in_language']:.3f}")


#: The conditions of the surgery's accuracy table, in column order.
CONDITIONS = ("baseline", "surgery", "random_control", "energy_matched_control")


def table(result: StudyResult) -> tuple[list[str], list[list[Any]]]:
    """Accuracy per language: baseline, surgery and both controls."""
    data = result.data
    rows = [[entry["lang"], *(data[c][i]["accuracy"] for c in CONDITIONS)]
            for i, entry in enumerate(data["baseline"])]
    return ["language", *CONDITIONS], rows


STUDY = Study(
    name="surgery", summary="language subspace projected out of MLP writes: generation before/after, controls",
    config=SurgeryConfig, run=run_surgery, plot=plot, headline=headline, hooks=hooks, prepare=prepare,
    extract=extract_caches, analyse=analyse, check=edited_layers, docs="docs/studies/surgery.md",
    table=table,
)
