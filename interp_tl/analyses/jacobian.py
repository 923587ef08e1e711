"""Attention Jacobian: how much of the softmax backward is diagonal (local) and how much lateral.

For every layer and head, with ``A`` the pattern (``attn.hook_pattern``) and ``g`` the loss gradient
with respect to it (``attn.hook_pattern_grad`` in a cache from ``run_with_cache(..., incl_bwd=True)``,
or :func:`pattern_gradients`):

* full softmax backward ``g_S = A ⊙ (g − ⟨A, g⟩_row)`` (what autograd computes; tested against the
  gradient at ``attn.hook_attn_scores``),
* diagonal only ``A ⊙ (1 − A) ⊙ g`` (a sigmoid-like, element-wise surrogate),
* straight-through ``g``,

and the research script's numbers: ``r_diag = Σ||g_diag||² / Σ||g_S||²``, ``cos_diag`` and
``cos_ste`` (cosine to ``g_S`` per sequence, averaged), mean row entropy, and how peaked the rows
are, ``mean_max_attention`` (mean over real query rows of the row's largest weight: 1 for one-hot
rows, ``1/(q+1)`` for uniform ones). The research script's mean attention (the mean of ``A`` over
the unmasked entries) is not reported: every row sums to 1, so it is (rows) / (unmasked entries)
for every head, a property of the sequence lengths, not of the head. Stratified by row entropy,
by the mass on the first position (the sink) and by query position. Causally masked entries and
padding are excluded everywhere (the research script's ``cos_ste`` counted masked entries, where
``g`` is not zero).

What training would see: :func:`surrogate_gradients` gives the gradient with respect to ``W_Q`` and
``W_K`` of every layer when every softmax backward is replaced by a surrogate (a custom autograd
function returned from a forward hook on ``hook_pattern``).

The loss (:func:`sequence_loss`) is, per sequence, the mean next-token cross-entropy over its
counted tokens (TransformerLens' ``lm_cross_entropy_loss`` with the attention mask), summed over
sequences, so no number depends on how sequences are batched (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from transformer_lens import ActivationCache
from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss

from interp_tl.batching import Batch, batches
from interp_tl.errors import BadInputError
from interp_tl.tokens import Tokenized

ENTROPY_BINS = (0.0, 0.5, 1.0, 2.0, np.inf)
SINK_BINS = (0.0, 0.25, 0.5, 0.75, 1.0001)
POSITION_BINS = (0, 4, 8, 16, 32, 64, 10**9)
TABLES = ("r_diag", "cos_diag", "cos_ste", "mean_max_attention", "row_entropy")


def softmax_backward(pattern: torch.Tensor, grad: torch.Tensor, kind: str = "full") -> torch.Tensor:
    """The gradient with respect to the scores given the pattern and its gradient (last axis = keys).

    ``full``: ``A ⊙ (g − Σ_k A g)``; ``diag``: ``A ⊙ (1 − A) ⊙ g``; ``ste``: ``g`` where ``A > 0``
    (masked entries carry no gradient to scores).
    """
    if kind == "full":
        return pattern * (grad - (pattern * grad).sum(-1, keepdim=True))
    if kind == "diag":
        return pattern * (1 - pattern) * grad
    if kind == "ste":
        return grad * (pattern > 0)
    raise BadInputError(f"unknown softmax backward {kind!r}: full, diag or ste")


class _Surrogate(torch.autograd.Function):
    """Forward: the pattern (value unchanged). Backward: a chosen softmax backward into the scores."""

    @staticmethod
    def forward(ctx, scores, pattern, kind):  # noqa: D102
        ctx.save_for_backward(pattern)
        ctx.kind = kind
        return pattern.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (pattern,) = ctx.saved_tensors
        g = softmax_backward(pattern, grad, ctx.kind)
        return torch.where(torch.isfinite(g), g, torch.zeros_like(g)), None, None


def loss_mask(batch: Batch, answer_lengths: Sequence[int] | None = None) -> Int[torch.Tensor, "batch pos"]:
    """Which tokens' predictions count: all real tokens, or only each sequence's last ``answer_lengths``."""
    mask = batch.attention_mask
    if answer_lengths is None:
        return mask
    width = mask.shape[1]
    keep = torch.zeros_like(mask)
    for j, row in enumerate(batch.rows):
        # the token before the answer is kept too: it predicts the answer's first token
        keep[j, width - int(answer_lengths[int(row)]) - 1:] = 1
    return keep * mask


def sequence_loss(model, batch: Batch, counted: Int[torch.Tensor, "batch pos"] | None = None) -> torch.Tensor:
    """Per sequence the mean next-token loss over its counted tokens, summed over sequences.

    ``counted`` (default the attention mask) marks the tokens whose next-token predictions count:
    a prediction counts when both the token and the next one are marked.
    """
    counted = batch.attention_mask if counted is None else counted
    logits = model(batch.tokens, attention_mask=batch.attention_mask)
    if logits.dtype in (torch.float16, torch.bfloat16):  # the loss in float32; the model's backward stays in its dtype
        logits = logits.float()
    nll = lm_cross_entropy_loss(logits, batch.tokens, counted, per_token=True)
    n = (counted[:, :-1] * counted[:, 1:]).sum(1)
    return (nll.sum(1) / n).sum()


def attention_params(model) -> list[torch.Tensor]:
    """``[W_Q, W_K]`` of every layer, in layer order (``_W_K`` under grouped-query attention)."""
    return [w for block in model.blocks for w in (block.attn.W_Q, getattr(block.attn, "_W_K", block.attn.W_K))]


def _per_layer(grads: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
    """``{layer: flattened (dW_Q, dW_K)}`` from gradients listed as :func:`attention_params`."""
    return {i: torch.cat([grads[2 * i].reshape(-1), grads[2 * i + 1].reshape(-1)]) for i in range(len(grads) // 2)}


def pattern_gradients(
    model, batch: Batch, counted: torch.Tensor | None = None
) -> tuple[ActivationCache, dict[int, torch.Tensor]]:
    """One forward and backward pass: patterns with their gradients, and the true W_Q/W_K gradients.

    Returns a cache with ``blocks.L.attn.hook_pattern`` and ``blocks.L.attn.hook_pattern_grad``
    (as ``run_with_cache(..., incl_bwd=True)`` names them) for every layer, and
    ``{layer: flattened d loss / d (W_Q, W_K)}``.
    """
    store: dict[str, torch.Tensor] = {}

    def fwd(act, hook):
        store[hook.name] = act.detach()

    def bwd(grad, hook):
        store[f"{hook.name}_grad"] = grad.detach()

    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    model.zero_grad(set_to_none=True)
    with model.hooks(fwd_hooks=[(n, fwd) for n in names], bwd_hooks=[(n, bwd) for n in names]):
        sequence_loss(model, batch, counted).backward()
    weights = _per_layer([w.grad.detach().clone() for w in attention_params(model)])
    model.zero_grad(set_to_none=True)
    return ActivationCache(store, model), weights


def surrogate_gradients(model, batch: Batch, kind: str, counted: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """``{layer: flattened d loss / d (W_Q, W_K)}`` with every softmax backward replaced by ``kind``."""
    scores: dict[int, torch.Tensor] = {}

    def keep_scores(act, hook):
        scores[hook.layer()] = act

    def surrogate(act, hook):
        return _Surrogate.apply(scores[hook.layer()], act.detach(), kind)

    n = model.cfg.n_layers
    hooks = [(f"blocks.{i}.attn.hook_attn_scores", keep_scores) for i in range(n)]
    hooks += [(f"blocks.{i}.attn.hook_pattern", surrogate) for i in range(n)]
    with model.hooks(fwd_hooks=hooks):
        return _per_layer(torch.autograd.grad(sequence_loss(model, batch, counted), attention_params(model)))


def _valid(real: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, q, k]``: real query, real key, k <= q."""
    t = real.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=real.device))
    return real[:, None, :, None] & real[:, None, None, :] & causal


