"""Kernel-surgery study and generation scoring: identities against hooks, alpha = 0, the seed's scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import strict_json
import torch

from interp_tl.edits import Basis, projection_hooks, residual_basis
from interp_tl.errors import BadInputError, LayerRangeError
from interp_tl.generation import evaluate_generation, first_answer_token, first_answer_word, numbers_in
from interp_tl.models import POLYGLOT_MODEL, load_model
from interp_tl.prompts import seed_test_problems
from interp_tl.stats import mcnemar
from interp_tl.studies.surgery import (
    SurgeryConfig,
    default_layers,
    extract_caches,
    prepare,
    random_bases,
    run_surgery,
)

SMALL = SurgeryConfig(layers=(1, 2), k=3, n_pairs=20, langs=("zh", "en", "sw"), eval_per_category=2,
                      sweep_k=(1, 3), sweep_alpha=(1.0,), loss_n=5)


def fit_activations(model, config, layers):
    """Per layer the fit hook's last-token activations ``[n_pairs, n_langs, d_model]`` (the study's cache)."""
    from interp_tl.analyses.subspace import stacked
    from interp_tl.cache import split_languages

    prompts = prepare(model, config)
    by_lang = split_languages(extract_caches(model, config, prompts)["fit"], prompts.langs)
    return {layer: stacked(by_lang, f"blocks.{layer}.{config.fit_hook}") for layer in layers}
SEED_LAYER_KEYS = {"lang", "label", "correct", "total", "accuracy", "mean_fat", "outputs", "lang_preservation"}


@pytest.fixture(scope="module")
def small_run(polyglot_model):
    before = {k: v.clone() for k, v in polyglot_model.state_dict().items()}
    result = run_surgery(polyglot_model, SMALL)
    after = polyglot_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the study restores the weights bit-exactly
    return result


def test_seed_fields_and_provenance(small_run):
    data = small_run.data
    assert {"experiment", "surgery_layers", "n_lang_dims", "n_test_problems", "max_new_tokens", "baseline",
            "surgery"} <= set(data)
    assert data["surgery_layers"] == [1, 2] and data["n_lang_dims"] == 3 and data["n_test_problems"] == 10
    for key in ("baseline", "surgery", "random_control", "energy_matched_control"):
        assert [r["lang"] for r in data[key]] == ["zh", "en", "sw"]
        for row in data[key]:
            assert SEED_LAYER_KEYS <= set(row) and row["total"] == 10 and len(row["outputs"]) == 10
            assert row["accuracy"] == pytest.approx(row["correct"] / 10)
            assert row["correct"] == sum(o["correct"] for o in row["outputs"])
    assert {(s["k"], s["subspace"]) for s in data["sweep"]} == {(k, s) for k in (1, 3)
                                                                 for s in ("language", "random", "energy_matched")}
    prov = small_run.provenance
    assert prov["model"]["name"] == POLYGLOT_MODEL and prov["layers"] == [1, 2]
    assert {k: prov["prompts"][k] for k in ("name", "n", "seed", "languages", "hook")} == {
        "name": "parallel-math-7", "n": 20, "seed": 42, "languages": ["zh", "en", "sw"], "hook": "hook_resid_post"}
    strict_json.round_trip(small_run.to_dict())  # JSON-ready


def test_surgery_equals_generation_with_the_projection_hook(polyglot_model, small_run):
    """The study's weight edit gives the same generations as the unedited model with a hook on hook_mlp_out."""
    acts = fit_activations(polyglot_model, SMALL, [1, 2])
    from interp_tl.stats import language_subspace

    kind = residual_basis(polyglot_model)
    bases = {layer: Basis(language_subspace(a, k=3).axes, kind) for layer, a in acts.items()}
    problems = seed_test_problems(2)
    with polyglot_model.hooks(fwd_hooks=projection_hooks(polyglot_model, [1, 2], bases, 1.0)):
        hooked = evaluate_generation(polyglot_model, problems, ["zh", "en", "sw"])
    for row in small_run.data["surgery"]:
        assert [o["gen"] for o in row["outputs"]] == [o["gen"] for o in hooked[row["lang"]]["outputs"]]
    sweep = {(s["k"], s["subspace"]): s for s in small_run.data["sweep"]}
    assert sweep[(3, "language")]["accuracy"] == {r["lang"]: r["accuracy"] for r in small_run.data["surgery"]}


