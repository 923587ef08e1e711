"""Logit lens and last-token activation patching: where a model decides the language and the answer.

**Lens** (:func:`lens_logits`, :func:`lens_token_stats`). From a one-position cache holding
``blocks.L.hook_resid_pre`` of every layer and the last block's ``hook_resid_post``, TransformerLens'
``cache.accumulated_resid`` stacks the residual stream before every block and after the last one
(labels ``0_pre`` ... ``final_post``), ``cache.apply_ln_to_stack(..., recompute_ln=True)``
normalizes each with the model's final norm (its statistics recomputed per layer: the logit lens)
and ``model.unembed`` (``W_U`` and ``b_U``; the logit soft cap where the model has one) turns them
into logits. At ``final_post`` these are the model's own logits (tested to 1e-5 in log-probabilities).

**Patching** (:func:`patched_last_logits`, :func:`patched_completions`). A source's last-token
``blocks.L.hook_resid_pre`` (a one-position cache, row ``i`` for target ``i``) is written over the
target prompt's last real token at layer ``L`` (or at several layers at once), in left-padded
batches; :func:`patched_completions` then decodes greedily with TransformerLens' key-value cache,
the patch applied in the one pass that sees the prompt (so every generated token attends to the
patched position's keys and values, and no generated position is patched). Tested: equal to the
uncached decoding token for token, equal batched and one prompt at a time, a target patched
with its own activations unchanged, and the last-position logits equal to
``transformer_lens.patching.get_act_patch_resid_pre`` on prompts of equal length.

:func:`follows` classifies an output: its language (:func:`interp_tl.langid.identify_language`)
and its number (:func:`interp_tl.generation.extract_answer`) against the source's and the target's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from transformer_lens import ActivationCache
from transformer_lens.utilities import apply_softcap

from interp_tl.batching import Batch, batches
from interp_tl.cache import check_layers, fused_gelu, one_position, select_rows
from interp_tl.errors import BadInputError
from interp_tl.generation import extract_answer, greedy_completions
from interp_tl.langid import identify_language
from interp_tl.tokens import Tokenized, check_lengths

#: Rows of a cache turned into logits at once: ``[stack, rows, d_vocab]`` float32 is the largest
#: array (at Qwen2.5-3B, 37 x 16 x 151,936 x 4 bytes = 360 MB).
LENS_CHUNK = 16


def lens_hook_names(model) -> list[str]:
    """The hooks the lens reads: ``hook_resid_pre`` of every block and the last block's ``hook_resid_post``."""
    n = model.cfg.n_layers
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]


def lens_labels(n_layers: int) -> list[str]:
    """TransformerLens' labels of the stack: ``0_pre`` ... ``{n-1}_pre``, ``final_post``."""
    return [f"{layer}_pre" for layer in range(n_layers)] + ["final_post"]


def lens_logits(cache: ActivationCache) -> Float[torch.Tensor, "stack n d_vocab"]:
    """Logit lens of a one-position cache: the model's final norm and unembedding applied to every layer.

    Args:
        cache: bound to its model (``cache.model``), one position per prompt (an extracted cache,
            or ``last_token(model.run_with_cache(...)[1], ...)``), holding :func:`lens_hook_names`.

    Returns:
        ``[n_layers + 1, n, d_vocab]`` logits on the model's device and dtype, stack in the order
        of :func:`lens_labels`.

    Raises:
        BadInputError: the cache has no model, misses a hook or holds more than one position.

    Pitfall: memory is ``(n_layers + 1) x n x d_vocab``; at a large vocabulary pass a few rows
    at a time (:func:`lens_token_stats` does).
    """
    model = cache.model
    if model is None:
        raise BadInputError("the lens needs the cache's model (its final norm and unembedding): bind the cache")
    one_position(cache, lens_hook_names(model))
    param = next(model.parameters())
    with torch.inference_mode():
        stack = cache.accumulated_resid(layer=None, apply_ln=False)  # [stack, n, 1, d_model]
        stack = stack.to(param.device, param.dtype)
        normed = cache.apply_ln_to_stack(stack, layer=None, recompute_ln=True)
        logits = model.unembed(normed[:, :, 0])  # the stack as the batch axis, prompts as positions
        return apply_softcap(logits, model.cfg.output_logits_soft_cap)