def _seq_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per sequence and head over all (q, k) entries: ``[batch, head]``."""
    dot = (a * b).sum((2, 3))
    norm = a.pow(2).sum((2, 3)).sqrt() * b.pow(2).sum((2, 3)).sqrt()
    return torch.where(norm > 0, dot / norm.clamp_min(1e-300), torch.zeros_like(dot))


class JacobianStats:
    """Per layer and head sums that make the research script's statistics and the strata.

    Feed it batch by batch (:meth:`add_cache`), then read :meth:`result`.
    """

    def __init__(self, n_layers: int, n_heads: int):
        shape = (n_layers, n_heads)
        self.n_layers = n_layers
        self.full2, self.diag2 = np.zeros(shape), np.zeros(shape)
        self.cos_diag, self.cos_ste, self.seqs = np.zeros(shape), np.zeros(shape), 0
        self.max_sum, self.ent_sum, self.rows = np.zeros(shape), np.zeros(shape), 0
        self.strata: dict[tuple[str, int, str], np.ndarray] = {}

    def add_cache(self, cache: ActivationCache, attention_mask: Int[torch.Tensor, "batch pos"]) -> None:
        """Add every layer's ``hook_pattern`` and ``hook_pattern_grad`` of one batch."""
        real = torch.as_tensor(attention_mask).bool()
        for layer in range(self.n_layers):
            name = f"blocks.{layer}.attn.hook_pattern"
            if name not in cache.cache_dict or f"{name}_grad" not in cache.cache_dict:
                raise BadInputError(f"the cache has no {name} and its gradient: run_with_cache(..., incl_bwd=True)")
            pattern, grad = cache[name], cache[f"{name}_grad"]
            self.add(layer, pattern, grad, real.to(pattern.device))

    def add(self, layer: int, pattern, grad, real) -> None:
        """Add one layer's ``[batch, head, q, k]`` pattern and gradient; ``real`` is ``[batch, pos]``."""
        if pattern.dtype in (torch.float16, torch.bfloat16):  # A ⊙ (g − Σ A g) cancels: not in 8 or 11 bits
            pattern, grad = pattern.float(), grad.float()
        valid = _valid(real).expand_as(pattern)
        full = (softmax_backward(pattern, grad, "full") * valid).double()
        diag = (softmax_backward(pattern, grad, "diag") * valid).double()
        ste = (grad * valid).double()
        a = pattern.double()
        self.full2[layer] += full.pow(2).sum((0, 2, 3)).cpu().numpy()
        self.diag2[layer] += diag.pow(2).sum((0, 2, 3)).cpu().numpy()
        self.cos_diag[layer] += _seq_cos(diag, full).sum(0).cpu().numpy()
        self.cos_ste[layer] += _seq_cos(ste, full).sum(0).cpu().numpy()
        row_real = real[:, None, :].expand(a.shape[:3])
        self.max_sum[layer] += (a.amax(-1) * row_real).sum((0, 2)).cpu().numpy()
        entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1)
        self.ent_sum[layer] += (entropy * row_real).sum((0, 2)).cpu().numpy()
        if layer == 0:
            self.seqs += pattern.shape[0]
            self.rows += int(real.sum())
        self._strata(layer, a, full, diag, ste, entropy, row_real)

    def _strata(self, layer, a, full, diag, ste, entropy, row_real) -> None:
        sink = torch.gather(a, -1, _first_real(row_real)[..., None])[..., 0]
        position = (row_real.cumsum(-1) - 1).double()  # query position counted from the first real token
        dots = {"diag": (diag * full).sum(-1), "ste": (ste * full).sum(-1)}
        norms = {"full": full.pow(2).sum(-1), "diag": diag.pow(2).sum(-1), "ste": ste.pow(2).sum(-1)}
        for name, values, edges in (("entropy", entropy, ENTROPY_BINS), ("sink", sink, SINK_BINS),
                                    ("position", position, POSITION_BINS)):
            edges_t = torch.tensor(edges, dtype=torch.float64, device=a.device)
            which = torch.bucketize(values.double().contiguous(), edges_t, right=True) - 1
            for b in range(len(edges) - 1):
                sel = (which == b) & row_real
                key = (name, layer, f"{float(edges[b]):g}-{float(edges[b + 1]):g}")
                acc = self.strata.setdefault(key, np.zeros(6))
                acc += [float((dots["diag"] * sel).sum()), float((dots["ste"] * sel).sum()),
                        float((norms["full"] * sel).sum()), float((norms["diag"] * sel).sum()),
                        float((norms["ste"] * sel).sum()), float(sel.sum())]

    def result(self) -> dict[str, Any]:
        """The :data:`TABLES` as ``[layer][head]`` lists, and ``strata``."""
        strata: dict[str, Any] = {}
        for (name, layer, label), (dd, ds, nf, nd, ns, rows) in sorted(self.strata.items()):
            strata.setdefault(name, {}).setdefault(str(layer), {})[label] = {
                "rows": int(rows),
                "cos_diag": float(dd / np.sqrt(nf * nd)) if nf * nd > 0 else None,
                "cos_ste": float(ds / np.sqrt(nf * ns)) if nf * ns > 0 else None,
            }
        return {
            "r_diag": (self.diag2 / np.where(self.full2 > 0, self.full2, np.nan)).tolist(),
            "cos_diag": (self.cos_diag / self.seqs).tolist(),
            "cos_ste": (self.cos_ste / self.seqs).tolist(),
            "mean_max_attention": (self.max_sum / self.rows).tolist(),
            "row_entropy": (self.ent_sum / self.rows).tolist(),
            "strata": strata,
        }


