"""Shared model fixtures: small random HookedTransformers of the two architecture families, and the
offline embedded models.

``ln`` is GPT-2-like (LayerNorm, absolute positions, GELU); ``rms`` is Qwen-like (RMSNorm, rotary,
gated SiLU MLP, grouped-query attention). Both use the shipped byte tokenizer (d_vocab 257,
BOS = EOS = PAD = 256), left padding, and randomized norm gains and biases so that weight
processing and padding mistakes show up in the numbers. ``make_model(kind, seed=..., **overrides)``
builds a fresh one (tests that edit weights get their own); ``small_model`` is parametrized over
both kinds.
"""

from __future__ import annotations

import pytest
import small_models

# The package's own pytest plugin (the z_regression fixture) comes from its pytest11 entry point
# (`pip install -e .`); pytester runs the user-style suite in tests/user_suite/, collected only there.
pytest_plugins = ["pytester"]
collect_ignore = ["user_suite"]


@pytest.fixture(scope="session")
def make_model():
    """``make_model(kind, seed=0, **overrides)``: a fresh small model of family ``ln`` or ``rms``."""
    return small_models.build_model


@pytest.fixture(scope="module")
def ln_model():
    """3 layers, LayerNorm + absolute positions + gelu_new (GPT-2 style)."""
    return small_models.small_model(seed=1, model_name="test-ln", **small_models.KINDS["ln"])


@pytest.fixture(scope="module")
def rms_model():
    """3 layers, RMSNorm + rotary + gated SiLU MLP + GQA (4 heads, 2 KV heads; Qwen style)."""
    return small_models.small_model(seed=2, model_name="test-rms", **small_models.KINDS["rms"])


@pytest.fixture(params=["ln", "rms"])
def small_model(request):
    """Each family in turn (the module-scoped ``ln_model`` and ``rms_model``)."""
    return request.getfixturevalue(f"{request.param}_model")


@pytest.fixture(scope="session")
def toy_model():
    """``interp-tl/toy-random`` as load_model() returns it (processing none)."""
    from interp_tl.models import TOY_MODEL, load_model

    return load_model(TOY_MODEL)


@pytest.fixture(scope="session")
def polyglot_model():
    """``interp-tl/polyglot-toy``, the trained offline default, as load_model() returns it."""
    from interp_tl.models import POLYGLOT_MODEL, load_model

    return load_model(POLYGLOT_MODEL)


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory):
    """An HF_HOME folder holding offline ``Qwen/Qwen2.5-3B``, ``Qwen/Qwen3-4B`` and ``gpt2`` (tests/hub_fixtures.py)."""
    from hub_fixtures import build_hub

    return build_hub(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture
def offline_hub(hub_home, monkeypatch):
    """The test reads only the ``hub_home`` cache, offline; environment and huggingface_hub constants restored after."""
    from hub_fixtures import point_hub

    point_hub(monkeypatch, hub_home, offline=True)
    return hub_home
