"""Embedding study: seed semantics, the position-embedding identity, per-token diagnostics."""

import numpy as np
import pytest
import torch
from seed_reference import seeds_matched_vs_scrambled_z as seed_z
from sklearn.decomposition import PCA

from interp_tl.cache import split_languages
from interp_tl.studies.embedding import EmbeddingConfig, analyse, extract_caches, prepare, run_embedding

SEED_KEYS = {"z_raw_embed_last_token", "z_raw_embed_mean_no_bos", "z_l0_output_last_token", "delta_l0_minus_embed",
             "embedding_pca_varexp", "embedding_cohen_d_pc0"}


NAMES = {"hook_embed": "embed", "hook_pos_embed": "pos_embed", "blocks.0.hook_resid_pre": "l0_input",
         "blocks.0.hook_resid_post": "l0_output"}


class Run:
    """The study's result and the arrays of the caches it analysed (``{lang}_{name}_{last|mean}``)."""

    def __init__(self, model, config):
        prompts = prepare(model, config)
        caches = extract_caches(model, config, prompts)
        self.data = analyse(model, config, prompts, caches).data
        self.arrays = {}
        for reduce in ("last", "mean"):
            for lang, cache in split_languages(caches[reduce], prompts.langs).items():
                for hook, value in cache.cache_dict.items():
                    self.arrays[f"{lang}_{NAMES[hook]}_{reduce}"] = value[:, 0].numpy()


@pytest.fixture(scope="module")
def ln_run(ln_model):
    config = EmbeddingConfig(n_pairs=20, n_boot=0, n_token_problems=5)
    run = Run(ln_model, config)
    assert run.data == run_embedding(ln_model, config).data
    return run


def test_seed_fields_equal_the_seed_formulas(ln_run):
    data, arrays = ln_run.data, ln_run.arrays
    assert SEED_KEYS <= set(data)
    zh, en = arrays["zh_embed_last"], arrays["en_embed_last"]
    assert data["z_raw_embed_last_token"] == pytest.approx(seed_z(zh, en)[0], abs=1e-4)
    assert data["z_raw_embed_mean_no_bos"] == pytest.approx(seed_z(arrays["zh_embed_mean"], arrays["en_embed_mean"])[0],
                                                            abs=1e-4)
    l0 = seed_z(arrays["zh_l0_output_last"], arrays["en_l0_output_last"])[0]
    assert data["z_l0_output_last_token"] == pytest.approx(l0, abs=1e-4)
    assert data["delta_l0_minus_embed"] == pytest.approx(l0 - data["z_raw_embed_last_token"], abs=1e-4)
    # the seed's PCA block, verbatim in method
    combined = np.vstack([zh, en]).astype(np.float64)
    pca = PCA(n_components=10).fit(combined / np.linalg.norm(combined, axis=1, keepdims=True))
    zp = pca.transform(zh / np.linalg.norm(zh, axis=1, keepdims=True))
    ep = pca.transform(en / np.linalg.norm(en, axis=1, keepdims=True))
    d = (zp[:, 0].mean() - ep[:, 0].mean()) / np.sqrt((zp[:, 0].std() ** 2 + ep[:, 0].std() ** 2) / 2)
    assert data["embedding_cohen_d_pc0"] == pytest.approx(d, rel=1e-4)
    k = len(data["embedding_pca_varexp"])  # components above numerical rank only
    np.testing.assert_allclose(data["embedding_pca_varexp"], pca.explained_variance_ratio_[:k], atol=1e-5)
    assert 1 <= k and pca.explained_variance_ratio_[k:].max(initial=0.0) < 1e-12


def test_position_embedding_variant(ln_run, ln_model):
    data, arrays = ln_run.data, ln_run.arrays
    assert data["has_pos_embed"] and data["embed_pos_equals_resid_pre_max_abs_error"] < 1e-5
    zh = arrays["zh_embed_last"] + arrays["zh_pos_embed_last"]
    en = arrays["en_embed_last"] + arrays["en_pos_embed_last"]
    np.testing.assert_allclose(zh, arrays["zh_l0_input_last"], atol=1e-5)
    assert data["z_embed_pos_last_token"] == pytest.approx(seed_z(zh, en)[0], abs=1e-4)
    assert set(data["variants"]) == {"embed", "embed_pos"}


def test_mean_without_bos_equals_per_prompt_cache(ln_run, ln_model):
    """Mean over real tokens, BOS (position 0) excluded because it was prepended."""
    from interp_tl.prompts import generate_problems

    problems = generate_problems(20)
    for i in (0, 7):
        ids = [256] + list(ln_model.tokenizer(problems[i].prompts["zh"], add_special_tokens=False)["input_ids"])
        _, cache = ln_model.run_with_cache(torch.tensor([ids]), names_filter="hook_embed")
        want = cache["hook_embed"][0, 1:].mean(0).numpy()
        np.testing.assert_allclose(ln_run.arrays["zh_embed_mean"][i], want, atol=1e-6)


def test_token_diagnostics(ln_run):
    raw, pos = ln_run.data["token_diagnostics"]["embed"], ln_run.data["token_diagnostics"]["embed_pos"]
    assert raw["shared_token_count"] > 0 and raw["shared_token_mean_cos"] == pytest.approx(1.0, abs=1e-6)
    assert raw["digit_token_mean_cos"] == pytest.approx(1.0, abs=1e-6)  # same digits in both languages, no context in hook_embed
    assert raw["bos_cos"] == pytest.approx(1.0, abs=1e-6)
    assert pos["shared_token_mean_cos"] < 0.99  # the same token at different positions differs once pos is added
    assert raw["letter_token_counts"][0] > 0 and raw["letter_token_counts"][1] > 0
    from interp_tl.prompts import generate_problems

    first = generate_problems(20)[0]
    assert ln_run.data["last_tokens"][0] == [first.prompts["zh"][-1], first.prompts["en"][-1]]


def test_rotary_model_has_no_position_variant(rms_model):
    result = run_embedding(rms_model, EmbeddingConfig(n_pairs=10, n_boot=0, n_token_problems=3, langs=("ko", "sw")))
    data = result.data
    assert not data["has_pos_embed"] and set(data["variants"]) == {"embed"}
    assert data["token_diagnostics"]["embed"]["bos_cos"] is None  # no BOS prepended
    assert data["embed_pos_equals_resid_pre_max_abs_error"] < 1e-6  # resid_pre of block 0 is the token embedding
    assert result.provenance["prompts"]["prepend_bos"] is False
