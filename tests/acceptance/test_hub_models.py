"""The research scripts' models by name, offline: ``Qwen/Qwen2.5-3B``, ``Qwen/Qwen3-4B`` and ``gpt2``.

The cache is built once per session by :mod:`hub_fixtures` (fixtures ``hub_home`` and ``offline_hub``
in conftest.py: real architecture classes, shrunk, random seeded weights, a BPE trained on the problem
templates; seconds). Each test points huggingface_hub at it with ``monkeypatch`` (undone after the
test) and loads by name through
TransformerLens' real ``from_pretrained``. Random weights: these tests check the loading path
and that every study runs end to end, never the real models' numbers.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import strict_json
import torch
from hub_fixtures import GPT2, QWEN2, QWEN3, half_precision_works, offline_env, point_hub, snapshot_path

from interp_tl import models
from interp_tl.cli import main

QWENS = [QWEN2, QWEN3]
ARCHITECTURE = {QWEN2: "Qwen2ForCausalLM", QWEN3: "Qwen3ForCausalLM", GPT2: "GPT2LMHeadModel"}
FAST = ["--n-pairs", "5", "--n-boot", "0", "--n-perms", "20", "--quiet"]
STUDY_ARGS = {
    "alignment": FAST,
    "embedding": [*FAST, "--n-token-problems", "5"],
    "surgery": ["--quiet", "--n-pairs", "10", "--k", "2", "--eval-per-category", "1", "--max-new-tokens", "4",
                "--sweep-k", "1", "--sweep-alpha", "1", "--loss-n", "5", "--langs", "zh", "en"],
    "layers": ["--quiet", "--layers", "1-2"],
    "jacobian": ["--quiet", "--n-problems", "5", "--langs", "zh", "en"],
    "heads": ["--n-pairs", "5", "--n-perms", "20", "--quiet", "--top", "1"],  # no bootstrap in the heads study
    "lens": ["--quiet", "--n-pairs", "10", "--langs", "zh", "en", "--n-boot", "50", "--max-new-tokens", "6"],
    "head": ["1.0", "--n-pairs", "5", "--n-perms", "20", "--quiet"],
}
#: |TransformerLens - Hugging Face| on logits (scale ~1) and relative on hidden states: measured <= 9.7e-7 (float32).
LOGIT_TOL = 1e-5
#: TransformerLens' processing presets on RMSNorm models leave the residual stream as it is (nothing to centre):
#: the alignment z of the three presets agree to float rounding (measured <= 5e-7).
PRESET_Z_TOL = 1e-5


def _texts():
    from interp_tl.prompts import generate_problems

    return [p.prompts[lang] for p in generate_problems(5, seed=3) for lang in ("zh", "en", "ar")]


def test_the_patch_is_undone(hub_home):
    from huggingface_hub import constants

    before = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE, os.environ.get("HF_HOME")
    with pytest.MonkeyPatch.context() as mp:
        point_hub(mp, hub_home)
        assert constants.HF_HUB_CACHE == str(hub_home / "hub") and constants.HF_HUB_OFFLINE
        assert all(models.weights_cached(repo) for repo in (QWEN2, QWEN3, GPT2, "openai-community/gpt2"))
    assert (constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE, os.environ.get("HF_HOME")) == before


def test_fixture_tokenizer_is_qwen_like(hub_home):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(snapshot_path(hub_home, QWEN2))
    text = _texts()[0]
    assert tok(text)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]  # no BOS by default
    assert tok.bos_token is None and tok.eos_token == "<|endoftext|>" and tok.decode(tok(text)["input_ids"]) == text
    assert len(tok("12345")["input_ids"]) == 5  # Qwen's tokenizer: one token per digit


@pytest.mark.parametrize("name", [QWEN2, QWEN3, GPT2, "qwen2.5-3b", "gpt2-small"])
def test_loads_by_name_with_its_architecture(offline_hub, name):
    official = {"qwen2.5-3b": QWEN2, "gpt2-small": GPT2}.get(name, name)
    model = models.load_model(name)
    prov = models.model_provenance(model)
    assert prov["name"] == name and prov["architecture"] == ARCHITECTURE[official]
    assert (prov["n_layers"], prov["d_model"], prov["n_heads"], prov["d_vocab"], prov["n_devices"]) == (4, 128, 4, 600, 1)
    assert prov["default_prepend_bos"] is (official == GPT2)  # Qwen: no BOS, as the research scripts read it
    if official != GPT2:
        assert model.cfg.n_key_value_heads == 2 and model.cfg.normalization_type == "RMS"
        assert bool(model.blocks[0].attn.b_Q.abs().max() > 0) is (official == QWEN2)  # Qwen2's q/k/v biases
        assert model.cfg.use_qk_norm is (official == QWEN3) and (model.blocks[0].attn.q_norm is None) is (official == QWEN2)


@pytest.mark.parametrize("processing", list(models.PROCESSING))
@pytest.mark.parametrize("name", [QWEN2, QWEN3, GPT2])
def test_logits_and_hidden_states_equal_hugging_face(offline_hub, name, processing):
    """TransformerLens (batched, left-padded) vs AutoModelForCausalLM (one prompt at a time) on the same files.

    ``default`` centres the unembedding, which shifts every logit of a position by one constant:
    log-softmax is compared then. Residual stream (last token, every layer): fold_ln leaves it as it
    is; ``default`` centres GPT-2's (LayerNorm: ``x - mean(x)``) and leaves RMSNorm models' alone.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp_tl.cache import extract, layer_hook_names
    from interp_tl.tokens import tokenize

    model = models.load_model(name, processing=processing)
    hf = AutoModelForCausalLM.from_pretrained(snapshot_path(offline_hub, name), dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(snapshot_path(offline_hub, name))
    texts = _texts()
    tokens = tokenize(model, texts, prepend_bos=None)
    bos = [hf_tok.bos_token_id] if model.cfg.default_prepend_bos else []
    assert tokens.ids == [bos + hf_tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    hooks = layer_hook_names(model, ["hook_resid_pre"])
    got = extract(model, tokens, hooks, batch_size=4)
    worst_logit, worst_state = 0.0, 0.0
    for i, ids in enumerate(tokens.ids):
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
            ours = model(torch.tensor([ids]))
        a, b = ours[0].double(), out.logits[0].double()
        if processing == "default":
            a, b = a.log_softmax(-1), b.log_softmax(-1)
        worst_logit = max(worst_logit, float((a - b).abs().max()))
        assert float(b.std()) > 0.05  # logits that could disagree
        for layer, hook in enumerate(hooks):
            want = out.hidden_states[layer][0, -1].double().numpy()
            if processing == "default" and name == GPT2:
                want = want - want.mean()
            worst_state = max(worst_state, float(np.abs(got[hook][i, 0].numpy() - want).max() / np.abs(want).max()))
    print(f"{name} {processing}: max |logit diff| {worst_logit:.1e}, hidden states rel {worst_state:.1e}")
    assert worst_logit < LOGIT_TOL and worst_state < LOGIT_TOL, (worst_logit, worst_state)


def _prov_model(out_dir):
    data = strict_json.read(next(p for p in sorted(out_dir.glob("*.json")) if p.name != "index.json"))
    return data.get("provenance", {}).get("model"), data


@pytest.mark.slow
@pytest.mark.parametrize("study", list(STUDY_ARGS))
@pytest.mark.parametrize("name", QWENS)
def test_every_study_runs_by_name(offline_hub, tmp_path, capsys, name, study):
    out = tmp_path / "out"
    assert main([study, *STUDY_ARGS[study], "--model", name, "--out", str(out)]) == 0, capsys.readouterr().err
    prov, data = _prov_model(out)
    if study == "head":
        assert data["head"] == "L1H0" and set(data) >= {"share", "ablation", "attention", "jacobian", "neighbours"}
        return
    assert prov["name"] == name and prov["architecture"] == ARCHITECTURE[name] and prov["processing"] == "none"
    assert prov["default_prepend_bos"] is False and prov["n_devices"] == 1
    if study not in ("layers", "jacobian"):
        assert data["provenance"]["prompts"]["prepend_bos"] is False


@pytest.mark.parametrize("name", [*QWENS, GPT2])
def test_lens_at_the_last_layer_is_the_models_log_probs(offline_hub, name):
    """The logit lens on the real architectures (RMSNorm + q/k norms, LayerNorm): final_post = the model's output."""
    from interp_tl.analyses.lens import lens_hook_names, lens_logits
    from interp_tl.cache import extract
    from interp_tl.tokens import tokenize

    model = models.load_model(name)
    tokens = tokenize(model, _texts())
    cache = extract(model, tokens, lens_hook_names(model), batch_size=4)
    lens = lens_logits(cache)[-1].double().log_softmax(-1)
    for i, ids in enumerate(tokens.ids):
        with torch.no_grad():
            want = model(torch.tensor([ids]))[0, -1].double().log_softmax(-1)
        assert float((lens[i] - want).abs().max()) < LOGIT_TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", [*QWENS, GPT2])
def test_the_lens_study_runs_by_name(offline_hub, tmp_path, name):
    out = tmp_path / "out"
    assert main(["lens", *STUDY_ARGS["lens"], "--model", name, "--out", str(out)]) == 0
    data = strict_json.read(out / "lens.json")
    assert data["provenance"]["model"]["name"] == name and data["lens"]["layers"][-1] == "final_post"
    assert data["patching"]["trials"]["n"] >= 2 and [r["layer"] for r in
                                                     data["patching"]["conditions"]["cross_language"]["layers"]] == [
        0, 1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dtype"), [(name, dtype) for name in QWENS for dtype in ("float32", "bfloat16",
                                                                                          "float16")]
                         + [(GPT2, "float32")])