def test_alpha_zero_is_the_baseline(polyglot_model):
    config = SurgeryConfig(layers=(1,), k=2, alpha=0.0, n_pairs=10, langs=("ja", "ko"), eval_per_category=2,
                           sweep_k=(2,), sweep_alpha=(0.0,), loss_n=5)
    data = run_surgery(polyglot_model, config).data
    assert data["surgery"][0]["outputs"] == data["baseline"][0]["outputs"]
    assert data["loss"]["surgery"] == data["loss"]["baseline"]
    assert data["paired_tests"]["ja"]["surgery_vs_baseline"] == {"lost": 0, "gained": 0, "n_pairs": 10,
                                                                 "p_value": 1.0}


def test_same_config_same_numbers(polyglot_model, small_run):
    again = run_surgery(polyglot_model, SMALL)
    assert again.to_dict()["sweep"] == small_run.to_dict()["sweep"]
    assert again.data["loss"] == small_run.data["loss"]


def test_removing_language_axes_moves_the_answer_loss(small_run):
    """Not vacuous: the edit changes what the model predicts."""
    loss = small_run.data["loss"]
    assert any(abs(loss["surgery"][lang]["answer_loss"] - loss["baseline"][lang]["answer_loss"]) > 1e-3
               for lang in ("zh", "en", "sw"))


def test_default_layers_are_the_seeds_fraction_of_depth():
    assert default_layers(36) == list(range(9, 27))
    assert default_layers(12) == list(range(3, 9))
    assert default_layers(4) == [1, 2]
    assert default_layers(1) == [0]


def test_mcnemar_is_the_exact_binomial():
    before = [True] * 6 + [False] * 2 + [True] * 3
    after = [False] * 5 + [True] + [True] * 2 + [True] * 3  # 5 lost, 2 gained
    res = mcnemar(before, after)
    p = 2 * sum(math.comb(7, i) for i in range(3)) / 2**7
    assert res == {"lost": 5, "gained": 2, "n_pairs": 11, "p_value": pytest.approx(p)}
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_random_control_bases_are_orthonormal_in_the_models_basis(polyglot_model):
    centred = load_model(POLYGLOT_MODEL, processing="default")
    for model, kind in ((polyglot_model, "raw"), (centred, "centred")):
        bases = random_bases(model, [0, 3], 5, seed=1)
        for basis in bases.values():
            assert basis.residual_basis == kind
            np.testing.assert_allclose(basis.axes.T @ basis.axes, np.eye(5), atol=1e-10)
        if kind == "centred":
            assert np.abs(bases[0].axes.sum(0)).max() < 1e-10
        assert not np.allclose(bases[0].axes, bases[3].axes)


@pytest.mark.parametrize(("changes", "error", "message"), [
    ({"alpha": -0.1}, BadInputError, r"alpha must be in \[0, 1\]"),
    ({"sweep_alpha": (2.0,)}, BadInputError, r"alpha must be in \[0, 1\]"),
    ({"k": 128}, BadInputError, "d_model - 1 = 127"),
    ({"layers": (4,)}, LayerRangeError, "out of range"),
    ({"langs": ("zh",)}, BadInputError, "at least two languages"),
    ({"langs": ("zh", "fr")}, Exception, "unknown language 'fr'"),
    ({"n_pairs": 5, "langs": ("zh", "en"), "k": 6}, BadInputError, "above the rank 5"),
])
def test_bad_config(polyglot_model, changes, error, message):
    from dataclasses import replace

    with pytest.raises(error, match=message):
        run_surgery(polyglot_model, replace(SMALL, **changes))


# The seed's scoring of generated text


