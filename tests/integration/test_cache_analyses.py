"""Analyses on a user's own run_with_cache: the cache path equals the extraction path.

A TransformerLens user holds ``model.run_with_cache(tokens)``: every position, padded on the right
(TransformerLens' default) or the left, with or without BOS. Reduced with ``last_token`` /
``token_mean`` it must give the activations :func:`interp_tl.cache.extract` gives (length-sorted,
left-padded, masked batches), and the analyses must give the same numbers on both; the writer
split must be TransformerLens' own decomposition.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformer_lens.utilities.tokenize_utils import get_attention_mask

from interp_tl.analyses import names_filter
from interp_tl.analyses.alignment import layer_alignment
from interp_tl.analyses.shares import add_head_results, decomposition, hook_names, writer_shares
from interp_tl.cache import extract, last_positions, last_token, token_mean
from interp_tl.errors import BadInputError
from interp_tl.prompts import generate_problems
from interp_tl.tokens import tokenize

PROBLEMS = generate_problems(10, seed=5)
LANGS = ("zh", "en")


def _user_cache(model, lang: str, padding_side: str, prepend_bos: bool):
    """What a user does: to_tokens (padded), the mask TransformerLens builds, run_with_cache."""
    texts = [p.prompts[lang] for p in PROBLEMS]
    toks = model.to_tokens(texts, prepend_bos=prepend_bos, padding_side=padding_side)
    mask = get_attention_mask(model.tokenizer, toks, prepend_bos, padding_side)
    assert (mask == 0).any()  # the batch is padded
    _, cache = model.run_with_cache(toks, attention_mask=mask, names_filter=names_filter)
    return cache, mask


def _close(actual, expected, atol=2e-5):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol * scale)


def _hooks(model):
    return list(dict.fromkeys(hook_names(model, model.cfg.n_layers - 1) + [
        f"blocks.{layer}.{h}" for layer in range(model.cfg.n_layers)
        for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")]))


@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_user_cache_reduces_to_the_extracted_cache(small_model, padding_side, prepend_bos):
    model = small_model
    hooks = _hooks(model)
    for lang in LANGS:
        cache, mask = _user_cache(model, lang, padding_side, prepend_bos)
        tokens = tokenize(model, [p.prompts[lang] for p in PROBLEMS], prepend_bos)
        want_last = extract(model, tokens, hooks, batch_size=3)
        want_mean = extract(model, tokens, ["hook_embed", "blocks.1.hook_resid_post"], batch_size=3, reduce="mean")
        got_last = last_token(cache, attention_mask=mask)
        got_mean = token_mean(cache, attention_mask=mask, skip_first=prepend_bos)
        for name in hooks:
            assert got_last[name].shape == want_last[name].shape, name
            _close(got_last[name].numpy(), want_last[name].numpy())
        for name in want_mean.cache_dict:
            _close(got_mean[name].numpy(), want_mean[name].numpy())


def _analyses(model, caches):
    table = layer_alignment(caches["zh"], caches["en"], n_perms=200, n_boot=0)
    shares = writer_shares(caches["zh"], caches["en"], model.cfg.n_layers - 1, n_perms=50)
    return table, shares


def _same_numbers(one, other, atol=1e-4):
    (t1, s1), (t2, s2) = one, other
    for r1, r2 in zip(t1.layer_results, t2.layer_results):
        for key in ("z_pre", "z_post_attn", "z_post_mlp", "z_attn_correction_alone", "z_mlp_correction_alone"):
            assert r1[key] == pytest.approx(r2[key], abs=atol * max(1, abs(r2[key]))), key
        assert r1["stats"]["post_mlp"]["z_exact"] == pytest.approx(r2["stats"]["post_mlp"]["z_exact"], rel=atol)
    assert s1.labels == s2.labels
    np.testing.assert_allclose(s1.shares, s2.shares, rtol=0, atol=1e-6)
    assert s1.total == pytest.approx(s2.total, abs=1e-7)


@pytest.mark.parametrize("prepend_bos", [True, False])
def test_right_padded_left_padded_and_extracted_caches_give_the_same_numbers(small_model, prepend_bos):
    model = small_model
    runs = {}
    for side in ("right", "left"):
        reduced = {}
        for lang in LANGS:
            cache, mask = _user_cache(model, lang, side, prepend_bos)
            reduced[lang] = last_token(cache, attention_mask=mask)
        runs[side] = _analyses(model, reduced)
    extracted = {lang: extract(model, tokenize(model, [p.prompts[lang] for p in PROBLEMS], prepend_bos), _hooks(model),
                               batch_size=4) for lang in LANGS}
    runs["extract"] = _analyses(model, extracted)
    _same_numbers(runs["right"], runs["left"])
    _same_numbers(runs["right"], runs["extract"])
    assert runs["extract"][1].sum_error < 1e-4 and abs(runs["extract"][1].shares.sum() - runs["extract"][1].total) < 1e-12


def test_tokens_instead_of_a_mask(ln_model):
    """``last_token(cache, tokens=...)`` builds TransformerLens' mask from the padding side and BOS default."""
    toks = ln_model.to_tokens([p.prompts["en"] for p in PROBLEMS])  # left padding, BOS (the model's defaults)
    _, cache = ln_model.run_with_cache(toks, names_filter=names_filter)
    by_tokens = last_token(cache, tokens=toks)
    by_mask = last_token(cache, attention_mask=get_attention_mask(ln_model.tokenizer, toks, True, "left"))
    for name in by_mask.cache_dict:
        torch.testing.assert_close(by_tokens[name], by_mask[name], rtol=0, atol=0)


