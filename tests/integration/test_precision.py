"""Reduced precision: with a bfloat16 / float16 model every statistic is still computed in float32/64.

The model's own forward (and backward) runs in its dtype; what interp_tl computes from it
(reductions, log-softmax, softmax backward, z-scores) is upcast first. The bounds below are how far
the numbers move from a float32 run of the same weights, measured on this CPU.
"""

import numpy as np
import pytest
import torch
from hub_fixtures import QWEN2, QWEN3, half_precision_works

from interp_tl.cache import extract, fused_gelu, layer_hook_names
from interp_tl.models import POLYGLOT_MODEL, load_model, model_provenance
from interp_tl.prompts import generate_problems
from interp_tl.tokens import tokenize

#: Largest |z(bfloat16) - z(float32)| over layers and z_pre / z_post_attn / z_post_mlp at the
#: alignment's default n_pairs=200 (seed 42, default permutations). Measured (CPU, torch 2.13):
#: polyglot-toy 0.030, the random Qwen2 fixture 0.092, the Qwen3 fixture 0.063 (|z| up to 33).
BF16_Z_BOUND = 0.15
#: The same for float16 (10 mantissa bits against bfloat16's 7): measured 0.0075, 0.0055, 0.0093.
FP16_Z_BOUND = 0.02
Z_KEYS = ("z_pre", "z_post_attn", "z_post_mlp")


def _z(model) -> np.ndarray:
    from interp_tl.studies import AlignmentConfig, run_alignment

    rows = run_alignment(model, AlignmentConfig(n_pairs=200, n_boot=0, head_shares=False)).data["layer_results"]
    return np.array([[row[k] for k in Z_KEYS] for row in rows], dtype=float)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "bound"), [("bfloat16", BF16_Z_BOUND), ("float16", FP16_Z_BOUND)])
@pytest.mark.parametrize("name", [POLYGLOT_MODEL, QWEN2, QWEN3])
def test_alignment_z_in_half_precision_stays_within_the_bound(request, name, dtype, bound):
    if not half_precision_works(dtype):
        pytest.skip(f"{dtype} matmul does not run on this CPU")
    if name != POLYGLOT_MODEL:
        request.getfixturevalue("offline_hub")
    full = _z(load_model(name))
    half_model = load_model(name, dtype=dtype)
    assert model_provenance(half_model)["dtype"] == dtype
    moved = float(np.abs(_z(half_model) - full).max())
    print(f"{name} {dtype}: max |dz| = {moved:.4f} (|z| up to {np.abs(full).max():.1f})")
    assert 0 < moved < bound  # > 0: the run really was in half precision


@pytest.fixture(scope="module")
def bf16_model():
    return load_model(POLYGLOT_MODEL, dtype="bfloat16")


def _texts(n=10):
    return [p.prompts[lang] for p in generate_problems(n, seed=9) for lang in ("en", "zh")]


def test_extracted_activations_are_float32(bf16_model):
    tokens = tokenize(bf16_model, _texts(5))
    for reduce in ("last", "mean", "all"):
        got = extract(bf16_model, tokens, ["hook_embed", "blocks.1.hook_resid_post"], batch_size=3, reduce=reduce)
        assert all(v.dtype == torch.float32 for v in got.cache_dict.values())


def test_mean_over_tokens_is_taken_in_float32(bf16_model):
    """The batched mean of bfloat16 activations equals the float64 mean of the same values per prompt."""
    tokens = tokenize(bf16_model, _texts())
    hooks = layer_hook_names(bf16_model, ["hook_resid_post"])
    mean = extract(bf16_model, tokens, hooks, batch_size=4, reduce="mean")
    every = extract(bf16_model, tokens, hooks, batch_size=4, reduce="all")
    skip = 1 if tokens.prepend_bos else 0
    worst = 0.0
    for hook in hooks:
        width = every[hook].shape[1]
        per_prompt = [every[hook][i, width - n:].numpy() for i, n in enumerate(tokens.lengths)]
        want = np.stack([x[skip:].astype(np.float64).mean(0) for x in per_prompt])
        got = mean[hook][:, 0].numpy()
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    assert worst < 1e-5, worst  # a bfloat16 mean is off by ~4e-3 (8 bits)


def test_answer_losses_use_a_float32_log_softmax(bf16_model):
    from interp_tl.generation import answer_text, answer_token_losses

    problems = generate_problems(5, seed=4)
    tokens = tokenize(bf16_model, [p.prompts["en"] for p in problems])
    answers = [answer_text(p.answer, "en") for p in problems]
    got = answer_token_losses(bf16_model, tokens, answers, batch_size=1)  # no padding: the same forward as below
    tok = bf16_model.tokenizer
    for ids, answer, loss in zip(tokens.ids, answers, got):
        target = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        full = torch.tensor([ids + target])
        with torch.no_grad(), fused_gelu(bf16_model):  # the same forward as the library's
            logp = bf16_model(full, attention_mask=torch.ones_like(full))[0].double().log_softmax(-1)
        want = -logp[len(ids) - 1:-1].gather(-1, torch.tensor(target)[:, None])[:, 0].numpy()
        assert loss.dtype == np.float64 and np.abs(loss - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def test_softmax_backward_statistics_in_float(bf16_model):
    """r_diag of the Jacobian study on a bfloat16 model equals the float64 formula on its own pattern gradients."""
    from interp_tl.analyses.jacobian import loss_mask, pattern_gradients
    from interp_tl.batching import batches
    from interp_tl.studies import JacobianConfig, run_jacobian
    from interp_tl.studies.jacobian import sequences

    config = JacobianConfig(n_problems=5, langs=("en", "zh"), batch_size=64, weight_gradients=False)
    result = run_jacobian(bf16_model, config).data
    got = np.array(result["layers"]["r_diag"])
    tokens, lengths, _ = sequences(bf16_model, config)
    (batch,) = batches(bf16_model, tokens, batch_size=64)
    real = batch.attention_mask.bool()
    width = real.shape[1]
    cache, _ = pattern_gradients(bf16_model, batch, loss_mask(batch, lengths if result["loss_tokens"] == "answer"
                                                                   else None))
    valid = (real[:, None, :, None] & real[:, None, None, :] & torch.ones(width, width).tril().bool()).double()
    patterns = {layer: (cache[f"blocks.{layer}.attn.hook_pattern"], cache[f"blocks.{layer}.attn.hook_pattern_grad"])
                for layer in range(bf16_model.cfg.n_layers)}
    for layer, (a, g) in patterns.items():
        assert a.dtype == torch.bfloat16
        a, g = a.double(), g.double()
        full = a * (g - (a * g).sum(-1, keepdim=True)) * valid
        diag = a * (1 - a) * g * valid
        want = (diag.pow(2).sum((0, 2, 3)) / full.pow(2).sum((0, 2, 3))).numpy()
        assert np.abs(got[layer] - want).max() < 1e-5 * np.abs(want).max(), (layer, got[layer], want)
