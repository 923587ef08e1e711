"""Attention Jacobian: how much of the softmax backward is diagonal (local) and how much lateral.

Port of the research script ``softmax_jacobian_lateral.py`` onto hook points (it monkey-patched
the attention forward). For every layer and head, with ``A`` the pattern (``attn.hook_pattern``)
and ``g`` the loss gradient with respect to it (a backward hook on the same hook point):

* full softmax backward ``g_S = A ⊙ (g − ⟨A, g⟩_row)`` (what autograd computes; checked against
  the gradient at ``attn.hook_attn_scores`` in the tests),
* diagonal only ``A ⊙ (1 − A) ⊙ g`` (a sigmoid-like, element-wise surrogate),
* straight-through ``g``,

and the seed's numbers: ``r_diag = Σ||g_diag||² / Σ||g_S||²``, ``cos_diag`` and ``cos_ste`` (cosine
to ``g_S`` per sequence, averaged), mean attention and mean row entropy. Causally masked entries
(and padding) are excluded everywhere; the seed's ``cos_ste`` counted the masked entries, where
``g`` is not zero.

Beyond the seed: the cosines stratified by row entropy, by the mass on the first position (the
sink) and by query position (pooled over the rows of each stratum); and what training would see:
the gradient with respect to ``W_Q`` and ``W_K`` of every layer when every softmax backward is
replaced by the diagonal or straight-through surrogate (a custom autograd function returned from
a forward hook on ``hook_pattern``), as the cosine to the true gradient.

The loss is, per sequence, the mean next-token cross-entropy over its real tokens, summed over
sequences (so no number depends on how sequences are batched; tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from interp_tl.errors import BadInputError
from interp_tl.models import model_provenance, versions
from interp_tl.prompts import check_languages, generate_problems, languages, problem_set_id
from interp_tl.studies.common import StudyResult

ENTROPY_BINS = (0.0, 0.5, 1.0, 2.0, np.inf)
SINK_BINS = (0.0, 0.25, 0.5, 0.75, 1.0001)


@dataclass(frozen=True)
class JacobianConfig:
    """Settings of the attention-Jacobian study (the CLI's flags map onto these one to one).

    Attributes:
        text_file: a UTF-8 file whose non-empty lines are the sequences (None: the problem set).
        n_problems: problems of the parallel set (seed ``seed``), each prompt followed by its answer,
            in every language of ``jacobian_langs``.
        seed: problem-set seed.
        jacobian_langs: languages of the problem set used (default all seven).
        batch_size: sequences per forward/backward pass.
        prepend_bos: put BOS before each sequence (None: the model's default).
        weight_gradients: also compare W_Q / W_K gradients under the surrogates.
    """

    text_file: str | None = None
    n_problems: int = 20
    seed: int = 42
    jacobian_langs: tuple[str, ...] = tuple(languages())
    batch_size: int = 16
    prepend_bos: bool | None = None
    weight_gradients: bool = True


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


def sequences(model, config: JacobianConfig) -> tuple[list[list[int]], dict[str, Any]]:
    """Token ids of the sequences (BOS handled explicitly) and where they came from."""
    tok = model.tokenizer
    if tok is None:
        raise BadInputError("the model has no tokenizer: cannot tokenize the sequences")
    prepend = model.cfg.default_prepend_bos if config.prepend_bos is None else config.prepend_bos
    if config.text_file is not None:
        try:
            lines = [x for x in Path(config.text_file).read_text("utf-8").splitlines() if x.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"cannot read text file {config.text_file}: {exc.__class__.__name__}") from None
        if not lines:
            raise BadInputError(f"text file {config.text_file} has no non-empty line")
        texts, source = lines, {"text_file": str(config.text_file), "n_sequences": len(lines)}
    else:
        check_languages(config.jacobian_langs)
        problems = generate_problems(config.n_problems, config.seed, config.jacobian_langs)
        texts = [p.prompts[lang] + f" {p.answer}" for p in problems for lang in config.jacobian_langs]
        source = {**problem_set_id(config.n_problems, config.seed), "languages": list(config.jacobian_langs),
                  "format": "prompt + ' ' + answer"}
    ids = [([tok.bos_token_id] if prepend else []) + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    too_long = [i for i, x in enumerate(ids) if len(x) > model.cfg.n_ctx]
    if too_long:
        raise BadInputError(f"sequence {too_long[0]} has {len(ids[too_long[0]])} tokens, more than the context "
                            f"of {model.cfg.n_ctx}")
    if any(len(x) < 2 for x in ids):
        raise BadInputError("a sequence has fewer than two tokens: no next-token loss")
    return ids, {**source, "prepend_bos": bool(prepend)}


def _batch(ids: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    toks = torch.full((len(ids), width), pad, dtype=torch.long, device=device)
    real = torch.zeros((len(ids), width), dtype=torch.bool, device=device)
    for i, row in enumerate(ids):
        toks[i, : len(row)] = torch.as_tensor(row)
        real[i, : len(row)] = True
    return toks, real


def _loss(model, toks: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    logits = model(toks)
    if logits.dtype in (torch.float16, torch.bfloat16):  # the loss in float32; the model's backward stays in its dtype
        logits = logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), toks[:, 1:], reduction="none")
    keep = (real[:, 1:] & real[:, :-1]).float()
    return ((nll * keep).sum(1) / keep.sum(1)).sum()  # a sum over sequences: gradients do not depend on batching


def _attention_params(model) -> list[torch.Tensor]:
    """``[W_Q, W_K]`` of every layer, in layer order (``_W_K`` under grouped-query attention)."""
    return [w for block in model.blocks for w in (block.attn.W_Q, getattr(block.attn, "_W_K", block.attn.W_K))]


def _per_layer_grads(grads: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
    """``{layer: flattened (dW_Q, dW_K)}`` from gradients listed as :func:`_attention_params`."""
    return {i: torch.cat([grads[2 * i].reshape(-1), grads[2 * i + 1].reshape(-1)]) for i in range(len(grads) // 2)}


def pattern_gradients(
    model, toks: torch.Tensor, real: torch.Tensor
) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], dict[int, torch.Tensor]]:
    """One forward and backward pass: the patterns with their gradients, and the true weight gradients.

    Returns ``{layer: (pattern, d loss / d pattern)}`` (a forward and a backward hook on
    ``hook_pattern``) and ``{layer: flattened d loss / d (W_Q, W_K)}``.
    """
    patterns, grads = {}, {}

    def fwd(act, hook):
        patterns[hook.layer()] = act.detach()

    def bwd(grad, hook):
        grads[hook.layer()] = grad.detach()

    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    model.zero_grad(set_to_none=True)
    with model.hooks(fwd_hooks=[(n, fwd) for n in names], bwd_hooks=[(n, bwd) for n in names]):
        _loss(model, toks, real).backward()
    weights = _per_layer_grads([w.grad.detach().clone() for w in _attention_params(model)])
    model.zero_grad(set_to_none=True)
    return {layer: (patterns[layer], grads[layer]) for layer in patterns}, weights


def _valid(real: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, q, k]``: real query, real key, k <= q."""
    t = real.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=real.device))
    return (real[:, None, :, None] & real[:, None, None, :] & causal)


