"""The parallel problem set: the seeds' problems, in the seeds' order, in seven languages."""

import json
import math
import random as pyrandom
import unicodedata
from pathlib import Path

import pytest

from interp_tl.errors import BadInputError, UnknownLanguageError
from interp_tl.prompts import (
    CATEGORIES,
    draw_problem,
    generate_problems,
    is_language_text,
    languages,
    load_templates,
)

SHARED_TEMPLATES = Path(__file__).resolve().parents[3] / "shared" / "data" / "problem_templates.json"


def seed_generate_problems(n=200, seed=42):
    """The research scripts' generator, verbatim in logic (zh/en only, with their NFKC punctuation)."""
    rng = pyrandom.Random(seed)
    problems = []
    per_cat = n // 5
    for _ in range(per_cat):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice(["plus", "times"])
        if op == "plus":
            zh, en = f"计算 {a} + {b} 的值。", f"Calculate {a} + {b}."
        else:
            zh, en = f"计算 {a} × {b} 的值。", f"Calculate {a} × {b}."
        problems.append({"zh": zh, "en": en, "category": 0})
    for _ in range(per_cat):
        n_val = rng.randint(5, 20)
        k_val = rng.randint(1, min(n_val - 1, 8))
        problems.append({"zh": f"求组合数 C({n_val}, {k_val}) 的值。", "en": f"Find the value of C({n_val}, {k_val}).",
                         "category": 1})
    for _ in range(per_cat):
        a = rng.randint(50, 9999)
        b = rng.randint(3, 37)
        problems.append({"zh": f"{a} 除以 {b} 的余数是多少?", "en": f"What is the remainder when {a} is divided by {b}?",
                         "category": 2})
    for _ in range(per_cat):
        w = rng.randint(2, 50)
        h = rng.randint(2, 50)
        problems.append({"zh": f"一个长方形的长为 {w},宽为 {h},求其面积。",
                         "en": f"A rectangle has length {w} and width {h}. Find its area.", "category": 3})
    for _ in range(per_cat):
        a1 = rng.randint(1, 20)
        d = rng.randint(1, 10)
        n_terms = rng.randint(5, 30)
        problems.append({"zh": f"等差数列首项为 {a1},公差为 {d},求前 {n_terms} 项之和。",
                         "en": f"An arithmetic sequence has first term {a1} and common difference {d}. "
                               f"Find the sum of the first {n_terms} terms.", "category": 4})
    rng.shuffle(problems)
    return problems


def test_hand_checked_rows():
    problems = generate_problems(200, 42)
    first, second, last = problems[0], problems[1], problems[199]
    assert first.category == "combinatorics" and dict(first.numbers) == {"n": 5, "k": 1} and first.answer == 5
    assert first.prompts["zh"] == "求组合数 C(5, 1) 的值。"
    assert first.prompts["en"] == "Find the value of C(5, 1)."
    assert second.prompts["zh"] == "6719 除以 15 的余数是多少？"
    assert second.prompts["en"] == "What is the remainder when 6719 is divided by 15?"
    assert second.answer == 6719 % 15 == 14
    assert last.prompts["en"] == "What is the remainder when 4612 is divided by 34?" and last.answer == 22


@pytest.mark.parametrize(("n", "seed"), [(200, 42), (50, 7)])
def test_same_problems_and_order_as_the_seeds(n, seed):
    ours = generate_problems(n, seed, langs=("zh", "en"))
    theirs = seed_generate_problems(n, seed)
    assert len(ours) == len(theirs) == n
    for mine, ref in zip(ours, theirs):
        assert mine.category_id == ref["category"]
        assert unicodedata.normalize("NFKC", mine.prompts["zh"]) == unicodedata.normalize("NFKC", ref["zh"])
        assert mine.prompts["en"] == ref["en"]


def test_answers_follow_the_formulas():
    for p in generate_problems(200, 42):
        v = p.numbers
        expected = {
            "arithmetic_plus": lambda: v["a"] + v["b"], "arithmetic_times": lambda: v["a"] * v["b"],
            "combinatorics": lambda: math.comb(v["n"], v["k"]), "modular": lambda: v["a"] % v["b"],
            "geometry": lambda: v["w"] * v["h"], "sequences": lambda: v["n"] * (2 * v["a1"] + (v["n"] - 1) * v["d"]) // 2,
        }[p.template]()
        assert p.answer == expected
        assert str(v.get("a", v.get("n", v.get("w", v.get("a1"))))) in p.prompts["ar"]


def test_seven_languages_and_full_width_chinese_punctuation():
    assert languages() == ("zh", "en", "es", "ar", "ja", "ko", "sw")
    problems = generate_problems(200, 42)
    assert all(set(p.prompts) == set(languages()) for p in problems)
    assert sum(p.category == c for p in problems for c in CATEGORIES) == 200
    assert {p.category for p in problems} == set(CATEGORIES)
    zh = [p.prompts["zh"] for p in problems]
    assert any("，" in t for t in zh) and any("？" in t for t in zh) and not any("," in t or "?" in t for t in zh
                                                                              if "C(" not in t)


