"""Gauge alignment: constructed gauge copies (residual ~0, same logits) and the seed's transposed Procrustes.

A gauge copy is built by applying a transform to a layer's weights; when the transform is a
true symmetry the model's logits do not move (checked), and the alignment must undo it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import _small_model
from scipy.stats import ortho_group

from interp_tl.gauge import (
    AttentionWeights,
    MLPWeights,
    align_attention,
    attention_weights,
    gauge_transform_attention,
    match_neurons,
    mlp_weights,
    procrustes,
    rotary_pairs,
    rotate_neurons,
)

LN = dict(seed=21, model_name="gauge-ln", act_fn="gelu_new", normalization_type="LN")
RMS = dict(seed=22, model_name="gauge-rms", act_fn="silu", normalization_type="RMS",
           positional_embedding_type="rotary", rotary_dim=16, gated_mlp=True, n_key_value_heads=2,
           default_prepend_bos=False)
TEXTS = ["Calculate 12 + 30.", "计算 12 + 30 的值。", "C(7, 6) 의 값을 구하시오."]


def seed_procrustes(m):
    """The research script's ``procrustes``: claims argmax_R tr(R M), returns U V^T (the transpose)."""
    u, _, vh = np.linalg.svd(m, full_matrices=False)
    return u @ vh


def _logits(model):
    with torch.inference_mode():
        return model(model.to_tokens(TEXTS, padding_side="right")).log_softmax(-1)


def _orth(n, seed):
    return ortho_group.rvs(n, random_state=seed)


def _commuting_rotation(d_head, rotary_dim, seed):
    rng = np.random.default_rng(seed)
    r = np.zeros((d_head, d_head))
    for i, j in rotary_pairs(d_head, rotary_dim):
        t = rng.uniform(-np.pi, np.pi)
        r[np.ix_([i, j], [i, j])] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    rest = list(range(rotary_dim, d_head))
    if rest:
        r[np.ix_(rest, rest)] = _orth(len(rest), seed)
    return r


