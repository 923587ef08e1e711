"""Attention Jacobian: the closed form against autograd, the surrogate against autograd, batching
invariance, and the seed's statistics on one sequence (masked entries excluded)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import strict_json
import torch

from interp_tl.analyses.jacobian import attention_jacobian, pattern_gradients, softmax_backward, surrogate_gradients
from interp_tl.batching import batches
from interp_tl.errors import BadInputError
from interp_tl.studies.jacobian import JacobianConfig, head_jacobian, run_jacobian
from interp_tl.tokens import Tokenized

TEXTS = ["Calculate 12 + 30. 42", "计算 12 + 30 的值。 42", "C(7, 6) 의 값을 구하시오. 7", "x"]


def _batch(model, texts=TEXTS):
    """One left-padded, masked batch of the texts (BOS prepended), as every loop of the package makes them."""
    ids = [[256] + model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    (batch,) = batches(model, Tokenized(ids, True, 256, None), batch_size=len(ids))
    return batch


def _pairs(cache, model):
    return {layer: (cache[f"blocks.{layer}.attn.hook_pattern"], cache[f"blocks.{layer}.attn.hook_pattern_grad"])
            for layer in range(model.cfg.n_layers)}


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_closed_form_equals_autograd_at_the_scores(make_model, kind):
    model = make_model(kind, seed=41)
    batch = _batch(model)
    assert (batch.attention_mask == 0).any()  # the batch is padded
    scores_grad = {}

    def bwd(grad, hook):
        scores_grad[hook.layer()] = grad.detach()

    names = [f"blocks.{i}.attn.hook_attn_scores" for i in range(model.cfg.n_layers)]
    with model.hooks(bwd_hooks=[(n, bwd) for n in names]):
        cache, _ = pattern_gradients(model, batch)
    for layer, (pattern, grad) in _pairs(cache, model).items():
        closed = softmax_backward(pattern, grad, "full")
        finite = torch.isfinite(scores_grad[layer])
        torch.testing.assert_close(closed[finite], scores_grad[layer][finite], rtol=1e-4, atol=1e-7)
        assert closed.abs().max() > 1e-6


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_surrogate_with_the_full_backward_is_autograd(make_model, kind):
    model = make_model(kind, seed=41)
    batch = _batch(model)
    _, true = pattern_gradients(model, batch)
    full = surrogate_gradients(model, batch, "full")
    diag = surrogate_gradients(model, batch, "diag")
    for layer in true:
        torch.testing.assert_close(full[layer], true[layer], rtol=1e-4, atol=1e-7)
        assert torch.nn.functional.cosine_similarity(diag[layer], true[layer], dim=0) < 0.9999


def _seed_stats(pattern, grad):
    """The research script's per-head numbers for one sequence (its cos_ste keeps masked entries)."""
    a, g = pattern[0], grad[0]
    full = a * (g - (a * g).sum(-1, keepdim=True))
    diag = a * (1 - a) * g

    def cos(x, y):
        return float(torch.nn.functional.cosine_similarity(x.reshape(len(x), -1), y.reshape(len(y), -1), dim=-1)[0])

    out = []
    for h in range(a.shape[0]):
        out.append({"r_diag": float(diag[h].pow(2).sum() / full[h].pow(2).sum()),
                    "cos_diag": cos(diag[h][None], full[h][None]), "cos_ste": cos(g[h][None], full[h][None]),
                    "entropy": float(-(a[h] * (a[h] + 1e-10).log()).sum(-1).mean())})
    return out


