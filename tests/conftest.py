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
import torch

#: The two families, as HookedTransformerConfig overrides.
KINDS = {
    "ln": dict(act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard"),
    "rms": dict(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16,
                gated_mlp=True, n_key_value_heads=2, default_prepend_bos=False),
}


def _small_model(seed: int, **overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from interp_tl.models import load_byte_tokenizer, quiet_tl_deprecation, randomize_norms_and_biases_

    base = dict(
        n_layers=3, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=257, n_ctx=256,
        dtype=torch.float32, device="cpu", default_prepend_bos=True, seed=seed,
    )
    cfg = HookedTransformerConfig(**{**base, **overrides})
    with quiet_tl_deprecation():
        model = HookedTransformer(cfg, tokenizer=load_byte_tokenizer(), default_padding_side="left")
    randomize_norms_and_biases_(model, seed=seed)
    return model.eval()


def build_model(kind: str, seed: int = 0, **overrides):
    """A fresh small model of family ``kind`` (``ln`` or ``rms``)."""
    return _small_model(seed=seed, model_name=f"test-{kind}-{seed}", **{**KINDS[kind], **overrides})


@pytest.fixture(scope="session")
def make_model():
    """``make_model(kind, seed=0, **overrides)``: a fresh small model of family ``ln`` or ``rms``."""
    return build_model


@pytest.fixture(scope="module")
def ln_model():
    """3 layers, LayerNorm + absolute positions + gelu_new (GPT-2 style)."""
    return _small_model(seed=1, model_name="test-ln", **KINDS["ln"])


@pytest.fixture(scope="module")
def rms_model():
    """3 layers, RMSNorm + rotary + gated SiLU MLP + GQA (4 heads, 2 KV heads; Qwen style)."""
    return _small_model(seed=2, model_name="test-rms", **KINDS["rms"])


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
