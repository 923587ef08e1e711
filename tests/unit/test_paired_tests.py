"""Exact paired tests of binary outcomes against brute-force enumeration of their null distributions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from interp_tl.errors import BadInputError
from interp_tl.stats import item_sign_flip, mcnemar, paired_binary_tests, stratified_mcnemar


def _outcomes(seed: int, strata: int, items: int, flip: float = 0.3) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    before = {f"s{i}": list(rng.random(items) < 0.5) for i in range(strata)}
    after = {s: [(not x) if rng.random() < flip else x for x in v] for s, v in before.items()}
    return before, after


def _enumerated_pooled_p(before: dict, after: dict) -> float:
    """P(|L − N/2| >= |l − N/2|) with every discordant pair of every stratum lost or gained with probability 1/2."""
    signs = []
    for s in before:
        signs += [x != y for x, y in zip(before[s], after[s]) if x is not None and y is not None]
    n = sum(signs)
    lost = sum(x and not y for s in before for x, y in zip(before[s], after[s]) if x is not None and y is not None)
    extreme = sum(1 for flips in itertools.product((0, 1), repeat=n) if abs(sum(flips) - n / 2) >= abs(lost - n / 2))
    return extreme / 2**n


def test_mcnemar_is_the_two_sided_binomial_and_drops_undefined_pairs():
    before = [True, True, True, False, None, True, False]
    after = [False, False, True, True, True, None, False]
    res = mcnemar(before, after)
    assert res == {"lost": 2, "gained": 1, "n_pairs": 5, "p_value": pytest.approx(1.0)}
    assert mcnemar([True] * 7, [False] * 7)["p_value"] == pytest.approx(2 / 2**7)
    assert mcnemar([True], [True])["p_value"] == 1.0
    with pytest.raises(BadInputError, match="must pair up"):
        mcnemar([True], [True, False])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pooled_test_equals_enumerating_every_strata_assignment(seed):
    before, after = _outcomes(seed, strata=3, items=6)
    before["s0"][1] = None  # an undefined outcome leaves its pair out
    res = stratified_mcnemar(before, after)
    assert res["discordant"] >= 3  # a null distribution with something to enumerate
    per = [mcnemar(before[s], after[s]) for s in before]
    assert res["lost"] == sum(t["lost"] for t in per) and res["gained"] == sum(t["gained"] for t in per)
    assert res["discordant"] == res["lost"] + res["gained"] and res["n_strata"] == 3 and res["n_pairs"] == 17
    assert res["p_value"] == pytest.approx(_enumerated_pooled_p(before, after), abs=1e-12)
    if res["discordant"]:
        assert res["p_value"] == pytest.approx(binomtest(res["lost"], res["discordant"], 0.5).pvalue)


def test_pooling_gains_power_the_strata_alone_do_not_have():
    # 7 languages, each one problem lost and none gained: no stratum can reach p < 0.05 (p = 1 each),
    # the pooled exact test sees 7 of 7 discordant pairs lost (p = 2 / 2^7).
    before = {f"l{i}": [True, True, False] for i in range(7)}
    after = {f"l{i}": [False, True, False] for i in range(7)}
    res = paired_binary_tests(before, after)
    assert all(t["p_value"] == 1.0 for t in res["per_stratum"].values())
    assert res["pooled"]["p_value"] == pytest.approx(2 / 2**7)
    # ... but it is the same problem in every language: by problem the evidence is one problem (p = 1)
    assert res["by_item"]["items_changed"] == 1 and res["by_item"]["p_value"] == 1.0


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_sign_flip_by_item_equals_enumerating_all_flips(seed):
    before, after = _outcomes(seed, strata=4, items=9, flip=0.4)
    before["s2"][0] = None
    res = item_sign_flip(before, after)
    assert res["items_changed"] >= 4
    totals = [sum(int(after[s][i]) - int(before[s][i]) for s in before
                  if before[s][i] is not None and after[s][i] is not None) for i in range(9)]
    observed = sum(totals)
    extreme = sum(1 for e in itertools.product((-1, 1), repeat=9)
                  if abs(sum(x * t for x, t in zip(e, totals))) >= abs(observed))
    assert res["gained_minus_lost"] == observed and res["n_items"] == 9
    assert res["items_changed"] == sum(t != 0 for t in totals)
    assert res["p_value"] == pytest.approx(extreme / 2**9, abs=1e-15)


def test_sign_flip_is_exact_far_in_the_tail():
    # 60 items each losing in two strata: p = 2 / 2^60, far below float rounding of 1.
    res = item_sign_flip({"a": [True] * 60, "b": [True] * 60}, {"a": [False] * 60, "b": [False] * 60})
    assert res["p_value"] == pytest.approx(2 / 2**60, rel=1e-12) and res["gained_minus_lost"] == -120
    assert math.isclose(res["p_value"], 2.0**-59)


def test_bad_strata():
    with pytest.raises(BadInputError, match="strata differ"):
        stratified_mcnemar({"a": [True]}, {"b": [True]})
    with pytest.raises(BadInputError, match="same items"):
        item_sign_flip({"a": [True], "b": [True, False]}, {"a": [True], "b": [True, False]})
