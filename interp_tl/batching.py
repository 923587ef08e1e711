"""Prompts to token ids, and token ids to batches: the one batching rule every forward loop uses.

Prompts are tokenized one by one without special tokens and BOS is prepended explicitly (and
recorded), so the ids of a prompt never depend on the other prompts. :func:`batches` then sorts
the prompts by length (stable), left-pads each chunk with :func:`pad_id` and builds the attention
mask from the true lengths, never from pad ids (GPT-2's pad = BOS = EOS, so a mask built from ids
would hide real tokens). With left padding and that mask TransformerLens shifts absolute and
rotary positions, so the last real token of every row is column ``-1`` and equals a per-prompt
run to float tolerance (tested on LayerNorm/absolute and RMSNorm/rotary/GQA models).

Extraction (:mod:`interp_tl.cache`), generation and answer losses (:mod:`interp_tl.generation`),
attention statistics and the Jacobian's gradients all go through :func:`batches`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from interp_tl.errors import BadInputError
from interp_tl.prompts import Problem, check_languages, generate_problems, problem_set_id

Rows = Sequence[int] | np.ndarray


@dataclass(frozen=True)
class Tokenized:
    """Token ids of a list of prompts, with how BOS was handled.

    Attributes:
        ids: token ids per prompt, BOS included when ``prepend_bos``.
        prepend_bos: whether a BOS token was put in front of every prompt.
        bos_id: the BOS id used (None when not prepended).
        offsets: per prompt, the ``(start, end)`` character span of each token in its text
            (BOS gets ``(0, 0)``); None when the tokenizer gives no offsets.
    """

    ids: list[list[int]]
    prepend_bos: bool
    bos_id: int | None
    offsets: list[list[tuple[int, int]]] | None

    @property
    def lengths(self) -> Int[np.ndarray, " n_prompts"]:
        """Number of tokens of each prompt."""
        return np.array([len(t) for t in self.ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, rows: Rows) -> Tokenized:
        """The same prompts, restricted to ``rows`` (in that order)."""
        rows = [int(i) for i in rows]
        offsets = None if self.offsets is None else [self.offsets[i] for i in rows]
        return Tokenized([self.ids[i] for i in rows], self.prepend_bos, self.bos_id, offsets)

    def __add__(self, other: Tokenized) -> Tokenized:
        if (self.prepend_bos, self.bos_id) != (other.prepend_bos, other.bos_id):
            raise BadInputError("cannot concatenate prompts tokenized with different BOS handling")
        offsets = None if self.offsets is None or other.offsets is None else self.offsets + other.offsets
        return Tokenized(self.ids + other.ids, self.prepend_bos, self.bos_id, offsets)


def tokenize(model, texts: Sequence[str], prepend_bos: bool | None = None) -> Tokenized:
    """Tokenize prompts without special tokens, then prepend BOS explicitly if asked.

    Args:
        model: a HookedTransformer with a tokenizer.
        texts: the prompts.
        prepend_bos: put the tokenizer's BOS in front of each prompt; default
            ``model.cfg.default_prepend_bos`` (True for GPT-2 and the embedded models, False for
            Qwen in TransformerLens; the research scripts ran Qwen without BOS).

    Raises:
        BadInputError: empty prompt, no tokenizer, or a prompt longer than the context.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise BadInputError("the model has no tokenizer: pass token ids, or load it with load_model")
    if prepend_bos is None:
        prepend_bos = bool(model.cfg.default_prepend_bos)
    bos_id = tokenizer.bos_token_id if prepend_bos else None
    if prepend_bos and bos_id is None:
        raise BadInputError("prepend_bos was asked but the tokenizer has no BOS token")
    ids, offsets = [], []
    for text in texts:
        if not text:
            raise BadInputError("empty prompt: every prompt needs at least one token")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids.append(([bos_id] if prepend_bos else []) + list(enc["input_ids"]))
        offsets.append(([(0, 0)] if prepend_bos else []) + [tuple(o) for o in enc["offset_mapping"]])
    result = Tokenized(ids, bool(prepend_bos), bos_id, offsets)
    check_lengths(model, result)
    return result


