"""Regression goldens of the embedded models (and GPT-2 small where its weights are), through the package's
z_regression fixture (the plugin registered by the package's pytest11 entry point)."""

from pathlib import Path

import pytest

from interp_tl import goldens
from interp_tl.errors import ModelNotAvailableError

GOLDENS = Path(__file__).parents[1] / "goldens"


def _compared_with_its_record(now: dict, path: Path) -> None:
    """The check ran on the recorded model and settings, over every recorded layer (it raises on moved z's)."""
    recorded = goldens.load(path)
    assert now["model"] == recorded["model"] and now["settings"] == recorded["settings"]
    assert now["layers"] == recorded["layers"] and len(now["layers"]) > 0


def test_default_model_goldens(z_regression, polyglot_model):
    """Per-layer z of the trained offline default model, interp-tl/polyglot-toy, through the package's plugin."""
    path = GOLDENS / goldens.file_name("interp-tl/polyglot-toy")
    _compared_with_its_record(z_regression.check(polyglot_model, fullpath=path), path)


def test_toy_goldens(z_regression, toy_model):
    """Per-layer z of the random-weight toy model (checks the machinery on byte tokens)."""
    path = GOLDENS / goldens.file_name("interp-tl/toy-random")
    _compared_with_its_record(z_regression.check(toy_model, fullpath=path), path)


def test_gpt2_goldens(z_regression, request):
    """GPT-2 small regression: recorded with `python experiments/record_goldens.py --model gpt2` (or --regen-all)."""
    path = GOLDENS / goldens.file_name("gpt2")
    regen = request.config.getoption("force_regen") or request.config.getoption("regen_all")
    if not path.exists() and not regen:
        pytest.skip("no GPT-2 goldens: record them where GPT-2 small's real weights are available with "
                    "`python experiments/record_goldens.py --model gpt2`")
    from interp_tl.models import load_model

    try:
        model = load_model("gpt2", processing="none")
    except ModelNotAvailableError as exc:
        pytest.skip(f"GPT-2 small's weights are not available here: {exc}")
    now = z_regression.check(model, fullpath=path)
    if path.exists():
        _compared_with_its_record(now, path)
