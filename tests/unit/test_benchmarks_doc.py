"""docs/benchmarks.md shows exactly what its benchmark JSON holds (the table is generated, never typed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _renderer():
    spec = importlib.util.spec_from_file_location("render_benchmarks", ROOT / "bench" / "render_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_doc_block_is_the_rendering_of_its_json():
    render = _renderer()
    text = (ROOT / "docs" / "benchmarks.md").read_text("utf-8")
    source = render.block_source(text)
    assert source is not None, "docs/benchmarks.md has no generated block: run bench/render_benchmarks.py"
    assert render.main([str(ROOT / source), "--check"]) == 0


def test_a_changed_figure_is_caught(tmp_path):
    render = _renderer()
    text = (ROOT / "docs" / "benchmarks.md").read_text("utf-8")
    source = render.block_source(text)
    if source is None:
        pytest.skip("no generated block yet")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(text.replace(" s |", " s  |", 1), "utf-8")
    assert render.main([str(ROOT / source), "--doc", str(doc), "--check"]) == 1