def test_all_runs_by_name(offline_hub, tmp_path, monkeypatch, name, dtype):
    """``all`` with the surgery's generation budget shrunk by its prefixed flags (a random-weight model never
    says EOS, so the seed's 128 new tokens x 7 languages x sweep take minutes). In bfloat16 and float16 too:
    every path turns half-precision tensors into float32/64 before numpy."""
    from interp_tl.studies import STUDIES

    if dtype != "float32" and not half_precision_works(dtype):
        pytest.skip(f"{dtype} does not run on this CPU")
    short = ["--surgery.k", "2", "--surgery.langs", "zh", "en", "--surgery.eval-per-category", "1",
             "--surgery.max-new-tokens", "4", "--surgery.sweep-k", "1", "--surgery.sweep-alpha", "1",
             "--surgery.loss-n", "5", "--jacobian.n-problems", "5", "--jacobian.langs", "zh", "en",
             "--lens.n-pairs", "10", "--lens.langs", "zh", "en", "--lens.max-new-tokens", "6"]
    out = tmp_path / "all"
    assert main(["all", *FAST, *short, "--model", name, "--dtype", dtype, "--out", str(out)]) == 0
    index = strict_json.read(out / "index.json")
    assert [s["study"] for s in index["studies"]] == list(STUDIES)
    for study in STUDIES:
        prov = strict_json.read(out / f"{study}.json")["provenance"]["model"]
        assert prov["name"] == name and prov["architecture"] == ARCHITECTURE[name] and prov["dtype"] == dtype


