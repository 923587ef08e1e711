"""Lens study: where the language and the answer are decided (logit lens + cross-language patching).

Two tools of the cross-lingual literature on the problem set, built on the cache API:

1. **Logit lens** (Wendler et al. 2024, "Do Llamas Work in English?"): every layer's residual
   (``hook_resid_pre`` of each block and the last ``hook_resid_post``) decoded through the final
   norm and the unembedding (:func:`interp_tl.analyses.lens.lens_token_stats`), on two
   one-position caches of every problem in every language:

   * ``number``: the prompt followed by its answer sentence up to the number (teacher-forced;
     ``" The answer is "`` in en), read at its last token, where the answer's first number token
     is due: that token's probability and rank per layer and prompt language;
   * ``prompt``: the prompt alone at its last token, where the answer sentence opens: the
     probability of each language's opening token (``" The"``, ``" 答案是"``, ...), per layer and
     prompt language — which language the stream "speaks" layer by layer.

   Means over problems with studentized bootstrap intervals (:func:`interp_tl.stats.mean_intervals`);
   pooled over languages through each problem's mean, so problems stay the resampled unit.

2. **Cross-language activation patching** (Dumas, Wendler et al., ACL 2025, "Separating Tongue
   from Thought"): the last-token ``hook_resid_pre`` of a source prompt (problem p, language A)
   written at layer L (or at L and every later layer, ``onwards``) over a target prompt's
   (problem q, language B) last real token, then greedy decoding
   (:func:`interp_tl.analyses.lens.patched_completions`). Each output is classified: its language
   (:mod:`interp_tl.langid`) is A's / B's / other, its number (first integer) p's / q's / other,
   where p's and q's numbers are **the model's own unpatched answers** to the source and target
   prompts (so a model that answers wrongly is measured on what it computes; a trial whose two
   answers coincide or are missing has no number outcome). Trials: the problems are paired within
   their template (same sentence, other numbers; answers differ), each problem in one trial only,
   and the trials take the ordered language pairs (A != B) in turn. Three conditions on the same
   trials: ``cross_language`` (p in A into q in B), ``same_language`` (p in B into q in B: the
   control without a language conflict) and ``mean_over_languages`` (p's latent averaged over every
   language of the study but B). Fractions per layer with Clopper-Pearson intervals (each problem
   in one trial: independent trials); the first layer where a majority of outputs follows the
   source, with a confidence set (:func:`interp_tl.stats.first_crossing`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from interp_tl.errors import BadInputError
from interp_tl.figures import figure
from interp_tl.results import StudyResult
from interp_tl.studies.base import PromptSettings, Study, all_languages, check_int, study_provenance

if TYPE_CHECKING:
    from transformer_lens import ActivationCache

    from interp_tl.tokens import ParallelPrompts, Tokenized

#: The patching conditions, in the JSON's order.
CONDITIONS = ("cross_language", "same_language", "mean_over_languages")
#: The four outcomes of a patched output.
OUTCOMES = ("language_source", "language_target", "number_source", "number_target")
LEVEL = 0.95
#: Outputs shown per condition and layer in the JSON.
N_EXAMPLES = 3


@dataclass(frozen=True, kw_only=True)
class LensConfig(PromptSettings):
    """Settings of the lens study.

    Attributes:
        n_pairs: problems per language (a multiple of 5, at least 10): the lens reads every one in every
            language; patching pairs them up within their template, each problem in one trial.
        langs: languages of the lens and of the patching trials (every ordered pair in turn; default all seven).
        layers: layers whose last-token hook_resid_pre is patched, e.g. 0-3 (None: all).
        onwards: patch at the layer and at every later layer (default: at that layer alone).
        max_new_tokens: generation budget of the clean and the patched answers (cut to what the context leaves).
        n_boot: bootstrap resamples over problems for the lens intervals (0: none).
        boot_seed: seed of the bootstrap resamples.
    """

    langs: tuple[str, ...] = all_languages()
    layers: tuple[int, ...] | None = None
    onwards: bool = False
    max_new_tokens: int = 24
    n_boot: int = 1000
    boot_seed: int = 0

    n_langs = None

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        check_int(self.n_pairs, "n_pairs", 10)
        check_int(self.max_new_tokens, "max_new_tokens", 1)
        check_int(self.n_boot, "n_boot", 0)
        check_int(self.boot_seed, "boot_seed", 0)
        super().__post_init__()


def patched_layers(model, config: LensConfig) -> list[int]:
    """The layers patched (default all), checked against the model."""
    from interp_tl.cache import check_layers

    return check_layers(model, config.layers)


def prepare(model, config: LensConfig) -> ParallelPrompts:
    """The problem set in the config's languages, tokenized for ``model``."""
    from interp_tl.tokens import parallel_prompts

    return parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)


