"""Kernel surgery: project a language subspace out of what chosen layers' MLPs write; what changes.

Port of the research script ``expAG_kernel_surgery.py`` onto hook points and
:mod:`interp_tl.edits`, and beyond its single before/after comparison:

1. **Subspace** per edited layer: last-token ``blocks.L.hook_resid_post`` (or another hook) of
   ``fit_n`` problems in all seven languages, centred per problem across languages, SVD, top-k
   axes (:func:`interp_tl.stats.language_subspace`). Fitted on the model that is edited, so the
   axes are in its residual basis (raw, or centred under ``center_writing_weights``).
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

from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import numpy as np
from scipy.stats import binomtest

from interp_tl import stats
from interp_tl.activations import check_layers, extract
from interp_tl.edits import Basis, projected_mlp_writes, residual_basis
from interp_tl.errors import BadInputError
from interp_tl.generation import evaluate_generation, next_token_loss
from interp_tl.prompts import check_languages, generate_problems, languages, seed_test_problems
from interp_tl.studies.common import StudyResult, parallel_prompts, run_provenance

#: The seed's block: layers 9..26 of a 36-layer model.
SEED_LAYERS = (9, 27, 36)


@dataclass(frozen=True)
class SurgeryConfig:
    """Settings of the kernel-surgery study (the CLI's flags map onto these one to one).

    Attributes:
        layers: edited layers (None: the seed's fraction of depth, see :func:`default_layers`).
        k: axes of the language subspace per layer (10 as the seed); ignored with ``min_variance``.
        min_variance: the stated-rule alternative to k: per layer the smallest k whose axes
            explain this fraction of the problem-centred variance; the study uses the largest
            of those over the edited layers (recorded as ``n_lang_dims`` and ``k_rule``).
        alpha: strength of the projection in [0, 1] (1 as the seed).
        fit_hook: hook whose last-token activations define the subspace at each edited layer.
        fit_n: problems per language for the fit.
        fit_seed: problem-set seed of the fit (42 as the seed).
        fit_langs: languages of the fit (the seed used all seven).
        eval_langs: languages generated in (default all seven).
        eval_per_category: test problems per category (4 as the seed).
        max_new_tokens: generation budget (128 as the seed; cut to what the context leaves).
        sweep_k: k values of the dose-response sweep (values above the data's rank are dropped).
        sweep_alpha: alpha values of the sweep.
        loss_n: held-out problems for the next-token loss before/after.
        loss_seed: their problem-set seed.
        control_seed: seed of the random control subspaces.
        batch_size: prompts per forward pass.
        prepend_bos: put BOS before each prompt (None: the model's default).
    """

    layers: tuple[int, ...] | None = None
    k: int = 10
    min_variance: float | None = None
    alpha: float = 1.0
    fit_hook: str = "hook_resid_post"
    fit_n: int = 200
    fit_seed: int = 42
    fit_langs: tuple[str, ...] = tuple(languages())
    eval_langs: tuple[str, ...] = tuple(languages())
    eval_per_category: int = 4
    max_new_tokens: int = 128
    sweep_k: tuple[int, ...] = (1, 2, 5, 10)
    sweep_alpha: tuple[float, ...] = (0.25, 0.5, 1.0)
    loss_n: int = 50
    loss_seed: int = 7
    control_seed: int = 0
    batch_size: int = 32
    prepend_bos: bool | None = None


def default_layers(n_layers: int) -> list[int]:
    """The seed's L9-L26 of 36 as a fraction of depth: ``round(9/36 n) .. round(27/36 n) - 1``."""
    lo, hi, depth = SEED_LAYERS
    start, stop = round(lo / depth * n_layers), round(hi / depth * n_layers)
    return list(range(start, max(stop, start + 1)))


def _check(model, config: SurgeryConfig) -> list[int]:
    layers = check_layers(model, config.layers) if config.layers is not None else default_layers(model.cfg.n_layers)
    if not 0.0 <= config.alpha <= 1.0 or any(not 0.0 <= a <= 1.0 for a in config.sweep_alpha):
        raise BadInputError(f"alpha must be in [0, 1], got {config.alpha} (sweep {list(config.sweep_alpha)})")
    if config.min_variance is not None and not 0 < config.min_variance <= 1:
        raise BadInputError(f"min_variance must be in (0, 1], got {config.min_variance}")
    if not 1 <= config.k < model.cfg.d_model:
        raise BadInputError(f"k = {config.k} must be between 1 and d_model - 1 = {model.cfg.d_model - 1}")
    check_languages(config.fit_langs)
    check_languages(config.eval_langs)
    if len(config.fit_langs) < 2:
        raise BadInputError("the language subspace needs at least two fit languages")
    if config.max_new_tokens < 1:
        raise BadInputError(f"max_new_tokens must be at least 1, got {config.max_new_tokens}")
    return layers


def fit_activations(model, config: SurgeryConfig, layers: list[int],
                    progress: bool = False) -> dict[int, np.ndarray]:
    """Per layer, last-token ``fit_hook`` activations ``[fit_n, n_fit_langs, d_model]``."""
    prompts = parallel_prompts(model, config.fit_n, config.fit_seed, config.fit_langs, config.prepend_bos)
    hooks = [f"blocks.{layer}.{config.fit_hook}" for layer in layers]
    acts = {lang: extract(model, prompts.tokens[lang], hooks, config.batch_size, progress=progress,
                          desc=f"fit {lang}") for lang in prompts.langs}
    return {layer: np.stack([acts[lang][hook] for lang in prompts.langs], axis=1) for layer, hook in zip(layers, hooks)}


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


def _subspaces(model, config: SurgeryConfig, layers: list[int], progress: bool):
    acts = fit_activations(model, config, layers, progress)
    rule = None
    if config.min_variance is not None:
        per_layer = {layer: stats.language_subspace(a, min_variance=config.min_variance).k
                     for layer, a in acts.items()}
        rule = {"min_variance": config.min_variance, "k_per_layer": {str(k): v for k, v in per_layer.items()}}
        config = replace(config, k=max(per_layer.values()))
    subspaces = {layer: stats.language_subspace(a, k=config.k) for layer, a in acts.items()}  # k > rank: error
    rank = min(s.rank for s in subspaces.values())
    sweep_k = sorted(set(config.sweep_k) | {config.k})
    dropped = [k for k in sweep_k if k > rank or k >= model.cfg.d_model]
    sweep_k = [k for k in sweep_k if k not in dropped]
    if max(sweep_k) > config.k:
        subspaces = {layer: stats.language_subspace(a, k=max(sweep_k)) for layer, a in acts.items()}
    return subspaces, sweep_k, dropped, config, rule


def run_surgery(model, config: SurgeryConfig = SurgeryConfig(), progress: bool = False,
                keep_activations: bool = False) -> StudyResult:
    """Run the kernel-surgery study on a HookedTransformer (its weights are restored afterwards).

    Returns:
        A :class:`StudyResult` whose ``data`` has the seed's keys (``experiment``,
        ``surgery_layers``, ``n_lang_dims``, ``n_test_problems``, ``max_new_tokens``, ``baseline``
        and ``surgery`` as lists of per-language results with ``correct``, ``total``,
        ``accuracy``, ``mean_fat``, ``outputs``, ``lang_preservation``) plus ``random_control``,
        ``paired_tests``, ``sweep``, ``loss`` and ``subspace``. ``arrays`` (with
        ``keep_activations``) holds the axes per layer.

    Raises:
        BadInputError: alpha outside [0, 1], k >= d_model or above the data's rank, unknown
            languages. LayerRangeError: a layer out of range.
    """
    layers = _check(model, config)
    subspaces, sweep_k, dropped, config, rule = _subspaces(model, config, layers, progress)
    kind = residual_basis(model)

    def bases(k: int) -> dict[int, Basis]:
        return {layer: Basis(s.axes[:, :k], kind) for layer, s in subspaces.items()}

    problems = seed_test_problems(config.eval_per_category)
    loss_problems = generate_problems(config.loss_n, config.loss_seed)

    def evaluate(edit, label: str) -> tuple[dict, dict]:
        with edit:
            gen = evaluate_generation(model, problems, config.eval_langs, config.max_new_tokens, config.batch_size,
                                      config.prepend_bos, label)
            loss = next_token_loss(model, loss_problems, config.eval_langs, config.batch_size, config.prepend_bos)
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
                        res = evaluate_generation(model, problems, config.eval_langs, config.max_new_tokens,
                                                  config.batch_size, config.prepend_bos)
                sweep.append({"k": k, "alpha": alpha, "subspace": name, "mean_accuracy": _mean_accuracy(res),
                              "accuracy": {lang: r["accuracy"] for lang, r in res.items()}})
    paired = {lang: {"surgery_vs_baseline": mcnemar(baseline[lang]["correct_mask"], surgery[lang]["correct_mask"]),
                     "control_vs_baseline": mcnemar(baseline[lang]["correct_mask"], control[lang]["correct_mask"])}
              for lang in config.eval_langs}
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
    fit_prompts = parallel_prompts(model, 5, config.fit_seed, config.fit_langs, config.prepend_bos)
    provenance = run_provenance(model, fit_prompts, config=asdict(config), layers=layers,
                                edit={"kind": "mlp_write_projection", "residual_basis": kind, "restored": True})
    provenance["prompts"] = {"fit": {"name": "parallel-math-7", "n": config.fit_n, "seed": config.fit_seed,
                                     "languages": list(config.fit_langs), "hook": config.fit_hook},
                             "eval": {"set": "seed_test_problems", "per_category": config.eval_per_category,
                                      "seed": 42, "languages": list(config.eval_langs)},
                             "loss": {"n": config.loss_n, "seed": config.loss_seed}}
    arrays = {f"axes_L{layer}": s.axes[:, : config.k] for layer, s in subspaces.items()} if keep_activations else {}
    return StudyResult("surgery", data, provenance, arrays)