class _Accumulator:
    """Per layer and head sums that make the seed's statistics and the strata."""

    def __init__(self, n_layers: int, n_heads: int):
        shape = (n_layers, n_heads)
        self.full2, self.diag2 = np.zeros(shape), np.zeros(shape)
        self.cos_diag, self.cos_ste, self.seqs = np.zeros(shape), np.zeros(shape), 0
        self.att_sum, self.att_n, self.ent_sum, self.rows = np.zeros(shape), np.zeros(shape), np.zeros(shape), 0
        self.strata: dict[tuple[str, int, str], np.ndarray] = {}

    def add(self, layer: int, pattern, grad, real) -> None:
        if pattern.dtype in (torch.float16, torch.bfloat16):  # A ⊙ (g − Σ A g) cancels: not in 8 or 11 bits
            pattern, grad = pattern.float(), grad.float()
        valid = _valid(real).expand_as(pattern)
        full = softmax_backward(pattern, grad, "full") * valid
        diag = softmax_backward(pattern, grad, "diag") * valid
        ste = grad * valid
        a = pattern.double()
        full, diag, ste = full.double(), diag.double(), ste.double()
        self.full2[layer] += full.pow(2).sum((0, 2, 3)).cpu().numpy()
        self.diag2[layer] += diag.pow(2).sum((0, 2, 3)).cpu().numpy()
        self.cos_diag[layer] += _seq_cos(diag, full).sum(0).cpu().numpy()
        self.cos_ste[layer] += _seq_cos(ste, full).sum(0).cpu().numpy()
        self.att_sum[layer] += (a * valid).sum((0, 2, 3)).cpu().numpy()
        self.att_n[layer] += valid.sum((0, 2, 3)).cpu().numpy()
        row_real = real[:, None, :].expand(a.shape[:3])
        entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1)
        self.ent_sum[layer] += (entropy * row_real).sum((0, 2)).cpu().numpy()
        if layer == 0:
            self.seqs += pattern.shape[0]
            self.rows += int(real.sum())
        self._strata(layer, a, full, diag, ste, entropy, row_real)

    def _strata(self, layer, a, full, diag, ste, entropy, row_real) -> None:
        sink = a[..., 0]
        position = torch.arange(a.shape[2], device=a.device).expand(a.shape[:3])
        dots = {"diag": (diag * full).sum(-1), "ste": (ste * full).sum(-1)}
        norms = {"full": full.pow(2).sum(-1), "diag": diag.pow(2).sum(-1), "ste": ste.pow(2).sum(-1)}
        pos_edges = torch.tensor([0, 4, 8, 16, 32, 64, 10**9], device=a.device)
        for name, values, edges in (("entropy", entropy, torch.tensor(ENTROPY_BINS, device=a.device)),
                                    ("sink", sink, torch.tensor(SINK_BINS, device=a.device)),
                                    ("position", position.double(), pos_edges.double())):
            which = torch.bucketize(values.double().contiguous(), edges.double(), right=True) - 1
            for b in range(len(edges) - 1):
                sel = (which == b) & row_real
                key = (name, layer, f"{float(edges[b]):g}-{float(edges[b + 1]):g}")
                acc = self.strata.setdefault(key, np.zeros(6))
                acc += [float((dots["diag"] * sel).sum()), float((dots["ste"] * sel).sum()),
                        float((norms["full"] * sel).sum()), float((norms["diag"] * sel).sum()),
                        float((norms["ste"] * sel).sum()), float(sel.sum())]

    def result(self) -> dict[str, Any]:
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
            "mean_attention": (self.att_sum / self.att_n).tolist(),
            "row_entropy": (self.ent_sum / self.rows).tolist(),
            "strata": strata,
        }