def hooks(model, config: LensConfig) -> list[str]:
    """Every hook the study reads: ``hook_resid_pre`` of each block and the last ``hook_resid_post``."""
    from interp_tl.analyses.lens import lens_hook_names

    patched_layers(model, config)
    return lens_hook_names(model)


def count(config: LensConfig) -> int:
    """Prompts run: every prompt twice (alone, and with its answer up to the number)."""
    return 2 * config.n_pairs * len(config.langs)


def number_sequences(model, prompts: ParallelPrompts) -> tuple[Tokenized, np.ndarray]:
    """Every prompt (languages stacked) followed by its answer sentence up to the number; the number's first token.

    Returns:
        The teacher-forced sequences and ``[n_prompts]`` ids of the answer's first number token.
    """
    from interp_tl.analyses.lens import answer_prefix, teacher_forced
    from interp_tl.generation import answer_text

    cut = [answer_prefix(model.tokenizer, answer_text(p.answer, lang)) for lang in prompts.langs
           for p in prompts.problems]
    return teacher_forced(prompts.stacked(), [c[0] for c in cut]), np.array([c[1] for c in cut])


def extract_caches(model, config: LensConfig, prompts: ParallelPrompts, progress: bool = False) -> dict:
    """``{"prompt": cache, "number": cache}``: the lens hooks at the prompt's last token and where the number is due."""
    from interp_tl.cache import extract

    names = hooks(model, config)
    sequences, _ = number_sequences(model, prompts)
    return {"prompt": extract(model, prompts.stacked(), names, config.batch_size, "last", progress,
                              "lens: extracting the prompts' last tokens"),
            "number": extract(model, sequences, names, config.batch_size, "last", progress,
                              "lens: extracting where the answer's number is due")}


# ---------------------------------------------------------------------------------------------
# lens


def _band(intervals: list) -> dict[str, list]:
    """``{"estimate", "lo", "hi"}`` lists (None where there is no interval) from BootstrapIntervals."""
    from interp_tl.results import finite_or_none

    return {"estimate": [finite_or_none(i.estimate) for i in intervals],
            "lo": [finite_or_none(i.lo) for i in intervals], "hi": [finite_or_none(i.hi) for i in intervals]}


def _means(values: np.ndarray, config: LensConfig) -> dict[str, list]:
    """Per column of ``[problems, stack]`` values: the mean and its interval (none with ``n_boot`` 0)."""
    from interp_tl import stats

    if config.n_boot == 0:
        means = values.mean(axis=0)
        return {"estimate": [float(m) for m in means], "lo": [None] * len(means), "hi": [None] * len(means)}
    return _band(stats.mean_intervals(values, config.n_boot, config.boot_seed, LEVEL))


def _fractions(hits: np.ndarray) -> dict[str, list]:
    """Per column of ``[problems, stack]`` booleans: the fraction and its Clopper-Pearson interval."""
    from interp_tl import stats

    k, n = hits.sum(axis=0), hits.shape[0]
    bounds = [stats.binomial_interval(int(x), n, LEVEL) for x in k]
    return {"estimate": [float(x / n) for x in k], "lo": [b[0] for b in bounds], "hi": [b[1] for b in bounds]}