def test_numbers_and_first_answer_positions_follow_the_seed():
    assert numbers_in("C(10, 3) = 120. So 120.5 or -3") == ["10", "3", "120", "120.5", "-3"]
    assert numbers_in("The answer is 42.") == ["42"]  # the seed's regex read "42.": a full stop is not a decimal
    assert first_answer_word("The answer is 120 apples", 120) == 3
    assert first_answer_word("答案是120", 120) == 0
    assert first_answer_word("no number", 120) == -1
    assert first_answer_token([" 1", "2", "0", " apples"], 120) == 2
    assert first_answer_token([" 12"], 120) == -1


def test_batched_evaluation_equals_one_prompt_at_a_time(polyglot_model):
    problems = seed_test_problems(3)
    batched = evaluate_generation(polyglot_model, problems, ["ko", "ar"], batch_size=15)
    alone = evaluate_generation(polyglot_model, problems, ["ko", "ar"], batch_size=1)
    for lang in ("ko", "ar"):
        assert batched[lang]["outputs"] == alone[lang]["outputs"]
        assert batched[lang]["correct_mask"] == [o["correct"] for o in batched[lang]["outputs"]]
        assert batched[lang]["language_mask"] == [o["language"] == lang for o in batched[lang]["outputs"]]
        kept = batched[lang]["lang_preservation"]
        assert kept["in_language"] == pytest.approx(np.mean(batched[lang]["language_mask"]))
        assert kept["in_language"] > 0.5  # the embedded model answers in words of the prompt's language


def test_language_preservation_counts_outputs_with_letters():
    from interp_tl.generation import _language_summary

    summary = _language_summary(["en", "en", "es", "none", "latin"], "en")
    assert summary == {"counts": {"en": 2, "es": 1, "none": 1, "latin": 1}, "preserved": 0.5, "with_letters": 4,
                       "in_language": 0.4}


def test_k_by_the_variance_rule(polyglot_model):
    from dataclasses import replace

    from interp_tl.stats import language_subspace

    config = replace(SMALL, min_variance=0.3, sweep_k=(1,), langs=("en", "zh"), eval_per_category=1)
    data = run_surgery(polyglot_model, config).data
    acts = fit_activations(polyglot_model, config, [1, 2])
    expected = {str(layer): language_subspace(a, min_variance=0.3).k for layer, a in acts.items()}
    assert data["k_rule"] == {"min_variance": 0.3, "k_per_layer": expected}
    assert data["n_lang_dims"] == max(expected.values())
    assert all(v["variance_explained"] >= 0.3 for v in data["subspace"].values())


# The controls, the fit set and the pooled tests (issue 26)


def _measured_removed_energy(model, config, layer, basis, writes) -> float:
    """1 − ‖m'‖²/‖m‖² with m' the MLP write of the edited model (weights edited, one layer) at the fit positions."""
    from interp_tl.cache import split_languages
    from interp_tl.edits import projected_mlp_writes
    from interp_tl.studies.surgery import mlp_writes

    prompts = prepare(model, config)
    with projected_mlp_writes(model, [layer], {layer: basis}, 1.0):
        edited = mlp_writes(model, [layer], split_languages(extract_caches(model, config, prompts)["fit"],
                                                            prompts.langs))[layer]
    return 1.0 - float((edited**2).sum() / (writes**2).sum())


def test_energy_matched_control_removes_what_the_language_axes_remove(polyglot_model, small_run):
    """Measured through the weight edit: language axes and matched control within 1e-4 (float32 model)."""
    from interp_tl.analyses.subspace import language_subspace
    from interp_tl.cache import split_languages
    from interp_tl.studies.surgery import matched_bases, mlp_writes

    prompts = prepare(polyglot_model, SMALL)
    by_lang = split_languages(extract_caches(polyglot_model, SMALL, prompts)["fit"], prompts.langs)
    kind = residual_basis(polyglot_model)
    language = {layer: Basis(language_subspace(by_lang, f"blocks.{layer}.hook_resid_post", k=3).axes, kind)
                for layer in (1, 2)}
    writes = mlp_writes(polyglot_model, [1, 2], by_lang)
    matched = matched_bases(writes, language, SMALL.control_seed)
    random = random_bases(polyglot_model, [1, 2], 3, SMALL.control_seed)
    report = small_run.data["removed_energy"]["per_layer"]
    for layer in (1, 2):
        measured = {name: _measured_removed_energy(polyglot_model, SMALL, layer, b[layer], writes[layer])
                    for name, b in (("language", language), ("energy_matched_control",
                                                             {k: m.basis for k, m in matched.items()}),
                                    ("random_control", random))}
        assert abs(measured["language"] - measured["energy_matched_control"]) <= 1e-4
        for name, value in measured.items():
            assert report[str(layer)][name] == pytest.approx(value, abs=1e-4)
        assert report[str(layer)]["matched"] is True
        # the plain control is the small edit the issue found: a fraction of what the language axes remove
        assert measured["random_control"] < 0.5 * measured["language"]
        assert measured["language"] > 0.05  # k = 3 here; the retrained weights: about 0.1 per layer


