"""Layer-variation study: a layer built as an exact gauge copy of another is at distance ~0 under the
true symmetries (and not under the seed's tied rotation); invariants against explicit products."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import _small_model
from scipy.stats import ortho_group

from interp_tl.gauge import attention_weights, gauge_transform_attention
from interp_tl.models import POLYGLOT_MODEL, load_model
from interp_tl.studies.layers import (
    LayersConfig,
    default_block,
    head_invariants,
    pair_distances,
    random_spectrum_like,
    run_layers,
)

LN = dict(seed=31, model_name="layers-ln", act_fn="gelu_new", normalization_type="LN")


def _copy_layer_as_gauge(model, src: int, dst: int, head_perm=None):
    """Make layer ``dst`` an exact gauge transform of ``src``: separate per-head QK / VO rotations,
    permuted MLP neurons, same norm weights (optionally heads permuted too)."""
    w = attention_weights(model, src)
    n = w.W_K.shape[0]
    r_qk = np.stack([ortho_group.rvs(w.W_Q.shape[-1], random_state=100 + h) for h in range(n)])
    r_vo = np.stack([ortho_group.rvs(w.W_Q.shape[-1], random_state=200 + h) for h in range(n)])
    moved = gauge_transform_attention(w, r_qk, r_vo)
    perm = np.random.default_rng(0).permutation(model.cfg.d_mlp)
    order = np.arange(n) if head_perm is None else np.asarray(head_perm)
    a, b = model.blocks[src], model.blocks[dst]
    with torch.no_grad():
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            getattr(b.attn, name).copy_(torch.as_tensor(getattr(moved, name)[order], dtype=torch.float32))
        b.mlp.W_in.copy_(a.mlp.W_in[:, perm])
        b.mlp.W_out.copy_(a.mlp.W_out[perm])
        b.ln1.w.copy_(a.ln1.w)
        b.ln2.w.copy_(a.ln2.w)
    return model


@pytest.fixture(scope="module")
def gauge_model():
    return _copy_layer_as_gauge(_small_model(**LN), 0, 1)


def test_exact_gauge_copy_is_at_distance_zero_under_the_true_symmetries(gauge_model):
    d = pair_distances(gauge_model, 0, 1)
    assert max(d["attention"]["separate"].values()) < 1e-6
    assert max(d["mlp"]["permutation"].values()) < 1e-6
    assert max(d["norms"].values()) < 1e-12
    assert min(d["attention"]["tied"].values()) > 0.1  # the seed's tied rotation cannot undo it
    assert min(d["attention"]["raw"].values()) > 0.5 and min(d["mlp"]["raw"].values()) > 0.5
    inv = head_invariants(gauge_model, 0, 1)
    assert inv["W_QK"]["matched_mean"] < 1e-6 and inv["W_OV"]["matched_mean"] < 1e-6


def test_invariants_match_permuted_heads():
    model = _copy_layer_as_gauge(_small_model(**LN), 0, 2, head_perm=[2, 0, 3, 1])
    inv = head_invariants(model, 0, 2)
    for name in ("W_QK", "W_OV"):
        assert inv[name]["matched_mean"] < 1e-6 and inv[name]["same_index_mean"] > 0.5
        # head h of layer 2 is head order[h] of layer 0: the matching finds the inverse order
        assert inv[name]["match"] == list(np.argsort([2, 0, 3, 1]))


def test_invariant_distances_equal_the_explicit_products():
    model = _small_model(**LN)
    inv = head_invariants(model, 1, 2)
    w_q, w_k = model.W_Q.detach().double(), model.W_K.detach().double()
    w_v, w_o = model.W_V.detach().double(), model.W_O.detach().double()
    for name, full in (("W_QK", torch.einsum("lhdk,lhek->lhde", w_q, w_k)),
                       ("W_OV", torch.einsum("lhdk,lhke->lhde", w_v, w_o))):
        a = full[1].reshape(4, -1)
        b = full[2].reshape(4, -1)
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        explicit = torch.cdist(a, b).numpy()
        np.testing.assert_allclose(inv[name]["distance"], explicit, atol=2e-6)


def test_random_same_spectrum_null_keeps_the_singular_values():
    x = np.random.default_rng(1).normal(size=(40, 12)) @ np.diag(np.linspace(1, 5, 12))
    y = random_spectrum_like(x, np.random.default_rng(2))
    np.testing.assert_allclose(np.linalg.svd(y, compute_uv=False), np.linalg.svd(x, compute_uv=False), rtol=1e-10)
    assert np.abs(x - y).max() > 0.1


def test_default_block_is_the_seeds_fraction_of_depth():
    assert default_block(36) == list(range(10, 26))
    assert default_block(12) == list(range(3, 9))
    assert default_block(4) == [1, 2, 3]
    assert default_block(2) == [0, 1]


def test_study_on_the_default_model(polyglot_model):
    result = run_layers(polyglot_model, LayersConfig(layers=(0, 1, 2)))
    data = result.data
    assert [e["pair"] for e in data["pairs"]] == [[0, 1], [1, 2]]
    assert set(data["family_stats"]["W_Q/separate"]) == {"mean", "min", "max", "std"}
    # alignment over a larger group never increases the distance
    for fam in ("W_Q", "W_K", "W_V", "W_O"):
        assert data["family_stats"][f"{fam}/separate"]["mean"] <= data["family_stats"][f"{fam}/tied"]["mean"] + 1e-9
        assert data["family_stats"][f"{fam}/tied"]["mean"] <= data["family_stats"][f"{fam}/raw"]["mean"] + 1e-9
    assert data["nulls"]["non_adjacent"]["pairs"] == [[0, 2]]
    assert len(data["pairs"][0]["heads"]["separate"]["W_Q"]) == polyglot_model.cfg.n_heads
    assert result.provenance["model"]["processing"] == "none" and data["norm_weights"].startswith("compared")
    json.dumps(result.to_dict())


def test_folded_norms_are_reported_not_compared():
    model = load_model(POLYGLOT_MODEL, processing="fold_ln")
    data = run_layers(model, LayersConfig(layers=(0, 1), invariants=False)).data
    assert data["norm_weights"].startswith("folded") and data["pairs"][0]["norms"] == {}