def number_position(log_probs: np.ndarray, ranks: np.ndarray, langs: tuple[str, ...], config: LensConfig
                    ) -> dict[str, Any]:
    """The answer's first number token where it is due: probability, top-1 and median rank per layer.

    ``log_probs`` and ``ranks`` are ``[stack, n_langs * n, 1]`` (languages stacked).
    """
    n = log_probs.shape[1] // len(langs)
    p = np.exp(log_probs[:, :, 0]).T.reshape(len(langs), n, -1)  # [lang, problem, stack]
    r = ranks[:, :, 0].T.reshape(len(langs), n, -1)
    out: dict[str, Any] = {"p_answer": {}, "top1": {}, "median_rank": {}}
    for i, lang in enumerate(langs):
        out["p_answer"][lang] = _means(p[i], config)
        out["top1"][lang] = _fractions(r[i] == 0)
        out["median_rank"][lang] = [float(x) for x in np.median(r[i], axis=0)]
    out["p_answer"]["all"] = _means(p.mean(axis=0), config)
    out["top1"]["all"] = _means((r == 0).mean(axis=0), config)
    out["median_rank"]["all"] = [float(x) for x in np.median(r.reshape(-1, r.shape[2]), axis=0)]
    return out


def opening_mass(log_probs: np.ndarray, langs: tuple[str, ...], config: LensConfig) -> dict[str, Any]:
    """At the prompt's last token: each language's answer-opening token's probability, per layer and prompt language.

    ``log_probs`` is ``[stack, n_langs * n, n_langs]`` (prompts' languages stacked; columns the
    opening tokens in ``langs`` order). ``own``: per problem the mean over prompt languages of
    the prompt language's own opening; ``other[X]``: per problem the mean over the other prompt
    languages of X's opening.
    """
    n = log_probs.shape[1] // len(langs)
    p = np.exp(log_probs).transpose(1, 2, 0).reshape(len(langs), n, len(langs), -1)  # [prompt, problem, open, stack]
    mass = {a: {b: _means(p[i, :, j], config) for j, b in enumerate(langs)} for i, a in enumerate(langs)}
    own = np.mean([p[i, :, i] for i in range(len(langs))], axis=0)
    other = {b: _means(np.mean([p[i, :, j] for i in range(len(langs)) if i != j], axis=0), config)
             for j, b in enumerate(langs)}
    return {"mass": mass, "own": _means(own, config), "other": other}


def _token_texts(model, ids: dict[str, int]) -> tuple[dict[str, str], list[list[str]]]:
    texts = {lang: model.tokenizer.decode([i]) for lang, i in ids.items()}
    shared = [[lang for lang in ids if ids[lang] == i] for i in dict.fromkeys(ids.values())]
    return texts, [group for group in shared if len(group) > 1]


def lens_report(model, config: LensConfig, prompts: ParallelPrompts, caches: dict) -> dict[str, Any]:
    """The lens half of the study from its two caches."""
    from interp_tl import stats
    from interp_tl.analyses.lens import lens_labels, lens_token_stats, opening_token
    from interp_tl.generation import answer_text

    langs = prompts.langs
    _, number_ids = number_sequences(model, prompts)
    number_lp, number_rank = lens_token_stats(caches["number"], number_ids[:, None])
    openings = np.array([[opening_token(model.tokenizer, answer_text(p.answer, b)) for b in langs]
                         for _ in langs for p in prompts.problems])
    opening_lp, _ = lens_token_stats(caches["prompt"], openings)
    texts, shared = _token_texts(model, dict(zip(langs, (int(x) for x in openings[0]))))
    return {
        "layers": lens_labels(model.cfg.n_layers),
        "intervals": {"mean": stats.MEAN_METHOD, "fraction": stats.CLOPPER_PEARSON, "level": LEVEL,
                      "n_boot": config.n_boot, "seed": config.boot_seed, "unit": "problem"},
        "number_position": {
            "where": "the last token of prompt + answer sentence up to its number (teacher-forced)",
            **number_position(number_lp, number_rank, langs, config)},
        "last_prompt_position": {
            "opening_tokens": texts, "shared_openings": shared,
            "varies_with_the_answer": bool((openings != openings[0]).any()),
            **opening_mass(opening_lp, langs, config)},
    }