def test_one_sequence_matches_the_seed_except_the_masked_entries(make_model, tmp_path):
    model = make_model("ln", seed=41)
    text = tmp_path / "one.txt"
    text.write_text(TEXTS[0], "utf-8")
    result = run_jacobian(model, JacobianConfig(text_file=str(text), weight_gradients=False))
    batch = _batch(model, TEXTS[:1])
    layer = 1
    cache, _ = pattern_gradients(model, batch)
    pattern, grad = _pairs(cache, model)[layer]
    # the cache analysis (what run_with_cache(..., incl_bwd=True) gives a user) is the study's analysis
    assert attention_jacobian(cache, batch.attention_mask)["r_diag"] == result.data["layers"]["r_diag"]
    seed = _seed_stats(pattern, grad)
    for h, ref in enumerate(seed):
        ours = head_jacobian(result, layer, h)
        assert ours["r_diag"] == pytest.approx(ref["r_diag"], rel=1e-4)
        assert ours["cos_diag"] == pytest.approx(ref["cos_diag"], abs=1e-5)
        assert ours["row_entropy"] == pytest.approx(ref["entropy"], abs=1e-4)
    causal = torch.tril(torch.ones_like(pattern[0, 0])).bool()
    assert grad[0][:, ~causal].abs().max() > 0  # the pattern gradient is not zero at masked entries
    masked = grad * causal
    assert head_jacobian(result, layer, 0)["cos_ste"] == pytest.approx(
        _seed_stats(pattern, masked)[0]["cos_ste"], abs=1e-5)
    assert abs(head_jacobian(result, layer, 0)["cos_ste"] - seed[0]["cos_ste"]) > 1e-3


