"""Layer-variation study: a layer built as an exact gauge copy of another (heads permuted, per-group
transforms, neurons permuted) is at distance ~0 under the exact alignments on the LN, Qwen2 and
Qwen3 fixtures; every alignment the study reports as exact is a symmetry (applied to a copy of the
model, the logits do not move); a functionally different Qwen3 layer is not at ~0; the block is
validated; invariants against explicit products."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import strict_json
import torch
from gauge_models import build, logits, random_symmetry

from interp_tl.cli import main
from interp_tl.errors import BadInputError
from interp_tl.gauge import (
    AttentionAlignment,
    QKConstraint,
    align_attention,
    apply_attention_alignment_,
    apply_neuron_permutation_,
    attention_weights,
    head_invariants,
)
from interp_tl.models import POLYGLOT_MODEL, load_model
from interp_tl.studies.layers import (
    LayersConfig,
    align_pair,
    check_block,
    default_block,
    pair_distances,
    random_spectrum_like,
    run_layers,
)

ATOL = 1e-5
FAMILIES = ("W_Q", "W_K", "W_V", "W_O")


def gauge_copy_(model, src: int, dst: int, seed: int = 0, tied: bool = False, perm_q=None):
    """Make layer ``dst`` an exact gauge transform of ``src``: a random symmetry of the attention
    (heads permuted, per-group QK / VO transforms), permuted MLP neurons, same norm weights."""
    with torch.no_grad():
        for dst_param, src_param in zip(model.blocks[dst].parameters(), model.blocks[src].parameters()):
            dst_param.copy_(src_param)
    g = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    perm_kv = None if perm_q is None else np.asarray(perm_q)[::g] // g
    apply_attention_alignment_(model, dst, random_symmetry(model, src, seed, tied, perm_kv=perm_kv, perm_q=perm_q))
    apply_neuron_permutation_(model, dst, np.random.default_rng(seed).permutation(model.cfg.d_mlp))
    return model


@pytest.fixture(scope="module", params=["ln", "qwen2", "qwen3"])
def kind(request):
    return request.param


@pytest.mark.parametrize("tied", [False, True], ids=["separate", "tied"])
def test_exact_gauge_copy_is_at_distance_zero_under_the_exact_alignments(kind, tied):
    model = gauge_copy_(build(kind), 0, 1, seed=3, tied=tied)
    d = pair_distances(model, 0, 1)
    assert max(d["attention"]["separate"].values()) < 1e-6
    if tied:
        assert max(d["attention"]["tied_exact"].values()) < 1e-6
    else:  # one transform cannot undo two different ones
        assert min(d["attention"]["tied_exact"][f] for f in ("W_V", "W_O")) > 0.1
    assert max(d["mlp"]["permutation"].values()) < 1e-6
    assert max(d["norms"].values()) < 1e-12 and len(d["norms"]) == (4 if kind == "qwen3" else 2)
    assert max(v["matched_mean"] for v in d["invariants"].values()) < 1e-6
    assert min(d["attention"]["raw"].values()) > 0.5 and min(d["mlp"]["raw"].values()) > 0.5
    assert min(d["attention"]["tied"].values()) > 0.1  # the seed's tied does not match heads


def test_issue_reordered_heads_are_an_exact_copy():
    """The issue's case: layer 2 := layer 1 with heads reordered [2, 0, 3, 1] (and transforms)."""
    model = gauge_copy_(build("ln"), 1, 2, seed=5, perm_q=[2, 0, 3, 1])
    d = pair_distances(model, 1, 2)
    assert max(d["attention"]["separate"].values()) < 1e-6
    assert d["head_match"]["separate"]["query_heads"] == [2, 0, 3, 1]
    inv = head_invariants(model, 1, 2)
    for name in ("W_QK", "W_OV"):
        assert inv[name]["matched_mean"] < 1e-6 and inv[name]["same_index_mean"] > 0.5
        # head order[h] of layer 1 is head h of layer 2: the matching of layer 1's heads is the inverse
        assert inv[name]["match"] == np.argsort([2, 0, 3, 1]).tolist()


def test_every_exact_alignment_the_study_reports_is_a_symmetry(kind):
    model = build(kind)
    base = logits(model)
    exact = run_layers(model, LayersConfig(layers=(0, 1), rotation_approx=False)).data["alignments"]["exact"]
    assert exact == (["tied"] if kind == "ln" else []) + ["tied_exact", "separate", "permutation", "invariant"]
    for la, lb in ((0, 1), (1, 2), (0, 2)):
        found = align_pair(model, la, lb)
        for mode in [m for m in ("tied", "tied_exact", "separate") if m in exact]:
            moved = copy.deepcopy(model)
            apply_attention_alignment_(moved, la, found.attention[mode])
            assert (logits(moved) - base).abs().max() < ATOL, (la, lb, mode)
        moved = copy.deepcopy(model)
        apply_neuron_permutation_(moved, la, found.neurons["perm"])
        assert (logits(moved) - base).abs().max() < ATOL