@pytest.mark.parametrize("layer", [0, 2])
def test_writer_split_is_transformer_lens_decomposition(small_model, layer):
    model = small_model
    cache, mask = _user_cache(model, "zh", "right", True)
    full = {k: v.clone() for k, v in cache.cache_dict.items()}
    # TransformerLens on the full cache, at each prompt's last token
    cache.compute_head_results()
    positions = last_positions(mask)
    stack, labels = cache.get_full_resid_decomposition(layer + 1, expand_neurons=False, return_labels=True)
    want = stack[:, torch.arange(len(positions)), positions].detach().double().numpy()
    # ours, on the reduced cache
    from transformer_lens import ActivationCache

    reduced = last_token(ActivationCache(full, model), attention_mask=mask)
    got_labels, parts, resid = decomposition(reduced, layer)
    assert got_labels == labels
    assert labels[-1] == "bias" and labels[: model.cfg.n_heads] == [f"L0H{h}" for h in range(model.cfg.n_heads)]
    _close(parts, want, atol=1e-5)
    _close(parts.sum(0), resid, atol=2e-5)
    # add_head_results is compute_head_results, one einsum per layer
    mine = ActivationCache({k: v.clone() for k, v in full.items()}, model)
    add_head_results(mine, range(model.cfg.n_layers))
    for i in range(model.cfg.n_layers):
        name = f"blocks.{i}.attn.hook_result"
        torch.testing.assert_close(mine[name], cache[name], rtol=1e-5, atol=1e-6)


@pytest.mark.wrong_types
def test_last_positions_left_right_and_errors():
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_positions(left).tolist() == [3, 3, 3]
    assert last_positions(right).tolist() == [1, 3, 0]
    assert last_positions(torch.tensor([[1, 0, 1, 0]])).tolist() == [2]  # a hole: the last real one
    with pytest.raises(BadInputError, match="prompt 1 has no real token"):
        last_positions(torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(BadInputError, match=r"\[batch, pos\]"):
        last_positions(torch.ones(3))


def test_analyses_refuse_a_full_cache_and_missing_hooks(ln_model):
    cache, mask = _user_cache(ln_model, "zh", "right", True)
    with pytest.raises(BadInputError, match="reduce the cache to one"):
        layer_alignment(cache, cache)
    with pytest.raises(BadInputError, match="say where each prompt's tokens are"):
        last_token(cache)
    with pytest.raises(BadInputError, match="the mask is"):
        last_token(cache, attention_mask=mask[:, :-1])
    reduced = last_token(cache, attention_mask=mask)
    partial = type(reduced)({k: v for k, v in reduced.cache_dict.items() if "mlp_out" not in k}, ln_model)
    with pytest.raises(BadInputError, match="the cache has no 'blocks.0.hook_mlp_out'"):
        layer_alignment(partial, partial)


def test_the_tour_script_gives_the_studies_numbers(polyglot_model, tmp_path, monkeypatch, capsys):
    """experiments/cache_tour.py: run_with_cache -> the per-layer table and the head shares of the studies."""
    from interp_tl.studies import AlignmentConfig, HeadsConfig, run_alignment, run_heads

    script = Path(__file__).resolve().parents[2] / "experiments" / "cache_tour.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    assert (tmp_path / "head_L1H3.png").read_bytes()[:4] == b"\x89PNG"
    table = [line.split() for line in out[1:5]]
    study = run_alignment(polyglot_model, AlignmentConfig(n_boot=0, head_shares=False)).data["layer_results"]
    for row, want in zip(table, study):
        assert int(row[0]) == want["layer"]
        assert float(row[3]) == pytest.approx(want["z_exact_post_mlp"], abs=0.006)
        assert float(row[3]) == pytest.approx(want["stats"]["post_mlp"]["z_exact"], abs=0.006)
        assert float(row[6]) == pytest.approx(want["z_post_mlp"], abs=0.006)  # the Monte Carlo z
    heads = {w["name"]: w["share"] for w in run_heads(polyglot_model, HeadsConfig(top=0)).data["writers"]}
    printed = [line.split() for line in out[7:]]
    assert len(printed) == 10
    for label, share, *_ in printed:
        assert float(share) == pytest.approx(heads[label], abs=6e-6)
