"""Goldens on real models: the pinned numbers are the studies' numbers, recording, refusals, tolerance vs noise."""

import json

import pytest
import torch

from interp_tl import goldens
from interp_tl.errors import BadInputError
from interp_tl.studies import AlignmentConfig, EmbeddingConfig, run_alignment, run_embedding

SMALL = goldens.GoldenSettings(n_pairs=10, n_perms=50)


@pytest.fixture(scope="module")
def toy_goldens(toy_model):
    return goldens.document(toy_model, "interp-tl/toy-random", "none", SMALL)


def test_pinned_numbers_are_the_studies_numbers(toy_model, toy_goldens):
    """One pass of goldens.compute against the two studies run on their own (prepare/extract/analyse)."""
    config = dict(n_pairs=10, n_perms=50, n_boot=0)
    rows = run_alignment(toy_model, AlignmentConfig(**config, head_shares=False)).data["layer_results"]
    variants = run_embedding(toy_model, EmbeddingConfig(**config)).data["variants"]
    for key, (stage, field) in goldens.ALIGNMENT_STATISTICS.items():
        assert toy_goldens["alignment"][key] == pytest.approx([r["stats"][stage][field] for r in rows], abs=1e-9)
    for key, (variant, reduction, field) in goldens.EMBEDDING_STATISTICS.items():
        assert toy_goldens["embedding"][key] == pytest.approx(variants[variant][reduction][field], abs=1e-9)
    assert toy_goldens["layers"] == [0, 1, 2, 3] and toy_goldens["settings"]["prepend_bos"] is True


def test_pinned_numbers_obey_the_residual_identities(toy_goldens):
    """resid_pre of layer L+1 is resid_post of layer L; resid_pre of layer 0 is embed + pos_embed."""
    for kind in ("z", "z_exact"):
        pre, post = toy_goldens["alignment"][f"{kind}_pre"], toy_goldens["alignment"][f"{kind}_post_mlp"]
        assert pre[1:] == pytest.approx(post[:-1], abs=1e-4)
        assert toy_goldens["embedding"][f"{kind}_embed_pos_last_token"] == pytest.approx(pre[0], abs=1e-6)


def test_same_seed_same_bytes(toy_model, toy_goldens):
    from interp_tl.results import json_bytes

    again = goldens.document(toy_model, "interp-tl/toy-random", "none", SMALL)
    assert json_bytes(again) == json_bytes(toy_goldens)


def test_default_tolerance_covers_batching_noise(polyglot_model, monkeypatch):
    """Other batches (other left padding) move z by float32 noise only: far inside the default tolerance."""
    recorded = goldens.compute(polyglot_model)
    monkeypatch.setattr(goldens, "BATCH_SIZE", 7)
    rows = goldens.compare(recorded, goldens.compute(polyglot_model))
    worst = max(abs(r.difference) for r in rows)
    assert all(r.ok for r in rows) and 0 < worst < goldens.DEFAULT_ATOL / 10


def test_record_then_compare_and_refuse_untrained(toy_model, ln_model, tmp_path):
    path = tmp_path / "toy.json"
    written = goldens.record(toy_model, "interp-tl/toy-random", path, SMALL)
    loaded = goldens.load(path)
    assert loaded == json.loads(json.dumps(written))
    assert goldens.check_compatible(loaded, goldens.header(toy_model, "x", "none", SMALL)) is None
    assert all(r.ok for r in goldens.compare(loaded, goldens.compute(toy_model, SMALL.resolved(toy_model))))
    # a model built by the caller is judged by its loss, whatever its name; the embedded ones are not
    assert goldens.lm_loss(ln_model) > goldens.max_trained_loss(ln_model.cfg.d_vocab)
    with pytest.raises(BadInputError, match="refusing to record goldens of 'interp-tl/x': loss .*untrained weights"):
        goldens.record(ln_model, "interp-tl/x", tmp_path / "ln.json", SMALL)
    assert not (tmp_path / "ln.json").exists()
    goldens.record(ln_model, "interp-tl/x", tmp_path / "ln.json", SMALL, allow_untrained=True)
    assert goldens.lm_loss(toy_model) > goldens.max_trained_loss(toy_model.cfg.d_vocab)  # exempt, not trained


def test_an_edited_weight_is_compared_a_fresh_draw_refused(polyglot_model):
    from transformer_lens import HookedTransformer

    from interp_tl.errors import ProvenanceMismatchError
    from interp_tl.models import quiet_tl_deprecation

    recorded = goldens.header(polyglot_model, "interp-tl/polyglot-toy", "none")
    with quiet_tl_deprecation():
        edited, fresh = HookedTransformer(polyglot_model.cfg), HookedTransformer(polyglot_model.cfg)
    edited.load_state_dict(polyglot_model.state_dict())
    edited.set_tokenizer(polyglot_model.tokenizer)
    with torch.no_grad():
        edited.blocks[1].attn.W_V[0, 0, 0] += 1.0
    note = goldens.check_compatible(recorded, goldens.header(edited, "interp-tl/polyglot-toy", "none"))
    assert note is not None and "median 0.0% of their size" in note
    fresh.set_tokenizer(polyglot_model.tokenizer)
    with pytest.raises(ProvenanceMismatchError, match="other weights"):
        goldens.check_compatible(recorded, goldens.header(fresh, "interp-tl/polyglot-toy", "none"))