# ---------------------------------------------------------------------------------------------
# patching


@dataclass(frozen=True)
class Trial:
    """One source/target pair: problem ``source`` in ``source_lang`` patched into ``target`` in ``target_lang``."""

    source: int
    target: int
    source_lang: str
    target_lang: str


def patch_trials(problems, langs: tuple[str, ...]) -> tuple[list[Trial], int]:
    """Problems paired within their template (answers differ), each in one trial; ordered language pairs in turn.

    Returns:
        The trials (by the source's row) and how many problems were left unpaired.
    """
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        groups.setdefault(p.template, []).append(i)
    pairs = []
    for rows in groups.values():
        pending = None
        for i in rows:
            if pending is None:
                pending = i
            elif problems[i].answer != problems[pending].answer:
                pairs.append((pending, i))
                pending = None
    pairs.sort()
    ordered = [(a, b) for a in langs for b in langs if a != b]
    trials = [Trial(s, t, *ordered[k % len(ordered)]) for k, (s, t) in enumerate(pairs)]
    return trials, len(problems) - 2 * len(trials)


def generation_budget(model, prompts: ParallelPrompts, config: LensConfig) -> int:
    """``max_new_tokens``, cut to what the context leaves after the longest prompt."""
    from interp_tl.generation import context_budget

    return context_budget(model, prompts.stacked(), config.max_new_tokens)


def clean_answers(model, prompts: ParallelPrompts, config: LensConfig) -> tuple[dict, dict]:
    """The unpatched greedy answers: ``{(lang, problem): (number, language)}`` and per-language summary."""
    from interp_tl.analyses.lens import follows
    from interp_tl.generation import greedy_completions

    ids = greedy_completions(model, prompts.stacked(), generation_budget(model, prompts, config), config.batch_size)
    n, out, summary = prompts.n, {}, {}
    for li, lang in enumerate(prompts.langs):
        states, inside = [], []
        for j, problem in enumerate(prompts.problems):
            f = follows(model.tokenizer.decode(ids[li * n + j], skip_special_tokens=True), (), lang, (), None)
            out[(lang, j)] = (f.number, f.language)
            states.append(f.number == problem.answer)
            inside.append(f.language_target)
        summary[lang] = {"states_the_answer": float(np.mean(states)), "in_prompt_language": float(np.mean(inside))}
    return out, summary


def condition_sources(prompt_cache: ActivationCache, prompts: ParallelPrompts, trials: list[Trial],
                      condition: str, names: list[str]) -> tuple[ActivationCache, list[tuple[str, ...]]]:
    """Each trial's source latents for ``condition`` (one row per trial) and the languages they come from."""
    from interp_tl.analyses.lens import mean_sources
    from interp_tl.cache import select_rows

    langs, n = prompts.langs, prompts.n
    if condition == "mean_over_languages":
        used = [tuple(lang for lang in langs if lang != t.target_lang) for t in trials]
        slots = [select_rows(prompt_cache, [langs.index(u[k]) * n + t.source for t, u in zip(trials, used)])
                 for k in range(len(langs) - 1)]
        return mean_sources(slots, names), used
    used = [(t.source_lang if condition == "cross_language" else t.target_lang,) for t in trials]
    rows = [langs.index(u[0]) * n + t.source for t, u in zip(trials, used)]
    return mean_sources([select_rows(prompt_cache, rows)], names), used


