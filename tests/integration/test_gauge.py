"""Gauge alignment: constructed gauge copies (residual ~0, same logits), the q/k-norm derivation,
the seed's transposed Procrustes and its tied alignment, and the thin d_mlp rotation.

A gauge copy is built by applying a transform to a layer's weights; when the transform is a
true symmetry the model's logits do not move (checked), and the alignment must undo it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gauge_models import build, logits, random_allowed, random_symmetry
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group

from interp_tl.errors import BadInputError
from interp_tl.gauge import (
    AttentionAlignment,
    AttentionComparison,
    MLPWeights,
    QKConstraint,
    align_attention,
    aligned_attention,
    apply_attention_alignment_,
    apply_neuron_permutation_,
    attention_weights,
    gauge_transform_attention,
    match_neurons,
    max_trace_orthogonal,
    mlp_weights,
    procrustes,
    qk_constraint,
    rotate_neurons,
    thin_procrustes,
)

ATOL = 1e-5  # float32 models: a symmetry moves log-probabilities by ~2e-6


def seed_procrustes(m):
    """The research script's ``procrustes``: claims argmax_R tr(R M), returns U V^T (the transpose)."""
    u, _, vh = np.linalg.svd(m, full_matrices=False)
    return u @ vh


def _orth(n, seed):
    return ortho_group.rvs(n, random_state=seed)


def _moved(model, layer, alignment):
    """A copy of ``model`` with ``alignment`` applied to ``layer``; and how far its logits moved."""
    moved = copy.deepcopy(model)
    apply_attention_alignment_(moved, layer, alignment)
    return moved, float((logits(moved) - logits(model)).abs().max())


def _identity(model, r_qk, r_vo=None):
    n_kv = len(r_qk)
    eye = np.stack([np.eye(model.cfg.d_head)] * n_kv)
    return AttentionAlignment("separate", np.arange(model.cfg.n_heads), np.arange(n_kv), r_qk,
                              eye if r_vo is None else r_vo, {})


# The seed's Procrustes is transposed


def test_procrustes_undoes_a_rotation_and_the_seeds_formula_does_not():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 16))
    r = _orth(16, 1)
    b = a @ r
    ours = procrustes(a, b)
    assert np.linalg.norm(a @ ours - b) < 1e-10 * np.linalg.norm(b)
    np.testing.assert_allclose(max_trace_orthogonal(a.T @ b), ours, atol=1e-10)
    # the seed's orientation: rows are d_head, it wants R qa = qb and builds M = qa qb^T
    qa, qb = a.T, b.T
    m = qa @ qb.T
    seed_r = seed_procrustes(m)
    assert np.linalg.norm(seed_r @ qa - qb) / np.linalg.norm(qb) > 0.5
    assert np.linalg.norm(seed_r.T @ qa - qb) < 1e-10 * np.linalg.norm(qb)  # its transpose is the answer


# Which QK transforms are symmetries (the derivation in gauge's docstring), checked on logits


@pytest.fixture(scope="module")
def qwen3():
    return build("qwen3")


def _pair_rotation(d_head, pair, theta):
    r = np.eye(d_head)
    c, s = np.cos(theta), np.sin(theta)
    r[np.ix_(pair, pair)] = [[c, -s], [s, c]]
    return r


@pytest.mark.parametrize(("pair", "rotates"), [((0, 8), True), ((1, 9), True), ((2, 10), False), ((5, 13), False)])
def test_pair_rotation_is_a_symmetry_exactly_when_the_norm_weights_allow(qwen3, pair, rotates):
    qk = qk_constraint(qwen3, 1)
    assert qk.pair_rotates(*pair) is rotates
    r = np.stack([_pair_rotation(16, pair, 0.7)] * 2)
    _, moved = _moved(qwen3, 1, _identity(qwen3, r))
    assert (moved < ATOL) if rotates else (moved > 1e-2)
    flip = np.stack([_pair_rotation(16, pair, np.pi)] * 2)  # -I on the pair: always a symmetry
    assert _moved(qwen3, 1, _identity(qwen3, flip))[1] < ATOL
    reflect = np.stack([np.diag([1.0] * pair[1] + [-1.0] + [1.0] * (15 - pair[1]))] * 2)
    assert _moved(qwen3, 1, _identity(qwen3, reflect))[1] > 1e-2  # reflections reverse the rotary angle


def test_the_same_rotations_are_symmetries_without_qk_norms():
    model = build("qwen2")
    assert qk_constraint(model, 1).summary()["pairs_sign_only"] == 0
    r = np.stack([_pair_rotation(16, (2, 10), 0.7)] * 2)
    assert _moved(model, 1, _identity(model, r))[1] < ATOL


