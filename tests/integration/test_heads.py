"""Per-head study: writers add up to the residual, shares add up to the gap and equal the double sum,
ablation identities, grouped-query models, and the one-head report."""

from __future__ import annotations

import numpy as np
import pytest
import strict_json

from interp_tl.analyses.shares import decomposition, split_gap
from interp_tl.cache import extract
from interp_tl.cli import main
from interp_tl.errors import BadInputError
from interp_tl.studies.heads import (
    HeadsConfig,
    ablation_effect,
    attention_stats,
    head_report,
    run_heads,
)
from interp_tl.tokens import parallel_prompts


def writer_parts(model, tokens, layer):
    """TransformerLens' decomposition of ``blocks.{layer}.hook_resid_post`` from an extracted cache."""
    from interp_tl.analyses.shares import hook_names

    return decomposition(extract(model, tokens, hook_names(model, layer)), layer)


def alignment_shares(parts_a, parts_b, n_perms=200, seed=42):
    return split_gap(parts_a, parts_b, n_perms=n_perms, seed=seed)


@pytest.mark.parametrize("fixture", ["ln_model", "rms_model"])
def test_writers_add_up_to_the_residual(request, fixture):
    model = request.getfixturevalue(fixture)
    tokens = parallel_prompts(model, 10, 42, ("zh", "en")).tokens["zh"]
    names, parts, resid = writer_parts(model, tokens, 2)
    scale = np.abs(resid).max()
    np.testing.assert_allclose(parts.sum(0), resid, rtol=0, atol=2e-5 * scale)
    assert names[-1] == "bias" and ("pos_embed" in names) == (fixture == "ln_model")
    assert names[: 3 * model.cfg.n_heads] == [f"L{i}H{h}" for i in range(3) for h in range(model.cfg.n_heads)]
    assert names[3 * model.cfg.n_heads: 3 * model.cfg.n_heads + 3] == ["0_mlp_out", "1_mlp_out", "2_mlp_out"]


def test_shares_equal_the_symmetrized_double_sum():
    rng = np.random.default_rng(0)
    shared = 2 * rng.normal(size=(40, 8))
    parts_a = rng.normal(size=(4, 40, 8))
    parts_b = rng.normal(size=(4, 40, 8))
    parts_a[1] += shared  # writer 1 carries what both languages share
    parts_b[1] += shared
    res = alignment_shares(parts_a, parts_b, n_perms=100)
    u = parts_a / np.linalg.norm(parts_a.sum(0), axis=1)[None, :, None]
    v = parts_b / np.linalg.norm(parts_b.sum(0), axis=1)[None, :, None]
    n = 40

    def gap(x, y):  # matched mean minus exact null mean of the inner products
        s = x @ y.T
        return np.trace(s) / n - s.mean()

    cross = np.array([[gap(u[c], v[d]) for d in range(4)] for c in range(4)])
    np.testing.assert_allclose(res["shares"], 0.5 * (cross.sum(1) + cross.sum(0)), atol=1e-12)
    assert res["shares"].sum() == pytest.approx(res["total"], abs=1e-12)
    assert res["total"] == pytest.approx(cross.sum(), abs=1e-12)
    assert res["z"][1] > 5 and res["band"][1][0] < 0 < res["band"][1][1]
    assert np.argmax(res["shares"]) == 1