def _first_real(row_real: torch.Tensor) -> torch.Tensor:
    """``[batch, head, q]``: the key index of each row's first real position (the sink)."""
    first = row_real.long().argmax(-1)  # first True along positions: [batch, head]
    return first[..., None].expand(row_real.shape)


def attention_jacobian(
    cache: ActivationCache, attention_mask: Int[torch.Tensor, "batch pos"] | None = None
) -> dict[str, Any]:
    """The Jacobian statistics of a cache holding every layer's pattern and its gradient.

    Args:
        cache: e.g. ``model.run_with_cache(tokens, return_type="loss", incl_bwd=True)[1]``.
        attention_mask: ``[batch, pos]``, 1 on real tokens (default: every position real).

    Returns:
        :meth:`JacobianStats.result` (``[layer][head]`` tables and strata).
    """
    model = cache.model
    pattern = cache["blocks.0.attn.hook_pattern"]
    if attention_mask is None:
        attention_mask = torch.ones(pattern.shape[0], pattern.shape[-1], dtype=torch.long)
    acc = JacobianStats(model.cfg.n_layers, model.cfg.n_heads)
    acc.add_cache(cache, attention_mask)
    return acc.result()


def check_softmax_attention(model) -> None:
    """Raise :class:`BadInputError` unless every layer's attention is a plain softmax with ``hook_pattern``."""
    if "blocks.0.attn.hook_pattern" not in model.hook_dict:
        raise BadInputError("the model has no attn.hook_pattern to hook: not a softmax-attention HookedTransformer")
    if getattr(model.cfg, "use_attention_sinks", False):
        raise BadInputError("attention sinks make pattern rows sum below 1: the softmax Jacobian here does not apply")