def test_a_functionally_different_qwen3_layer_is_not_at_zero():
    """Layer 1 := layer 0 rotated inside a rotary pair whose q/k norm weights differ: the logits
    move, and only the rotary-only alignment (the study before q/k norms) would call it a copy."""
    model = build("qwen3")
    gauge_copy_(model, 0, 1, seed=2)
    qk = QKConstraint(16, 16)  # rotary only: every in-pair rotation
    r = np.eye(16)
    r[np.ix_([3, 11], [3, 11])] = [[np.cos(0.9), -np.sin(0.9)], [np.sin(0.9), np.cos(0.9)]]
    eye = np.stack([np.eye(16)] * 2)
    not_a_symmetry = AttentionAlignment("separate", np.arange(4), np.arange(2), np.stack([r, r]), eye, {})
    moved = copy.deepcopy(model)
    apply_attention_alignment_(moved, 1, not_a_symmetry)
    assert (logits(moved) - logits(model)).abs().max() > 1e-2  # functionally different
    d = pair_distances(moved, 0, 1)
    assert min(d["attention"]["separate"][f] for f in ("W_Q", "W_K")) > 1e-2
    rotary_only = align_attention(attention_weights(moved, 0), attention_weights(moved, 1), "separate", qk)
    assert max(rotary_only.residuals[f].max() for f in "qkvo") < 1e-6  # what the old study reported


def test_invariant_distances_equal_the_explicit_products():
    for kind_ in ("ln", "qwen2"):
        model = build(kind_)
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


@pytest.mark.parametrize(("layers", "message"), [
    ((1, 1), "consecutive layers in increasing order"),
    ((3, 1, 2), "consecutive layers in increasing order"),
    ((0, 3), "consecutive layers in increasing order"),
    ((2, 1), "consecutive layers in increasing order"),
    ((3,), "the block needs at least two layers"),
    ((0, 4), "layer 4 is out of range"),
])
def test_bad_blocks_are_refused_in_one_line(toy_model, layers, message):
    with pytest.raises(BadInputError, match=message) as err:
        check_block(toy_model, layers)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("layers", ["1,1", "3,1,2", "0,3"])
def test_cli_refuses_bad_blocks_in_one_line(tmp_path, capsys, layers):
    code = main(["layers", "--quiet", "--out", str(tmp_path / "out"), "--layers", layers])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "consecutive layers in increasing order" in err


def test_study_on_the_default_model(polyglot_model):
    result = run_layers(polyglot_model, LayersConfig(layers=(0, 1, 2)))
    data = result.data
    assert [e["pair"] for e in data["pairs"]] == [[0, 1], [1, 2]]
    assert set(data["family_stats"]["W_Q/separate"]) == {"mean", "min", "max", "std"}
    # a larger group never fits worse (total squared residual over heads; all start from the identity)
    for entry in data["pairs"]:
        total = {m: sum(np.sum(np.square(entry["heads"][m][f])) for f in FAMILIES) for m in entry["heads"]}
        assert total["separate"] <= total["tied_exact"] + 1e-9 <= total["raw"] + 2e-9
        assert total["tied"] <= total["raw"] + 1e-9
    nulls = data["nulls"]
    assert nulls["non_adjacent"]["pairs"] == [[0, 2]] and nulls["non_adjacent"]["n_pairs"] == 1
    for null in (nulls["non_adjacent"], nulls["random_same_spectrum"]):
        assert {"W_QK/invariant", "W_OV/invariant", "W_Q/separate"} <= set(null["family_stats"])
    assert "W_QK/invariant" in data["ranking"] and not any(k.endswith(("/raw", "/tied")) for k in data["ranking"])
    assert len(data["pairs"][0]["heads"]["separate"]["W_Q"]) == polyglot_model.cfg.n_heads
    assert result.provenance["model"]["processing"] == "none" and data["norm_weights"].startswith("compared")
    structure = result.provenance["attention"]
    assert structure["n_kv_heads"] == polyglot_model.cfg.n_heads and structure["rotary_dim"] == 0
    strict_json.round_trip(result.to_dict())


def test_two_layer_block_reports_the_non_adjacent_null_absent(polyglot_model):
    data = run_layers(polyglot_model, LayersConfig(layers=(1, 2), rotation_approx=False)).data
    far = data["nulls"]["non_adjacent"]
    assert far["family_stats"] is None and far["n_pairs"] == 0 and "needs three" in far["absent"]


def test_qwen3_provenance_records_rotary_groups_and_norms():
    model = build("qwen3")
    result = run_layers(model, LayersConfig(layers=(0, 1, 2), rotation_approx=False))
    structure = result.provenance["attention"]
    assert structure["n_kv_heads"] == 2 and structure["rotary_dim"] == 16
    assert structure["rotary_pairing"] == "(i, i + rotary_dim/2)" and structure["qk_norm"].startswith("per-head")
    per_layer = structure["qk_transforms_per_layer"]["0"]
    assert per_layer["pairs_any_rotation"] == 2 and per_layer["pairs_sign_only"] == 6
    assert {"q_norm_w/direct", "k_norm_w/direct"} <= set(result.data["family_stats"])
    assert result.data["alignments"]["approximate"] == ["tied", "rotation_approx"]


def test_study_is_deterministic(polyglot_model):
    config = LayersConfig(layers=(1, 2, 3), rotation_approx=False)
    first = json.dumps(run_layers(polyglot_model, config).to_dict(), sort_keys=True)
    assert json.dumps(run_layers(polyglot_model, config).to_dict(), sort_keys=True) == first


def test_folded_norms_are_reported_not_compared():
    model = load_model(POLYGLOT_MODEL, processing="fold_ln")
    data = run_layers(model, LayersConfig(layers=(0, 1), invariants=False)).data
    assert data["norm_weights"].startswith("folded") and data["pairs"][0]["norms"] == {}
