"""Tests of interp_tl.cache and interp_tl.batching: batched, left-padded extraction against per-prompt runs.

Ground truth is every prompt run alone, unpadded and without an attention mask (see
:func:`_run_alone`). Models are float32; activations are compared with
``assert_allclose(rtol=0, atol=2e-5 * scale)``, where ``scale = max(1, max |reference|)`` of that
hook (measured disagreement is ~1e-6 of scale: padding and masking change only the summation
order of float32 reductions).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from interp_tl.cache import check_hooks, check_layers, fused_gelu, layer_hook_names
from interp_tl.cache import extract as extract_cache
from interp_tl.errors import BadInputError, LayerRangeError
from interp_tl.models import load_model
from interp_tl.prompts import generate_problems
from interp_tl.tokens import Tokenized, check_lengths, tokenize

PAD = 256  # byte tokenizer: BOS = EOS = PAD = 256
ATOL = 2e-5  # times the activation scale, float32
KINDS = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_mlp_out", "hook_resid_post")

_PROBLEMS = generate_problems(10)
#: Real prompts of very different lengths (2 to ~190 byte tokens), interleaved so that the
#: length-sorted order differs from the input order.
TEXTS = [p.prompts[lang] for p in _PROBLEMS for lang in ("zh", "en", "ar")] + [
    "7",
    " ".join(p.prompts["en"] for p in _PROBLEMS[:2]),
    _PROBLEMS[3].prompts["ja"],
    _PROBLEMS[4].prompts["ko"],
]


# ---------------------------------------------------------------------------------------------
# helpers


def extract(model, tokens, hooks, batch_size=32, reduce="last", **kwargs):
    """extract() as plain arrays: ``[n, ...]`` for last/mean, per-prompt ``[len, ...]`` lists for all."""
    cache = extract_cache(model, tokens, hooks, batch_size, reduce, **kwargs)
    out = {}
    for name, value in cache.cache_dict.items():
        assert value.shape[0] == len(tokens.ids) and not value.is_inference()
        if reduce == "all":
            width = value.shape[1]
            assert width == int(tokens.lengths.max())
            assert not value[[i for i, n in enumerate(tokens.lengths) if n < width], 0].any()  # zero padding
            out[name] = [value[i, width - n:].numpy() for i, n in enumerate(tokens.lengths)]
        else:
            assert value.shape[1] == 1
            out[name] = value[:, 0].numpy()
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: faster on these tiny models, ~3x faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["ln_model", "rms_model"])
def model(request):
    return request.getfixturevalue(request.param)


def _hooks(model) -> list[str]:
    embeds = ["hook_embed"] + (["hook_pos_embed"] if model.cfg.positional_embedding_type == "standard" else [])
    return embeds + layer_hook_names(model, KINDS)


_REFERENCES: dict[tuple[str, tuple[int, ...]], dict[str, np.ndarray]] = {}


def _run_alone(model, ids: list[int]) -> dict[str, np.ndarray]:
    """Every hook of :func:`_hooks` over all positions of one prompt run alone (memoized).

    No attention mask: with ``padding_side == "left"`` TransformerLens would build one from pad
    ids and, since pad = BOS here, mask a leading BOS whenever ``cfg.default_prepend_bos`` is
    False (``rms_model``, like Qwen) or a prompt starts with two pad-id tokens. Switching the
    tokenizer to right padding makes TransformerLens run the plain, unmasked forward pass.
    """
    key = (model.cfg.model_name, tuple(ids))
    if key not in _REFERENCES:
        hooks = set(_hooks(model))
        side = model.tokenizer.padding_side
        model.tokenizer.padding_side = "right"
        try:
            with torch.inference_mode():
                _, cache = model.run_with_cache(
                    torch.tensor([ids]), names_filter=lambda name: name in hooks, return_type=None
                )
        finally:
            model.tokenizer.padding_side = side
        _REFERENCES[key] = {name: cache[name][0].numpy().copy() for name in hooks}
    return _REFERENCES[key]


def _close(actual, expected, atol: float = ATOL, err_msg: str = "") -> None:
    expected = np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol * scale, err_msg=err_msg)


def _expected(model, tokens: Tokenized, reduce: str) -> dict[str, np.ndarray | list]:
    """What extract should return, from per-prompt runs."""
    refs = [_run_alone(model, ids) for ids in tokens.ids]
    out = {}
    for name in _hooks(model):
        if reduce == "last":
            out[name] = np.stack([r[name][-1] for r in refs])
        elif reduce == "mean":
            first = 1 if tokens.prepend_bos else 0
            out[name] = np.stack([r[name][first:].mean(0) for r in refs])
        else:
            out[name] = [r[name] for r in refs]
    return out


def _assert_matches(model, tokens: Tokenized, got: dict, reduce: str) -> None:
    expected = _expected(model, tokens, reduce)
    assert set(got) == set(expected)
    for name, want in expected.items():
        if reduce == "all":
            assert isinstance(got[name], list) and len(got[name]) == len(want)
            for i, (g, w) in enumerate(zip(got[name], want)):
                assert g.shape == w.shape, (name, i)
                _close(g, w, err_msg=f"{name} prompt {i}")
        else:
            assert got[name].shape == want.shape and got[name].dtype == np.float32, name
            _close(got[name], want, err_msg=name)


# ---------------------------------------------------------------------------------------------
# 1-3: batched extraction equals per-prompt runs


@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("reduce", ["last", "mean", "all"])
def test_extract_matches_per_prompt_runs(model, prepend_bos, reduce):
    tokens = tokenize(model, TEXTS, prepend_bos)
    assert len(set(tokens.lengths.tolist())) > 10  # many different lengths in each batch
    got = extract(model, tokens, _hooks(model), batch_size=3, reduce=reduce)
    _assert_matches(model, tokens, got, reduce)


def test_rows_are_in_input_order_whatever_the_batch_size(model):
    tokens = tokenize(model, TEXTS)
    hooks = _hooks(model)
    base = extract(model, tokens, hooks, batch_size=3)
    for batch_size in (1, 4, 100):
        other = extract(model, tokens, hooks, batch_size=batch_size)
        for name in hooks:
            _close(other[name], base[name], err_msg=f"{name} batch_size={batch_size}")
    # Permuting the prompts permutes the rows the same way.
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    permuted = extract(model, tokens.select(perm), hooks, batch_size=4)
    for name in hooks:
        _close(permuted[name], base[name][perm], err_msg=name)


def test_duplicate_hook_names_are_extracted_once(ln_model):
    tokens = tokenize(ln_model, TEXTS[:4])
    got = extract(ln_model, tokens, ["blocks.1.hook_resid_post"] * 2 + ["hook_embed"])
    assert sorted(got) == ["blocks.1.hook_resid_post", "hook_embed"]
    assert got["blocks.1.hook_resid_post"].shape == (4, ln_model.cfg.d_model)


# ---------------------------------------------------------------------------------------------
# 4: prompts containing the pad / BOS id


@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("reduce", ["last", "mean", "all"])
def test_pad_id_inside_prompts_is_attended(model, prepend_bos, reduce):
    body = [
        [72, PAD, 105, PAD, PAD, 33],  # pad id in the middle
        [PAD, PAD, 97],  # starts with pad ids (TL's own mask guess would drop them)
        [97, 98, PAD],  # ends with the pad id
        [PAD],
        list("a longer prompt so the others are padded".encode()),
        [PAD] * 5,
    ]
    ids = [([PAD] if prepend_bos else []) + row for row in body]
    tokens = Tokenized(ids, prepend_bos, PAD if prepend_bos else None, None)
    got = extract(model, tokens, _hooks(model), batch_size=6, reduce=reduce)
    _assert_matches(model, tokens, got, reduce)


# ---------------------------------------------------------------------------------------------
# 5: stopping after the last block needed


class _Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, act, hook):
        self.calls += 1


def _extract_counting_blocks(model, tokens, hooks, batch_size):
    """extract, counting how often block 1 and ln_final run (permanent hooks)."""
    block1, final = _Counter(), _Counter()
    model.add_hook("blocks.1.hook_resid_pre", block1, is_permanent=True)
    model.add_hook("ln_final.hook_normalized", final, is_permanent=True)
    try:
        out = extract(model, tokens, hooks, batch_size=batch_size)
    finally:
        model.reset_hooks(including_permanent=True)
    return out, block1.calls, final.calls


def test_extract_stops_after_the_last_needed_block(model):
    tokens = tokenize(model, TEXTS[:10])
    n_batches = 3  # 10 prompts, batch_size 4
    early = [f"blocks.0.{kind}" for kind in KINDS] + ["hook_embed"]
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    alone, block1_runs, final_runs = _extract_counting_blocks(model, tokens, early, 4)
    assert (block1_runs, final_runs) == (0, 0)
    together, block1_runs, final_runs = _extract_counting_blocks(model, tokens, early + [last], 4)
    assert (block1_runs, final_runs) == (n_batches, n_batches)  # whole model (return_type=None)
    for name in early:
        np.testing.assert_array_equal(alone[name], together[name], err_msg=name)

    _, block1_runs, final_runs = _extract_counting_blocks(model, tokens, ["blocks.1.hook_mlp_out"], 4)
    assert (block1_runs, final_runs) == (n_batches, 0)  # stop_at_layer=2 of 3

    embed_only, block1_runs, _ = _extract_counting_blocks(model, tokens, ["hook_embed"], 4)
    assert block1_runs == 0
    np.testing.assert_array_equal(embed_only["hook_embed"], alone["hook_embed"])

    _, block1_runs, final_runs = _extract_counting_blocks(model, tokens, ["ln_final.hook_normalized"], 4)
    assert (block1_runs, final_runs) == (n_batches, n_batches)


# ---------------------------------------------------------------------------------------------
# 6: errors


def test_unknown_hook_is_bad_input(ln_model):
    tokens = tokenize(ln_model, ["abc"])
    for name in ("hook_nonsense", "blocks.1.hook_nonsense", "blocks.x.hook_resid_pre"):
        with pytest.raises(BadInputError) as info:
            extract(ln_model, tokens, [name])
        assert info.type is BadInputError, name  # not the LayerRangeError subclass
        assert name in str(info.value)
    with pytest.raises(BadInputError):
        check_hooks(ln_model, ["blocks.0.hook_resid_pre", "hook_nonsense"])
    check_hooks(ln_model, _hooks(ln_model))  # all valid: no error


def test_out_of_range_hook_layer_is_layer_range_error(ln_model):
    tokens = tokenize(ln_model, ["abc"])
    for name in ("blocks.99.hook_resid_pre", "blocks.3.attn.hook_z"):
        with pytest.raises(LayerRangeError, match=r"layers 0\.\.2"):
            extract(ln_model, tokens, [name])


def test_prompt_longer_than_context_is_bad_input(ln_model):
    n_ctx = ln_model.cfg.n_ctx
    assert len(tokenize(ln_model, ["a" * (n_ctx - 1)], prepend_bos=True).ids[0]) == n_ctx  # fits exactly
    with pytest.raises(BadInputError, match="context"):
        tokenize(ln_model, ["short", "a" * n_ctx], prepend_bos=True)
    too_long = Tokenized([[97], [97] * (n_ctx + 1)], False, None, None)
    with pytest.raises(BadInputError, match=f"prompt 1 has {n_ctx + 1} tokens"):
        extract(ln_model, too_long, ["hook_embed"])


def test_empty_prompt_is_bad_input(ln_model):
    with pytest.raises(BadInputError, match="empty"):
        tokenize(ln_model, ["abc", ""])
    with pytest.raises(BadInputError, match="prompt 1 has no tokens"):
        extract(ln_model, Tokenized([[97], []], False, None, None), ["hook_embed"])
    with pytest.raises(BadInputError, match="no prompts"):
        check_lengths(ln_model, Tokenized([], False, None, None))


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_below_one_is_bad_input(ln_model, batch_size):
    with pytest.raises(BadInputError, match="batch size"):
        extract(ln_model, tokenize(ln_model, ["abc"]), ["hook_embed"], batch_size=batch_size)


def test_check_layers(ln_model):
    assert ln_model.cfg.n_layers == 3
    assert check_layers(ln_model, None) == [0, 1, 2]
    assert check_layers(ln_model, [2, np.int64(0)]) == [2, 0]
    for bad in ([5], [3], [-1], [0, 7]):
        with pytest.raises(LayerRangeError):
            check_layers(ln_model, bad)
    with pytest.raises(BadInputError, match="no layers"):
        check_layers(ln_model, [])
    assert layer_hook_names(ln_model, ["hook_resid_pre", "attn.hook_z"], [2]) == [
        "blocks.2.hook_resid_pre", "blocks.2.attn.hook_z",
    ]
    with pytest.raises(LayerRangeError):
        layer_hook_names(ln_model, ["hook_resid_pre"], [5])


def test_tokenize_without_tokenizer_is_bad_input():
    with pytest.raises(BadInputError, match="no tokenizer"):
        tokenize(types.SimpleNamespace(tokenizer=None), ["abc"])


# ---------------------------------------------------------------------------------------------
# 7: tokenize records BOS and character offsets


@pytest.mark.parametrize("prepend_bos", [True, False, None])
def test_tokenize_records_bos(model, prepend_bos):
    tokens = tokenize(model, TEXTS, prepend_bos)
    with_bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    assert tokens.prepend_bos is with_bos
    assert tokens.bos_id == (PAD if with_bos else None)
    head = [PAD] if with_bos else []
    # The byte tokenizer: token id = UTF-8 byte, nothing added but the explicit BOS.
    assert tokens.ids == [head + list(text.encode("utf-8")) for text in TEXTS]
    assert tokens.lengths.tolist() == [len(head) + len(text.encode("utf-8")) for text in TEXTS]
    for ids, offsets in zip(tokens.ids, tokens.offsets):
        assert len(offsets) == len(ids)
        assert offsets[0] == ((0, 0) if with_bos else (0, 1))


def test_default_bos_follows_config(ln_model, rms_model):
    assert tokenize(ln_model, ["a"]).ids == [[PAD, 97]]
    assert tokenize(rms_model, ["a"]).ids == [[97]]


@pytest.mark.parametrize("prepend_bos", [True, False])
def test_offsets_map_every_byte_token_to_its_character(ln_model, prepend_bos):
    tokens = tokenize(ln_model, TEXTS, prepend_bos)
    for text, offsets in zip(TEXTS, tokens.offsets):
        expected = [(i, i + 1) for i, char in enumerate(text) for _ in char.encode("utf-8")]
        assert (offsets[1:] if prepend_bos else offsets) == expected, text
    # A CJK character is three byte tokens, all with that character's span.
    zh = tokenize(ln_model, ["a除b"], prepend_bos)
    body = slice(1, None) if prepend_bos else slice(None)
    assert zh.ids[0][body] == [97, 0xE9, 0x99, 0xA4, 98]
    assert zh.offsets[0][body] == [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3)]


def test_tokenized_select_and_add():
    a = Tokenized([[256, 1], [256, 2, 3]], True, 256, [[(0, 0), (0, 1)], [(0, 0), (0, 1), (1, 2)]])
    b = Tokenized([[256, 4]], True, 256, [[(0, 0), (0, 1)]])
    both = a + b
    assert both.ids == [[256, 1], [256, 2, 3], [256, 4]]
    assert both.offsets == a.offsets + b.offsets
    assert both.lengths.tolist() == [2, 3, 2]
    picked = both.select([2, 0])
    assert picked == Tokenized([[256, 4], [256, 1]], True, 256, [b.offsets[0], a.offsets[0]])
    assert (a + Tokenized([[5]], True, 256, None)).offsets is None
    with pytest.raises(BadInputError, match="BOS"):
        a + Tokenized([[4]], False, None, None)


# ---------------------------------------------------------------------------------------------
# 8: weight processing of the embedded models, seen through extract


@pytest.fixture(scope="module", params=["interp-tl/toy-random", "interp-tl/polyglot-toy"])
def embedded_models(request):
    return tuple(load_model(request.param, processing=p) for p in ("none", "fold_ln", "default"))


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_embedded_model_processing(embedded_models, reduce):
    raw, folded, default = embedded_models
    assert raw.cfg.normalization_type == "LN"
    assert folded.cfg.normalization_type == default.cfg.normalization_type == "LNPre"
    texts = [p.prompts[lang] for p in _PROBLEMS[:4] for lang in ("zh", "en", "ar", "sw")]
    hooks = layer_hook_names(raw, ["hook_resid_post"])
    tokens = tokenize(raw, texts)
    none = extract(raw, tokens, hooks, batch_size=5, reduce=reduce)
    fold = extract(folded, tokens, hooks, batch_size=5, reduce=reduce)
    centred = extract(default, tokens, hooks, batch_size=5, reduce=reduce)
    for name in hooks:
        mean = none[name].mean(-1, keepdims=True)
        # The check below is not vacuous: raw residuals are not centred.
        assert not np.allclose(mean, 0, atol=1e-2)
        _close(fold[name], none[name], atol=1e-4, err_msg=f"fold_ln {name}")
        _close(centred[name], none[name] - mean, atol=1e-4, err_msg=f"default {name}")
        _close(centred[name].mean(-1), np.zeros(len(texts)), atol=1e-4, err_msg=f"default mean {name}")


# ---------------------------------------------------------------------------------------------
# The fused GELU swap extract makes while it runs


def test_fused_gelu_is_gelu_new():
    from transformer_lens.utilities.activation_functions import gelu_new

    x = torch.linspace(-12, 12, 100_001)
    fused = torch.nn.functional.gelu(x, approximate="tanh")
    np.testing.assert_allclose(fused.numpy(), gelu_new(x).numpy(), rtol=0, atol=2e-6)


def test_fused_gelu_swaps_only_gelu_new_and_restores(ln_model, rms_model):
    before = [block.mlp.act_fn for block in ln_model.blocks]
    with fused_gelu(ln_model) as n_swapped:
        assert n_swapped == ln_model.cfg.n_layers
        assert all(block.mlp.act_fn is not old for block, old in zip(ln_model.blocks, before))
    assert [block.mlp.act_fn for block in ln_model.blocks] == before
    with fused_gelu(rms_model) as n_swapped:  # silu: left alone
        assert n_swapped == 0


def test_extract_runs_fused_and_restores_when_a_hook_raises(ln_model):
    before = [block.mlp.act_fn for block in ln_model.blocks]
    seen = []

    def boom(act, hook):
        seen.append(ln_model.blocks[0].mlp.act_fn)
        raise RuntimeError("hook failed")

    ln_model.add_hook("blocks.0.hook_mlp_out", boom)
    try:
        with pytest.raises(RuntimeError, match="hook failed"):
            extract(ln_model, tokenize(ln_model, ["abc"]), ["blocks.0.hook_mlp_out"])
    finally:
        ln_model.reset_hooks()
    assert len(seen) == 1 and seen[0] is not before[0]  # the fused GELU ran
    assert [block.mlp.act_fn for block in ln_model.blocks] == before


# Inputs extract refuses


@pytest.mark.wrong_types
def test_unknown_reduce_is_bad_input(ln_model):
    with pytest.raises(BadInputError, match="unknown reduce 'max'"):
        extract(ln_model, tokenize(ln_model, ["abc"]), ["hook_embed"], reduce="max")


def test_hook_that_never_fires_is_reported(ln_model):
    assert "blocks.0.hook_attn_in" in ln_model.hook_dict and not ln_model.cfg.use_attn_in
    tokens = tokenize(ln_model, ["abc"])
    with pytest.raises(BadInputError, match="never ran"):
        extract(ln_model, tokens, ["blocks.0.hook_attn_in", "blocks.0.hook_resid_post"])


def test_mean_of_a_bos_only_prompt_is_refused(ln_model):
    tokens = Tokenized([[256], [256, 97]], True, 256, None)
    with pytest.raises(BadInputError, match="only its BOS"):
        extract(ln_model, tokens, ["blocks.0.hook_resid_post"], reduce="mean")
