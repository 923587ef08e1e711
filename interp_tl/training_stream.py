"""What the embedded model was trained on: its training stream, replayed draw for draw.

``interp-tl/polyglot-toy`` is trained on an endless stream of problems (``experiments/train_polyglot.py``):
from ``random.Random(seed + 2)`` each example draws a category by the recipe's mixture, a language
uniformly, then the problem (:func:`interp_tl.prompts.draw_problem`); a problem that is in one of
the *excluded sets* (same template and numbers, any language) is skipped and drawn again, except in
the categories of :data:`MEMORISED_CATEGORIES`. The stream is :class:`TrainingStream`, used by the
training script itself, so replaying the recipe recorded in ``training.json`` (seed, mixture,
steps x batch, excluded sets) gives exactly the (problem, language) pairs the model saw.

:func:`trained_pairs` counts, for any problem set and languages, how many pairs were in the
stream, per category. "Held out" means that count is zero.

Combinatorics has only 118 distinct ``(n, k)`` problems (n in 5..20, k in 1..min(n - 1, 8)): none
can be held out, so every one is in the stream and that category measures memorisation.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from interp_tl.errors import BadInputError
from interp_tl.prompts import (
    CATEGORIES,
    Problem,
    check_languages,
    draw_problem,
    generate_problems,
    languages,
    problem_key,
)

#: Problem sets ``(n, seed)`` of :func:`interp_tl.prompts.generate_problems` the studies score the model
#: on, kept out of the training stream: the held-out table (seed 42 and a second seed, 43), which also
#: holds the surgery study's ``seed_test_problems`` and the default sets of the alignment, embedding and
#: fit sets (200, 42); the surgery study's loss set (50, 7); the Jacobian and heads studies' (20, 42).
EVALUATION_SETS: tuple[tuple[int, int], ...] = ((200, 42), (200, 43), (50, 7), (20, 42))

#: Categories with too few distinct problems to hold any out (combinatorics: 118): all in the stream.
MEMORISED_CATEGORIES: tuple[str, ...] = ("combinatorics",)

#: Distinct combinatorics problems: (n, k) with n in 5..20 and k in 1..min(n - 1, 8).
N_COMBINATORICS = sum(min(n - 1, 8) for n in range(5, 21))


def excluded_keys(sets: Sequence[Sequence[int]] = EVALUATION_SETS) -> frozenset[tuple]:
    """Problem keys (template and numbers) of ``sets`` the stream skips: all but the memorised categories."""
    return frozenset(
        problem_key(p)
        for n, seed in sets
        for p in generate_problems(int(n), int(seed), ["en"])
        if p.category not in MEMORISED_CATEGORIES
    )


class TrainingStream:
    """The training examples' problems and languages, drawn deterministically from ``random.Random(seed + 2)``.

    Attributes:
        skipped: draws skipped so far because the problem was in an excluded set.
    """

    def __init__(self, seed: int, mixture: Sequence[Sequence[Any]], excluded: Sequence[Sequence[int]]):
        self.rng = random.Random(seed + 2)
        self.cats = [str(c) for c, _ in mixture]
        self.weights = [float(w) for _, w in mixture]
        self.langs = languages()
        self.skip = excluded_keys(excluded)
        self.skipped = 0

    def draw(self) -> tuple[Problem, str]:
        """The next training problem (rendered in its language only) and its language."""
        while True:
            category = self.rng.choices(self.cats, self.weights)[0]
            lang = self.langs[self.rng.randrange(len(self.langs))]
            problem = draw_problem(self.rng, category, [lang])
            if problem_key(problem) not in self.skip:
                return problem, lang
            self.skipped += 1


def training_record() -> dict[str, Any]:
    """The shipped ``training.json`` of ``interp-tl/polyglot-toy``."""
    from interp_tl.models import polyglot_path

    return json.loads(polyglot_path().joinpath("training.json").read_text("utf-8"))


def recorded_excluded_sets(training: Mapping[str, Any]) -> tuple[tuple[int, int], ...]:
    """The excluded sets of a training record (older records name one ``held_out`` set)."""
    if "excluded_sets" in training["recipe"]:
        return tuple((int(n), int(seed)) for n, seed in training["recipe"]["excluded_sets"])
    held = training["held_out"]
    return ((int(held["n"]), int(held["seed"])),)


@lru_cache(maxsize=4)
def _replayed(seed: int, mixture: tuple, examples: int, excluded: tuple) -> tuple[frozenset, int]:
    stream = TrainingStream(seed, mixture, excluded)
    seen = set()
    for _ in range(examples):
        problem, lang = stream.draw()
        seen.add((problem_key(problem), lang))
    return frozenset(seen), stream.skipped


def replay(training: Mapping[str, Any] | None = None) -> tuple[frozenset[tuple], int]:
    """Replay a recipe's whole stream (``steps x batch_size`` examples).

    Args:
        training: a ``training.json`` record (default: the shipped model's).

    Returns:
        The set of ``(problem key, language)`` pairs trained on, and the number of skipped draws
        (equal to the record's ``skipped_held_out_draws`` when the replay is exact; tested).
    """
    training = training_record() if training is None else training
    recipe = training["recipe"]
    mixture = tuple((str(c), float(w)) for c, w in recipe["mixture"])
    examples = int(recipe["steps"]) * int(recipe["batch_size"])
    return _replayed(int(recipe["seed"]), mixture, examples, recorded_excluded_sets(training))


def trained_pairs(
    problems: Sequence[Problem], langs: Sequence[str], training: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """How many (problem, language) pairs of ``problems`` x ``langs`` the training stream contained, per category.

    Args:
        problems: any problems of the parallel set.
        langs: the languages they are scored in.
        training: a ``training.json`` record (default: the shipped ``interp-tl/polyglot-toy``'s).

    Returns:
        ``{category: {"pairs": n, "trained": m, "memorised": bool}}`` for the categories present
        (``memorised``: a category with too few problems to hold any out), plus ``"all"``.

    Raises:
        UnknownLanguageError: a language outside the set.
    """
    langs = check_languages(langs)
    seen, _ = replay(training)
    out: dict[str, dict[str, Any]] = {}
    for category in CATEGORIES:
        rows = [p for p in problems if p.category == category]
        if rows:
            trained = sum((problem_key(p), lang) in seen for p in rows for lang in langs)
            out[category] = {"pairs": len(rows) * len(langs), "trained": trained,
                             "memorised": category in MEMORISED_CATEGORIES}
    out["all"] = {"pairs": len(problems) * len(langs), "trained": sum(v["trained"] for v in out.values()),
                  "memorised": False}
    return out


def is_held_out(counts: Mapping[str, Mapping[str, Any]], memorised_too: bool = False) -> bool:
    """True when no pair of the counts of :func:`trained_pairs` was trained on (the memorised categories aside)."""
    if not counts:
        raise BadInputError("no counts to judge")
    return all(v["trained"] == 0 for c, v in counts.items() if c != "all" and (memorised_too or not v["memorised"]))


def model_trained_pairs(model, problems: Sequence[Problem], langs: Sequence[str]) -> dict[str, Any] | None:
    """:func:`trained_pairs` when ``model`` is the shipped ``interp-tl/polyglot-toy``; None for any other model.

    The model is recognised by its name (``cfg.model_name``); its training data is the shipped record's.
    """
    from interp_tl.models import POLYGLOT_MODEL

    if getattr(model.cfg, "model_name", None) != POLYGLOT_MODEL:
        return None
    return trained_pairs(problems, langs)
