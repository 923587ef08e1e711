"""The parallel problem set: the same math problem in seven languages, with its answer.

``generate_problems(n=200, seed=42)`` reproduces the research scripts' problems in their order:
``random.Random(seed)`` draws ``n // 5`` problems per category in the order arithmetic,
combinatorics, modular, geometry, sequences, then shuffles the rows with the same generator.
The templates ship with the package (``interp_tl/data/problem_templates.json``); the Chinese
ones keep the full-width '，' and '？' of the original research (the seeds' copies show their
NFKC forms ',' and '?').
"""

from __future__ import annotations

import json
import math
import random
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from types import MappingProxyType

from interp_tl.errors import BadInputError, UnknownLanguageError

CATEGORIES: tuple[str, ...] = ("arithmetic", "combinatorics", "modular", "geometry", "sequences")


@lru_cache(maxsize=1)
def load_templates() -> Mapping[str, Mapping[str, str]]:
    """Return ``{language: {template_key: template}}`` from the packaged JSON (read-only)."""
    text = resources.files("interp_tl.data").joinpath("problem_templates.json").read_text("utf-8")
    raw = json.loads(text)
    return MappingProxyType({lang: MappingProxyType(dict(raw["templates"][lang])) for lang in raw["languages"]})


@lru_cache(maxsize=1)
def load_answer_forms() -> Mapping[str, str]:
    """Return ``{language: answer sentence}`` from the packaged JSON (``{answer}`` marks the number; read-only).

    The embedded model answers a prompt with a space, its language's sentence and EOS, e.g. en
    ``" The answer is 42."``; training, scoring and the studies read the sentences from here.
    """
    text = resources.files("interp_tl.data").joinpath("problem_templates.json").read_text("utf-8")
    raw = json.loads(text)
    return MappingProxyType({lang: raw["answers"][lang] for lang in raw["languages"]})


def answer_sentence(answer: int, lang: str) -> str:
    """The answer sentence of ``lang`` for ``answer`` (no leading space), e.g. ``"Jibu ni 42."`` in sw."""
    check_languages([lang])
    return load_answer_forms()[lang].format(answer=answer)


def languages() -> tuple[str, ...]:
    """All language codes of the problem set, in the packaged order (zh en es ar ja ko sw)."""
    return tuple(load_templates())


def check_languages(langs: Sequence[str]) -> tuple[str, ...]:
    """Validate language codes; raise :class:`UnknownLanguageError` naming the bad one."""
    known = languages()
    for lang in langs:
        if lang not in known:
            raise UnknownLanguageError(f"unknown language {lang!r}: the problem set has {' '.join(known)}")
    if len(set(langs)) != len(langs):
        raise BadInputError(f"languages repeat: {' '.join(langs)}")
    return tuple(langs)


@dataclass(frozen=True)
class Problem:
    """One problem of the parallel set.

    Attributes:
        index: row in the (shuffled) problem set.
        category: one of :data:`CATEGORIES`.
        template: the template key (``arithmetic_plus``, ``arithmetic_times`` or the category).
        numbers: the drawn numbers, by placeholder name.
        answer: the integer answer.
        prompts: ``{language: prompt text}``.
    """

    index: int
    category: str
    template: str
    numbers: Mapping[str, int]
    answer: int
    prompts: Mapping[str, str] = field(repr=False)

    @property
    def category_id(self) -> int:
        """The seeds' integer category (0 arithmetic … 4 sequences)."""
        return CATEGORIES.index(self.category)