def _count(flags: list[bool | None]) -> dict[str, Any]:
    from interp_tl import stats

    defined = [f for f in flags if f is not None]
    k, n = sum(defined), len(defined)
    lo, hi = stats.binomial_interval(k, n, LEVEL)
    return {"k": k, "n": n, "fraction": k / n if n else None, "interval": [lo, hi]}


def _classify(model, ids: list[list[int]], trials: list[Trial], used: list[tuple[str, ...]], clean: dict
              ) -> list[Any]:
    from interp_tl.analyses.lens import follows

    out = []
    for gen, t, langs in zip(ids, trials, used):
        text = model.tokenizer.decode(gen, skip_special_tokens=True)
        source_numbers = [clean[(lang, t.source)][0] for lang in langs]
        out.append((text, follows(text, langs, t.target_lang, source_numbers, clean[(t.target_lang, t.target)][0])))
    return out


def layer_outcomes(layer: int, classified: list, trials: list[Trial], used: list[tuple[str, ...]], clean: dict
                   ) -> dict[str, Any]:
    """One layer of one condition: the four outcome counts with intervals, the output languages, a few outputs."""
    entry: dict[str, Any] = {"layer": layer}
    for outcome in OUTCOMES:
        entry[outcome] = _count([getattr(f, outcome) for _, f in classified])
    entry["languages"] = dict(sorted(Counter(f.language for _, f in classified).items()))
    entry["examples"] = [
        {"source": "+".join(langs), "target": t.target_lang,
         "source_answers": sorted({x for x in (clean[(lang, t.source)][0] for lang in langs) if x is not None}),
         "target_answer": clean[(t.target_lang, t.target)][0], "output": text[:80]}
        for (text, _), t, langs in list(zip(classified, trials, used))[:N_EXAMPLES]]
    return entry


def first_layers(rows: list[dict], layers: list[int]) -> dict[str, Any]:
    """Where a majority of outputs first follows the source, in language and in number, with confidence sets."""
    from interp_tl import stats

    def at(index: int | None) -> int | None:
        return None if index is None else layers[index]

    out = {}
    for outcome in ("language_source", "number_source"):
        found = stats.first_crossing([r[outcome]["k"] for r in rows], [r[outcome]["n"] for r in rows], 0.5, LEVEL)
        out[outcome] = {**found, "estimate": at(found["estimate"]), "set": [at(i) for i in found["set"]]}
    return out