def test_non_rotary_coordinates_rotate_inside_equal_norm_products():
    model = build("qwen3", rotary_dim=8)
    with torch.no_grad():
        for block in model.blocks:  # coordinates 8 and 9: equal q_norm * k_norm products, different weights
            block.attn.q_norm.w[9] = 2 * block.attn.q_norm.w[8]
            block.attn.k_norm.w[9] = block.attn.k_norm.w[8] / 2
    qk = qk_constraint(model, 1)
    assert [8, 9] in qk.free_blocks() and qk.summary()["free_block_sizes"].count(1) == 6
    mix = np.eye(16)
    mix[np.ix_([8, 9], [8, 9])] = _orth(2, 3)
    assert _moved(model, 1, _identity(model, np.stack([mix] * 2)))[1] < ATOL
    other = np.eye(16)
    other[np.ix_([9, 10], [9, 10])] = _orth(2, 3)
    assert _moved(model, 1, _identity(model, np.stack([other] * 2)))[1] > 1e-2


def test_constraint_solve_is_allowed_and_optimal(qwen3):
    qk = qk_constraint(qwen3, 1)
    rng = np.random.default_rng(4)
    m = rng.normal(size=(16, 16))
    r = qk.solve(m)
    np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-12)
    # allowed: r commutes with D_q R_delta D_k for every relative rotation R_delta
    d_q, d_k = np.diag(qk.q_norm), np.diag(qk.k_norm)
    for delta in (1, 5, 17):
        rot = np.eye(16)
        for p, (i, j) in enumerate(qk.pairs()):
            rot = rot @ _pair_rotation(16, (i, j), delta * 10000 ** (-2 * p / 16))
        x = d_q @ rot @ d_k
        np.testing.assert_allclose(r @ x @ r.T, x, atol=1e-12)
    best = float(np.sum(r * m))
    for seed in range(200):  # no random allowed transform fits better
        assert float(np.sum(random_allowed(qk, np.random.default_rng(seed)) * m)) <= best + 1e-12
    grid = np.linspace(-np.pi, np.pi, 2001)  # the rotating pair's angle against a grid search
    block = m[np.ix_([0, 8], [0, 8])]
    fit = max(np.trace(np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]).T @ block) for t in grid)
    assert abs(np.trace(r[np.ix_([0, 8], [0, 8])].T @ block) - fit) < 1e-5


def test_olmo_style_norms_over_all_heads_are_refused(qwen3):
    model = copy.deepcopy(qwen3)
    model.cfg.use_qk_norm = False  # as OLMo: q_norm present, not per head
    with pytest.raises(BadInputError, match="OLMo"):
        qk_constraint(model, 0)


# Exact copies: heads permuted, per-group transforms, on the LN, Qwen2 and Qwen3 fixtures


@pytest.fixture(scope="module", params=["ln", "qwen2", "qwen3", "qwen3-adjacent"])
def fixture_model(request):
    if request.param == "qwen3-adjacent":  # rotary pairs (2i, 2i+1)
        model = build("qwen3", rotary_adjacent_pairs=True)
        assert qk_constraint(model, 1).pairs()[:2] == [(0, 1), (2, 3)]
        assert qk_constraint(model, 1).summary()["pairs_any_rotation"] == 2
        return model
    return build(request.param)


@pytest.mark.parametrize("tied", [False, True], ids=["separate", "tied"])
def test_exact_copy_with_permuted_heads_is_aligned_to_zero(fixture_model, tied):
    model = fixture_model
    sym = random_symmetry(model, 1, seed=7, tied=tied)
    moved, delta = _moved(model, 1, sym)
    assert delta < ATOL  # a true symmetry
    wa, wb = attention_weights(model, 1), attention_weights(moved, 1)
    for name in ("W_Q", "W_K", "W_V", "W_O"):  # written as aligned_attention says
        np.testing.assert_allclose(getattr(aligned_attention(wa, sym), name), getattr(wb, name), atol=1e-6)
    qk = qk_constraint(model, 1)
    modes = ("separate", "tied_exact") if tied else ("separate",)
    for mode in modes:
        found = align_attention(wa, wb, mode, qk)
        assert max(found.residuals[f].max() for f in "qkvo") < 1e-6, mode
        np.testing.assert_array_equal(found.perm_q, sym.perm_q)
        np.testing.assert_array_equal(found.perm_kv, sym.perm_kv)
        np.testing.assert_allclose(found.R_qk, sym.R_qk, atol=1e-5)
    comparison = AttentionComparison(wa, wb)
    assert min(comparison.raw()[f].min() for f in "qo") > 0.3  # the copy does look different
    if not tied:
        # one transform for QK and VO cannot undo two different ones
        assert min(comparison.align("tied_exact", qk).residuals[f].mean() for f in "vo") > 0.1