def lens_token_stats(
    cache: ActivationCache, token_ids: Int[np.ndarray, "n k"], chunk: int = LENS_CHUNK
) -> tuple[Float[np.ndarray, "stack n k"], Int[np.ndarray, "stack n k"]]:
    """Log-probability and rank of chosen tokens at every layer of the lens, a few prompts at a time.

    Args:
        cache: as :func:`lens_logits`.
        token_ids: ``[n, k]`` token ids per prompt (e.g. the answer's first number token; each
            language's answer-opening token).
        chunk: prompts turned into logits at once.

    Returns:
        ``(log_probs, ranks)``, each ``[n_layers + 1, n, k]``: the log-softmax (float64, from the
        logits in float64) and the rank (0: the top token; the number of tokens with a strictly
        higher logit).

    Raises:
        BadInputError: ``token_ids`` not ``[n, k]`` for the cache's ``n`` prompts, or an id outside
            the vocabulary.
    """
    if cache.model is None:
        raise BadInputError("the lens needs the cache's model (its final norm and unembedding): bind the cache")
    ids = np.asarray(token_ids)
    n = next(iter(cache.cache_dict.values())).shape[0]
    if ids.ndim != 2 or ids.shape[0] != n:
        raise BadInputError(f"token_ids must be [n, k] for the cache's {n} prompts, got shape {ids.shape}")
    vocab = cache.model.cfg.d_vocab_out
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise BadInputError(f"token ids must be in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")
    log_probs = np.empty((cache.model.cfg.n_layers + 1, n, ids.shape[1]))
    ranks = np.empty(log_probs.shape, dtype=np.int64)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        logits = lens_logits(select_rows(cache, rows)).double()
        chosen = torch.as_tensor(ids[rows], device=logits.device).expand(logits.shape[0], -1, -1)
        picked = logits.gather(-1, chosen)
        log_probs[:, rows] = (picked - logits.logsumexp(-1, keepdim=True)).cpu().numpy()
        for j in range(ids.shape[1]):  # one [stack, rows, d_vocab] comparison at a time
            ranks[:, rows, j] = (logits > picked[..., j:j + 1]).sum(-1).cpu().numpy()
    return log_probs, ranks


def _patch_layers(model, layers: Sequence[int]) -> list[str]:
    if not layers:
        raise BadInputError("no layers to patch")
    return [f"blocks.{layer}.hook_resid_pre" for layer in check_layers(model, layers)]


def _check_sources(sources: ActivationCache, names: Sequence[str], n: int) -> None:
    one_position(sources, names)
    rows = sources.cache_dict[names[0]].shape[0]
    if rows != n:
        raise BadInputError(f"the sources hold {rows} rows for {n} targets: one source row per target")


def last_token_patch(sources: ActivationCache, names: Sequence[str]) -> Callable[[Batch], list[tuple]]:
    """``prompt_hooks`` for a batch: every hook in ``names`` writes the batch's sources over its last column.

    With left padding the last column is every row's last real token. The hooks replace the
    activation there by ``sources[name][batch.rows, 0]`` (cast to the activation's dtype and device).
    """

    def hooks_for(batch: Batch) -> list[tuple]:
        column = batch.tokens.shape[1] - 1
        rows = torch.as_tensor(batch.rows, dtype=torch.long)
        out = []
        for name in names:
            vectors = sources.cache_dict[name][rows, 0]

            def write(act: torch.Tensor, hook, vectors: torch.Tensor = vectors) -> torch.Tensor:
                act[:, column] = vectors.to(act.device, act.dtype)
                return act

            out.append((name, write))
        return out

    return hooks_for


def patched_last_logits(
    model, targets: Tokenized, sources: ActivationCache, layers: Sequence[int], batch_size: int = 32
) -> Float[torch.Tensor, "n d_vocab"]:
    """Logits at each target's last real token with its ``hook_resid_pre`` at ``layers`` replaced by the sources'.

    Args:
        model: a HookedTransformer.
        targets: the prompts patched (from :func:`interp_tl.tokens.tokenize`).
        sources: one-position cache with ``blocks.L.hook_resid_pre`` for every ``L`` in ``layers``,
            row ``i`` written into target ``i``.
        layers: patched together in one forward pass (one layer, or a layer and every later one).
        batch_size: targets per forward pass (left-padded; tested equal to one at a time).

    Returns:
        ``[n, d_vocab]`` logits (float32 on the CPU), in the order of ``targets``.

    Raises:
        BadInputError: no layers, sources without the hooks or with another number of rows.
        LayerRangeError: a layer out of range.
    """
    names = _patch_layers(model, layers)
    check_lengths(model, targets)
    _check_sources(sources, names, len(targets))
    build = last_token_patch(sources, names)
    out = torch.empty((len(targets), model.cfg.d_vocab_out))
    with torch.inference_mode(), fused_gelu(model):
        for batch in batches(model, targets, batch_size):
            with model.hooks(fwd_hooks=build(batch)):
                logits = model(batch.tokens, attention_mask=batch.attention_mask)
            out[torch.as_tensor(batch.rows, dtype=torch.long)] = logits[:, -1].float().cpu()
    return out