def _alignment_z(out_dir) -> np.ndarray:
    rows = strict_json.read(out_dir / "alignment.json")["layer_results"]
    return np.array([[r[k] for k in ("z_pre", "z_post_attn", "z_post_mlp")] for r in rows], dtype=float)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*QWENS, GPT2])
def test_alignment_under_each_processing(offline_hub, tmp_path, name):
    """RMSNorm (Qwen): none, fold_ln and default leave the residual stream alone, so z agrees; LayerNorm
    (GPT-2): default centres every residual write, which moves z (measured max |dz| 0.016 at n=5 here)."""
    z = {}
    for processing in models.PROCESSING:
        out = tmp_path / processing
        assert main(["alignment", *FAST, "--no-head-shares", "--model", name, "--processing", processing,
                     "--out", str(out)]) == 0
        assert strict_json.read(out / "alignment.json")["provenance"]["model"]["processing"] == processing
        z[processing] = _alignment_z(out)
    assert np.abs(z["fold_ln"] - z["none"]).max() < PRESET_Z_TOL
    moved = float(np.abs(z["default"] - z["none"]).max())
    print(f"{name}: max |z(fold_ln) - z(none)| = {np.abs(z['fold_ln'] - z['none']).max():.2e}, default moved {moved:.2e}")
    if name == GPT2:
        assert moved > 100 * PRESET_Z_TOL, moved
    else:
        assert moved < PRESET_Z_TOL, moved


@pytest.mark.slow
def test_console_script_reads_hf_home_and_offline_from_the_environment(hub_home, tmp_path):
    """The real path: a fresh process whose environment (not a patch) names the cache."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "interp_tl.cli", "alignment", *FAST, "--layers", "0-1",
                           "--no-head-shares", "--model", QWEN3, "--out", str(out)], env=offline_env(hub_home),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prov = strict_json.read(out / "alignment.json")["provenance"]["model"]
    assert prov["name"] == QWEN3 and prov["architecture"] == "Qwen3ForCausalLM"