def test_issue_head_reordering_is_matched():
    model = build("ln")
    sym = _identity(model, np.stack([np.eye(16)] * 4))
    sym = AttentionAlignment("separate", np.array([2, 0, 3, 1]), np.array([2, 0, 3, 1]), sym.R_qk, sym.R_vo, {})
    moved, delta = _moved(model, 1, sym)
    assert delta < ATOL
    found = align_attention(attention_weights(model, 1), attention_weights(moved, 1), "separate")
    assert max(found.residuals[f].max() for f in "qkvo") < 1e-10
    assert found.perm_q.tolist() == [2, 0, 3, 1]


def test_found_alignment_between_different_layers_is_a_symmetry(fixture_model):
    model = fixture_model
    qk = qk_constraint(model, 0)
    wa, wb = attention_weights(model, 0), attention_weights(model, 2)
    for mode in ("separate", "tied_exact"):
        found = align_attention(wa, wb, mode, qk)
        moved, delta = _moved(model, 0, found)
        assert delta < ATOL, mode
        # and the residuals it reports are those of the weights it wrote
        written = attention_weights(moved, 0)
        q = np.stack([x / np.linalg.norm(x) for x in written.W_Q]) - np.stack([x / np.linalg.norm(x) for x in wb.W_Q])
        np.testing.assert_allclose(np.linalg.norm(q, axis=(1, 2)), found.residuals["q"], atol=1e-6)


def test_qwen3_alignment_without_the_norm_restriction_is_not_a_symmetry(qwen3):
    wa, wb = attention_weights(qwen3, 0), attention_weights(qwen3, 2)
    rotary_only = align_attention(wa, wb, "separate", QKConstraint(16, 16))
    assert _moved(qwen3, 0, rotary_only)[1] > 1e-2
    exact = align_attention(wa, wb, "separate", qk_constraint(qwen3, 0))
    assert exact.residuals["q"].mean() >= rotary_only.residuals["q"].mean() - 1e-12


def test_arbitrary_qk_rotation_is_not_a_rotary_symmetry():
    model = build("qwen2")
    w = attention_weights(model, 2)
    r_qk = np.stack([_orth(16, 60 + i) for i in range(2)])
    eye = np.stack([np.eye(16)] * 2)
    assert _moved(model, 2, _identity(model, r_qk))[1] > 1e-2
    # and the rotary-restricted alignment cannot pretend it is one
    aligned = align_attention(w, gauge_transform_attention(w, r_qk, eye), "separate", qk_constraint(model, 2))
    assert aligned.residuals["q"].min() > 0.1


# The seed's tied alignment, computed as the seed did


def seed_tied_residuals(wa, wb):
    """The research script's per-query-head loop in its own layout ([d_head, d_model]), with the
    correct maximizer (the transpose of its ``procrustes``)."""
    n, n_kv = wa.W_Q.shape[0], wa.W_K.shape[0]
    res = {f: [] for f in "qkvo"}

    def u(x):
        return x / np.linalg.norm(x)

    for h in range(n):
        kv = (h * n_kv) // n
        qa, qb, ka, kb = u(wa.W_Q[h].T), u(wb.W_Q[h].T), u(wa.W_K[kv].T), u(wb.W_K[kv].T)
        va, vb, oa, ob = u(wa.W_V[kv].T), u(wb.W_V[kv].T), u(wa.W_O[h].T), u(wb.W_O[h].T)
        r = seed_procrustes(qa @ qb.T + ka @ kb.T + va @ vb.T + oa.T @ ob).T
        for f, x, y in (("q", r @ qa, qb), ("k", r @ ka, kb), ("v", r @ va, vb), ("o", oa @ r.T, ob)):
            res[f].append(np.linalg.norm(x - y))
    return {f: np.array(v) for f, v in res.items()}


@pytest.mark.parametrize("kind", ["ln", "qwen2"])
def test_seed_tied_equals_the_seeds_loop(kind):
    model = build(kind)
    wa, wb = attention_weights(model, 0), attention_weights(model, 1)
    ours = align_attention(wa, wb, "tied").residuals
    ref = seed_tied_residuals(wa, wb)
    for f in "qkvo":
        np.testing.assert_allclose(ours[f], ref[f], atol=1e-10)