def patched_completions(
    model, targets: Tokenized, sources: ActivationCache, layers: Sequence[int], max_new_tokens: int = 16,
    batch_size: int = 32, use_cache: bool = True,
) -> list[list[int]]:
    """Greedy completions of the targets with their last token's ``hook_resid_pre`` at ``layers`` patched.

    The patch acts on the prompt only (:func:`interp_tl.generation.greedy_completions`'s
    ``prompt_hooks``): with the key-value cache in the one pass that runs the prompt, without
    it in every pass at the prompt's last column; the generated tokens are the same either way
    (tested), and attend to the patched position.

    Args:
        model: a HookedTransformer with a tokenizer that has an EOS token.
        targets: the prompts patched.
        sources: as :func:`patched_last_logits`.
        layers: patched together.
        max_new_tokens: most tokens generated per target.
        batch_size: targets per forward pass.
        use_cache: decode with the key-value cache (False: the uncached reference).

    Returns:
        Per target, the generated ids up to (not including) EOS.

    Raises:
        BadInputError: as :func:`patched_last_logits`, or as ``greedy_completions``.
    """
    names = _patch_layers(model, layers)
    _check_sources(sources, names, len(targets))
    return greedy_completions(model, targets, max_new_tokens, batch_size, use_cache,
                              prompt_hooks=last_token_patch(sources, names))


def mean_sources(caches: Sequence[ActivationCache], names: Sequence[str]) -> ActivationCache:
    """The row-wise mean of several one-position caches (e.g. one problem's latents in several languages).

    Raises:
        BadInputError: no caches, or caches whose ``names`` differ in shape.
    """
    if not caches:
        raise BadInputError("no caches to average")
    for cache in caches:
        one_position(cache, names)
        if any(cache.cache_dict[name].shape != caches[0].cache_dict[name].shape for name in names):
            raise BadInputError("the caches to average hold different numbers of rows or widths")
    return ActivationCache({name: torch.stack([c.cache_dict[name] for c in caches]).mean(0) for name in names},
                           caches[0].model)


@dataclass(frozen=True)
class Follows:
    """Whom an output follows, in language and in number.

    Attributes:
        language: the output's language (:func:`interp_tl.langid.identify_language`).
        language_source: the language is one of the source's.
        language_target: the language is the target's.
        number: the output's first integer (None without one).
        number_source: the number is one of the source's (None: undefined, see :func:`follows`).
        number_target: the number is the target's (None: undefined).
    """

    language: str
    language_source: bool
    language_target: bool
    number: int | None
    number_source: bool | None
    number_target: bool | None


def follows(text: str, source_langs: Collection[str], target_lang: str, source_numbers: Collection[int | None],
            target_number: int | None) -> Follows:
    """Classify one output against a source and a target (language and number).

    Args:
        text: the decoded output.
        source_langs: the source's language (several for a mean over languages).
        target_lang: the target prompt's language.
        source_numbers: the numbers that count as the source's (e.g. the model's own answers to the
            source prompts); None values are ignored.
        target_number: the number that counts as the target's.

    Returns:
        A :class:`Follows`. The number outcomes are None (undefined) when the target has no
        number, the source has none, or the target's number is among the source's (the output
        could not tell them apart). With the source in the target's language both language
        outcomes are True together.
    """
    language = identify_language(text)
    number = extract_answer(text)
    sources = {x for x in source_numbers if x is not None}
    defined = target_number is not None and bool(sources) and target_number not in sources
    return Follows(language, language in source_langs, language == target_lang, number,
                   (number in sources) if defined else None, (number == target_number) if defined else None)


def answer_prefix(tokenizer, completion: str) -> tuple[list[int], int]:
    """The completion's tokens before its first number token, and that token's id.

    ``completion`` is tokenized on its own (the prompt and the answer are tokenized separately
    in every study); the first token whose text holds a digit is where the number is due.

    Raises:
        BadInputError: the completion's tokens hold no digit.
    """
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    for i, token in enumerate(ids):
        if any(ch.isdigit() for ch in tokenizer.decode([token])):
            return list(ids[:i]), int(token)
    raise BadInputError(f"the completion {completion!r} has no number token")


def opening_token(tokenizer, completion: str) -> int:
    """The completion's first token (e.g. ``" The"`` of ``" The answer is 42."``)."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not ids:
        raise BadInputError(f"the completion {completion!r} has no tokens")
    return int(ids[0])


def teacher_forced(prompts: Tokenized, prefixes: Sequence[Sequence[int]]) -> Tokenized:
    """Each prompt followed by its completion prefix (ids only: the prompts' offsets are dropped)."""
    if len(prefixes) != len(prompts):
        raise BadInputError(f"{len(prefixes)} prefixes for {len(prompts)} prompts")
    return Tokenized([list(p) + list(x) for p, x in zip(prompts.ids, prefixes)], prompts.prepend_bos,
                     prompts.bos_id, None)
