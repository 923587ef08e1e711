"""Greedy generation with a key-value cache: token for token the uncached path, with padding, EOS and hooks.

The reference is ``greedy_completions(..., use_cache=False)``, which runs the whole sequence at
every step, and the same prompts one at a time (no padding at all). Float64 models make the
comparison immune to near-ties of the argmax; float32 ones check the precision users run.
"""

from __future__ import annotations

import pytest
import torch

from interp_tl.batching import length_sorted_batches
from interp_tl.errors import BadInputError
from interp_tl.generation import greedy_completions
from interp_tl.prompts import generate_problems
from interp_tl.tokens import tokenize

#: Prompts of very different lengths, so every batch of 4 is left-padded.
TEXTS = ["a", "hello world, how are you", "12 + 7 =", "x" * 40, "Solve: 3*4", "z", "The sum of 5 and 9 is",
         "ab cd ef gh ij kl mn op"]


def _padded_batches(tokens, batch_size: int) -> int:
    """How many batches hold prompts of different lengths (so left padding is exercised)."""
    lengths = tokens.lengths
    return sum(len(set(lengths[rows])) > 1 for rows in length_sorted_batches(lengths, batch_size))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_cached_equals_uncached_with_left_padding(make_model, kind, dtype):
    """LayerNorm + absolute positions and RMSNorm + rotary + GQA: cached batches, uncached batches, one at a time."""
    model = make_model(kind, seed=3, dtype=dtype)
    tokens = tokenize(model, TEXTS)
    assert _padded_batches(tokens, 4) == 2
    cached = greedy_completions(model, tokens, max_new_tokens=24, batch_size=4)
    uncached = greedy_completions(model, tokens, max_new_tokens=24, batch_size=4, use_cache=False)
    alone = greedy_completions(model, tokens, max_new_tokens=24, batch_size=1, use_cache=False)
    assert cached == uncached == alone
    assert sum(map(len, cached)) > 100  # long continuations, not an early EOS everywhere


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_without_bos_and_with_one_new_token(make_model, kind):
    model = make_model(kind, seed=4, dtype=torch.float64)
    tokens = tokenize(model, TEXTS, prepend_bos=False)
    for new in (1, 2, 7):
        assert greedy_completions(model, tokens, new, batch_size=3) == greedy_completions(
            model, tokens, new, batch_size=1, use_cache=False)


def test_rows_leave_the_batch_at_eos(polyglot_model):
    """The trained model ends its answers with EOS at different steps; cached rows drop out as they finish."""
    problems = generate_problems(30, seed=3)
    for lang in ("zh", "en", "ar"):
        tokens = tokenize(polyglot_model, [p.prompts[lang] for p in problems])
        cached = greedy_completions(polyglot_model, tokens, max_new_tokens=12, batch_size=16)
        uncached = greedy_completions(polyglot_model, tokens, max_new_tokens=12, batch_size=16, use_cache=False)
        alone = greedy_completions(polyglot_model, tokens, max_new_tokens=12, batch_size=1, use_cache=False)
        assert cached == uncached == alone
        lengths = {len(ids) for ids in cached}
        assert len(lengths) > 2 and max(lengths) < 12  # answers of several lengths, all ended by EOS
        eos = polyglot_model.tokenizer.eos_token_id
        assert all(eos not in ids for ids in cached)


def test_eos_first_gives_an_empty_completion(make_model):
    """Wherever the model would emit ``target`` it emits EOS instead: row 1 at once, others later or never."""
    model = make_model("ln", seed=5, dtype=torch.float64)
    tokens = tokenize(model, TEXTS)
    eos = model.tokenizer.eos_token_id
    target = greedy_completions(model, tokens, 1, batch_size=8)[1][0]  # row 1's first token

    def end_when_target(logits, hook):
        logits = logits.clone()
        hit = logits[:, -1].argmax(-1) == target
        logits[hit, -1, eos] = logits[hit, -1].max(-1).values + 1.0
        return logits

    with model.hooks(fwd_hooks=[("unembed.hook_out", end_when_target)]):
        cached = greedy_completions(model, tokens, 10, batch_size=8)
        uncached = greedy_completions(model, tokens, 10, batch_size=8, use_cache=False)
    assert cached == uncached
    assert cached[1] == [] and any(len(ids) == 10 for ids in cached)


