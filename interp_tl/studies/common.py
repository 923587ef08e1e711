"""What every study shares: the result object, the parallel prompts it runs on, and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from interp_tl.activations import Tokenized, tokenize
from interp_tl.errors import BadInputError
from interp_tl.models import model_provenance, versions
from interp_tl.prompts import Problem, check_languages, generate_problems, problem_set_id


@dataclass(frozen=True)
class StudyResult:
    """A study's numbers, what produced them, and (optionally) the activations behind them.

    Attributes:
        study: the study's name (``alignment``, ``embedding``, ...), also its output file stem.
        data: JSON-ready results; top-level keys follow the research scripts' JSON where one
            existed, so old and new files can be diffed.
        provenance: model, weight processing, prompts (set, seed, n, languages, BOS), layers,
            statistics settings and library versions.
        arrays: named activation arrays (``--save-activations``); never written into the JSON.
    """

    study: str
    data: Mapping[str, Any]
    provenance: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: ``{"study": ..., **data, "provenance": ...}``."""
        return {"study": self.study, **self.data, "provenance": dict(self.provenance)}


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

    def texts(self, lang: str) -> list[str]:
        """The prompts in one language, in problem order."""
        return [p.prompts[lang] for p in self.problems]


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


def run_provenance(model, prompts: ParallelPrompts, **settings: Any) -> dict[str, Any]:
    """Provenance of a study run: model, prompts, BOS handling, the study's settings, versions."""
    first = prompts.tokens[prompts.langs[0]]
    return {
        "model": model_provenance(model),
        "prompts": {**problem_set_id(prompts.n, prompts.seed), "languages": list(prompts.langs)},
        "prepend_bos": first.prepend_bos,
        "bos_token_id": first.bos_id,
        **settings,
        "versions": versions(),
    }


def finite_or_none(value: float) -> float | None:
    """A float for JSON: NaN and infinities become None (JSON has no NaN)."""
    value = float(value)
    return value if np.isfinite(value) else None
