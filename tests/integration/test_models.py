"""Loader: processing presets, provenance, fingerprints, refusals, and the GPT-2 code path offline."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp_tl.errors import BadInputError, ModelNotAvailableError
from interp_tl.models import (
    DEFAULT_MODEL,
    POLYGLOT_MODEL,
    PROCESSING,
    TOY_MODEL,
    load_model,
    model_provenance,
    process_weights,
    quiet_tl_deprecation,
    weights_fingerprint,
)

SHARED_TOOL = Path(__file__).resolve().parents[3] / "shared" / "tools" / "make_offline_gpt2.py"


@pytest.mark.parametrize("processing", list(PROCESSING))
def test_presets_are_recorded(processing):
    model = load_model(processing=processing)
    prov = model_provenance(model)
    assert prov["name"] == DEFAULT_MODEL and prov["processing"] == processing
    assert {k: prov[k] for k in PROCESSING[processing]} == PROCESSING[processing]
    assert prov["normalization_type"] == ("LNPre" if PROCESSING[processing]["fold_ln"] else "LN")


def test_fingerprint_is_stable_and_sees_weight_changes(toy_model):
    again = load_model(TOY_MODEL)
    assert weights_fingerprint(again) == weights_fingerprint(toy_model)
    with torch.no_grad():
        again.blocks[2].mlp.W_out[3, 5] += 1e-3
    assert weights_fingerprint(again) != weights_fingerprint(toy_model)


def test_dtype_and_bad_options():
    assert load_model(dtype="float64").W_E.dtype == torch.float64
    with pytest.raises(BadInputError, match="unknown processing"):
        load_model(processing="fold")
    with pytest.raises(BadInputError, match="unknown dtype"):
        load_model(dtype="int8")
    with pytest.raises(ModelNotAvailableError, match="unknown model"):
        load_model("not-a-model")


def test_fold_ln_refused_for_layernorm_gated_mlp():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=8,
                                  act_fn="silu", normalization_type="LN", gated_mlp=True)
    with quiet_tl_deprecation():
        model = HookedTransformer(cfg)
    with pytest.raises(BadInputError, match="gate bias is dropped"):
        process_weights(model, "fold_ln")


@pytest.mark.slow
def test_gpt2_path_reproduces_raw_hf_hidden_states(tmp_path):
    """On an offline GPT-2-shaped cache (real config and tokenizer, random weights)."""
    if not SHARED_TOOL.exists():
        pytest.skip("../shared/tools/make_offline_gpt2.py is not beside this checkout")
    if shutil.which("npm") is None:
        pytest.skip("npm is needed to build the offline GPT-2 cache")
    hf_home = tmp_path / "hf"
    build = subprocess.run([sys.executable, str(SHARED_TOOL), "--hf-home", str(hf_home)], capture_output=True,
                           text=True, timeout=600)
    if build.returncode != 0:
        pytest.skip(f"could not build the offline GPT-2 cache: {build.stderr.strip().splitlines()[-1:]}")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "gpt2_offline_check.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "\nOK " in "\n" + proc.stdout, proc.stderr[-2000:]


def test_fold_ln_moves_only_unembed_hook_in(polyglot_model):
    """What the README says about fold_ln: every hook keeps its value except unembed.hook_in, which holds
    ln_final's output before its (now folded) weight and bias."""
    import torch

    from interp_tl.batching import batches
    from interp_tl.tokens import parallel_prompts

    folded = load_model(POLYGLOT_MODEL, processing="fold_ln")
    (batch,) = batches(polyglot_model, parallel_prompts(polyglot_model, 10, 42, ("zh", "en")).stacked(), 20)
    real = batch.attention_mask.bool()
    with torch.inference_mode():
        _, raw = polyglot_model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
        _, fold = folded.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
    assert raw.cache_dict.keys() == fold.cache_dict.keys()
    moved = {}
    for name, x in raw.cache_dict.items():
        y = fold[name]
        diff = (x - y).abs()[real] if x.shape[:2] == real.shape else (x - y).abs()
        moved[name] = float(diff.max())
    assert moved.pop("unembed.hook_in") > 0.1
    assert max(moved.values()) < 1e-4 and len(moved) > 50