def test_packaged_templates_match_shared_copy():
    if not SHARED_TEMPLATES.exists():
        pytest.skip("../shared/data/problem_templates.json is not beside this checkout")
    shared = json.loads(SHARED_TEMPLATES.read_text("utf-8"))
    assert {lang: dict(t) for lang, t in load_templates().items()} == shared["templates"]


def test_language_script_detection():
    assert is_language_text("计算", "zh") and not is_language_text("C(", "zh")
    assert is_language_text("Find", "en") and is_language_text("の値", "ja") and is_language_text("값", "ko")
    assert is_language_text("قيمة", "ar") and not is_language_text("قيمة", "en") and not is_language_text("12", "en")


def test_bad_input():
    with pytest.raises(BadInputError, match="multiple of 5"):
        generate_problems(12)
    with pytest.raises(UnknownLanguageError, match="unknown language 'fr'"):
        generate_problems(10, langs=("zh", "fr"))
    with pytest.raises(BadInputError, match="repeat"):
        generate_problems(10, langs=("zh", "zh"))


def test_draw_problem_makes_the_same_draws_as_the_fixed_set():
    rng = pyrandom.Random(42)
    rows = [draw_problem(rng, category) for category in CATEGORIES for _ in range(40)]
    rng.shuffle(rows)
    fixed = generate_problems(200, 42)
    assert [(r.template, dict(r.numbers), r.answer, dict(r.prompts)) for r in rows] == [
        (p.template, dict(p.numbers), p.answer, dict(p.prompts)) for p in fixed]


def test_draw_problem_refuses_unknown_category():
    with pytest.raises(BadInputError, match="unknown category 'algebra'"):
        draw_problem(pyrandom.Random(0), "algebra")


def _seed_test_selection(n_test=4):
    """The selection loop of shared/seeds/expAG_kernel_surgery.py (generate_test_problems), numbers only."""
    rng = pyrandom.Random(42)
    cats = []
    for _ in range(40):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice(["plus", "times"])
        cats.append(("arithmetic", a + b if op == "plus" else a * b))
    for _ in range(40):
        n_val = rng.randint(5, 20)
        k_val = rng.randint(1, min(n_val - 1, 8))
        cats.append(("combinatorics", math.comb(n_val, k_val)))
    for _ in range(40):
        a = rng.randint(50, 9999)
        b = rng.randint(3, 37)
        cats.append(("modular", a % b))
    for _ in range(40):
        w = rng.randint(2, 50)
        h = rng.randint(2, 50)
        cats.append(("geometry", w * h))
    for _ in range(40):
        a1 = rng.randint(1, 20)
        d = rng.randint(1, 10)
        n_terms = rng.randint(5, 30)
        cats.append(("sequences", n_terms * (2 * a1 + (n_terms - 1) * d) // 2))
    rng2 = pyrandom.Random(42)
    indices = list(range(len(cats)))
    rng2.shuffle(indices)
    cats = [cats[i] for i in indices]
    by_cat = {}
    for cat, ans in cats:
        by_cat.setdefault(cat, [])
        if len(by_cat[cat]) < n_test:
            by_cat[cat].append(ans)
    return [(cat, ans) for cat in by_cat for ans in by_cat[cat]]


@pytest.mark.parametrize("per_category", [4, 11])
def test_seed_test_problems_are_the_seeds_selection(per_category):
    from interp_tl.prompts import seed_test_problems

    got = seed_test_problems(per_category)
    assert [(p.category, p.answer) for p in got] == _seed_test_selection(per_category)
    assert len(got) == 5 * per_category and len({p.index for p in got}) == len(got)
    with pytest.raises(BadInputError, match="between 1 and 40"):
        seed_test_problems(41)


def test_generate_problems_excluding_replaces_only_the_excluded_rows():
    from interp_tl.prompts import generate_problems_excluding, overlap_count, problem_key, seed_test_problems

    drawn = generate_problems(200, 42)
    same, replaced = generate_problems_excluding(200, 42, [])
    assert replaced == 0 and [p.prompts for p in same] == [p.prompts for p in drawn]
    exclude = seed_test_problems(4)
    fit, replaced = generate_problems_excluding(200, 42, exclude)
    assert overlap_count(fit, exclude) == 0 and replaced == overlap_count(drawn, exclude) == 22
    changed = [i for i, (a, b) in enumerate(zip(drawn, fit)) if problem_key(a) != problem_key(b)]
    assert len(changed) == replaced and all(drawn[i].category == fit[i].category for i in changed)
    assert [p.category for p in fit] == [p.category for p in drawn]


def test_generate_problems_excluding_gives_up_when_a_category_is_exhausted():
    from interp_tl.prompts import Problem, generate_problems_excluding

    every = [Problem(0, "combinatorics", "combinatorics", {"n": n, "k": k}, math.comb(n, k), {})
             for n in range(5, 21) for k in range(1, min(n - 1, 8) + 1)]
    with pytest.raises(BadInputError, match="no combinatorics problem outside the excluded ones"):
        generate_problems_excluding(10, 42, every)