def check_lengths(model, tokens: Tokenized) -> None:
    """Raise :class:`BadInputError` for no prompts, an empty prompt or one longer than ``n_ctx``."""
    lengths = tokens.lengths
    if lengths.size == 0:
        raise BadInputError("no prompts to run")
    if lengths.min() == 0:
        raise BadInputError(f"prompt {int(lengths.argmin())} has no tokens")
    if lengths.max() > model.cfg.n_ctx:
        raise BadInputError(
            f"prompt {int(lengths.argmax())} has {int(lengths.max())} tokens, more than the model's "
            f"context of {model.cfg.n_ctx}"
        )


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
    model, tokens: Tokenized, batch_size: int = 32, progress: bool = False, desc: str = "batches"
) -> Iterator[Batch]:
    """Length-sorted, left-padded, masked batches of ``tokens`` on the model's device.

    Args:
        model: the HookedTransformer the batches are for (device, context, pad rule).
        tokens: from :func:`tokenize`.
        batch_size: prompts per batch.
        progress: show a tqdm bar over batches.
        desc: the bar's label, in words.

    Raises:
        BadInputError: batch size below 1, no prompts, an empty or too long prompt.
    """
    check_lengths(model, tokens)
    lengths = tokens.lengths
    pad = pad_id(model, tokens)
    chunks = length_sorted_batches(lengths, batch_size)
    for rows in tqdm(chunks, desc=desc, disable=not progress, unit="batch", leave=False):
        toks, mask = left_pad([tokens.ids[i] for i in rows], pad, model.cfg.device)
        yield Batch(rows, toks, mask, lengths[rows])


@dataclass(frozen=True)
class ParallelPrompts:
    """The problem set rendered and tokenized in two or more languages (same problems, same order)."""

    problems: tuple[Problem, ...]
    tokens: Mapping[str, Tokenized]
    langs: tuple[str, ...]
    seed: int

    @property
    def n(self) -> int:
        """Number of problems (pairs)."""
        return len(self.problems)

    @property
    def prepend_bos(self) -> bool:
        """Whether BOS was prepended to every prompt."""
        return self.tokens[self.langs[0]].prepend_bos

    def texts(self, lang: str) -> list[str]:
        """The prompts in one language, in problem order."""
        return [p.prompts[lang] for p in self.problems]

    def stacked(self) -> Tokenized:
        """Every language's prompts one after the other (``langs[0]`` rows first), for one extraction."""
        out = self.tokens[self.langs[0]]
        for lang in self.langs[1:]:
            out = out + self.tokens[lang]
        return out

    def identity(self) -> dict[str, object]:
        """What regenerates these prompts: problem-set id, languages and BOS handling."""
        first = self.tokens[self.langs[0]]
        return {**problem_set_id(self.n, self.seed), "languages": list(self.langs),
                "prepend_bos": first.prepend_bos, "bos_token_id": first.bos_id}


def parallel_prompts(
    model, n: int = 200, seed: int = 42, langs: Sequence[str] = ("zh", "en"), prepend_bos: bool | None = None
) -> ParallelPrompts:
    """Generate the problem set and tokenize it for ``model`` in each language.

    Raises:
        UnknownLanguageError: a language the problem set does not have.
        BadInputError: fewer than two languages, ``n`` not a positive multiple of 5, or a
            prompt longer than the model's context.
    """
    langs = check_languages(tuple(langs))
    if len(langs) < 2:
        raise BadInputError(f"need at least two languages to compare, got {' '.join(langs) or 'none'}")
    problems = tuple(generate_problems(n, seed, langs))
    tokens = {lang: tokenize(model, [p.prompts[lang] for p in problems], prepend_bos) for lang in langs}
    return ParallelPrompts(problems, MappingProxyType(tokens), langs, seed)
