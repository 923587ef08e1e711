"""The head report's attention patterns and files: the pattern equals TransformerLens' own forward pass on the
prompt, and circuitsvis' page is written exactly when circuitsvis can be imported."""

import sys
import types

import numpy as np
import pytest

from interp_tl.results import StudyResult
from interp_tl.studies.heads import HeadsConfig, head_patterns, prepare


@pytest.fixture(scope="module")
def patterns(polyglot_model):
    prompts = prepare(polyglot_model, HeadsConfig(n_pairs=5))
    return prompts, head_patterns(polyglot_model, prompts, layer=1, head=3)


def test_patterns_equal_run_with_cache_on_the_prompt(polyglot_model, patterns):
    prompts, got = patterns
    assert list(got) == ["zh", "en"]
    for lang, entry in got.items():
        text = prompts.texts(lang)[0]
        assert entry["prompt"] == text
        tokens = polyglot_model.to_tokens(text)  # TransformerLens' tokenization and BOS default
        _, cache = polyglot_model.run_with_cache(tokens)
        want = cache["blocks.1.attn.hook_pattern"][0, 3].double().numpy()
        pattern = np.array(entry["pattern"])
        assert pattern.shape == want.shape and np.abs(pattern - want).max() < 1e-6
        assert entry["tokens"] == polyglot_model.to_str_tokens(tokens[0])
        assert np.abs(pattern.sum(-1) - 1).max() < 1e-6 and np.triu(pattern, 1).max() == 0  # causal rows


def _head_result(patterns) -> StudyResult:
    return StudyResult("head", {"head": "L1H3", "patterns": patterns[1]}, {})


def test_files_without_circuitsvis(patterns, monkeypatch):
    from interp_tl.report import render_head

    monkeypatch.setitem(sys.modules, "circuitsvis", None)  # import fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "circuitsvis.attention", None)
    files = render_head(_head_result(patterns))
    assert sorted(files) == ["head_L1H3.json", "head_L1H3.png"] and files["head_L1H3.png"][:4] == b"\x89PNG"


def test_files_with_circuitsvis(patterns, monkeypatch):
    """With circuitsvis importable, its view of each language's pattern goes into head_L1H3_circuitsvis.html."""
    from interp_tl.report import render_head

    calls = []

    def attention_patterns(tokens, attention):
        calls.append((tokens, attention))
        return f"<div>view {len(tokens)}</div>"

    package = types.ModuleType("circuitsvis")
    package.attention = types.SimpleNamespace(attention_patterns=attention_patterns)
    module = types.ModuleType("circuitsvis.attention")
    module.attention_patterns = attention_patterns
    monkeypatch.setitem(sys.modules, "circuitsvis", package)
    monkeypatch.setitem(sys.modules, "circuitsvis.attention", module)
    files = render_head(_head_result(patterns))
    page = files["head_L1H3_circuitsvis.html"].decode("utf-8")
    assert [len(t) for t, _ in calls] == [len(p["tokens"]) for p in patterns[1].values()]
    for (tokens, attention), entry in zip(calls, patterns[1].values()):
        assert attention.shape == (1, len(tokens), len(tokens))  # [heads, query, key], as circuitsvis takes it
        assert np.array_equal(attention[0], np.array(entry["pattern"]))
        assert f"<div>view {len(tokens)}</div>" in page