def test_hooks_on_the_unembed_and_the_residual_run_in_the_cached_path(make_model):
    """A ban on one token (unembed.hook_out) and a steering vector on every residual (hook_resid_pre)."""
    model = make_model("rms", seed=6, dtype=torch.float64)
    tokens = tokenize(model, TEXTS)
    plain = greedy_completions(model, tokens, 12, batch_size=4)
    banned = max(set(t for ids in plain for t in ids), key=lambda t: sum(ids.count(t) for ids in plain))
    steer = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def ban(logits, hook):
        logits = logits.clone()
        logits[..., banned] = -1e9
        return logits

    def push(resid, hook):
        return resid + 3 * steer

    hooks = [("unembed.hook_out", ban), ("blocks.1.hook_resid_pre", push)]
    with model.hooks(fwd_hooks=hooks):
        cached = greedy_completions(model, tokens, 12, batch_size=4)
        alone = greedy_completions(model, tokens, 12, batch_size=1, use_cache=False)
    assert cached == alone
    assert all(banned not in ids for ids in cached) and cached != plain


def test_gpt2_by_name(offline_hub):
    """GPT-2's loading path and tokenizer (BOS = EOS = pad = 50256): cached equals uncached."""
    from interp_tl.models import load_model

    model = load_model("gpt2")
    tokens = tokenize(model, [p.prompts["en"] for p in generate_problems(10, seed=1)] + ["1"])
    assert _padded_batches(tokens, 6) >= 1
    assert greedy_completions(model, tokens, 16, batch_size=6) == greedy_completions(
        model, tokens, 16, batch_size=1, use_cache=False)


def test_budget_errors(make_model):
    model = make_model("ln", seed=0)
    tokens = tokenize(model, TEXTS)
    with pytest.raises(BadInputError, match="at least 1"):
        greedy_completions(model, tokens, 0)
    with pytest.raises(BadInputError, match="over the context"):
        greedy_completions(model, tokens, model.cfg.n_ctx)


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_copy_free_attention_changes_no_number_and_restores_the_weights(make_model, kind):
    """Inside: the same weights and bit-identical logits; after (also after an error): the original storage."""
    from interp_tl.generation import copy_free_attention

    model = make_model(kind, seed=7)
    tokens = tokenize(model, TEXTS[:3])
    toks = torch.tensor([tokens.ids[0]])
    before = {name: (p.data, p.data.clone(), p.data.stride()) for name, p in model.named_parameters()}
    with torch.inference_mode():
        want = model(toks)
    with copy_free_attention(model) as laid_out, torch.inference_mode():
        assert laid_out == 4 * model.cfg.n_layers  # Q, K, V (the K/V groups under GQA) and O of every layer
        moved = [n for n, p in model.named_parameters() if p.data.data_ptr() != before[n][0].data_ptr()]
        assert len(moved) == laid_out and all(torch.equal(p, before[n][1]) for n, p in model.named_parameters())
        assert torch.equal(model(toks), want)
    with pytest.raises(RuntimeError, match="inside"), copy_free_attention(model):
        raise RuntimeError("inside")
    for name, p in model.named_parameters():
        data, values, stride = before[name]
        assert p.data.data_ptr() == data.data_ptr() and p.data.stride() == stride and torch.equal(p.data, values)


@pytest.mark.parametrize("model_name", ["toy_model", "polyglot_model"])
def test_completion_losses_are_the_answer_token_losses_and_their_digits(model_name, request):
    """answer_loss: every completion token (opening space, sentence, EOS); number_loss: the answer's digits only
    (one token per digit in both tokenizers); sequence_loss: every next token, prompt included."""
    import numpy as np

    from interp_tl.generation import answer_text, answer_token_losses, completion_losses

    model = request.getfixturevalue(model_name)
    problems = generate_problems(10, 3)
    for lang in ("en", "ja"):
        answers = [answer_text(p.answer, lang) for p in problems]
        per = answer_token_losses(model, tokenize(model, [p.prompts[lang] for p in problems]), answers)
        got = completion_losses(model, problems, lang)
        assert got["answer_loss"] == pytest.approx(float(np.mean(np.concatenate(per))), rel=1e-9)
        digits = []
        for p, a, losses in zip(problems, answers, per):
            ids = model.tokenizer(a, add_special_tokens=False)["input_ids"]
            start = next(i for i, t in enumerate(ids) if any(c.isdigit() for c in model.tokenizer.decode([t])))
            digits.append(losses[start:start + len(str(p.answer))])  # one token per digit, consecutive
        assert got["number_loss"] == pytest.approx(float(np.mean(np.concatenate(digits))), rel=1e-9)
        assert got["sequence_loss"] != got["answer_loss"]
