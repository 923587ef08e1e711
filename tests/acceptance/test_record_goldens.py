"""Recording goldens: experiments/record_goldens.py and z_regression, on an embedded model and on GPT-2-shaped
random weights (the offline hub fixture), which must never become GPT-2 goldens."""

import runpy
import sys
from pathlib import Path

import pytest

from interp_tl import goldens

RECORDER = Path(__file__).parents[2] / "experiments" / "record_goldens.py"
COMMITTED = Path(__file__).parents[1] / "goldens"


def record(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [str(RECORDER), *args])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(RECORDER), run_name="__main__")
    return stop.value.code


def test_recorder_writes_what_the_tests_compare(monkeypatch, tmp_path, capsys):
    out = tmp_path / "toy.json"
    assert record(monkeypatch, "--model", "interp-tl/toy-random", "--out", str(out)) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    written, committed = goldens.load(out), goldens.load(COMMITTED / goldens.file_name("interp-tl/toy-random"))
    assert written["model"] == committed["model"] and written["settings"] == committed["settings"]
    assert all(row.ok for row in goldens.compare(committed, written))


@pytest.mark.slow
def test_gpt2_shaped_random_weights_are_never_recorded(offline_hub, monkeypatch, tmp_path, capsys, pytester):
    out = tmp_path / "gpt2.json"
    assert record(monkeypatch, "--model", "gpt2", "--out", str(out)) == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("record_goldens:")]
    assert err.startswith("record_goldens: error: refusing to record goldens of 'gpt2': loss ") and not out.exists()
    assert err.endswith("nats/token on English text, above 4.80 (untrained weights?)")  # 0.75 ln 600 (the fixture's BPE)

    pytester.makepyfile(test_gpt2="def test_gpt2(z_regression):\n    z_regression.check('gpt2')\n")
    result = pytester.runpytest("-p", "interp_tl.testing", "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*z_regression: refusing to record goldens of 'gpt2': loss * (untrained weights?)"])
    assert not (pytester.path / "test_gpt2").exists()