def jacobian_statistics(
    model, tokens: Tokenized, *, batch_size: int = 16, weight_gradients: bool = True, progress: bool = False,
    answer_lengths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The Jacobian statistics of ``model`` over sequences, batch by batch (weights unchanged).

    Args:
        model: a HookedTransformer with softmax attention.
        tokens: the sequences (each at least two tokens).
        batch_size: sequences per forward and backward pass.
        weight_gradients: also the per-layer cosine of the W_Q/W_K gradient under the ``diag`` and
            ``ste`` surrogates to the true one (two more backward passes per batch).
        progress: show a progress bar.
        answer_lengths: per sequence, how many of its last tokens the loss predicts (the answer's;
            :func:`loss_mask`); None: every next token counts.

    Returns:
        :meth:`JacobianStats.result`, plus ``weight_gradient_cos`` ``{diag, ste: [per layer]}``
        when asked.

    Raises:
        BadInputError: a model without ``hook_pattern`` or with attention sinks, or a sequence
            of fewer than two tokens.
    """
    check_softmax_attention(model)
    if tokens.lengths.min() < 2:
        raise BadInputError("a sequence has fewer than two tokens: no next-token loss")
    acc = JacobianStats(model.cfg.n_layers, model.cfg.n_heads)
    totals: dict[str, dict[int, torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in batches(model, tokens, batch_size, progress, "jacobian: forward and backward passes"):
            counted = loss_mask(batch, answer_lengths)
            cache, true = pattern_gradients(model, batch, counted)
            acc.add_cache(cache, batch.attention_mask)
            if weight_gradients:
                for kind in ("autograd", "diag", "ste"):
                    grads = true if kind == "autograd" else surrogate_gradients(model, batch, kind, counted)
                    into = totals.setdefault(kind, {})
                    for i, g in grads.items():
                        into[i] = into[i] + g.double() if i in into else g.double()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    out = acc.result()
    if weight_gradients:
        out["weight_gradient_cos"] = {
            kind: [float(torch.nn.functional.cosine_similarity(totals[kind][i], totals["autograd"][i], dim=0))
                   for i in range(model.cfg.n_layers)]
            for kind in ("diag", "ste")}
    return out
