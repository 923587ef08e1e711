"""Logit lens and last-token patching against independent computations.

The lens at ``final_post`` is the model's own log-probabilities; at every layer it is the final norm
written out by hand and the unembedding. Patching: a target patched with its own activations is
unchanged token for token; the last-position logits equal TransformerLens'
``patching.get_act_patch_resid_pre`` on prompts of equal length; batched (left-padded, different
lengths) equals one prompt at a time; the key-value cached generation equals the uncached one, and
the patch is applied in the prompt's pass only (patching at every step, the pitfall, changes the
tokens). Float64 models keep argmax near-ties out of the token comparisons.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import patching

from interp_tl.analyses.lens import (
    last_token_patch,
    lens_hook_names,
    lens_logits,
    lens_token_stats,
    mean_sources,
    patched_completions,
    patched_last_logits,
)
from interp_tl.batching import Batch, left_pad
from interp_tl.cache import extract, last_token, layer_hook_names, select_rows
from interp_tl.errors import BadInputError
from interp_tl.generation import greedy_completions
from interp_tl.prompts import generate_problems
from interp_tl.tokens import Tokenized, tokenize

#: Byte-tokenized prompts of different lengths (every batch of 3 is left-padded).
TEXTS = ["12 + 7 =", "hello world, how are you", "a", "The sum of 5 and 9 is", "x" * 30, "Solve: 3*4", "ab cd",
         "z1"]
#: The same lengths, other text: the sources of :data:`TEXTS`.
OTHER = ["98 - 1 =", "HELLO there, who are we", "q", "The sum of 8 and 1 is", "y" * 30, "Solve: 9/3", "xy zw",
         "k7"]


@torch.no_grad()
def _lens_by_hand(model, cache, layer_stack: int) -> torch.Tensor:
    """The final norm written out (LayerNorm or RMSNorm with its own statistics), then W_U and b_U."""
    names = lens_hook_names(model)
    x = cache[names[layer_stack]][:, 0].double()
    cfg = model.cfg
    if cfg.normalization_type in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()
    elif cfg.normalization_type in ("RMS", "RMSPre"):
        x = x / (x.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()
    if cfg.normalization_type in ("LN", "RMS"):
        x = x * model.ln_final.w.double()
    if cfg.normalization_type == "LN":
        x = x + model.ln_final.b.double()
    return x @ model.W_U.double() + model.b_U.double()


def _user_cache(model, texts):
    """A user's ``run_with_cache`` on left-padded prompts, reduced to the last real token."""
    tokens = tokenize(model, texts)
    toks, mask = left_pad(tokens.ids, 0)
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks, attention_mask=mask,
                                             names_filter=lambda n: n in lens_hook_names(model))
    return logits, last_token(cache, attention_mask=mask), mask


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_lens_at_the_last_layer_is_the_models_own_log_probs(make_model, kind):
    model = make_model(kind, seed=5)
    logits, cache, mask = _user_cache(model, TEXTS)
    lens = lens_logits(cache)
    assert lens.shape == (model.cfg.n_layers + 1, len(TEXTS), model.cfg.d_vocab)
    want = logits[:, -1].double().log_softmax(-1)  # left padding: the last column is every row's last token
    got = lens[-1].double().log_softmax(-1)
    assert float((got - want).abs().max()) < 1e-5
    for i in range(model.cfg.n_layers + 1):  # every layer: the norm by hand
        by_hand = _lens_by_hand(model, cache, i)
        assert float((lens[i].double() - by_hand).abs().max()) < 1e-4 * float(by_hand.abs().max())
    assert float((lens[0] - lens[-1]).abs().max()) > 1.0  # the layers differ: the check can fail


@pytest.mark.parametrize("processing", ["none", "fold_ln", "default"])
def test_lens_on_the_default_model_under_each_processing(processing):
    from interp_tl.models import POLYGLOT_MODEL, load_model

    model = load_model(POLYGLOT_MODEL, processing=processing)
    problems = generate_problems(10, 3)
    texts = [p.prompts[lang] for p in problems for lang in ("zh", "en", "ar")]
    logits, cache, _ = _user_cache(model, texts)
    got = lens_logits(cache)[-1].double().log_softmax(-1)
    assert float((got - logits[:, -1].double().log_softmax(-1)).abs().max()) < 1e-5
    extracted = extract(model, tokenize(model, texts), lens_hook_names(model), batch_size=7)
    again = lens_logits(extracted)[-1].double().log_softmax(-1)  # other batches and padding: float32 rounding
    assert float((again - got).abs().max()) < 1e-4