def _draw(rng: random.Random, category: str) -> tuple[str, dict[str, int], int]:
    """Draw one problem's numbers with the seeds' exact sequence of calls."""
    if category == "arithmetic":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice(["plus", "times"])
        return f"arithmetic_{op}", {"a": a, "b": b}, a + b if op == "plus" else a * b
    if category == "combinatorics":
        n = rng.randint(5, 20)
        k = rng.randint(1, min(n - 1, 8))
        return "combinatorics", {"n": n, "k": k}, math.comb(n, k)
    if category == "modular":
        a = rng.randint(50, 9999)
        b = rng.randint(3, 37)
        return "modular", {"a": a, "b": b}, a % b
    if category == "geometry":
        w = rng.randint(2, 50)
        h = rng.randint(2, 50)
        return "geometry", {"w": w, "h": h}, w * h
    a1 = rng.randint(1, 20)
    d = rng.randint(1, 10)
    n = rng.randint(5, 30)
    return "sequences", {"a1": a1, "d": d, "n": n}, n * (2 * a1 + (n - 1) * d) // 2


def _render(index: int, row: tuple[str, dict[str, int], int], langs: Sequence[str]) -> Problem:
    """A drawn row ``(template key, numbers, answer)`` as a :class:`Problem` rendered in ``langs``."""
    key, numbers, answer = row
    templates = load_templates()
    return Problem(
        index=index,
        category=key.split("_")[0],
        template=key,
        numbers=MappingProxyType(numbers),
        answer=answer,
        prompts=MappingProxyType({lang: templates[lang][key].format(**numbers) for lang in langs}),
    )


def generate_problems(n: int = 200, seed: int = 42, langs: Sequence[str] | None = None) -> list[Problem]:
    """Generate the parallel problem set exactly as the research scripts do.

    Args:
        n: number of problems; ``n // 5`` per category (the seeds' rule), so ``n`` must be a
            positive multiple of 5.
        seed: seed of ``random.Random``; 42 is the evaluation set of every study.
        langs: languages to render (default all seven).

    Returns:
        ``n`` problems in the seeds' shuffled order.

    Pitfall: the draws of all categories come from one generator, so ``n=100`` is not the
    first 100 rows of ``n=200``.
    """
    langs = check_languages(langs if langs is not None else languages())
    rng, rows = _seed_draws(n, seed)
    return [_render(i, row, langs) for i, row in enumerate(rows)]