def test_energy_matched_generations_are_in_the_sweep(small_run):
    sweep = {(s["k"], s["subspace"]): s for s in small_run.data["sweep"]}
    rows = small_run.data["energy_matched_control"]
    assert sweep[(3, "energy_matched")]["accuracy"] == {r["lang"]: r["accuracy"] for r in rows}
    assert small_run.data["summary"]["energy_matched_control_mean_accuracy"] == pytest.approx(
        np.mean([r["accuracy"] for r in rows]))
    assert set(small_run.data["loss"]) >= {"baseline", "surgery", "random_control", "energy_matched_control"}


def test_fit_set_is_disjoint_from_every_evaluated_problem(polyglot_model, small_run):
    from interp_tl.prompts import generate_problems

    fit = small_run.data["fit_set"]
    assert fit["overlap_with_evaluation"] == 0 and fit["overlap_with_loss"] == 0
    prompts = prepare(polyglot_model, SMALL)
    evaluated = seed_test_problems(SMALL.eval_per_category) + generate_problems(SMALL.loss_n, SMALL.loss_seed)
    # independent of the package's problem key: the prompt texts in every language
    held = {p.prompts[lang] for p in evaluated for lang in SMALL.langs}
    assert not any(p.prompts[lang] in held for p in prompts.problems for lang in SMALL.langs)
    drawn = generate_problems(SMALL.n_pairs, SMALL.seed, SMALL.langs)
    evaluated_rows = [i for i, p in enumerate(drawn) if p.prompts["en"] in held]
    assert evaluated_rows  # the small set does draw an evaluated problem: something was replaced
    assert fit["n_fit"] == prompts.n == SMALL.n_pairs and prompts.n_replaced == len(evaluated_rows)
    for i, (old, new) in enumerate(zip(drawn, prompts.problems)):
        assert new.category == old.category  # replaced within its category
        assert (new.prompts == old.prompts) == (i not in evaluated_rows)  # the others are the drawn problems
    assert small_run.provenance["prompts"]["n_replaced"] == len(evaluated_rows)


def test_default_fit_set_would_hold_every_evaluation_problem(polyglot_model):
    """The research script's fit (seed 42, 200 problems) includes all 20 evaluation problems; ours replaces them."""
    from interp_tl.prompts import generate_problems, overlap_count

    drawn, evaluation = generate_problems(200, 42), seed_test_problems(4)
    assert overlap_count(evaluation, drawn) == 20  # every evaluation problem is in the research script's fit
    assert overlap_count(drawn, evaluation) == 22  # two of them drawn twice (combinatorics repeats)
    prompts = prepare(polyglot_model, SurgeryConfig(langs=("zh", "en")))
    loss = generate_problems(50, 7)
    assert prompts.n == 200 and prompts.n_replaced == overlap_count(drawn, evaluation + loss) >= 22
    assert overlap_count(prompts.problems, evaluation + loss) == 0