def test_lens_token_stats_equal_the_full_logits(polyglot_model):
    texts = [p.prompts["es"] for p in generate_problems(10, 4)]
    cache = extract(polyglot_model, tokenize(polyglot_model, texts), lens_hook_names(polyglot_model))
    ids = np.random.default_rng(0).integers(0, polyglot_model.cfg.d_vocab, size=(len(texts), 3))
    log_probs, ranks = lens_token_stats(cache, ids, chunk=3)
    # The reference in the same chunks of rows: float32 matrix products of other row counts round
    # differently (5e-6 on a log-probability of -23 under CI), which is not what is tested here.
    full = torch.cat([lens_logits(select_rows(cache, np.arange(start, min(len(texts), start + 3))))
                      for start in range(0, len(texts), 3)], dim=1).double()
    whole = lens_logits(cache).double()
    assert float((whole - full).abs().max()) < 1e-4  # chunked against all rows at once: rounding only
    lp = full.log_softmax(-1)
    for s in range(full.shape[0]):
        for i in range(len(texts)):
            order = torch.argsort(full[s, i], descending=True).tolist()
            for j, token in enumerate(ids[i]):
                assert log_probs[s, i, j] == pytest.approx(float(lp[s, i, token]), abs=1e-9)
                assert ranks[s, i, j] == order.index(int(token))  # no ties among float logits here
    with pytest.raises(BadInputError):
        lens_token_stats(cache, ids[:3])
    with pytest.raises(BadInputError):
        lens_token_stats(cache, ids + polyglot_model.cfg.d_vocab)


def _sources(model, texts, batch_size=5):
    return extract(model, tokenize(model, texts), layer_hook_names(model, ["hook_resid_pre"]), batch_size)


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_patching_a_target_with_its_own_activations_changes_nothing(make_model, kind):
    model = make_model(kind, seed=6, dtype=torch.float64)
    targets = tokenize(model, TEXTS)
    own = _sources(model, TEXTS, batch_size=5)  # other batches, other padding than the patched runs
    plain = greedy_completions(model, targets, 12, batch_size=3)
    with torch.no_grad():
        logits = model(left_pad(targets.ids, 0)[0], attention_mask=left_pad(targets.ids, 0)[1])[:, -1]
    other = _sources(model, OTHER)
    for layer in range(model.cfg.n_layers):
        assert patched_completions(model, targets, own, [layer], 12, batch_size=3) == plain
        patched = patched_last_logits(model, targets, own, [layer], batch_size=3)
        assert float((patched - logits.float()).abs().max()) < 1e-6
        assert float((patched_last_logits(model, targets, other, [layer], 3) - patched).abs().max()) > 1e-2
    assert patched_completions(model, targets, own, list(range(model.cfg.n_layers)), 12, 3) == plain


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_patched_logits_equal_transformer_lens_activation_patching(make_model, kind):
    """Equal-length prompts, no padding: ``get_act_patch_resid_pre`` at the last position, every layer."""
    model = make_model(kind, seed=7)
    same = [(a, b) for a, b in zip(TEXTS, OTHER) if len(a) == len(b)]
    length = len(same[0][0])
    group = [(a, b) for a, b in same if len(a) == length] + [("12 + 8 =", "77 * 3 ="), ("Zz + 1 =", "ab - 9 =")]
    targets, sources = tokenize(model, [a for a, _ in group]), tokenize(model, [b for _, b in group])
    corrupted = torch.tensor(targets.ids)
    _, clean_cache = model.run_with_cache(torch.tensor(sources.ids))
    captured = []

    def metric(logits):
        captured.append(logits[:, -1].detach().clone())
        return logits[:, -1, 0].sum()

    last = corrupted.shape[1] - 1
    index = pd.DataFrame({"layer": range(model.cfg.n_layers), "pos": [last] * model.cfg.n_layers})
    values = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric, index_axis_names=None,
                                              index_df=index)
    one = last_token(clean_cache, attention_mask=torch.ones_like(corrupted))
    for layer in range(model.cfg.n_layers):
        ours = patched_last_logits(model, targets, one, [layer], batch_size=2)
        assert float((ours - captured[layer]).abs().max()) < 1e-5
        assert float(values[layer]) == pytest.approx(float(ours[:, 0].sum()), abs=1e-4)
    assert float((captured[0] - captured[-1]).abs().max()) > 1e-2


