"""Token ids to batches: the one batching rule every forward loop uses.

:func:`batches` takes prompts tokenized by :mod:`interp_tl.tokens` (BOS explicit), sorts
the prompts by length (stable), left-pads each chunk with :func:`pad_id` and builds the attention
mask from the true lengths, never from pad ids (GPT-2's pad = BOS = EOS, so a mask built from ids
would hide real tokens). With left padding and that mask TransformerLens shifts absolute and
rotary positions, so the last real token of every row is column ``-1`` and equals a per-prompt
run to float tolerance (tested on LayerNorm/absolute and RMSNorm/rotary/GQA models).

Extraction (:mod:`interp_tl.cache`), generation and answer losses (:mod:`interp_tl.generation`),
attention statistics and the Jacobian's gradients all go through :func:`batches`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from interp_tl.errors import BadInputError
from interp_tl.tokens import Tokenized, check_lengths


def pad_id(model, tokens: Tokenized) -> int:
    """The id padding is filled with: BOS when prepended, else the tokenizer's EOS, else 0.

    The value never reaches a real token (padded positions are masked), so this only has to be
    a valid id; one rule keeps every loop's batches identical.
    """
    if tokens.bos_id is not None:
        return int(tokens.bos_id)
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    return int(eos) if eos is not None else 0


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[Int[np.ndarray, " batch"]]:
    """Row indices of each batch: prompts sorted by length (stable), then chunked."""
    if batch_size < 1:
        raise BadInputError(f"batch size must be at least 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(
    rows: Sequence[Sequence[int]], pad: int, device: str | torch.device = "cpu"
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Left-pad token id lists into ``(tokens, attention_mask)``; the mask comes from the lengths."""
    width = max(len(r) for r in rows)
    toks = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        toks[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row):] = 1
    return toks.to(device), mask.to(device)


@dataclass(frozen=True)
class Batch:
    """One left-padded batch of prompts.

    Attributes:
        rows: which prompts (indices into the :class:`Tokenized`) the batch holds, in row order.
        tokens: ``[batch, pos]`` ids, left-padded.
        attention_mask: ``[batch, pos]``, 1 on real tokens.
        lengths: the real length of each row.
    """

    rows: Int[np.ndarray, " batch"]
    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    lengths: Int[np.ndarray, " batch"]


def batches(
    model, tokens: Tokenized, batch_size: int = 32, progress: bool = False, desc: str = "batches",
    shard: bool = False,
) -> Iterator[Batch]:
    """Length-sorted, left-padded, masked batches of ``tokens`` on the model's device.

    Args:
        model: the HookedTransformer the batches are for (device, context, pad rule).
        tokens: from :func:`tokenize`.
        batch_size: prompts per batch.
        progress: show a tqdm bar over batches.
        desc: the bar's label, in words.
        shard: under ``torchrun``, yield only this process's share of the batches (every
            ``world_size``-th, from its rank; :mod:`interp_tl.distributed`); the batches themselves
            are the single process's.

    Raises:
        BadInputError: batch size below 1, no prompts, an empty or too long prompt.
    """
    check_lengths(model, tokens)
    lengths = tokens.lengths
    pad = pad_id(model, tokens)
    chunks = length_sorted_batches(lengths, batch_size)
    if shard:
        from interp_tl.distributed import active, my_chunks

        chunks = [chunks[i] for i in my_chunks(len(chunks))]
        progress = progress and (active() is None or active().is_main)
    for rows in tqdm(chunks, desc=desc, disable=not progress, unit="batch", leave=False):
        toks, mask = left_pad([tokens.ids[i] for i in rows], pad, model.cfg.device)
        yield Batch(rows, toks, mask, lengths[rows])


