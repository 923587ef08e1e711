"""Alignment study: seed semantics on given activations, identities on real models, goldens."""

import json
from pathlib import Path

import numpy as np
import pytest
from seed_reference import seeds_matched_vs_scrambled_z

from interp_tl.analyses import alignment as align_mod
from interp_tl.analyses.alignment import layer_alignment, layer_entry
from interp_tl.cache import from_arrays, load_caches, save_caches, split_languages
from interp_tl.errors import BadInputError, LayerRangeError
from interp_tl.studies.alignment import AlignmentConfig, extract_caches, prepare, run_alignment

GOLDENS = Path(__file__).parents[1] / "goldens"
SEED_LAYER_KEYS = {"layer", "z_pre", "z_post_attn", "z_post_mlp", "dz_attn", "dz_mlp", "z_attn_correction_alone",
                   "z_mlp_correction_alone", "norm_h_pre", "norm_attn_delta", "norm_mlp_delta", "matched_cos_pre",
                   "matched_cos_post_attn", "matched_cos_post_mlp"}
SEED_SUMMARY_KEYS = {"total_dz_attn", "total_dz_mlp", "attn_dominant_layers", "mlp_dominant_layers",
                     "attn_aligned_layers", "mlp_aligned_layers"}


def seed_analysis(zh, en, layers):
    """The seed's per-layer analysis and summary loop on {kind: {layer: array}} dicts."""
    rows = []
    for layer in layers:
        z_pre, m_pre, _, _ = seeds_matched_vs_scrambled_z(zh["pre"][layer], en["pre"][layer], 500)
        zpa, m_pa, _, _ = seeds_matched_vs_scrambled_z(zh["pre"][layer] + zh["attn"][layer], en["pre"][layer] + en["attn"][layer], 500)
        zpm, m_pm, _, _ = seeds_matched_vs_scrambled_z(zh["pre"][layer] + zh["attn"][layer] + zh["mlp"][layer],
                           en["pre"][layer] + en["attn"][layer] + en["mlp"][layer], 500)
        rows.append({
            "z_pre": z_pre, "z_post_attn": zpa, "z_post_mlp": zpm, "dz_attn": zpa - z_pre, "dz_mlp": zpm - zpa,
            "z_attn_correction_alone": seeds_matched_vs_scrambled_z(zh["attn"][layer], en["attn"][layer], 500)[0],
            "z_mlp_correction_alone": seeds_matched_vs_scrambled_z(zh["mlp"][layer], en["mlp"][layer], 500)[0],
            "norm_h_pre": np.linalg.norm(zh["pre"][layer], axis=1).mean(),
            "norm_attn_delta": np.linalg.norm(zh["attn"][layer], axis=1).mean(),
            "norm_mlp_delta": np.linalg.norm(zh["mlp"][layer], axis=1).mean(),
            "matched_cos_pre": m_pre, "matched_cos_post_attn": m_pa, "matched_cos_post_mlp": m_pm,
        })
    summary = {
        "total_dz_attn": sum(r["dz_attn"] for r in rows), "total_dz_mlp": sum(r["dz_mlp"] for r in rows),
        "attn_dominant_layers": sum(1 for r in rows if r["dz_attn"] > r["dz_mlp"] and r["dz_attn"] > 0.5),
        "mlp_dominant_layers": sum(1 for r in rows if r["dz_mlp"] > r["dz_attn"] and r["dz_mlp"] > 0.5),
        "attn_aligned_layers": sum(1 for r in rows if r["z_attn_correction_alone"] > 3.0),
        "mlp_aligned_layers": sum(1 for r in rows if r["z_mlp_correction_alone"] > 3.0),
    }
    return rows, summary


def _synthetic(n=40, d=24, layers=3, seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, d))
    out = {}
    for lang in ("zh", "en"):
        out[lang] = {kind: {layer: (shared * (layer + 1) * w + rng.normal(size=(n, d)))
                            for layer in range(layers)}
                     for kind, w in (("pre", 0.3), ("attn", 0.5), ("mlp", 0.05))}
    return out


def _hook_dict(acts):
    return {f"blocks.{layer}.hook_{name}": acts[kind][layer]
            for kind, name in (("pre", "resid_pre"), ("attn", "attn_out"), ("mlp", "mlp_out")) for layer in acts["pre"]}


def alignment_from_arrays(a, b, layers, **kwargs):
    table = layer_alignment(from_arrays(a), from_arrays(b), layers=layers, **kwargs)
    return table.layer_results, table.summary


def test_statistics_equal_the_seed_loop():
    acts = _synthetic()
    rows, summary = alignment_from_arrays(_hook_dict(acts["zh"]), _hook_dict(acts["en"]), [0, 1, 2], n_boot=0)
    ref_rows, ref_summary = seed_analysis(acts["zh"], acts["en"], [0, 1, 2])
    for got, want in zip(rows, ref_rows):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-6), key
    for key, value in ref_summary.items():
        assert summary[key] == pytest.approx(value, abs=1e-6), key
    assert summary["attn_aligned_layers"] > 0 and summary["mlp_aligned_layers"] < 3  # the data exercises both sides


