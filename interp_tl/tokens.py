"""Prompts to token ids, BOS explicit and recorded: the parallel problem set tokenized for a model.

Prompts are tokenized one by one without special tokens and BOS is prepended explicitly, so the
ids of a prompt never depend on the other prompts. No torch here: batching the ids for a forward
pass is :mod:`interp_tl.batching`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from jaxtyping import Int

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
