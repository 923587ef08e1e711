"""Goldens without a model: two-sided comparison, the failure table, the refusals, the file format."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from interp_tl import goldens
from interp_tl.errors import BadInputError, ProvenanceMismatchError


def sample(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"embed.W_E": [10, 4], "blocks.0.attn.W_Q": [2, 4, 2], "blocks.0.ln1.w": [4], "unembed.b_U": [10]}
    return {name: {"shape": shape, "values": (scale * rng.normal(size=min(8, math.prod(shape)))).tolist()}
            for name, shape in shapes.items()}


def recorded_file() -> dict:
    settings = goldens.GoldenSettings(prepend_bos=True).as_dict()
    return {
        "format": goldens.FORMAT,
        "model": {"name": "my/model", "processing": "none", "weights_fingerprint": "aaaa"},
        "settings": settings,
        "layers": [0, 1],
        "alignment": {"z_pre": [1.0, 20.0], "z_post_mlp": [None, -5.0]},
        "embedding": {"z_raw_embed_last_token": 3.0},
        "versions": {},
        "weights_sample": sample(0),
    }


def test_compare_is_two_sided_at_atol_plus_rtol_times_golden():
    recorded = recorded_file()
    tol = 0.01 + 0.001 * 20.0
    for delta, ok in ((+0.99 * tol, True), (-0.99 * tol, True), (+1.01 * tol, False), (-1.01 * tol, False)):
        now = copy.deepcopy(recorded)
        now["alignment"]["z_pre"][1] += delta
        rows = goldens.compare(recorded, now, atol=0.01, rtol=0.001)
        assert len(rows) == 5
        moved = [r for r in rows if not r.ok]
        assert (moved == []) is ok
        if not ok:
            assert moved == [goldens.Difference("z_pre", 1, 20.0, 20.0 + delta, pytest.approx(delta), tol, False)]


def test_per_statistic_tolerances_override_the_defaults():
    recorded = recorded_file()
    now = copy.deepcopy(recorded)
    now["embedding"]["z_raw_embed_last_token"] += 0.5
    assert [r.statistic for r in goldens.compare(recorded, now) if not r.ok] == ["z_raw_embed_last_token"]
    wide = {"z_raw_embed_last_token": {"atol": 0.6}}
    assert all(r.ok for r in goldens.compare(recorded, now, tolerances=wide))
    with pytest.raises(BadInputError, match="unknown statistics"):
        goldens.compare(recorded, now, tolerances={"z_nope": {"atol": 1.0}})
    with pytest.raises(BadInputError, match="non-negative"):
        goldens.compare(recorded, now, atol=-1.0)
    with pytest.raises(BadInputError, match="only atol and rtol"):
        goldens.compare(recorded, now, tolerances={"z_pre": {"atl": 1.0}})


def test_undefined_and_missing_values():
    recorded = recorded_file()
    now = copy.deepcopy(recorded)
    assert all(r.ok for r in goldens.compare(recorded, now))  # None matches None
    now["alignment"]["z_post_mlp"][0] = 2.0
    now["alignment"]["z_pre"] = [1.0]  # layer 1 missing
    now["embedding"]["z_raw_embed_last_token"] = float("nan")
    bad = {(r.statistic, r.layer): r for r in goldens.compare(recorded, now) if not r.ok}
    assert set(bad) == {("z_post_mlp", 0), ("z_pre", 1), ("z_raw_embed_last_token", None)}
    assert bad["z_post_mlp", 0].difference is None and bad["z_pre", 1].now is None


def test_failure_table_is_one_aligned_table():
    rows = [goldens.Difference("z_post_mlp", 3, 13.7629, 13.8089, 0.046, 0.00338, False),
            goldens.Difference("z_raw_embed_last_token", None, None, 2.5, None, 0.002, False)]
    lines = goldens.failure_table(rows).splitlines()
    assert lines[0].split() == ["statistic", "layer", "golden", "now", "difference", "tolerance"]
    assert lines[1].split() == ["z_post_mlp", "3", "13.7629", "13.8089", "+0.046", "0.00338"]
    assert lines[2].split() == ["z_raw_embed_last_token", "-", "null", "2.5", "n/a", "0.002"]
    assert lines[1].index("3") == lines[0].index("layer")  # columns line up


def test_weights_change_tells_another_draw_from_an_edit():
    a = sample(0)
    assert goldens.weights_change(a, copy.deepcopy(a)) == (0.0, 0)
    edited = copy.deepcopy(a)
    edited["embed.W_E"]["values"][3] += 0.1
    median, moved = goldens.weights_change(a, edited)
    assert moved == 1 and median == 0.0
    scaled = {k: {**v, "values": [1.05 * x for x in v["values"]]} for k, v in a.items()}
    assert goldens.weights_change(a, scaled)[0] == pytest.approx(0.05 / 1.05)
    # independent draws of the same scale: sqrt(2) in expectation, far above OTHER_WEIGHTS
    many = [goldens.weights_change(sample(s), sample(s + 100))[0] for s in range(50)]
    assert min(many) > goldens.OTHER_WEIGHTS and 1.0 < float(np.mean(many)) < 1.6
    zeros = {k: {**v, "values": [0.0] * len(v["values"])} for k, v in a.items()}
    assert goldens.weights_change(a, zeros) == (1.0, 4) and goldens.weights_change(zeros, zeros) == (0.0, 0)


def test_architecture_and_settings_differences():
    a = sample(0)
    assert goldens.architecture_difference(a, sample(1)) is None
    fewer = {k: v for k, v in a.items() if k != "unembed.b_U"}
    assert "1 recorded parameters missing (e.g. ['unembed.b_U'])" in goldens.architecture_difference(a, fewer)
    wider = copy.deepcopy(a)
    wider["embed.W_E"]["shape"] = [12, 4]
    assert goldens.architecture_difference(a, wider) == "embed.W_E has shape [12, 4], recorded [10, 4]"
    s = goldens.GoldenSettings().as_dict()
    assert goldens.settings_difference(s, dict(s)) is None
    assert goldens.settings_difference(s, {**s, "n_pairs": 25, "seed": 1}) == (
        "n_pairs recorded 50, here 25; seed recorded 42, here 1")


def test_check_compatible_refuses_or_notes():
    recorded = recorded_file()
    same = {"model": recorded["model"], "settings": recorded["settings"], "weights_sample": sample(0)}
    assert goldens.check_compatible(recorded, same) is None
    edited = copy.deepcopy(same)
    edited["model"]["weights_fingerprint"] = "bbbb"
    edited["weights_sample"]["blocks.0.ln1.w"]["values"][0] += 0.5
    note = goldens.check_compatible(recorded, edited)
    assert note.startswith("the weights changed since recording (fingerprint aaaa, this model's bbbb; the sampled "
                           "values of 1 of 4 parameters moved, median 0.0% of their size")
    other = {**edited, "weights_sample": sample(7)}
    with pytest.raises(ProvenanceMismatchError, match="recorded on other weights .*not the same model"):
        goldens.check_compatible(recorded, other)
    arch = {**same, "weights_sample": {k: v for k, v in sample(0).items() if k != "embed.W_E"}}
    with pytest.raises(ProvenanceMismatchError, match="another architecture"):
        goldens.check_compatible(recorded, arch)
    langs = {**same, "settings": {**same["settings"], "langs": ["zh", "ja"]}}
    with pytest.raises(ProvenanceMismatchError, match=r"other settings \(langs recorded \['zh', 'en'\], here"):
        goldens.check_compatible(recorded, langs)


def test_load_refuses_what_is_not_a_goldens_file(tmp_path):
    path = tmp_path / "g.json"
    goldens.write(recorded_file(), path)
    assert goldens.load(path) == json.loads(json.dumps(recorded_file()))
    path.write_text(json.dumps({"model": "gpt2", "weights_fingerprint": "x"}), "utf-8")  # the old format
    with pytest.raises(ProvenanceMismatchError, match="not a goldens file of format .* record it again"):
        goldens.load(path)
    path.write_text("{", "utf-8")
    with pytest.raises(ProvenanceMismatchError, match="not JSON"):
        goldens.load(path)


@pytest.mark.wrong_types
def test_settings_are_validated():
    assert goldens.GoldenSettings(langs=["en", "ja"]).langs == ("en", "ja")
    for bad in (dict(n_pairs=7), dict(n_pairs=0), dict(langs=("zh", "en", "ja")), dict(langs=("zh", "xx")),
                dict(n_perms=1), dict(seed=-1), dict(prepend_bos="yes")):
        with pytest.raises(BadInputError):
            goldens.GoldenSettings(**bad)


def test_untrained_bound():
    assert goldens.max_trained_loss(50257) == goldens.MAX_TRAINED_LOSS
    assert goldens.max_trained_loss(257) == pytest.approx(0.75 * math.log(257))


def test_sample_positions_are_distinct_and_in_range():
    assert goldens.sample_positions(1) == [0] and goldens.sample_positions(3) == [0, 1, 2]
    assert goldens.sample_positions(10, 4) == [0, 3, 6, 9]
    big = 38597376  # GPT-2's W_E: float32 positions would round to 38597376, one past the end
    positions = goldens.sample_positions(big)
    assert positions[0] == 0 and positions[-1] == big - 1 and len(set(positions)) == 8
    assert all(0 < b - a <= big // 7 + 1 for a, b in zip(positions, positions[1:]))


def test_check_tolerances_knows_every_pinned_statistic():
    goldens.check_tolerances(0.0, 0.0, {"z_exact_post_mlp": {"rtol": 1e-3}, "z_raw_embed_mean_no_bos": {}})
    with pytest.raises(BadInputError, match="unknown statistics"):
        goldens.check_tolerances(1e-3, 0.0, {"z_post_mpl": {"atol": 1.0}})
    with pytest.raises(BadInputError, match="non-negative numbers"):
        goldens.check_tolerances(1e-3, 0.0, {"z_pre": {"atol": -1.0}})


@pytest.mark.wrong_types
def test_check_tolerances_refuses_what_is_not_a_number():
    for bad in (True, "0.1", None):
        with pytest.raises(BadInputError, match="non-negative numbers"):
            goldens.check_tolerances(1e-3, 0.0, {"z_pre": {"atol": bad}})


@pytest.mark.slow
def test_the_plugin_says_what_is_missing_without_pytest_regressions(pytester, monkeypatch):
    """A fresh process in which pytest_regressions cannot be imported (a shadow package that refuses)."""
    import os

    shadow = pytester.mkdir("shadow") / "pytest_regressions"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(test_x="def test_x(z_regression):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:regressions", "-p", "interp_tl.testing", "-p", "no:cacheprovider",
                                           "-q", "test_x.py")
    result.assert_outcomes(errors=1)  # in the fixture's set-up
    result.stdout.fnmatch_lines(["*z_regression needs pytest-regressions: pip install 'interp_tl?testing?'*"])