def test_zero_ablation_removes_exactly_the_heads_part(ln_model):
    prompts = parallel_prompts(ln_model, 10, 42, ("zh", "en"))
    tokens = prompts.tokens["en"]
    names, parts, resid = writer_parts(ln_model, tokens, 1)

    def zero(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    # the attention write of layer 1 loses exactly the head's part (the MLP after it then reads something else)
    hook = "blocks.1.hook_resid_mid"
    intact = extract(ln_model, tokens, [hook])[hook][:, 0].numpy()
    ablated = extract(ln_model, tokens, [hook], fwd_hooks=[("blocks.1.attn.hook_z", zero)])[hook][:, 0].numpy()
    expected = intact - parts[names.index("L1H2")]
    np.testing.assert_allclose(ablated, expected, rtol=0, atol=2e-5 * np.abs(intact).max())
    assert np.abs(parts[names.index("L1H2")]).max() > 1e-2
    effect = ablation_effect(ln_model, prompts, 1, 2, "zero", n_perms=20)
    assert effect["layers"] == [1, 2] and len(effect["delta_z"]) == 2
    assert effect["intact"] != effect["ablated"]


@pytest.mark.wrong_types
def test_mean_ablation_and_bad_heads(rms_model):
    prompts = parallel_prompts(rms_model, 10, 42, ("ja", "ko"))
    mean = ablation_effect(rms_model, prompts, 0, 3, "mean", n_perms=20)
    zero = ablation_effect(rms_model, prompts, 0, 3, "zero", n_perms=20)
    assert mean["ablated"] != zero["ablated"]
    with pytest.raises(BadInputError, match="head 4 is out of range"):
        ablation_effect(rms_model, prompts, 0, 4)
    with pytest.raises(BadInputError, match="unknown ablation"):
        ablation_effect(rms_model, prompts, 0, 1, "resample")


def test_study_on_a_grouped_query_model(rms_model):
    result = run_heads(rms_model, HeadsConfig(n_pairs=10, n_perms=20, top=2, langs=("en", "sw")))
    data = result.data
    assert data["layer"] == 2 and len(data["head_shares"]) == 3 and len(data["head_shares"][0]) == 4
    assert data["shares_sum_error"] < 1e-10 and data["writers_sum_max_abs_error"] < 1e-3
    assert len(data["ablations"]) == 2
    assert all(isinstance(w["z_exact"], float) for w in data["writers"])
    # the ablated heads are the largest shares (a deterministic ranking)
    heads = sorted((w for w in data["writers"] if w["name"].startswith("L")), key=lambda w: -w["share"])
    assert list(data["ablations"]) == [w["name"] for w in heads[:2]]
    assert all(len(a["delta_z_exact"]) == len(a["layers"]) for a in data["ablations"].values())
    strict_json.round_trip(result.to_dict())


def test_attention_mass_by_class_sums_to_one(polyglot_model):
    prompts = parallel_prompts(polyglot_model, 10, 42, ("zh", "en"))
    att = attention_stats(polyglot_model, prompts, 1, 0)
    for lang in ("zh", "en"):
        assert sum(att[lang]["mass_by_token_class"].values()) == pytest.approx(1.0, abs=1e-5)
        assert att[lang]["mass_by_token_class"]["bos"] == pytest.approx(att[lang]["first_position_mass"])


def test_head_report_and_cli(polyglot_model, tmp_path, capsys):
    report = head_report(polyglot_model, "2.1", HeadsConfig(n_pairs=10, n_perms=20))
    assert report["head"] == "L2H1" and set(report["neighbours"]) == {"L1", "L3"}
    assert {"share", "ablation", "attention", "jacobian"} <= set(report)
    assert main(["head", "0.3", "--n-pairs", "10", "--n-perms", "20", "--quiet", "--out", str(tmp_path)]) == 0
    assert "head L0H3:" in capsys.readouterr().out
    written = strict_json.read(tmp_path / "head_L0H3.json")
    assert written["head"] == "L0H3" and written["provenance"]["model"]["name"] == "interp-tl/polyglot-toy"
    assert isinstance(written["share"]["z_exact"], float) and len(written["ablation"]["delta_z_exact"]) == 4
    assert 0 < written["jacobian"]["mean_max_attention"] <= 1 and set(written["z_statistics"]) == {"z", "z_exact"}
    assert main(["head", "0.x", "--out", str(tmp_path / "bad")]) == 2
    assert "a head is written L.H" in capsys.readouterr().err


def test_alignment_report_carries_the_same_head_shares(rms_model):
    from interp_tl.studies.alignment import AlignmentConfig, run_alignment

    align = run_alignment(rms_model, AlignmentConfig(n_pairs=10, n_perms=20, n_boot=0, layers=(0, 1)))
    shares = align.data["head_shares"]
    heads = run_heads(rms_model, HeadsConfig(n_pairs=10, n_perms=20, top=0, layer=1)).data
    assert shares["layer"] == 1
    np.testing.assert_allclose(np.array(shares["heads"], float), np.array(heads["head_shares"], float), atol=1e-12)
    total = np.nansum(np.array(shares["heads"], float)) + sum(shares["other_writers"].values())
    assert total == pytest.approx(shares["total"], abs=1e-10)
    assert "head_shares" not in run_alignment(rms_model, AlignmentConfig(n_pairs=10, n_perms=20, n_boot=0,
                                                                         layers=(0,), head_shares=False)).data