def by_pair(classified_by_layer: list[list], trials: list[Trial], layers: list[int]) -> dict[str, Any]:
    """Per ordered language pair and layer: trials, and how many outputs follow the source / target."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(f"{t.source_lang}>{t.target_lang}" for t in trials):
        rows = [i for i, t in enumerate(trials) if f"{t.source_lang}>{t.target_lang}" == key]
        out[key] = {"trials": len(rows), "layers": layers,
                    **{outcome: [sum(bool(getattr(c[i][1], outcome)) for i in rows) for c in classified_by_layer]
                       for outcome in OUTCOMES}}
    return out


def patching_report(model, config: LensConfig, prompts: ParallelPrompts, prompt_cache: ActivationCache,
                    progress: bool = False) -> dict[str, Any]:
    """The patching half of the study: clean answers, then every condition at every patched layer."""
    from tqdm.auto import tqdm

    from interp_tl.analyses.lens import patched_completions
    from interp_tl.tokens import Tokenized

    layers = patched_layers(model, config)
    trials, unpaired = patch_trials(prompts.problems, prompts.langs)
    if not trials:
        raise BadInputError("no two problems share a template: patching has no pairs (use more n_pairs)")
    clean, clean_summary = clean_answers(model, prompts, config)
    budget = generation_budget(model, prompts, config)
    targets = Tokenized([prompts.tokens[t.target_lang].ids[t.target] for t in trials], prompts.prepend_bos,
                        prompts.tokens[prompts.langs[0]].bos_id, None)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    conditions = {}
    bar = tqdm(total=len(CONDITIONS) * len(layers), desc="lens: patched generations (condition x layer)",
               unit="layer", disable=not progress, leave=False)
    for condition in CONDITIONS:
        sources, used = condition_sources(prompt_cache, prompts, trials, condition, names)
        classified = []
        for layer in layers:
            patch = list(range(layer, model.cfg.n_layers)) if config.onwards else [layer]
            ids = patched_completions(model, targets, sources, patch, budget, config.batch_size)
            classified.append(_classify(model, ids, trials, used, clean))
            bar.update()
        rows = [layer_outcomes(layer, c, trials, used, clean) for layer, c in zip(layers, classified)]
        conditions[condition] = {"layers": rows, "first_layer": first_layers(rows, layers)}
        if condition == "cross_language":
            conditions[condition]["by_pair"] = by_pair(classified, trials, layers)
    bar.close()
    return {
        "hook": "hook_resid_pre", "position": "the target prompt's last real token (the prompt pass only)",
        "onwards": config.onwards, "layers": layers, "level": LEVEL, "max_new_tokens": budget,
        "trials": {"n": len(trials), "unpaired_problems": unpaired,
                   "design": "problems paired within their template (answers differ), each problem in one "
                             "trial; ordered language pairs (A != B) in turn",
                   "language_pairs": dict(Counter(f"{t.source_lang}>{t.target_lang}" for t in trials))},
        "definitions": DEFINITIONS,
        "clean": clean_summary,
        "conditions": conditions,
    }


DEFINITIONS = {
    "language_source": "the output's language (langid) is the source prompt's (for the mean: one of the averaged "
                       "languages)",
    "language_target": "the output's language is the target prompt's",
    "number_source": "the output's first integer is the model's own unpatched answer to the source prompt (for "
                     "the mean: to one of the averaged prompts); undefined (left out) where that answer and the "
                     "target's coincide or one is missing",
    "number_target": "the output's first integer is the model's own unpatched answer to the target prompt",
    "first_layer": "the first patched layer where more than half of the outputs follow the source; set: its "
                   "confidence set (null = past the last patched layer)",
}


# ---------------------------------------------------------------------------------------------
# the study


def analyse(model, config: LensConfig, prompts: ParallelPrompts, caches: dict, progress: bool = False
            ) -> StudyResult:
    """The lens from the two caches, then the patching (which runs the model: clean and patched generations)."""
    layers = patched_layers(model, config)
    data = {
        "model": model.cfg.model_name,
        "n_layers": model.cfg.n_layers,
        "languages": list(prompts.langs),
        "n_problems": prompts.n,
        "lens": lens_report(model, config, prompts, caches),
        "patching": patching_report(model, config, prompts, caches["prompt"], progress),
    }
    data["summary"] = summary(data)
    prov = study_provenance(model, "lens", config, prompts.identity(), layers=layers,
                            hooks=["blocks.L.hook_resid_pre", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"],
                            token="last real token of the prompt, and of prompt + answer up to its number")
    return StudyResult("lens", data, prov)


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The headline's numbers: first layers per condition and the lens at the first and last layer."""
    conditions = data["patching"]["conditions"]
    p = data["lens"]["number_position"]["p_answer"]["all"]["estimate"]
    own = data["lens"]["last_prompt_position"]["own"]["estimate"]
    out: dict[str, Any] = {"p_answer_first": p[0], "p_answer_last": p[-1], "own_opening_first": own[0],
                           "own_opening_last": own[-1]}
    for name, cond in conditions.items():
        for outcome in ("language_source", "number_source"):
            out[f"{name}_{outcome}_first_layer"] = cond["first_layer"][outcome]["estimate"]
            out[f"{name}_{outcome}_max"] = max((r[outcome]["fraction"] or 0.0) for r in cond["layers"])
    return out