def test_pooled_tests_pool_the_languages(small_run):
    from scipy.stats import binomtest

    data = small_run.data
    langs = [r["lang"] for r in data["baseline"]]
    correct = {cond: {r["lang"]: [o["correct"] for o in r["outputs"]] for r in data[cond]}
               for cond in ("baseline", "surgery", "random_control", "energy_matched_control")}
    pooled = data["paired_tests_pooled"]
    assert set(pooled["methods"]) == {"pooled", "by_problem"}
    pairs = {"surgery_vs_baseline": ("baseline", "surgery"), "control_vs_baseline": ("baseline", "random_control"),
             "energy_matched_vs_baseline": ("baseline", "energy_matched_control"),
             "surgery_vs_energy_matched": ("energy_matched_control", "surgery")}
    assert set(pooled["tests"]) == set(pairs)
    for name, (before, after) in pairs.items():
        test = pooled["tests"][name]["pooled"]
        lost = sum(b and not a for lang in langs for b, a in zip(correct[before][lang], correct[after][lang]))
        gained = sum(a and not b for lang in langs for b, a in zip(correct[before][lang], correct[after][lang]))
        assert (test["lost"], test["gained"]) == (lost, gained)
        assert test["lost"] == sum(data["paired_tests"][lang][name]["lost"] for lang in langs)
        want = 1.0 if lost + gained == 0 else binomtest(lost, lost + gained, 0.5).pvalue
        assert test["p_value"] == pytest.approx(want)
        by_problem = pooled["tests"][name]["by_problem"]
        assert by_problem["gained_minus_lost"] == gained - lost and by_problem["n_items"] == 10
    assert any(pooled["tests"][name]["pooled"]["discordant"] for name in pairs)  # something to test


def test_language_outcome_has_its_paired_tests_and_dose_response(small_run):
    from interp_tl.stats import paired_binary_tests

    data = small_run.data
    masks = {cond: {row["lang"]: [o["language"] == row["lang"] for o in row["outputs"]] for row in data[cond]}
             for cond in ("baseline", "surgery")}
    expected = paired_binary_tests(masks["baseline"], masks["surgery"])
    for lang in SMALL.langs:
        assert data["paired_tests_language"][lang]["surgery_vs_baseline"] == expected["per_stratum"][lang]
    pooled = data["paired_tests_language_pooled"]["tests"]["surgery_vs_baseline"]["pooled"]
    assert pooled["p_value"] == expected["pooled"]["p_value"]
    for cond in ("baseline", "surgery", "random_control", "energy_matched_control"):
        rates = [row["lang_preservation"]["in_language"] for row in data[cond]]
        assert data["summary"][f"{cond}_mean_in_language"] == pytest.approx(np.mean(rates))
    sweep = {(s["k"], s["subspace"]): s for s in data["sweep"]}
    assert sweep[(3, "language")]["in_language"] == {r["lang"]: r["lang_preservation"]["in_language"]
                                                      for r in data["surgery"]}


def test_surgery_reports_its_trained_pair_counts(small_run):
    from interp_tl.prompts import generate_problems
    from interp_tl.training_stream import trained_pairs

    data = small_run.data
    loss_set = generate_problems(SMALL.loss_n, SMALL.loss_seed)
    assert data["loss"]["trained_pairs"] == trained_pairs(loss_set, SMALL.langs)
    assert data["evaluation_trained_pairs"] == trained_pairs(seed_test_problems(SMALL.eval_per_category),
                                                             SMALL.langs)
    assert set(data["loss"]["definitions"]) == {"answer_loss", "number_loss", "sequence_loss"}


def test_surgery_on_another_model_has_no_trained_pair_counts(toy_model):
    config = SurgeryConfig(layers=(1,), k=2, n_pairs=10, langs=("zh", "en"), eval_per_category=1,
                           sweep_k=(2,), sweep_alpha=(1.0,), loss_n=5, max_new_tokens=3)
    data = run_surgery(toy_model, config).data
    assert data["loss"]["trained_pairs"] is None and data["evaluation_trained_pairs"] is None


def test_model_card_and_surgery_report_the_same_answer_loss(polyglot_model, small_run):
    from interp_tl.generation import score_answers
    from interp_tl.prompts import generate_problems

    problems = generate_problems(SMALL.loss_n, SMALL.loss_seed)
    card = score_answers(polyglot_model, problems, SMALL.langs)
    for lang in SMALL.langs:
        assert card.answer_loss[lang] == pytest.approx(small_run.data["loss"]["baseline"][lang]["answer_loss"],
                                                       rel=1e-5, abs=1e-7)