def _set_attention(model, layer, w: AttentionWeights, r_qk, r_vo):
    """Write a gauge-transformed attention into ``model`` (biases transformed the same way)."""
    attn = model.blocks[layer].attn
    g = w.group

    def put(name, value):
        getattr(attn, name).copy_(torch.as_tensor(value, dtype=torch.float32))

    with torch.no_grad():
        k_name, v_name = ("_W_K", "_W_V") if hasattr(attn, "_W_K") else ("W_K", "W_V")
        bk_name, bv_name = ("_b_K", "_b_V") if hasattr(attn, "_b_K") else ("b_K", "b_V")
        put("W_Q", w.W_Q)
        put(k_name, w.W_K)
        put(v_name, w.W_V)
        put("W_O", w.W_O)
        b_q = attn.b_Q.detach().double().numpy()
        put("b_Q", np.stack([b_q[h] @ r_qk[h // g] for h in range(len(b_q))]))
        b_k = getattr(attn, bk_name).detach().double().numpy()
        put(bk_name, np.stack([b_k[i] @ r_qk[i] for i in range(len(b_k))]))
        b_v = getattr(attn, bv_name).detach().double().numpy()
        put(bv_name, np.stack([b_v[i] @ r_vo[i] for i in range(len(b_v))]))


# The seed's Procrustes is transposed


def test_procrustes_undoes_a_rotation_and_the_seeds_formula_does_not():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 16))
    r = _orth(16, 1)
    b = a @ r
    ours = procrustes(a, b)
    assert np.linalg.norm(a @ ours - b) < 1e-10 * np.linalg.norm(b)
    # the seed's orientation: rows are d_head, it wants R qa = qb and builds M = qa qb^T
    qa, qb = a.T, b.T
    m = qa @ qb.T
    seed_r = seed_procrustes(m)
    assert np.linalg.norm(seed_r @ qa - qb) / np.linalg.norm(qb) > 0.5
    assert np.linalg.norm(seed_r.T @ qa - qb) < 1e-10 * np.linalg.norm(qb)  # its transpose is the answer


# Attention: absolute positions


@pytest.fixture(scope="module")
def ln_pair():
    return _small_model(**LN), _small_model(**LN)


def test_separate_qk_vo_gauge_copy_is_exact_and_aligned(ln_pair):
    model, copy = ln_pair
    w = attention_weights(model, 1)
    n = w.W_K.shape[0]
    r_qk = np.stack([_orth(16, 10 + h) for h in range(n)])
    r_vo = np.stack([_orth(16, 20 + h) for h in range(n)])
    moved = gauge_transform_attention(w, r_qk, r_vo)
    _set_attention(copy, 1, moved, r_qk, r_vo)
    torch.testing.assert_close(_logits(copy), _logits(model), rtol=0, atol=2e-5)  # a true symmetry
    sep = align_attention(w, moved, "separate")
    assert max(sep[k].max() for k in "qkvo") < 1e-10
    np.testing.assert_allclose(sep["R_qk"], r_qk, atol=1e-8)
    tied = align_attention(w, moved, "tied")  # one rotation cannot undo two different ones
    assert min(tied[k].min() for k in "qkvo") > 0.1


def test_tied_alignment_undoes_a_tied_rotation(ln_pair):
    model, _ = ln_pair
    w = attention_weights(model, 0)
    r = np.stack([_orth(16, 30 + h) for h in range(w.W_K.shape[0])])
    tied = align_attention(w, gauge_transform_attention(w, r, r), "tied")
    assert max(tied[k].max() for k in "qkvo") < 1e-10


# Attention: rotary, grouped-query


@pytest.fixture(scope="module")
def rms_pair():
    return _small_model(**RMS), _small_model(**RMS)


def test_rotary_commuting_gauge_copy_is_exact_and_aligned(rms_pair):
    model, copy = rms_pair
    w = attention_weights(model, 2)
    assert w.group == 2 and w.W_K.shape[0] == 2
    r_qk = np.stack([_commuting_rotation(16, 16, 40 + i) for i in range(2)])
    r_vo = np.stack([_orth(16, 50 + i) for i in range(2)])
    moved = gauge_transform_attention(w, r_qk, r_vo)
    _set_attention(copy, 2, moved, r_qk, r_vo)
    torch.testing.assert_close(_logits(copy), _logits(model), rtol=0, atol=2e-5)
    aligned = align_attention(w, moved, "separate", rotary=(16, False))
    assert max(aligned[k].max() for k in "qkvo") < 1e-10


def test_arbitrary_qk_rotation_is_not_a_rotary_symmetry(rms_pair):
    model, _ = rms_pair
    copy = _small_model(**RMS)
    w = attention_weights(model, 2)
    r_qk = np.stack([_orth(16, 60 + i) for i in range(2)])
    eye = np.stack([np.eye(16)] * 2)
    _set_attention(copy, 2, gauge_transform_attention(w, r_qk, eye), r_qk, eye)
    assert (_logits(copy) - _logits(model)).abs().max() > 1e-2
    # and the rotary-restricted alignment cannot pretend it is one
    aligned = align_attention(w, gauge_transform_attention(w, r_qk, eye), "separate", rotary=(16, False))
    assert aligned["q"].min() > 0.1


# MLP


def _set_mlp(model, layer, w: MLPWeights, b_in):
    mlp = model.blocks[layer].mlp
    with torch.no_grad():
        mlp.W_in.copy_(torch.as_tensor(w.W_in, dtype=torch.float32))
        mlp.W_out.copy_(torch.as_tensor(w.W_out, dtype=torch.float32))
        mlp.b_in.copy_(torch.as_tensor(b_in, dtype=torch.float32))
        if w.W_gate is not None:
            mlp.W_gate.copy_(torch.as_tensor(w.W_gate, dtype=torch.float32))


@pytest.mark.parametrize("kind", [LN, RMS], ids=["gelu", "swiglu"])
def test_neuron_permutation_is_exact_and_recovered(kind):
    model, copy = _small_model(**kind), _small_model(**kind)
    w = mlp_weights(model, 1)
    perm = np.random.default_rng(3).permutation(w.W_in.shape[1])
    moved = MLPWeights(w.W_in[:, perm], w.W_out[perm], None if w.W_gate is None else w.W_gate[:, perm])
    _set_mlp(copy, 1, moved, model.blocks[1].mlp.b_in.detach().double().numpy()[perm])
    torch.testing.assert_close(_logits(copy), _logits(model), rtol=0, atol=2e-5)
    matched = match_neurons(w, moved)
    np.testing.assert_array_equal(matched["perm"], perm)
    assert all(matched[k] < 1e-10 for k in ("W_in", "W_out"))


@pytest.mark.parametrize("kind", [LN, RMS], ids=["gelu", "swiglu"])
def test_neuron_rotation_is_only_an_approximation(kind):
    model, copy = _small_model(**kind), _small_model(**kind)
    w = mlp_weights(model, 0)
    s = _orth(w.W_in.shape[1], 4)
    moved = MLPWeights(w.W_in @ s, s.T @ w.W_out, None if w.W_gate is None else w.W_gate @ s)
    _set_mlp(copy, 0, moved, model.blocks[0].mlp.b_in.detach().double().numpy() @ s)
    assert (_logits(copy) - _logits(model)).abs().max() > 1e-2  # not a symmetry
    rotated = rotate_neurons(w, moved)
    assert all(rotated[k] < 1e-8 for k in ("W_in", "W_out"))  # though the alignment undoes it
    assert match_neurons(w, moved)["W_in"] > 0.1