def run_lens(model, config: LensConfig = LensConfig(), progress: bool = False) -> StudyResult:
    """Run the lens study on a HookedTransformer.

    Returns:
        A :class:`StudyResult` whose ``data`` has ``lens`` (per layer label: the answer's first
        number token where it is due, ``p_answer`` / ``top1`` / ``median_rank`` per language and
        ``all``; at the prompt's last token, ``mass`` of each language's opening token per prompt
        language, ``own`` and ``other``), ``patching`` (``trials``, ``clean`` answers, per
        condition and layer the four outcomes with Clopper-Pearson intervals, ``first_layer``
        with confidence sets, ``by_pair``) and ``summary``.

    Raises:
        BadInputError: fewer than 10 problems, unknown languages, a generation budget over the
            context. LayerRangeError: a layer out of range.
    """
    prompts = prepare(model, config)
    return analyse(model, config, prompts, extract_caches(model, config, prompts, progress), progress)


def _layer_word(layer: int | None) -> str:
    return "past the last patched layer" if layer is None else f"L{layer}"


def _where(first: dict[str, Any], rows: list[dict], outcome: str) -> str:
    if first["estimate"] is None:
        best = max((r[outcome]["fraction"] or 0.0) for r in rows)
        return f"at no patched layer (at most {best:.2f})"
    row = next(r for r in rows if r["layer"] == first["estimate"])
    lo, hi = first["set"]
    return (f"from layer {first['estimate']} ({row[outcome]['fraction']:.2f} of {row[outcome]['n']}; "
            f"{int(round(100 * first['level']))}% set {_layer_word(lo)}..{_layer_word(hi)})")


def headline(result: StudyResult) -> str:
    """Where the output's language and number follow a patched source, and the lens's answer probability."""
    data = result.data
    cond = data["patching"]["conditions"]
    cross, same, mean = (cond[c] for c in CONDITIONS)
    s = data["summary"]
    return (f"last-token resid_pre of another problem in another language patched in "
            f"({data['patching']['trials']['n']} pairs): the answer's language follows the source "
            f"{_where(cross['first_layer']['language_source'], cross['layers'], 'language_source')}, its number "
            f"{_where(cross['first_layer']['number_source'], cross['layers'], 'number_source')}; same-language "
            f"source: number {_where(same['first_layer']['number_source'], same['layers'], 'number_source')}; mean "
            f"over languages: number {_where(mean['first_layer']['number_source'], mean['layers'], 'number_source')}; "
            f"logit lens p(answer's first number token) {s['p_answer_first']:.3f} at "
            f"{data['lens']['layers'][0]} -> {s['p_answer_last']:.3f} at {data['lens']['layers'][-1]}")


def table(result: StudyResult) -> tuple[list[str], list[list[Any]]]:
    """Per patched layer: the cross-language fractions and the controls' number-follows-source."""
    cond = result.data["patching"]["conditions"]
    rows = []
    for i, row in enumerate(cond["cross_language"]["layers"]):
        rows.append([row["layer"], *(row[o]["fraction"] for o in OUTCOMES),
                     cond["same_language"]["layers"][i]["number_source"]["fraction"],
                     cond["mean_over_languages"]["layers"][i]["number_source"]["fraction"]])
    return ["layer", *OUTCOMES, "same_language number_source", "mean_over_languages number_source"], rows


