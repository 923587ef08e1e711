"""Small random HookedTransformers of the two architecture families the tests use (no fixtures here).

``ln`` is GPT-2-like (LayerNorm, absolute positions, GELU); ``rms`` is Qwen-like (RMSNorm, rotary,
gated SiLU MLP, grouped-query attention). Both use the shipped byte tokenizer (d_vocab 257,
BOS = EOS = PAD = 256), left padding, and randomized norm gains and biases so that weight
processing and padding mistakes show up in the numbers.
"""

from __future__ import annotations

import torch

#: The two families, as HookedTransformerConfig overrides.
KINDS = {
    "ln": dict(act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard"),
    "rms": dict(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16,
                gated_mlp=True, n_key_value_heads=2, default_prepend_bos=False),
}


def small_model(seed: int, **overrides):
    """A 3-layer, d_model 64 HookedTransformer with ``overrides`` on the config, randomized norms and biases."""
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
    return small_model(seed=seed, model_name=f"test-{kind}-{seed}", **{**KINDS[kind], **overrides})
