"""Weight edits (interp_tl.edits) against the same projection applied by a hook, under weight processing.

Reference for every weight edit: the unedited model with ``act @ P`` on ``blocks.L.hook_mlp_out``.
Models: an LN/absolute config and an RMSNorm/rotary/gated/GQA config (randomized norms and
biases), each with processing none / fold_ln / default; and the trained polyglot-toy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp_tl.cache import extract
from interp_tl.edits import (
    Basis,
    basis_for,
    load_edited_model,
    project_mlp_writes_,
    projected_mlp_writes,
    projection_hooks,
    residual_basis,
)
from interp_tl.errors import BadInputError, LayerRangeError
from interp_tl.models import POLYGLOT_MODEL, load_model, model_provenance, process_weights
from interp_tl.prompts import generate_problems, languages
from interp_tl.stats import language_subspace
from interp_tl.tokens import tokenize

PROBLEMS = generate_problems(10, seed=3)
TEXTS = [p.prompts[lang] for p in PROBLEMS[:3] for lang in ("zh", "en", "ar")]
LN, RMS = "ln", "rms"


@pytest.fixture
def _model(make_model):
    def build(kind: str, processing: str):
        model = make_model(kind, seed=11 if kind == "ln" else 12)
        process_weights(model, processing)
        return model

    return build


def _random_basis(d: int, k: int, seed: int, residual: str = "raw") -> Basis:
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, k)))[0]
    return Basis(q, residual)


def _logits(model, tokens, hooks=()):
    with torch.inference_mode(), model.hooks(fwd_hooks=list(hooks)):
        return model(tokens).log_softmax(-1)


def _tokens(model):
    return model.to_tokens(TEXTS, padding_side="right")


# The edit equals the hook


@pytest.mark.parametrize("kind", [LN, RMS])
@pytest.mark.parametrize("processing", ["none", "fold_ln", "default"])
def test_weight_edit_equals_projection_hook(_model, kind, processing):
    model = _model(kind, processing)
    tokens = _tokens(model)
    bases = {0: _random_basis(64, 3, 0, residual_basis(model)), 2: _random_basis(64, 5, 1, residual_basis(model))}
    reference = _logits(model, tokens, projection_hooks(model, [0, 2], bases, alpha=0.7))
    plain = _logits(model, tokens)
    with projected_mlp_writes(model, [0, 2], bases, alpha=0.7):
        edited = _logits(model, tokens)
    torch.testing.assert_close(edited, reference, rtol=0, atol=2e-5)
    assert (edited - plain).abs().max() > 1e-2  # the edit does something


def test_residual_basis_is_read_from_the_weights(_model):
    assert residual_basis(_model(LN, "none")) == residual_basis(_model(LN, "fold_ln")) == "raw"
    assert residual_basis(_model(LN, "default")) == "centred"
    assert residual_basis(_model(RMS, "default")) == "raw"  # TransformerLens never centres RMS models


# Bases across weight processing


@pytest.fixture(scope="module")
def polyglot_pair():
    return load_model(POLYGLOT_MODEL, processing="none"), load_model(POLYGLOT_MODEL, processing="default")


def _fitted_basis(model, layer: int, k: int = 4) -> Basis:
    hook = f"blocks.{layer}.hook_resid_post"
    acts = np.stack([extract(model, tokenize(model, [p.prompts[lang] for p in PROBLEMS]), [hook])[hook][:, 0].numpy()
                     for lang in languages()], axis=1)
    return Basis(language_subspace(acts, k=k).axes, residual_basis(model))


def test_basis_fitted_on_the_processed_model_is_the_same_function_unprocessed(polyglot_pair):
    raw, centred = polyglot_pair
    basis = _fitted_basis(centred, 1)
    assert basis.residual_basis == "centred"
    assert np.abs(basis.axes.sum(0)).max() < 1e-5  # centred axes are orthogonal to the all-ones direction
    tokens = _tokens(raw)
    with projected_mlp_writes(centred, [1, 2], basis):
        on_centred = _logits(centred, tokens)
    with projected_mlp_writes(raw, [1, 2], basis) as notes:
        on_raw = _logits(raw, tokens)
    assert "used as is" in notes[1]
    torch.testing.assert_close(on_raw, on_centred, rtol=0, atol=1e-4)
    assert (on_raw - _logits(raw, tokens)).abs().max() > 1e-2


def test_raw_basis_is_mapped_for_a_centred_model_and_says_so(polyglot_pair):
    raw, centred = polyglot_pair
    basis = _fitted_basis(raw, 1)
    assert basis.residual_basis == "raw" and np.abs(basis.axes.sum(0)).max() > 1e-2
    axes, note = basis_for(centred, basis)
    assert "orth((I - 11^T/d) U)" in note
    np.testing.assert_allclose(axes.T @ axes, np.eye(axes.shape[1]), atol=1e-10)
    assert np.abs(axes.sum(0)).max() < 1e-8
    # the mapped edit on the centred model = the centred basis's edit on the raw model
    tokens = _tokens(raw)
    with projected_mlp_writes(centred, [1], basis):
        mapped = _logits(centred, tokens)
    with projected_mlp_writes(raw, [1], Basis(axes, "centred")):
        on_raw = _logits(raw, tokens)
    torch.testing.assert_close(mapped, on_raw, rtol=0, atol=1e-4)
    # and it is not the raw edit: the reason load_edited_model exists
    with projected_mlp_writes(raw, [1], basis):
        raw_edit = _logits(raw, tokens)
    assert (raw_edit - mapped).abs().max() > 1e-3


def test_edit_then_process_is_the_raw_edit_exactly(polyglot_pair):
    raw, _ = polyglot_pair
    basis = _fitted_basis(raw, 2)
    tokens = _tokens(raw)
    reference = _logits(raw, tokens, projection_hooks(raw, [2, 3], basis, alpha=0.5))
    edited = load_edited_model(POLYGLOT_MODEL, "default", [2, 3], basis, alpha=0.5)
    assert residual_basis(edited) == "centred"
    prov = model_provenance(edited)
    assert prov["processing"] == "default" and prov["edit"]["layers"] == [2, 3] and prov["edit"]["alpha"] == 0.5
    torch.testing.assert_close(_logits(edited, tokens), reference, rtol=0, atol=1e-4)


# Restoring


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_restore_is_bit_exact_also_after_an_exception(_model):
    model = _model(LN, "default")
    before = _state(model)
    basis = _random_basis(64, 4, 2, "centred")
    with projected_mlp_writes(model, [1], basis, alpha=0.3):
        assert not torch.equal(model.blocks[1].mlp.W_out, before["blocks.1.mlp.W_out"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), projected_mlp_writes(model, [0, 1, 2], basis):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_in_place_edit_is_idempotent_at_full_strength(_model):
    model = _model(RMS, "none")
    basis = _random_basis(64, 3, 4)
    project_mlp_writes_(model, [1], basis)
    once = model.blocks[1].mlp.W_out.detach().clone()
    project_mlp_writes_(model, [1], basis)
    torch.testing.assert_close(model.blocks[1].mlp.W_out, once, rtol=0, atol=1e-6)
    assert np.abs(once.numpy() @ basis.axes).max() < 1e-5


# Bad input


@pytest.mark.wrong_types
def test_bad_bases_and_options(ln_model):
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 3)))[0]
    with pytest.raises(BadInputError, match="not orthonormal"):
        Basis(q * 1.1, "raw")
    with pytest.raises(BadInputError, match="must be below d_model"):
        Basis(np.eye(4), "raw")
    with pytest.raises(BadInputError, match="raw or centred"):
        Basis(q, "whitened")
    with pytest.raises(BadInputError, match="alpha must be in"):
        project_mlp_writes_(ln_model, [0], Basis(q, "raw"), alpha=1.5)
    with pytest.raises(LayerRangeError, match="out of range"):
        project_mlp_writes_(ln_model, [3], Basis(q, "raw"))
    with pytest.raises(BadInputError, match="d_model 32, the model 64"):
        project_mlp_writes_(ln_model, [0], _random_basis(32, 2, 0))
    with pytest.raises(BadInputError, match="no basis for layer 1"):
        project_mlp_writes_(ln_model, [0, 1], {0: Basis(q, "raw")})
