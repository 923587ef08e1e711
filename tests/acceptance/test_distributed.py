"""Prompt-sharded extraction under torchrun (gloo, CPU): the same numbers as one process, and a rank
that fails ends the run with one line and no files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import strict_json

ARGS = ["alignment", "--n-pairs", "40", "--n-boot", "50", "--n-perms", "50", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(args, out, env=ENV):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "interp_tl.cli", *args, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _without_distribution(doc):
    doc["provenance"]["run"].pop("distributed")
    return doc


@pytest.mark.slow
def test_two_processes_give_the_single_process_json(tmp_path):
    proc = _torchrun(ARGS, tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("alignment: ") == 1  # rank 0 alone prints
    single = subprocess.run([sys.executable, "-m", "interp_tl.cli", *ARGS, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=600, env=ENV)
    assert single.returncode == 0, single.stderr
    two = strict_json.read(tmp_path / "two" / "alignment.json")
    assert two["provenance"]["run"]["distributed"] == {"world_size": 2, "backend": "gloo",
                                                       "sharded": "extraction batches"}
    assert _without_distribution(two) == strict_json.read(tmp_path / "one" / "alignment.json")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["alignment.json", "alignment.png", "index.html",
                                                               "index.json", "index.md"]


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_in_one_line_and_writes_nothing(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import interp_tl.cache as cache\n"
        "    def failing(*args, **kwargs):\n"
        "        raise RuntimeError('simulated failure on rank 1')\n"
        "    cache.extract = failing\n", "utf-8")
    out = tmp_path / "run" / "out"
    proc = _torchrun(ARGS, out, env={**ENV, "PYTHONPATH": str(site)})
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("interp-tl")]
    assert ours == ["interp-tl: error: rank 1 failed: RuntimeError: simulated failure on rank 1"]
    assert "[rank" not in proc.stderr  # no traceback from a rank (torchrun's own summary follows the line)
    assert not (tmp_path / "run").exists()  # neither the folder nor a staging folder beside it