def test_patched_logits_equal_transformer_lens_on_the_default_model(polyglot_model):
    """The problem set: pairs of prompts (another problem, zh into en and within en) of equal token length."""
    problems = generate_problems(40, 5)
    toks = {lang: tokenize(polyglot_model, [p.prompts[lang] for p in problems]) for lang in ("zh", "en")}
    pairs = [(i, j, a) for a in ("zh", "en") for i in range(len(problems)) for j in range(len(problems))
             if i != j and len(toks[a].ids[i]) == len(toks["en"].ids[j])]
    length = len(toks["en"].ids[pairs[0][1]])
    pairs = [(i, j, a) for i, j, a in pairs if len(toks["en"].ids[j]) == length][:6]
    assert {a for _, _, a in pairs} == {"zh", "en"} or len(pairs) >= 2
    corrupted = torch.tensor([toks["en"].ids[j] for _, j, _ in pairs])
    clean = torch.tensor([toks[a].ids[i] for i, _, a in pairs])
    _, clean_cache = polyglot_model.run_with_cache(clean)
    captured = []
    index = pd.DataFrame({"layer": range(4), "pos": [length - 1] * 4})
    patching.get_act_patch_resid_pre(polyglot_model, corrupted, clean_cache,
                                     lambda logits: (captured.append(logits[:, -1].detach().clone()), logits.sum())[1],
                                     index_axis_names=None, index_df=index)
    targets = Tokenized(corrupted.tolist(), True, 0, None)
    one = last_token(clean_cache, attention_mask=torch.ones_like(clean))
    for layer in range(4):
        assert float((patched_last_logits(polyglot_model, targets, one, [layer], 4) - captured[layer]).abs().max()) < 1e-5


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_batched_patching_equals_one_prompt_at_a_time(make_model, kind):
    model = make_model(kind, seed=8, dtype=torch.float64)
    targets, sources = tokenize(model, TEXTS), _sources(model, OTHER)
    assert len(set(targets.lengths)) > 4
    for layers in ([0], [1], [2], [1, 2]):
        batched = patched_completions(model, targets, sources, layers, 12, batch_size=3)
        alone = patched_completions(model, targets, sources, layers, 12, batch_size=1)
        assert batched == alone
        logits = patched_last_logits(model, targets, sources, layers, batch_size=4)
        assert float((logits - patched_last_logits(model, targets, sources, layers, 1)).abs().max()) < 1e-9


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_cached_patched_generation_patches_the_prompt_pass_only(make_model, kind):
    """Cached == uncached (where the prompt's last column is patched at every step, the same position);
    patching column -1 at every cached step (the pitfall: the generated token each time) gives other tokens."""
    model = make_model(kind, seed=9, dtype=torch.float64)
    targets, sources = tokenize(model, TEXTS), _sources(model, OTHER)
    plain = greedy_completions(model, targets, 12, batch_size=3)
    names = ["blocks.1.hook_resid_pre"]
    cached = patched_completions(model, targets, sources, [1], 12, batch_size=3)
    uncached = patched_completions(model, targets, sources, [1], 12, batch_size=3, use_cache=False)
    assert cached == uncached
    assert cached != plain  # the patch acts
    naive = []  # a hook on the model for the whole generation: with the cache it hits each new token too
    for i in range(len(TEXTS)):
        vector = sources.cache_dict[names[0]][i, 0]

        def every_pass(act, hook, vector=vector):
            act[:, -1] = vector.to(act.dtype)
            return act

        with model.hooks(fwd_hooks=[(names[0], every_pass)]):
            naive += greedy_completions(model, targets.select([i]), 12, batch_size=1)
    assert naive != cached
    build = last_token_patch(sources, names)  # the prompt hooks of one batch: the last column, the batch's rows
    batch_rows = np.array([2, 0])
    hooks = build(Batch(batch_rows, torch.zeros((2, 5), dtype=torch.long), torch.ones((2, 5), dtype=torch.long),
                        np.array([5, 5])))
    act = torch.zeros((2, 5, model.cfg.d_model), dtype=torch.float64)
    hooks[0][1](act, None)
    assert torch.equal(act[:, -1], sources.cache_dict[names[0]][[2, 0], 0].double()) and not act[:, :-1].any()


def test_patched_completions_refuse_bad_sources(ln_model):
    targets = tokenize(ln_model, TEXTS)
    sources = _sources(ln_model, OTHER)
    with pytest.raises(BadInputError, match="one source row per target"):
        patched_completions(ln_model, targets, select_rows(sources, [0, 1]), [0])
    with pytest.raises(BadInputError, match="no layers"):
        patched_last_logits(ln_model, targets, sources, [])
    with pytest.raises(Exception, match="out of range"):
        patched_last_logits(ln_model, targets, sources, [7])


def test_mean_sources_is_the_row_mean(ln_model):
    a, b = _sources(ln_model, TEXTS), _sources(ln_model, OTHER)
    names = layer_hook_names(ln_model, ["hook_resid_pre"])
    mean = mean_sources([a, b], names)
    for name in names:
        assert torch.allclose(mean[name], (a[name] + b[name]) / 2, atol=1e-6)
    with pytest.raises(BadInputError):
        mean_sources([a, select_rows(b, [0, 1])], names)