def test_layers_on_threads_equal_the_serial_loop(monkeypatch):
    """layer_alignment runs its layers a thread per core (BLAS one thread each): the same rows as one at a time."""
    acts = _synthetic()
    a, b = from_arrays(_hook_dict(acts["zh"])), from_arrays(_hook_dict(acts["en"]))
    calls = []
    real = align_mod.per_layer

    def spy(fn, layers):
        calls.append(list(layers))
        return real(fn, layers)

    monkeypatch.setattr(align_mod, "per_layer", spy)
    monkeypatch.setattr(align_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    threaded = layer_alignment(a, b, layers=[2, 0, 1], n_boot=30).layer_results
    assert calls == [[2, 0, 1]]
    serial = [layer_entry(a, b, layer, n_boot=30) for layer in (2, 0, 1)]
    assert json.dumps(threaded) == json.dumps(serial)  # byte for byte, in the layers' order
    assert [row["layer"] for row in threaded] == [2, 0, 1]
    assert align_mod.per_layer(lambda x: x * x, [3, 1, 2]) == [9, 1, 4]


@pytest.fixture(scope="module")
def toy_run(toy_model):
    return run_alignment(toy_model, AlignmentConfig(n_pairs=40, n_boot=50))


def test_result_has_the_seed_keys_and_provenance(toy_run, toy_model):
    data = toy_run.data
    assert {"model", "n_problems", "n_layers", "hidden_size", "methodology", "layer_results", "summary"} <= set(data)
    assert data["n_problems"] == 40 and data["n_layers"] == toy_model.cfg.n_layers == len(data["layer_results"])
    for row in data["layer_results"]:
        assert SEED_LAYER_KEYS <= set(row)
        stage = row["stats"]["post_mlp"]
        assert stage["ci"]["gap_estimate"] == pytest.approx(stage["gap"]) and stage["ci"]["reason"] is None
        assert stage["ci"]["gap"][0] <= stage["gap"] <= stage["ci"]["gap"][1]
        assert 0 < stage["p_value"] <= 1 and 0 <= stage["retrieval"]["auc"] <= 1
    assert SEED_SUMMARY_KEYS <= set(data["summary"])
    prov = toy_run.provenance
    assert prov["model"]["name"] == "interp-tl/toy-random" and prov["model"]["processing"] == "none"
    assert prov["model"]["fold_ln"] is False and prov["prompts"]["prepend_bos"] is True
    assert prov["prompts"]["bos_token_id"] == 256 and prov["study"] == "alignment"
    assert prov["prompts"]["seed"] == 42 and prov["prompts"]["n"] == 40 and prov["prompts"]["languages"] == ["zh", "en"]
    assert prov["layers"] == [0, 1, 2, 3] and prov["versions"]["transformer_lens"].startswith("3.")
    json.dumps(toy_run.to_dict(), allow_nan=False)


def test_residual_parts_add_up(toy_run):
    assert toy_run.data["summary"]["resid_sum_max_rel_error"] < 1e-5


def test_saved_activations_reproduce_the_numbers(toy_run, toy_model, tmp_path):
    config = AlignmentConfig(n_pairs=40, n_boot=50)
    prompts = prepare(toy_model, config)
    save_caches(tmp_path / "a.safetensors", extract_caches(toy_model, config, prompts), {"note": "test"})
    caches, meta = load_caches(tmp_path / "a.safetensors", toy_model)
    assert meta["note"] == "test" and set(caches) == {"last"}
    by_lang = split_languages(caches["last"], ("zh", "en"))
    for row in toy_run.data["layer_results"]:
        layer = row["layer"]
        zh, en = (sum(c[f"blocks.{layer}.{h}"][:, 0].double().numpy() for h in ("hook_resid_pre", "hook_attn_out",
                                                                                 "hook_mlp_out"))
                  for c in (by_lang["zh"], by_lang["en"]))
        assert seeds_matched_vs_scrambled_z(zh, en, 500)[0] == pytest.approx(row["z_post_mlp"], abs=1e-4)
    again = layer_alignment(by_lang["zh"], by_lang["en"], n_boot=50)
    assert again.layer_results == toy_run.data["layer_results"]


def test_same_seed_same_numbers(toy_model, toy_run):
    again = run_alignment(toy_model, AlignmentConfig(n_pairs=40, n_boot=50))
    assert again.to_dict() == toy_run.to_dict()


def test_grouped_query_rotary_model(rms_model):
    result = run_alignment(rms_model, AlignmentConfig(n_pairs=20, n_boot=0, layers=(0, 2), langs=("en", "ja")))
    assert [r["layer"] for r in result.data["layer_results"]] == [0, 2]
    assert result.data["summary"]["resid_sum_max_rel_error"] < 1e-5
    assert result.provenance["prompts"]["prepend_bos"] is False


def test_centred_processing_changes_the_numbers(toy_model):
    """TL's default processing centres the residual, so cosines (and z) move: the choice matters."""
    from interp_tl.models import load_model

    centred = load_model("interp-tl/toy-random", processing="default")
    config = AlignmentConfig(n_pairs=10, layers=(2,))
    raw = extract_caches(toy_model, config, prepare(toy_model, config))["last"]
    cen = extract_caches(centred, config, prepare(centred, config))["last"]
    x = raw["blocks.2.hook_resid_post"][:, 0].numpy()
    np.testing.assert_allclose(cen["blocks.2.hook_resid_post"][:, 0].numpy(), x - x.mean(-1, keepdims=True),
                               atol=2e-4)
    assert np.abs(x.mean(-1)).max() > 1e-2


@pytest.mark.wrong_types
def test_bad_input(toy_model):
    with pytest.raises(LayerRangeError, match="layer 7 is out of range"):
        run_alignment(toy_model, AlignmentConfig(n_pairs=10, layers=(7,)))
    with pytest.raises(BadInputError, match="mismatched pairs"):
        acts = _synthetic()
        short = {k: v[:-1] for k, v in _hook_dict(acts["en"]).items()}
        alignment_from_arrays(_hook_dict(acts["zh"]), short, [0])
    with pytest.raises(BadInputError, match="zero norm"):
        acts = _hook_dict(_synthetic()["zh"])
        zeroed = {**acts, "blocks.0.hook_attn_out": np.zeros_like(acts["blocks.0.hook_attn_out"])}
        alignment_from_arrays(zeroed, acts, [0])
