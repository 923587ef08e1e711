"""Tests of the embedded ``interp-tl/polyglot-toy``: shipped files, tokenizer, what it learned, retraining.

The accuracy and loss figures of the model card (docs/polyglot-toy-v1.md) are recomputed here from the shipped
weights and compared with ``training.json`` (written by the training run), and a short retrain
with the recorded recipe must reproduce the first recorded losses.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from interp_tl import models
from interp_tl.errors import ModelNotAvailableError
from interp_tl.generation import answer_text, answer_token_losses, greedy_completions, score_answers
from interp_tl.models import POLYGLOT_MODEL, TOY_MODEL, load_model, model_provenance, polyglot_path
from interp_tl.prompts import CATEGORIES, generate_problems, languages
from interp_tl.tokens import tokenize

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "experiments" / "train_polyglot.py"
HELD_OUT = generate_problems(200, 42)


@pytest.fixture(scope="module")
def polyglot(polyglot_model):
    return polyglot_model


@pytest.fixture(scope="module")
def training():
    return json.loads(polyglot_path().joinpath("training.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def scores(polyglot):
    return score_answers(polyglot, HELD_OUT, languages())


def _train_module():
    if not TRAIN_SCRIPT.exists():
        pytest.skip("experiments/train_polyglot.py is not beside the tests")
    spec = importlib.util.spec_from_file_location("train_polyglot", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# Shipped files and loading


def test_shipped_files_are_under_10_mb():
    files = [f for f in Path(str(polyglot_path())).iterdir() if f.is_file()]
    names = {f.name for f in files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= names
    assert 1_000_000 < sum(f.stat().st_size for f in files) < 10_000_000


def test_loads_by_name_as_a_gpt2_style_model(polyglot):
    cfg = polyglot.cfg
    assert (cfg.normalization_type, cfg.positional_embedding_type, cfg.act_fn) == ("LN", "standard", "gelu_new")
    assert cfg.n_layers >= 3 and 128 <= cfg.d_model <= 256
    assert len(polyglot.tokenizer) == cfg.d_vocab
    prov = model_provenance(polyglot)
    assert prov["name"] == POLYGLOT_MODEL and prov["processing"] == "none"


def test_loading_leaves_the_global_random_state_alone():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    def seeded():
        random.seed(5)
        np.random.seed(5)
        torch.manual_seed(5)

    seeded()
    expected = draw()
    seeded()
    load_model(POLYGLOT_MODEL)
    load_model(TOY_MODEL)
    assert draw() == expected


@pytest.mark.parametrize("processing", ["fold_ln", "default"])
def test_weight_processing_keeps_the_next_token_distribution(polyglot, processing):
    processed = load_model(POLYGLOT_MODEL, processing=processing)
    assert model_provenance(processed)["weights_fingerprint"] != model_provenance(polyglot)["weights_fingerprint"]
    tokens = polyglot.to_tokens([p.prompts["ar"] for p in HELD_OUT[:4]], padding_side="right")
    with torch.inference_mode():
        ref = polyglot(tokens).log_softmax(-1)
        got = processed(tokens).log_softmax(-1)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-4)


def test_missing_package_data_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "polyglot_path", lambda: tmp_path)
    with pytest.raises(ModelNotAvailableError, match="missing from the installed package"):
        load_model(POLYGLOT_MODEL)


# Tokenizer


def test_tokenizer_round_trips_every_language(polyglot):
    tok = polyglot.tokenizer
    for problem in generate_problems(25, seed=7):
        for lang in languages():
            text = problem.prompts[lang] + answer_text(problem.answer)
            assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_digits_are_ten_tokens_shared_by_all_languages(polyglot):
    tok = polyglot.tokenizer
    vocab = tok.get_vocab()
    with_digits = {t for t in vocab if any(c.isdigit() for c in tok.convert_tokens_to_string([t]))}
    assert sorted(tok.convert_tokens_to_string([t]) for t in with_digits) == list("0123456789")
    digit_ids = {vocab[t] for t in with_digits}
    problem = HELD_OUT[0]
    digits = "".join(c for c in problem.prompts["en"] if c.isdigit())
    for lang in languages():
        ids = tok(problem.prompts[lang], add_special_tokens=False)["input_ids"]
        assert tok.decode([i for i in ids if i in digit_ids]) == digits


# Generation and answer loss against unbatched references


def test_batched_greedy_equals_one_prompt_at_a_time(polyglot):
    texts = [p.prompts[lang] for p in HELD_OUT[:6] for lang in ("zh", "sw", "ko")]
    tokens = tokenize(polyglot, texts)
    batched = greedy_completions(polyglot, tokens, batch_size=18)
    alone = greedy_completions(polyglot, tokens, batch_size=1)
    assert batched == alone
    assert any(len(ids) > 1 for ids in batched)


def test_answer_loss_equals_the_unpadded_loss(polyglot):
    problems = HELD_OUT[:5]
    texts = [p.prompts["ja"] for p in problems]
    answers = [answer_text(p.answer) for p in problems]
    tokens = tokenize(polyglot, texts)
    batched = answer_token_losses(polyglot, tokens, answers, batch_size=5)
    tok = polyglot.tokenizer
    for ids, answer, got in zip(tokens.ids, answers, batched):
        target = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seq = torch.tensor([ids + target])
        with torch.inference_mode():
            logp = polyglot(seq).log_softmax(-1)[0]
        ref = [-float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(target)]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


# What it learned: the model card


def test_combinatorics_is_learned_in_every_language(scores):
    for lang in languages():
        assert scores.accuracy[lang]["combinatorics"] >= 0.9, lang


def test_scores_match_the_shipped_training_record(scores, training):
    final = training["final"]
    for lang in languages():
        for cat in [*CATEGORIES, "all"]:
            # greedy argmax can flip on a near-tie between machines: one problem of 40
            assert abs(scores.accuracy[lang][cat] - final["accuracy"][lang][cat]) <= 1 / 40 + 1e-9, (lang, cat)
        assert scores.answer_loss[lang] == pytest.approx(final["answer_loss"][lang], rel=1e-3)


def test_answer_loss_is_well_under_the_question_blind_baseline(scores, training):
    mean = float(np.mean(list(scores.answer_loss.values())))
    assert mean < 0.5 * training["final"]["question_blind_loss"]


def test_model_card_matches_the_training_record(training):
    card = _train_module().model_card(training)
    assert card in (REPO / "docs" / "polyglot-toy-v1.md").read_text("utf-8")


# Reproducibility


@pytest.mark.slow
def test_short_retrain_reproduces_the_shipped_losses(capsys):
    module = _train_module()
    deterministic = torch.are_deterministic_algorithms_enabled()
    assert module.check(Path(str(polyglot_path()))) == 0, capsys.readouterr().out
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_the_check_can_fail(tmp_path):
    module = _train_module()
    record = json.loads(polyglot_path().joinpath("training.json").read_text("utf-8"))
    record["first_losses"][3] += 1e-3
    for name in ("tokenizer.json", "training.json"):
        (tmp_path / name).write_text(polyglot_path().joinpath(name).read_text("utf-8"), "utf-8")
    (tmp_path / "training.json").write_text(json.dumps(record), "utf-8")
    assert module.check(tmp_path) == 1


def test_generation_refuses_bad_lengths(polyglot):
    from interp_tl.errors import BadInputError

    tokens = tokenize(polyglot, ["Calculate 12 + 30."])
    with pytest.raises(BadInputError, match="at least 1"):
        greedy_completions(polyglot, tokens, max_new_tokens=0)
    with pytest.raises(BadInputError, match="over the context"):
        greedy_completions(polyglot, tokens, max_new_tokens=polyglot.cfg.n_ctx)
