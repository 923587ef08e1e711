"""Small models for the gauge tests (LN / Qwen2 / Qwen3 architectures) and random exact symmetries.

``QWEN3`` is Qwen3's attention in miniature: RMSNorm, rotary, gated SiLU, grouped-query attention
(4 heads, 2 K/V heads) and per-head q/k RMSNorm (``use_qk_norm``) whose weights are randomized,
except rotary pair 0 (equal weights on both coordinates) and pair 1 (equal up to a common
sign), where every rotation is a symmetry.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import ortho_group
from small_models import small_model

from interp_tl.gauge import AttentionAlignment, QKConstraint, qk_constraint, rotary_pairs

LN = dict(seed=21, model_name="gauge-ln", act_fn="gelu_new", normalization_type="LN")
QWEN2 = dict(seed=22, model_name="gauge-qwen2", act_fn="silu", normalization_type="RMS",
             positional_embedding_type="rotary", rotary_dim=16, gated_mlp=True, n_key_value_heads=2,
             default_prepend_bos=False)
QWEN3 = dict(QWEN2, seed=23, model_name="gauge-qwen3", use_qk_norm=True)
KINDS = {"ln": LN, "qwen2": QWEN2, "qwen3": QWEN3}
TOKENS = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))


def randomize_qk_norms_(model, seed: int, tie_pairs: bool = True) -> None:
    """q/k norm gains ``1 + 0.3 N(0, 1)``; with ``tie_pairs`` pair 0 equal and pair 1 equal up to sign."""
    gen = torch.Generator().manual_seed(seed)
    (i0, j0), (i1, j1) = rotary_pairs(model.cfg.d_head, model.cfg.rotary_dim, model.cfg.rotary_adjacent_pairs)[:2]
    with torch.no_grad():
        for block in model.blocks:
            q, k = block.attn.q_norm.w, block.attn.k_norm.w
            q.copy_(1 + 0.3 * torch.randn(q.shape, generator=gen))
            k.copy_(1 + 0.3 * torch.randn(k.shape, generator=gen))
            if tie_pairs:
                q[j0], k[j0] = q[i0].clone(), k[i0].clone()
                q[j1], k[j1] = -q[i1], -k[i1]


def build(kind: str, **overrides):
    """A fresh model of ``kind`` (``ln``, ``qwen2``, ``qwen3``), norms and biases randomized."""
    model = small_model(**{**KINDS[kind], **overrides})
    if model.cfg.use_qk_norm:
        randomize_qk_norms_(model, seed=model.cfg.seed)
    return model


def logits(model) -> torch.Tensor:
    """Log-probabilities on a fixed batch of random tokens."""
    with torch.inference_mode():
        return model(TOKENS).log_softmax(-1)


def random_allowed(qk: QKConstraint, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal QK transform allowed by ``qk`` (every pair, sign and free block drawn)."""
    r = np.zeros((qk.d_head, qk.d_head))
    for i, j in qk.pairs():
        if qk.pair_rotates(i, j):
            t = rng.uniform(-np.pi, np.pi)
            r[np.ix_([i, j], [i, j])] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        else:
            r[np.ix_([i, j], [i, j])] = np.eye(2) * rng.choice([-1.0, 1.0])
    for idx in qk.free_blocks():
        r[np.ix_(idx, idx)] = ortho_group.rvs(len(idx), random_state=rng) if len(idx) > 1 else rng.choice([-1, 1])
    return r


def random_symmetry(model, layer: int, seed: int, tied: bool = False, perm_kv=None, perm_q=None) -> AttentionAlignment:
    """A random exact symmetry of ``layer``'s attention: heads permuted (groups and inside groups),
    an allowed QK transform and an orthogonal VO transform per group (the same one if ``tied``)."""
    rng = np.random.default_rng(seed)
    cfg = model.cfg
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    g = cfg.n_heads // n_kv
    qk = qk_constraint(model, layer)
    perm_kv = rng.permutation(n_kv) if perm_kv is None else np.asarray(perm_kv)
    if perm_q is None:
        perm_q = np.concatenate([perm_kv[b] * g + rng.permutation(g) for b in range(n_kv)])
    r_qk = np.stack([random_allowed(qk, rng) for _ in range(n_kv)])
    r_vo = r_qk if tied else np.stack([ortho_group.rvs(cfg.d_head, random_state=rng) for _ in range(n_kv)])
    return AttentionAlignment("separate", np.asarray(perm_q), perm_kv, r_qk, r_vo, {})
