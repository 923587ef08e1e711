"""Headlines and exact-null numbers do not move when the two languages are swapped; the Monte Carlo z does.

The swap is done on the same activations (the caches' two halves exchanged, the languages
reversed), so what is tested is the statistics, not the float32 rounding of a second forward pass
whose batches mix the languages differently.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import strict_json
import torch
from transformer_lens import ActivationCache

from interp_tl.analyses.alignment import layer_alignment
from interp_tl.analyses.shares import split_gap, writer_shares
from interp_tl.cache import split_languages
from interp_tl.studies import STUDIES
from interp_tl.tokens import ParallelPrompts

SMALL = {"alignment": {"n_pairs": 40, "n_boot": 0, "n_perms": 200},
         "embedding": {"n_pairs": 40, "n_boot": 0, "n_perms": 200, "n_token_problems": 5},
         "heads": {"n_pairs": 40, "n_perms": 100, "top": 2}}


def swapped(prompts: ParallelPrompts, caches: dict) -> tuple[ParallelPrompts, dict]:
    """The same prompts and activations with the two languages' order reversed."""
    out = {}
    for label, cache in caches.items():
        half = {name: t.shape[0] // 2 for name, t in cache.cache_dict.items()}
        out[label] = ActivationCache({name: torch.cat([t[half[name]:], t[: half[name]]])
                                      for name, t in cache.cache_dict.items()}, cache.model)
    return ParallelPrompts(prompts.problems, prompts.tokens, prompts.langs[::-1], prompts.seed), out


def exact_numbers(obj: Any, path: str = "", inside: bool = False) -> dict[str, float | None]:
    """Every number under a key that names the exact null (``*exact*``), plus shares and gaps, by path."""
    out: dict[str, float | None] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            hit = inside or "exact" in key or key in ("share", "total", "gap")
            out.update(exact_numbers(value, f"{path}/{key}", hit))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out.update(exact_numbers(value, f"{path}[{i}]", inside))
    elif inside and (obj is None or isinstance(obj, (int, float))) and not isinstance(obj, bool):
        out[path] = obj
    return out


def assert_same(x: dict, y: dict) -> None:
    assert x.keys() == y.keys() and x
    for key in x:
        if x[key] is None or y[key] is None:
            assert x[key] is None and y[key] is None, key
        else:
            assert abs(x[key] - y[key]) <= 1e-12 * max(1.0, abs(x[key])), (key, x[key], y[key])


@pytest.fixture(scope="module")
def both_orders(polyglot_model):
    runs = {}
    for name, settings in SMALL.items():
        study = STUDIES[name]
        config = study.config(langs=("zh", "en"), **settings)
        prompts = study.prepare(polyglot_model, config)
        caches = study.extract(polyglot_model, config, prompts)
        prompts_ba, caches_ba = swapped(prompts, caches)
        runs[name] = (study.analyse(polyglot_model, config, prompts, caches),
                      study.analyse(polyglot_model, replace(config, langs=("en", "zh")), prompts_ba, caches_ba))
    return runs


@pytest.mark.parametrize("name", list(SMALL))
def test_headline_and_exact_numbers_do_not_move_with_the_language_order(both_orders, name):
    ab, ba = both_orders[name]
    headline = STUDIES[name].headline
    assert headline(ab) == headline(ba)
    assert "exact" in headline(ab)
    x, y = exact_numbers(strict_json.round_trip(ab.data)), exact_numbers(strict_json.round_trip(ba.data))
    assert len(x) > 10
    assert_same(x, y)


def test_the_monte_carlo_z_moves_with_the_language_order(both_orders):
    """Why the headlines use the exact null: the research scripts' z depends on which language is permuted."""
    ab, ba = both_orders["alignment"]
    mc = [abs(r["z_post_mlp"] - s["z_post_mlp"]) for r, s in zip(ab.data["layer_results"], ba.data["layer_results"])]
    assert max(mc) > 0.1
    total = [d.data["summary"]["total_dz_attn"] for d in (ab, ba)]
    assert abs(total[0] - total[1]) > 0.1


def test_exact_keys_are_the_exact_null_of_the_research_keys(both_orders):
    ab, _ = both_orders["alignment"]
    for row in ab.data["layer_results"]:
        st = row["stats"]
        assert row["z_exact_post_mlp"] == st["post_mlp"]["z_exact"] and row["z_post_mlp"] == st["post_mlp"]["z"]
        assert row["dz_exact_attn"] == pytest.approx(st["post_attn"]["z_exact"] - st["pre"]["z_exact"], abs=1e-12)
        assert row["dz_exact_mlp"] == pytest.approx(st["post_mlp"]["z_exact"] - st["post_attn"]["z_exact"], abs=1e-12)
    s = ab.data["summary"]
    rows = ab.data["layer_results"]
    assert s["total_dz_exact_attn"] == pytest.approx(sum(r["dz_exact_attn"] for r in rows), abs=1e-12)
    assert s["total_dz_attn"] == pytest.approx(sum(r["dz_attn"] for r in rows), abs=1e-12)
    assert s["attn_dominant_layers_exact"] == sum(r["dz_exact_attn"] > r["dz_exact_mlp"] and r["dz_exact_attn"] > 0.5
                                                  for r in rows)
    assert set(ab.data["z_statistics"]) == {"z", "z_exact"}


def test_heads_ablation_reports_both_deltas(both_orders):
    ab, _ = both_orders["heads"]
    for ablation in ab.data["ablations"].values():
        for key in ("", "_exact"):
            assert ablation[f"delta_z{key}"] == pytest.approx(
                [x - y for x, y in zip(ablation[f"ablated{key}"], ablation[f"intact{key}"])], abs=1e-12)


def test_layer_alignment_and_shares_are_symmetric_on_raw_caches(polyglot_model, both_orders):
    """The analyses themselves, called as a user would with the caches in either order."""
    study = STUDIES["heads"]
    config = study.config(langs=("zh", "en"), n_pairs=20, n_perms=50)
    prompts = study.prepare(polyglot_model, config)
    by_lang = split_languages(study.extract(polyglot_model, config, prompts)["last"], prompts.langs)
    zh, en = by_lang["zh"], by_lang["en"]
    ab, ba = writer_shares(zh, en, 3, n_perms=50), writer_shares(en, zh, 3, n_perms=50)
    np.testing.assert_allclose(ab.shares, ba.shares, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ab.z_exact, ba.z_exact, rtol=1e-12)
    assert ab.total == pytest.approx(ba.total, rel=1e-12)
    align = STUDIES["alignment"]
    aconfig = align.config(langs=("zh", "en"), n_pairs=20, layers=(1, 3), head_shares=False)
    cache = split_languages(align.extract(polyglot_model, aconfig, align.prepare(polyglot_model, aconfig))["last"],
                            ("zh", "en"))
    x = layer_alignment(cache["zh"], cache["en"], n_boot=0).layer_results
    y = layer_alignment(cache["en"], cache["zh"], n_boot=0).layer_results
    for r, s in zip(x, y):
        for key in ("z_exact_pre", "z_exact_post_attn", "z_exact_post_mlp", "dz_exact_attn", "dz_exact_mlp"):
            assert r[key] == pytest.approx(s[key], rel=1e-12)


def _permutation_shares(parts_a: np.ndarray, parts_b: np.ndarray, perms) -> np.ndarray:
    """Each writer's share under each pairing, by the definition: ½ [T(u^c, v_π) + T(u_π^-1, v^c)]."""
    na, nb = np.linalg.norm(parts_a.sum(0), axis=1), np.linalg.norm(parts_b.sum(0), axis=1)
    uc, vc = parts_a / na[None, :, None], parts_b / nb[None, :, None]
    u, v = uc.sum(0), vc.sum(0)
    out = []
    for perm in perms:
        paired = [0.5 * np.mean([uc[c, i] @ v[perm[i]] + u[i] @ vc[c, perm[i]] for i in range(len(perm))])
                  for c in range(len(uc))]
        out.append(paired)
    null = np.array([0.5 * (np.mean(uc[c] @ v.T) + np.mean(u @ vc[c].T)) for c in range(len(uc))])
    return np.array(out) - null


def test_share_z_exact_and_ddof_against_enumeration():
    """n = 6: the exact z against all 720 pairings; the Monte Carlo z with ddof=0 against its own draws."""
    import itertools

    from interp_tl.stats import seed_permutations

    rng = np.random.default_rng(3)
    shared = rng.standard_normal((1, 6, 5))
    parts_a = rng.standard_normal((3, 6, 5)) + shared
    parts_b = rng.standard_normal((3, 6, 5)) + shared
    parts_a[2] = parts_b[2] = 0.0  # a writer that writes nothing: no spread, z null
    res = split_gap(parts_a, parts_b, n_perms=40, seed=5)
    every = _permutation_shares(parts_a, parts_b, list(itertools.permutations(range(6))))
    identity = every[0]
    np.testing.assert_allclose(res["shares"], identity, atol=1e-12)
    z = (identity[:2] - every.mean(0)[:2]) / every.std(0)[:2]
    np.testing.assert_allclose(res["z_exact"][:2], z, rtol=1e-9)
    drawn = _permutation_shares(parts_a, parts_b, seed_permutations(6, 40, 5))
    np.testing.assert_allclose(res["z"][:2], (identity[:2] - drawn.mean(0)[:2]) / drawn.std(0, ddof=0)[:2],
                               rtol=1e-9)
    assert np.isnan(res["z_exact"][2]) and np.isnan(res["z"][2])