def _seed_draws(n: int, seed: int) -> tuple[random.Random, list]:
    """The seeds' draws: ``n // 5`` rows per category from ``Random(seed)``, shuffled; and the generator after them."""
    if n < 5 or n % 5:
        raise BadInputError(f"n must be a positive multiple of 5 (n // 5 problems per category), got {n}")
    rng = random.Random(seed)
    rows = [_draw(rng, category) for category in CATEGORIES for _ in range(n // 5)]
    rng.shuffle(rows)
    return rng, rows


def seed_test_problems(per_category: int = 4, seed: int = 42, langs: Sequence[str] | None = None) -> list[Problem]:
    """The research scripts' generation test set: the first ``per_category`` problems of each category.

    ``expAG_kernel_surgery.py`` draws the same 200 problems as :func:`generate_problems` (category
    blocks from ``random.Random(seed)``), shuffles their *indices* with a fresh
    ``random.Random(seed)`` (not the drawing generator), keeps the first ``per_category`` of each
    category in that order and lists them category by category, in order of first appearance.
    Rendered with the packaged templates (the seed's English sequences prompt was ad hoc).
    """
    if not 1 <= per_category <= 40:
        raise BadInputError(f"per_category must be between 1 and 40 (the set has 40 per category), got {per_category}")
    langs = check_languages(langs if langs is not None else languages())
    rng = random.Random(seed)
    rows = [_draw(rng, category) for category in CATEGORIES for _ in range(40)]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    by_category: dict[str, list[int]] = {}
    for i in order:
        chosen = by_category.setdefault(rows[i][0].split("_")[0], [])
        if len(chosen) < per_category:
            chosen.append(i)
    return [_render(i, rows[i], langs) for chosen in by_category.values() for i in chosen]


def draw_problem(rng: random.Random, category: str, langs: Sequence[str] | None = None, index: int = 0) -> Problem:
    """Draw one problem of ``category`` with the seeds' number ranges, rendered in ``langs``.

    For corpora beyond the fixed set (e.g. training data for the embedded model): the same
    calls to ``rng`` as :func:`generate_problems` makes for one row of that category.
    """
    if category not in CATEGORIES:
        raise BadInputError(f"unknown category {category!r}: choose one of {', '.join(CATEGORIES)}")
    langs = check_languages(langs if langs is not None else languages())
    return _render(index, _draw(rng, category), langs)


def problem_set_id(n: int, seed: int) -> dict[str, object]:
    """Provenance of a problem set: what regenerates it exactly."""
    return {"name": "parallel-math-7", "n": n, "seed": seed, "generator": "random.Random, seeds' order"}


def problem_key(problem: Problem) -> tuple:
    """What makes two problems the same in every language: template and numbers (not the row index)."""
    return (problem.template, tuple(sorted(problem.numbers.items())))


def _row_key(row: tuple[str, dict[str, int], int]) -> tuple:
    return (row[0], tuple(sorted(row[1].items())))


def overlap_count(problems: Sequence[Problem], others: Sequence[Problem]) -> int:
    """How many of ``problems`` are also among ``others`` (same template and numbers)."""
    keys = {problem_key(p) for p in others}
    return sum(problem_key(p) in keys for p in problems)


#: Draws tried for one replacement before giving up (every problem of a category may be excluded).
_MAX_REDRAWS = 10_000


def generate_problems_excluding(
    n: int, seed: int, exclude: Sequence[Problem], langs: Sequence[str] | None = None
) -> tuple[list[Problem], int]:
    """:func:`generate_problems` with every problem that is also in ``exclude`` replaced, in place.

    The rows are drawn and shuffled exactly as :func:`generate_problems`; then each row that is
    also in ``exclude`` (same template and numbers) is replaced by the next draw of the same
    category from the same generator that is not. Rows not excluded stay the same problems in
    the same places, and each category keeps its count.

    Returns:
        The problems and how many rows were replaced.

    Raises:
        BadInputError: as :func:`generate_problems`, or no problem of a category outside ``exclude``
            turns up in 10,000 draws.
    """
    langs = check_languages(langs if langs is not None else languages())
    rng, rows = _seed_draws(n, seed)
    keys = {problem_key(p) for p in exclude}
    replaced = 0
    for i, row in enumerate(rows):
        if _row_key(row) not in keys:
            continue
        category = row[0].split("_")[0]
        for _ in range(_MAX_REDRAWS):
            row = _draw(rng, category)
            if _row_key(row) not in keys:
                break
        else:
            raise BadInputError(f"no {category} problem outside the excluded ones in {_MAX_REDRAWS} draws")
        rows[i] = row
        replaced += 1
    return [_render(i, row, langs) for i, row in enumerate(rows)], replaced


#: Unicode script(s) of each language's letters, by the prefix of the characters' Unicode names.
LANGUAGE_SCRIPTS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "zh": ("CJK UNIFIED",), "ja": ("CJK UNIFIED", "HIRAGANA", "KATAKANA"), "ko": ("HANGUL",),
    "ar": ("ARABIC",), "en": ("LATIN",), "es": ("LATIN",), "sw": ("LATIN",),
})


def char_script(char: str) -> str | None:
    """The script of a letter (``CJK UNIFIED``, ``HIRAGANA``, ``LATIN``, ...), None for non-letters."""
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    for prefix in ("CJK UNIFIED", "HIRAGANA", "KATAKANA", "HANGUL", "ARABIC", "LATIN"):
        if name.startswith(prefix):
            return prefix
    return name.split(" ")[0] or None


def is_language_text(text: str, lang: str) -> bool:
    """True when ``text`` has a letter in ``lang``'s script (CJK for zh; kana or CJK for ja; ...)."""
    scripts = LANGUAGE_SCRIPTS[lang]
    return any(char_script(c) in scripts for c in text)