def _seq_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per sequence and head over all (q, k) entries: ``[batch, head]``."""
    dot = (a * b).sum((2, 3))
    norm = a.pow(2).sum((2, 3)).sqrt() * b.pow(2).sum((2, 3)).sqrt()
    return torch.where(norm > 0, dot / norm.clamp_min(1e-300), torch.zeros_like(dot))


def weight_gradients(model, toks: torch.Tensor, real: torch.Tensor, kind: str) -> dict[int, torch.Tensor]:
    """``{layer: flattened d loss / d (W_Q, W_K)}`` with every softmax backward replaced by ``kind``.

    The true gradient is the second result of :func:`pattern_gradients`.
    """
    scores: dict[int, torch.Tensor] = {}

    def keep_scores(act, hook):
        scores[hook.layer()] = act

    def surrogate(act, hook):
        return _Surrogate.apply(scores[hook.layer()], act.detach(), kind)

    n = model.cfg.n_layers
    hooks = [(f"blocks.{i}.attn.hook_attn_scores", keep_scores) for i in range(n)]
    hooks += [(f"blocks.{i}.attn.hook_pattern", surrogate) for i in range(n)]
    with model.hooks(fwd_hooks=hooks):
        return _per_layer_grads(torch.autograd.grad(_loss(model, toks, real), _attention_params(model)))


def _check_model(model) -> None:
    if "blocks.0.attn.hook_pattern" not in model.hook_dict:
        raise BadInputError("the model has no attn.hook_pattern to hook: not a softmax-attention HookedTransformer")
    if getattr(model.cfg, "use_attention_sinks", False):
        raise BadInputError("attention sinks make pattern rows sum below 1: the softmax Jacobian here does not apply")


def run_jacobian(model, config: JacobianConfig = JacobianConfig(), progress: bool = False,
                 keep_activations: bool = False) -> StudyResult:
    """Run the attention-Jacobian study on a HookedTransformer (gradients only; weights unchanged).

    Returns:
        A :class:`StudyResult` with ``layers`` ``[n_layers][n_heads]`` tables (``r_diag``,
        ``cos_diag``, ``cos_ste``, ``mean_attention``, ``row_entropy``), ``strata`` (entropy,
        sink mass, query position: pooled cosines per layer and bin) and ``weight_gradient_cos``
        (per layer, cosine of the W_Q/W_K gradient under ``diag`` / ``ste`` to the true one).

    Raises:
        BadInputError: empty text, a sequence longer than the context, a model without
            ``hook_pattern`` or with attention sinks.
    """
    _check_model(model)
    ids, source = sequences(model, config)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    acc = _Accumulator(model.cfg.n_layers, model.cfg.n_heads)
    order = np.argsort([len(x) for x in ids], kind="stable")
    batches = [order[i: i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    totals: dict[str, dict[int, torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    try:
        for rows in batches:
            toks, real = _batch([ids[i] for i in rows], pad, model.cfg.device)
            patterns, true = pattern_gradients(model, toks, real)
            for layer, (pattern, grad) in patterns.items():
                acc.add(layer, pattern, grad, real)
            if config.weight_gradients:
                for kind in ("autograd", "diag", "ste"):
                    grads = true if kind == "autograd" else weight_gradients(model, toks, real, kind)
                    into = totals.setdefault(kind, {})
                    for i, g in grads.items():
                        into[i] = into[i] + g.double() if i in into else g.double()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    tables = acc.result()
    data: dict[str, Any] = {"layers": {k: tables[k] for k in ("r_diag", "cos_diag", "cos_ste", "mean_attention",
                                                              "row_entropy")},
                            "strata": tables["strata"], "n_sequences": len(ids)}
    if config.weight_gradients:
        true = totals["autograd"]
        data["weight_gradient_cos"] = {
            kind: [float(torch.nn.functional.cosine_similarity(totals[kind][i], true[i], dim=0))
                   for i in range(model.cfg.n_layers)]
            for kind in ("diag", "ste")}
    data["summary"] = {k: float(np.nanmean(np.array(tables[k], dtype=float))) for k in ("r_diag", "cos_diag",
                                                                                       "cos_ste")}
    provenance = {"model": model_provenance(model), "study": "jacobian", "sequences": source,
                  "config": asdict(config),
                  "loss": "per sequence mean next-token cross-entropy over real tokens, summed over sequences",
                  "versions": versions()}
    return StudyResult("jacobian", data, provenance, {})


def head_jacobian(result: StudyResult, layer: int, head: int) -> dict[str, Any]:
    """One head's numbers from a jacobian result: the seed's statistics for ``layer.head``."""
    tables = result.data["layers"]
    return {k: tables[k][layer][head] for k in tables}


__all__: Sequence[str] = ("JacobianConfig", "head_jacobian", "run_jacobian", "softmax_backward")