def test_numbers_do_not_depend_on_batching(make_model, tmp_path):
    model = make_model("rms", seed=42)
    text = tmp_path / "many.txt"
    text.write_text("\n".join(TEXTS[:3] * 2), "utf-8")
    one = run_jacobian(model, JacobianConfig(text_file=str(text), batch_size=1)).data
    many = run_jacobian(model, JacobianConfig(text_file=str(text), batch_size=6)).data
    for key in one["layers"]:
        np.testing.assert_allclose(np.array(one["layers"][key], float), np.array(many["layers"][key], float),
                                   rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(one["weight_gradient_cos"]["ste"], many["weight_gradient_cos"]["ste"], atol=1e-5)


def test_mean_max_attention_per_head_and_why_mean_attention_was_dropped(make_model, tmp_path):
    """mean_max_attention against a loop over sequences and real query rows; the seed's mean attention is the
    same number for every head (rows / unmasked entries), so it is not reported."""
    model = make_model("ln", seed=41)
    text = tmp_path / "three.txt"
    text.write_text("\n".join(TEXTS[:3]), "utf-8")
    result = run_jacobian(model, JacobianConfig(text_file=str(text), batch_size=3, weight_gradients=False)).data
    assert "mean_attention" not in result["layers"]
    batch = _batch(model, TEXTS[:3])
    cache, _ = pattern_gradients(model, batch)
    lengths = batch.attention_mask.sum(1).tolist()
    for layer, (pattern, _) in _pairs(cache, model).items():
        per_head, seed_mean = [], []
        for h in range(model.cfg.n_heads):
            maxima, entries = [], []
            for j, length in enumerate(lengths):
                a = pattern[j, h, -length:, -length:].double()  # the sequence's real rows and keys
                maxima += a.max(-1).values.tolist()
                entries += a[torch.tril(torch.ones_like(a)).bool()].tolist()
            per_head.append(np.mean(maxima))
            seed_mean.append(np.mean(entries))
        np.testing.assert_allclose(result["layers"]["mean_max_attention"][layer], per_head, rtol=1e-6)
        assert np.ptp(per_head) > 1e-3  # it tells heads apart
        np.testing.assert_allclose(seed_mean, sum(lengths) / sum(n * (n + 1) / 2 for n in lengths), rtol=1e-5)


def test_strata_cover_every_real_row(polyglot_model):
    result = run_jacobian(polyglot_model, JacobianConfig(n_problems=5, langs=("zh", "en")))
    data = result.data
    rows = sum(v["rows"] for v in data["strata"]["entropy"]["0"].values())
    assert rows == sum(v["rows"] for v in data["strata"]["sink"]["0"].values())
    assert rows == sum(v["rows"] for v in data["strata"]["position"]["0"].values())
    assert rows % polyglot_model.cfg.n_heads == 0 and rows > 0
    assert set(data["weight_gradient_cos"]) == {"diag", "ste"}
    assert result.provenance["sequences"]["languages"] == ["zh", "en"]
    strict_json.round_trip(result.to_dict())


def test_bad_input(tmp_path, ln_model):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", "utf-8")
    with pytest.raises(BadInputError, match="no non-empty line"):
        run_jacobian(ln_model, JacobianConfig(text_file=str(empty)))
    long = tmp_path / "long.txt"
    long.write_text("a" * 300, "utf-8")
    with pytest.raises(BadInputError, match="more than the model.s context of 256"):
        run_jacobian(ln_model, JacobianConfig(text_file=str(long)))
    with pytest.raises(BadInputError, match="no attn.hook_pattern"):
        run_jacobian(types.SimpleNamespace(hook_dict={}, cfg=ln_model.cfg), JacobianConfig())
    with pytest.raises(BadInputError, match="unknown softmax backward"):
        softmax_backward(torch.ones(1), torch.ones(1), "lateral")


def test_answer_loss_option_counts_exactly_the_completion_tokens(polyglot_model):
    """The loss differentiated under loss_tokens=answer is, per sequence, the mean of generation's answer-token losses."""
    from interp_tl.analyses.jacobian import loss_mask, sequence_loss
    from interp_tl.generation import answer_text, answer_token_losses
    from interp_tl.prompts import generate_problems
    from interp_tl.studies.jacobian import sequences
    from interp_tl.tokens import tokenize

    config = JacobianConfig(n_problems=5, langs=("ko", "es"))
    tokens, lengths, _ = sequences(polyglot_model, config)
    problems = generate_problems(5, 42, ["ko", "es"])
    pairs = [(p.prompts[lang], answer_text(p.answer, lang)) for p in problems for lang in ("ko", "es")]
    reference = answer_token_losses(polyglot_model, tokenize(polyglot_model, [q for q, _ in pairs]),
                                    [a for _, a in pairs])
    assert lengths == [len(r) for r in reference]
    (batch,) = batches(polyglot_model, tokens, batch_size=len(tokens))
    with torch.inference_mode():
        answer = float(sequence_loss(polyglot_model, batch, loss_mask(batch, lengths)))
        every = float(sequence_loss(polyglot_model, batch))
    assert answer == pytest.approx(sum(float(np.mean(r)) for r in reference), rel=1e-5)
    assert abs(answer - every) > 1.0  # the prompt tokens, never a training target, weigh a lot: the choice matters


def test_loss_tokens_default_and_provenance(polyglot_model, toy_model, tmp_path):
    from interp_tl.training_stream import trained_pairs

    config = JacobianConfig(n_problems=5, langs=("zh", "en"), weight_gradients=False)
    result = run_jacobian(polyglot_model, config)
    assert result.provenance["loss_tokens"] == result.data["loss_tokens"] == "answer"
    assert "completion" in result.provenance["loss"]
    from interp_tl.prompts import generate_problems

    assert result.data["trained_pairs"] == trained_pairs(generate_problems(5, 42), ("zh", "en"))
    assert set(result.data["answer_loss"]) == {"zh", "en"}
    every = run_jacobian(polyglot_model, JacobianConfig(n_problems=5, langs=("zh", "en"), weight_gradients=False,
                                                        loss_tokens="all"))
    assert every.provenance["loss_tokens"] == "all"
    assert every.data["layers"]["cos_diag"] != result.data["layers"]["cos_diag"]
    toy = run_jacobian(toy_model, JacobianConfig(n_problems=5, langs=("zh", "en"), weight_gradients=False))
    assert toy.data["loss_tokens"] == "all" and toy.data["trained_pairs"] is None
    text = tmp_path / "t.txt"
    text.write_text("Calculate 1 + 2.\n", "utf-8")
    with pytest.raises(BadInputError, match="loss_tokens=answer needs the problem set"):
        JacobianConfig(text_file=str(text), loss_tokens="answer")
    with pytest.raises(BadInputError, match="loss_tokens must be"):
        JacobianConfig(loss_tokens="prompt")
