"""Studies on the same prompts share one last-token extraction (``interp-tl all``), with the same numbers."""

from __future__ import annotations

import torch

from interp_tl.cache import extract, shared_extractions
from interp_tl.tokens import parallel_prompts


def _counting(monkeypatch, model) -> list[int]:
    calls: list[int] = []
    original = model.run_with_hooks

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "run_with_hooks", counted)
    return calls


def test_two_consumers_of_the_same_prompts_run_the_model_once(monkeypatch, small_model):
    model = small_model
    tokens = parallel_prompts(model, 10, 42, ("zh", "en")).stacked()
    first = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    second = ["blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out", "hook_embed"]
    alone = {tuple(names): extract(model, tokens, names, batch_size=8) for names in (first, second)}
    calls = _counting(monkeypatch, model)
    with shared_extractions(model, [(tokens, first, 8), (tokens, second, 8)]):
        got = [extract(model, tokens, names, batch_size=8) for names in (first, second)]
    batches = len(calls)
    assert batches == 3  # 20 prompts in batches of 8: one pass, not two
    for names, cache in zip((first, second), got):
        assert list(cache.cache_dict) == names and cache.model is model
        for name in names:
            assert torch.equal(cache[name], alone[tuple(names)][name])  # bit for bit


def test_other_calls_run_as_usual(monkeypatch, small_model):
    model = small_model
    prompts = parallel_prompts(model, 10, 42, ("zh", "en"))
    tokens = prompts.stacked()
    names = ["blocks.0.hook_resid_pre"]
    calls = _counting(monkeypatch, model)
    with shared_extractions(model, [(tokens, names, 8), (tokens, ["blocks.1.hook_resid_pre"], 8)]):
        extract(model, tokens, names, batch_size=4)  # another batch size
        extract(model, prompts.tokens["zh"], names, batch_size=8)  # other prompts
        extract(model, tokens, names, batch_size=8, reduce="mean")  # another reduction
        extract(model, tokens, ["blocks.0.hook_attn_out"], batch_size=8)  # hooks nobody planned
    assert len(calls) == 5 + 2 + 3 + 3
    with shared_extractions(model, [(tokens, names, 8)]):  # one consumer: nothing to share
        extract(model, tokens, names, batch_size=8)
    assert len(calls) == 16
    extract(model, tokens, names, batch_size=8)  # outside the block: as usual
    assert len(calls) == 19
