"""The training stream of the embedded model as a package module: draws, exclusions, trained-pair counts."""

from __future__ import annotations

import math
import random

import pytest

from interp_tl.errors import BadInputError, UnknownLanguageError
from interp_tl.prompts import CATEGORIES, draw_problem, generate_problems, languages, problem_key
from interp_tl.training_stream import (
    EVALUATION_SETS,
    MEMORISED_CATEGORIES,
    N_COMBINATORICS,
    TrainingStream,
    excluded_keys,
    is_held_out,
    recorded_excluded_sets,
    trained_pairs,
)

MIXTURE = (("arithmetic", 0.1), ("combinatorics", 0.25), ("modular", 0.1), ("geometry", 0.35), ("sequences", 0.2))


def _record(steps: int, batch: int, excluded=((20, 42),)) -> dict:
    return {"recipe": {"seed": 3, "mixture": [list(m) for m in MIXTURE], "steps": steps, "batch_size": batch,
                       "excluded_sets": [list(s) for s in excluded]}}


def _by_hand(seed: int, n: int, excluded) -> tuple[list[tuple], int]:
    """The stream written out again: category by the mixture, language uniformly, problem; excluded ones redrawn."""
    skip = {problem_key(p) for n_, s in excluded for p in generate_problems(n_, s) if p.category != "combinatorics"}
    rng, out, skipped = random.Random(seed + 2), [], 0
    while len(out) < n:
        category = rng.choices([c for c, _ in MIXTURE], [w for _, w in MIXTURE])[0]
        lang = languages()[rng.randrange(7)]
        problem = draw_problem(rng, category, [lang])
        if problem_key(problem) in skip:
            skipped += 1
            continue
        out.append((problem_key(problem), lang, category))
    return out, skipped


def test_combinatorics_has_118_distinct_problems():
    rng = random.Random(0)
    seen = {problem_key(draw_problem(rng, "combinatorics", ["en"])) for _ in range(20_000)}
    assert len(seen) == N_COMBINATORICS == 118
    assert N_COMBINATORICS == sum(1 for n in range(5, 21) for k in range(1, min(n - 1, 8) + 1))
    assert all(math.comb(dict(k[1])["n"], dict(k[1])["k"]) > 0 for k in seen)


def test_excluded_keys_are_the_sets_without_combinatorics():
    keys = excluded_keys(((200, 42), (50, 7)))
    expected = {problem_key(p) for n, s in ((200, 42), (50, 7)) for p in generate_problems(n, s)
                if p.category not in MEMORISED_CATEGORIES}
    assert keys == expected
    assert not any(k[0] == "combinatorics" for k in keys)
    assert MEMORISED_CATEGORIES == ("combinatorics",)


def test_stream_is_the_recipe_written_out_by_hand():
    stream = TrainingStream(3, MIXTURE, ((200, 42),))
    got = [stream.draw() for _ in range(3000)]
    expected, skipped = _by_hand(3, 3000, ((200, 42),))
    assert [(problem_key(p), lang, p.category) for p, lang in got] == expected
    assert stream.skipped == skipped > 0
    assert all(set(p.prompts) == {lang} for p, lang in got)


def test_trained_pairs_counts_exactly_the_drawn_pairs():
    record = _record(steps=50, batch=8)
    drawn, _ = _by_hand(3, 400, ((20, 42),))
    problems = generate_problems(200, 9)
    got = trained_pairs(problems, ["en", "sw", "ko"], record)
    seen = {(key, lang) for key, lang, _ in drawn}
    for category in CATEGORIES:
        rows = [p for p in problems if p.category == category]
        expected = sum((problem_key(p), lang) in seen for p in rows for lang in ("en", "sw", "ko"))
        assert got[category] == {"pairs": 3 * len(rows), "trained": expected,
                                 "memorised": category == "combinatorics"}
    assert got["all"]["pairs"] == 600
    assert got["all"]["trained"] == sum(got[c]["trained"] for c in CATEGORIES) > 0  # the check can see a count


def test_excluded_sets_are_never_trained_on_except_combinatorics():
    record = _record(steps=400, batch=16, excluded=((20, 42), (50, 7)))
    for n, seed in ((20, 42), (50, 7)):
        counts = trained_pairs(generate_problems(n, seed), languages(), record)
        assert is_held_out(counts)
        assert counts["combinatorics"]["trained"] > 0 and counts["combinatorics"]["memorised"]
        assert not is_held_out(counts, memorised_too=True)
    other = trained_pairs(generate_problems(200, 7), languages(), record)  # not excluded: the check can fail
    assert not is_held_out(other)


def test_old_records_name_one_held_out_set():
    assert recorded_excluded_sets({"recipe": {}, "held_out": {"n": 200, "seed": 42}}) == ((200, 42),)
    assert recorded_excluded_sets(_record(1, 1, EVALUATION_SETS)) == EVALUATION_SETS


def test_bad_input():
    with pytest.raises(UnknownLanguageError):
        trained_pairs(generate_problems(5, 1), ["xx"], _record(1, 1))
    with pytest.raises(BadInputError):
        is_held_out({})