def test_the_study_on_the_default_model(polyglot_model):
    """A small run: JSON keys, strict JSON, byte-identical rerun, consistent counts, figure and headline."""
    import strict_json

    from interp_tl.figures import png_bytes
    from interp_tl.results import json_bytes
    from interp_tl.studies import STUDIES
    from interp_tl.studies.lens import CONDITIONS, OUTCOMES, LensConfig, run_lens

    config = LensConfig(n_pairs=10, langs=("zh", "en", "ar"), n_boot=100, max_new_tokens=10)
    result = run_lens(polyglot_model, config)
    assert json_bytes(result.to_dict()) == json_bytes(run_lens(polyglot_model, config).to_dict())
    data = strict_json.round_trip(result.data)
    lens, patch = data["lens"], data["patching"]
    assert lens["layers"] == ["0_pre", "1_pre", "2_pre", "3_pre", "final_post"]
    for lang in (*config.langs, "all"):
        band = lens["number_position"]["p_answer"][lang]
        assert len(band["estimate"]) == 5 and all(lo <= e <= hi for lo, e, hi in zip(band["lo"], band["estimate"],
                                                                                   band["hi"]))
    mass = lens["last_prompt_position"]["mass"]
    assert sum(mass["zh"][b]["estimate"][-1] for b in config.langs) <= 1.0 + 1e-9
    n = patch["trials"]["n"]
    assert n == sum(patch["trials"]["language_pairs"].values()) and n >= 3
    for name in CONDITIONS:
        rows = patch["conditions"][name]["layers"]
        assert [r["layer"] for r in rows] == [0, 1, 2, 3]
        for r in rows:
            assert r["language_source"]["n"] == r["language_target"]["n"] == n == sum(r["languages"].values())
            for outcome in OUTCOMES:
                lo, hi = r[outcome]["interval"]
                assert lo <= (r[outcome]["fraction"] or 0.0) <= hi
    same = patch["conditions"]["same_language"]["layers"]
    assert all(r["language_source"]["k"] == r["language_target"]["k"] for r in same)
    pairs = patch["conditions"]["cross_language"]["by_pair"]
    assert sum(p["trials"] for p in pairs.values()) == n
    assert [sum(p["language_source"][i] for p in pairs.values()) for i in range(4)] == [
        r["language_source"]["k"] for r in patch["conditions"]["cross_language"]["layers"]]
    study = STUDIES["lens"]
    assert "follows the source" in study.headline(result)
    columns, table = study.table(result)
    assert len(columns) == len(table[0]) and len(table) == 4
    assert png_bytes(study.plot(result))[:4] == b"\x89PNG"


def test_the_clean_run_is_the_unpatched_generation(polyglot_model):
    """The clean answers the outcomes are measured against are the model's greedy answers (no hook left behind)."""
    from interp_tl.studies.lens import LensConfig, clean_answers, prepare

    config = LensConfig(n_pairs=10, langs=("en", "ko"), max_new_tokens=10)
    prompts = prepare(polyglot_model, config)
    clean, summary = clean_answers(polyglot_model, prompts, config)
    ids = greedy_completions(polyglot_model, prompts.tokens["ko"], 10, batch_size=1)
    from interp_tl.generation import extract_answer

    assert [clean[("ko", j)][0] for j in range(10)] == [extract_answer(polyglot_model.tokenizer.decode(x))
                                                          for x in ids]
    assert summary["ko"]["in_prompt_language"] == 1.0
    assert not any(hp.fwd_hooks for hp in polyglot_model.hook_dict.values())
    from dataclasses import replace

    from interp_tl.studies.lens import generation_budget

    longest = int(prompts.stacked().lengths.max())
    assert generation_budget(polyglot_model, prompts, replace(config, max_new_tokens=1000)) == 128 - longest
    assert generation_budget(polyglot_model, prompts, config) == 10


def test_onwards_at_the_last_layer_is_the_single_layer_patch(polyglot_model):
    """``onwards`` patches L..n-1: at the last layer that is the one-layer patch (same outputs); without a
    bootstrap the lens bands have no ends."""
    from dataclasses import replace

    from interp_tl.studies.lens import LensConfig, run_lens

    config = LensConfig(n_pairs=10, langs=("zh", "en"), n_boot=0, max_new_tokens=10)
    alone = run_lens(polyglot_model, config).data
    onwards = run_lens(polyglot_model, replace(config, onwards=True)).data
    assert onwards["patching"]["onwards"] and not alone["patching"]["onwards"]
    for name in alone["patching"]["conditions"]:
        a, b = (d["patching"]["conditions"][name]["layers"] for d in (alone, onwards))
        assert a[-1] == b[-1]
    first = [d["patching"]["conditions"]["cross_language"]["layers"][0]["language_source"]["k"] for d in (alone, onwards)]
    assert first[1] > first[0]  # from layer 0 on, every layer's last token is the source's: its language wins
    assert alone["lens"]["number_position"]["p_answer"]["all"]["lo"] == [None] * 5