def _patch_panel(ax, data: dict[str, Any]) -> None:
    cond = data["patching"]["conditions"]
    layers = data["patching"]["layers"]
    lines = [("cross_language", "language_source", "tab:blue", "-", "language follows source"),
             ("cross_language", "number_source", "tab:orange", "-", "number follows source"),
             ("cross_language", "language_target", "tab:blue", ":", "language follows target"),
             ("cross_language", "number_target", "tab:orange", ":", "number follows target"),
             ("same_language", "number_source", "tab:green", "--", "number follows source (same-language source)"),
             ("same_language", "number_target", "tab:green", ":", "number follows target (same-language source)"),
             ("mean_over_languages", "number_source", "tab:red", "-.", "number follows source (mean over languages)")]
    for name, outcome, colour, style, label in lines:
        rows = cond[name]["layers"]
        frac = np.array([np.nan if r[outcome]["fraction"] is None else r[outcome]["fraction"] for r in rows])
        ax.plot(layers, frac, style, color=colour, marker="o", ms=3, label=label)
        if style == "-":
            ax.fill_between(layers, [r[outcome]["interval"][0] for r in rows],
                            [r[outcome]["interval"][1] for r in rows], color=colour, alpha=0.15, lw=0)
    ax.axhline(0.5, color="grey", lw=0.5)
    span = "and every later layer" if data["patching"]["onwards"] else "alone"
    ax.set(ylim=(-0.02, 1.02), xlabel=f"patched layer (last-token resid_pre; {span})", ylabel="fraction of outputs",
           title=f"patching: language and content ({data['patching']['trials']['n']} pairs, 95% CP bands)")
    ax.set_xticks(layers)
    ax.legend(fontsize=6)


def _band_line(ax, x, band: dict[str, list], colour, label: str, lw: float = 1.5) -> None:
    est = np.array([np.nan if v is None else v for v in band["estimate"]])
    (line,) = ax.plot(x, est, color=colour, lw=lw, marker="o", ms=2, label=label)
    lo = np.array([np.nan if v is None else v for v in band["lo"]])
    hi = np.array([np.nan if v is None else v for v in band["hi"]])
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)


def _lens_panels(ax_num, ax_open, data: dict[str, Any]) -> None:
    lens = data["lens"]
    x = np.arange(len(lens["layers"]))
    p = lens["number_position"]["p_answer"]
    for lang in data["languages"]:
        ax_num.plot(x, p[lang]["estimate"], lw=0.8, alpha=0.7, label=lang)
    _band_line(ax_num, x, p["all"], "k", "mean over languages", 2.0)
    ax_num.set(ylim=(-0.02, 1.02), ylabel="p(answer's first number token)", xlabel="layer (logit lens)",
               title="lens where the number is due")
    opening = lens["last_prompt_position"]
    _band_line(ax_open, x, opening["own"], "k", "the prompt's own language", 2.0)
    for lang in data["languages"]:
        _band_line(ax_open, x, opening["other"][lang], None, f"{lang}'s opening, other prompts", 0.9)
    ax_open.set(ylim=(-0.02, 1.02), ylabel="p(answer-opening token)", xlabel="layer (logit lens)",
                title="lens at the prompt's last token")
    for ax in (ax_num, ax_open):
        ax.set_xticks(x, lens["layers"], rotation=45, fontsize=7)
        ax.legend(fontsize=6)


def plot(result: StudyResult):
    """Patching curves (language and content against layer, with controls) and the two lens curves."""
    fig = figure((17, 4.8))
    ax_patch, ax_num, ax_open = fig.subplots(1, 3)
    _patch_panel(ax_patch, result.data)
    _lens_panels(ax_num, ax_open, result.data)
    model = result.provenance["model"]
    fig.suptitle(f"{model['name']} ({model['processing']}), {'/'.join(result.data['languages'])}, "
                 f"n={result.data['n_problems']} problems", fontsize=9)
    return fig


STUDY = Study(
    name="lens", summary="where the language and the answer are decided: logit lens and cross-language patching",
    config=LensConfig, run=run_lens, plot=plot, headline=headline, hooks=hooks, prepare=prepare,
    extract=extract_caches, analyse=analyse, check=patched_layers, count=count, docs="docs/studies/lens.md",
    table=table,
)
