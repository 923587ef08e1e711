"""Runs a user can trust: bad input refused in one line before anything is written, files landing as
a set, an index that always describes the files present, progress on stderr and results on stdout."""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import strict_json

from interp_tl.cli import main
from interp_tl.report import read_results, write_index

FAST = ["--n-pairs", "10", "--n-boot", "0", "--n-perms", "20", "--quiet"]

#: (arguments after the subcommand's name, a fragment of the one line)
BAD = [
    (["alignment", "--device", "cuda"], "needs 1 CUDA devices"),
    (["alignment", "--device", "tpu"], "unknown device 'tpu'"),
    (["alignment", "--device", "nonsense"], "unknown device 'nonsense'"),
    (["alignment", "--device", "mps"], "not available on this machine"),
    (["alignment", "--n-devices", "2"], "splits the model over CUDA GPUs"),
    (["alignment", "--n-devices", "0"], "n_devices must be a whole number of at least 1"),
    (["layers", "--null-random-seed", "-1"], "null_random_seed must be an integer >= 0"),
    (["alignment", "--layers", "5-2"], "reversed range '5-2'"),
    (["alignment", "--layers", "9"], "layer 9 is out of range: the model has layers 0..3"),
    (["alignment", "--n-pairs", "0"], "n_pairs must be an integer >= 5"),
    (["alignment", "--n-pairs", "7"], "multiple of 5"),
    (["alignment", "--n-pairs", "-3"], "n_pairs must be an integer >= 5"),
    (["alignment", "--n-pairs", "100000000"], "GiB available: use fewer pairs"),
    (["alignment", "--model", "nonexistent-model"], "unknown model 'nonexistent-model'"),
    (["alignment", "--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["embedding", "--langs", "zh", "en", "ja"], "exactly 2 languages"),
    (["alignment", "--langs", "zh", "xx"], "unknown language 'xx'"),
    (["heads", "--layer", "9"], "layer 9 is out of range"),
    (["heads", "--top", "-1"], "top must be an integer >= 0, got -1"),
    (["heads", "--n-perms", "1"], "n_perms must be an integer >= 2"),
    (["head", "0.9"], "head 9 is out of range"),
    (["head", "7.0"], "layer 7 is out of range"),
    (["head", "x"], "a head is written L.H"),
    (["head", "0.1", "--n-perms", "1"], "n_perms must be an integer >= 2"),
    (["jacobian", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["jacobian", "--batch-size", "-1"], "batch_size must be an integer >= 1, got -1"),
    (["jacobian", "--n-problems", "3"], "n_problems must be an integer >= 5"),
    (["surgery", "--layers", "2-7"], "layer 4 is out of range"),
    (["surgery", "--k", "128"], "must be between 1 and d_model - 1 = 127"),
    (["surgery", "--alpha", "2"], "alpha must be in [0, 1]"),
    (["layers", "--layers", "1,1"], "consecutive layers in increasing order"),
    (["layers", "--layers", "3,1,2"], "consecutive layers in increasing order"),
    (["alignment", "--save-activations", "--from-activations", "x.safetensors"], "exclude each other"),
    (["all", "--surgery.k", "0"], "k must be an integer >= 1"),
    (["all", "--langs", "zh"], "exactly 2 languages"),
    (["alignment", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["alignment", "--layers", "4"], "layer 4 is out of range: the model has layers 0..3"),
    (["embedding", "--n-pairs", "7"], "multiple of 5"),
    (["alignment", "--processing", "bogus"], "invalid choice"),
    (["alignment", "--layers", "a-b"], "layers must look like"),
    (["alignment", "--langs", "en", "en"], "languages repeat"),
    (["surgery", "--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["surgery", "--n-pairs", "10", "--langs", "zh", "en", "--k", "11"], "above the rank 10"),
    (["surgery", "--layers", "4"], "layer 4 is out of range"),
    (["surgery", "--langs", "zh", "xx"], "unknown language 'xx'"),
    (["surgery", "--langs", "zh"], "at least two languages"),
    (["layers", "--layers", "3"], "the block needs at least two layers"),
    (["layers", "--layers", "2-4"], "layer 4 is out of range"),
    (["jacobian", "--text", "/nonexistent/file.txt"], "cannot read text file"),
    (["jacobian", "--langs", "zh", "qq"], "unknown language 'qq'"),
    (["head", "1.3", "--n-perms", "1"], "n_perms must be an integer >= 2, got 1"),
    (["alignment", "--n-perms", "1"], "n_perms must be an integer >= 2, got 1"),
    (["embedding", "--n-perms", "1"], "n_perms must be an integer >= 2, got 1"),
    (["all", "--n-perms", "1"], "n_perms must be an integer >= 2, got 1"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
@pytest.mark.parametrize("out_state", ["absent", "holding a run"])
def test_bad_input_is_one_line_exit_2_and_out_untouched(tmp_path, capsys, args, message, out_state):
    out = tmp_path / "out"
    if out_state == "holding a run":
        out.mkdir()
        (out / "alignment.json").write_text('{"study": "alignment"}', "utf-8")
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir()) if out.exists() else None
    try:
        code = main([*args, "--quiet", "--out", str(out)])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("interp-tl: error:") and message in err, err
    after = sorted((p.name, p.read_bytes()) for p in out.iterdir()) if out.exists() else None
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no staging folder left beside it


@pytest.mark.parametrize("out", ["", "  "])
def test_empty_output_path_is_refused(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    assert main(["alignment", *FAST, "--out", out]) == 2
    assert "empty path" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_a_directory_in_the_way_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "alignment.png").mkdir(parents=True)
    assert main(["alignment", *FAST, "--layers", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "a directory of that name is in the way" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["alignment.png"]  # no alignment.json: no half result
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _index_matches_files(out):
    index = strict_json.read(out / "index.json")
    present = {r.study: r for r in read_results(out)}
    assert [e["study"] for e in index["studies"]] == list(present)
    for entry in index["studies"]:
        result = present[entry["study"]]
        assert entry["run"]["prompts"] == ({k: result.provenance["prompts"][k] for k in ("name", "n", "seed",
                                                                                          "languages")}
                                           if "prompts" in result.provenance else None)
        assert entry["run"]["weights_fingerprint"] == result.provenance["model"]["weights_fingerprint"]
        for name in entry["files"]:
            assert (out / name).is_file()
    text = (out / "index.md").read_text("utf-8")
    page = (out / "index.html").read_text("utf-8")
    for entry in index["studies"]:
        assert entry["headline"] in text and html.escape(entry["headline"]) in page
    return index


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    assert main(["all", *FAST, "--surgery.eval-per-category", "1", "--surgery.sweep-k", "1",
                 "--surgery.sweep-alpha", "1", "--jacobian.n-problems", "5", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_a_second_run_into_the_folder_rebuilds_the_index_from_the_files(full_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    assert _index_matches_files(out)["mixed_runs"] is False
    assert main(["alignment", "--n-pairs", "15", "--n-boot", "0", "--n-perms", "20", "--quiet", "--out",
                 str(out)]) == 0
    index = _index_matches_files(out)
    assert index["mixed_runs"] is True
    n = {e["study"]: e["run"]["prompts"]["n"] for e in index["studies"] if e["run"]["prompts"]}
    assert n["alignment"] == 15 and n["embedding"] == 10
    assert "more than one run" in (out / "index.md").read_text("utf-8")


@pytest.mark.slow
def test_an_interrupted_all_leaves_an_index_that_matches_its_files(full_run, tmp_path, capsys, monkeypatch):
    from interp_tl.studies import STUDIES

    out = tmp_path / "run"
    shutil.copytree(full_run, out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(STUDIES, "layers", replace(STUDIES["layers"], run=interrupted))
    code = main(["all", "--n-pairs", "15", "--n-boot", "0", "--n-perms", "20", "--quiet",
                 "--surgery.eval-per-category", "1", "--surgery.sweep-k", "1", "--surgery.sweep-alpha", "1",
                 "--out", str(out)])
    assert code == 130
    printed = capsys.readouterr().out
    # the studies that finished said so as they finished, and their files are in place
    assert "alignment: " in printed and "surgery: " in printed and "layers: " not in printed
    index = _index_matches_files(out)
    n = {e["study"]: e["run"]["prompts"]["n"] for e in index["studies"] if e["run"]["prompts"]}
    assert n["alignment"] == n["embedding"] == n["surgery"] == 15 and n["heads"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name != "run"]  # the staging folder is gone


def test_index_of_an_empty_folder_and_of_foreign_json(tmp_path):
    (tmp_path / "notes.json").write_text("{}", "utf-8")
    (tmp_path / "alignment.json").write_text('{"study": "other"}', "utf-8")
    write_index(tmp_path)
    assert strict_json.read(tmp_path / "index.json")["studies"] == []


@pytest.mark.slow
def test_results_on_stdout_progress_and_loading_on_stderr(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "interp_tl.cli", "layers", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("layers: layers ")
    assert all(line.startswith(("layers:", "  wrote")) for line in proc.stdout.splitlines())
    assert "interp-tl: loading interp-tl/polyglot-toy" in proc.stderr
    assert "layers: comparing layer pairs" in proc.stderr


@pytest.mark.parametrize("args", [["alignment", "--n-pairs", "7"], ["all", "--langs", "zh", "xx"],
                                  ["surgery", "--alpha", "2"], ["layers", "--null-random-seed", "-1"],
                                  ["alignment", "--out", ""]])
def test_bad_settings_are_refused_before_torch_is_imported(args):
    code = ("import sys\nfrom interp_tl.cli import main\nrc = main(%r)\n"
            "assert 'torch' not in sys.modules and 'transformer_lens' not in sys.modules, 'imported'\nsys.exit(rc)"
            % (args,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("interp-tl: error:")