def test_seed_tied_undoes_a_tied_rotation_and_is_no_transform_under_gqa():
    model = build("ln")
    w = attention_weights(model, 0)
    r = np.stack([_orth(16, 30 + h) for h in range(4)])
    tied = align_attention(w, gauge_transform_attention(w, r, r), "tied")
    assert max(tied.residuals[k].max() for k in "qkvo") < 1e-10
    gqa = build("qwen2")
    found = align_attention(attention_weights(gqa, 0), attention_weights(gqa, 1), "tied")
    with pytest.raises(BadInputError, match="grouped-query"):
        aligned_attention(attention_weights(gqa, 0), found)


# MLP


@pytest.mark.parametrize("kind", ["ln", "qwen2"], ids=["gelu", "swiglu"])
def test_neuron_permutation_is_exact_and_recovered(kind):
    model = build(kind)
    moved = copy.deepcopy(model)
    w = mlp_weights(model, 1)
    perm = np.random.default_rng(3).permutation(w.W_in.shape[1])
    apply_neuron_permutation_(moved, 1, perm)
    torch.testing.assert_close(logits(moved), logits(model), rtol=0, atol=ATOL)
    matched = match_neurons(w, mlp_weights(moved, 1))
    np.testing.assert_array_equal(matched["perm"], perm)
    assert all(matched[k] < 1e-10 for k in matched if k != "perm")


@pytest.mark.parametrize("kind", ["ln", "qwen2"], ids=["gelu", "swiglu"])
def test_neuron_rotation_is_only_an_approximation(kind):
    model = build(kind)
    moved = copy.deepcopy(model)
    w = mlp_weights(model, 0)
    s = _orth(w.W_in.shape[1], 4)
    rotated_w = MLPWeights(w.W_in @ s, s.T @ w.W_out, None if w.W_gate is None else w.W_gate @ s)
    mlp = moved.blocks[0].mlp
    with torch.no_grad():
        for name in ("W_in", "W_out", "W_gate"):
            if getattr(rotated_w, name) is not None:
                getattr(mlp, name).copy_(torch.as_tensor(getattr(rotated_w, name), dtype=torch.float32))
        mlp.b_in.copy_(mlp.b_in @ torch.as_tensor(s, dtype=torch.float32))
    assert (logits(moved) - logits(model)).abs().max() > 1e-2  # not a symmetry
    rotated = rotate_neurons(w, rotated_w)
    assert all(rotated[k] < 1e-8 for k in rotated)  # though the alignment undoes it
    assert match_neurons(w, rotated_w)["W_in"] > 0.1


def full_rotation_residuals(xa, xb):
    """The seed's way: scipy's orthogonal Procrustes of the full n x n problem."""
    s = orthogonal_procrustes(xa.T, xb.T)[0]
    return s, s.T @ xa - xb


@pytest.mark.parametrize(("n", "k"), [(60, 12), (40, 40), (20, 36)])
def test_thin_rotation_equals_the_full_procrustes(n, k):
    rng = np.random.default_rng(n + k)
    xa, xb = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    s, full = full_rotation_residuals(xa, xb)
    aligned, target = thin_procrustes(xa, xb)
    np.testing.assert_allclose(np.linalg.norm(aligned - target), np.linalg.norm(full), atol=1e-6)
    for cols in (slice(0, k // 3), slice(k // 3, k)):  # per column block too
        np.testing.assert_allclose(np.linalg.norm(aligned[:, cols] - target[:, cols]),
                                   np.linalg.norm(full[:, cols]), atol=1e-6)
    # the same aligned matrix: S^T xa = Q_b (V U^T R_a), with Q_b from xb's QR
    q_b, r_b = np.linalg.qr(xb)
    np.testing.assert_allclose(q_b @ r_b, xb, atol=1e-10)
    np.testing.assert_allclose(q_b @ aligned, s.T @ xa, atol=1e-6)


@pytest.mark.parametrize("kind", ["ln", "qwen2"])
def test_rotate_neurons_equals_the_full_procrustes_per_family(kind):
    model = build(kind)
    wa, wb = mlp_weights(model, 0), mlp_weights(model, 2)
    fa, fb = wa.families(), wb.families()
    s = procrustes(np.hstack(list(fa.values())).T, np.hstack(list(fb.values())).T)
    thin = rotate_neurons(wa, wb)
    assert set(thin) == set(fa)
    for name in fa:
        np.testing.assert_allclose(thin[name], np.linalg.norm(s.T @ fa[name] - fb[name]), atol=1e-6)
