"""CLI: files written, provenance, and one-line errors with a non-zero exit and no partial files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from interp_tl import report
from interp_tl.cli import main, parse_layers

FAST = ["--n-pairs", "10", "--n-boot", "0", "--n-perms", "50", "--quiet"]


def test_alignment_writes_json_png_and_seed_npz(tmp_path, capsys):
    assert main(["alignment", *FAST, "--out", str(tmp_path), "--save-activations", "--layers", "0-1,3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alignment.json", "alignment.png", "alignment_activations.npz"]
    data = json.loads((tmp_path / "alignment.json").read_text("utf-8"))
    assert [r["layer"] for r in data["layer_results"]] == [0, 1, 3]
    prov = data["provenance"]
    assert prov["model"]["processing"] == "none" and prov["prompts"]["n"] == 10 and prov["config"]["n_perms"] == 50
    with np.load(tmp_path / "alignment_activations.npz", allow_pickle=False) as npz:
        assert set(npz.files) == {f"{lang}_{kind}_L{layer}" for lang in ("zh", "en") for layer in (0, 1, 3)
                                  for kind in ("attn_delta", "mlp_delta", "h_pre")}
        assert npz["zh_h_pre_L3"].shape == (10, 128)
    assert (tmp_path / "alignment.png").read_bytes()[:4] == b"\x89PNG"
    assert "alignment: max z_post_mlp" in capsys.readouterr().out


def test_all_writes_every_study_and_an_index(tmp_path):
    assert main(["all", *FAST, "--out", str(tmp_path / "run"), "--langs", "es", "ar"]) == 0
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"alignment.json", "alignment.png", "embedding.json", "embedding.png", "surgery.json", "surgery.png",
            "layers.json", "layers.png", "jacobian.json", "jacobian.png", "heads.json", "heads.png", "index.md",
            "index.json"} == names
    index = json.loads((tmp_path / "run" / "index.json").read_text("utf-8"))
    assert [s["study"] for s in index["studies"]] == ["alignment", "embedding", "surgery", "layers", "jacobian",
                                                     "heads"]
    surgery = json.loads((tmp_path / "run" / "surgery.json").read_text("utf-8"))
    assert surgery["provenance"]["prompts"]["fit"]["n"] == 10
    assert json.loads((tmp_path / "run" / "embedding.json").read_text("utf-8"))["languages"] == ["es", "ar"]


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.parametrize(("args", "message"), [
    (["alignment", "--langs", "zh", "xx"], "unknown language 'xx'"),
    (["alignment", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["alignment", "--layers", "4"], "layer 4 is out of range: the model has layers 0..3"),
    (["embedding", "--n-pairs", "7"], "multiple of 5"),
    (["alignment", "--processing", "bogus"], "invalid choice"),
    (["alignment", "--layers", "a-b"], "layers must look like"),
    (["alignment", "--langs", "en", "en"], "languages repeat"),
    (["surgery", "--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["surgery", "--k", "128"], "must be between 1 and d_model - 1 = 127"),
    (["surgery", "--fit-n", "10", "--fit-langs", "zh", "en", "--k", "11"], "above the rank 10"),
    (["surgery", "--layers", "4"], "layer 4 is out of range"),
    (["surgery", "--eval-langs", "zh", "xx"], "unknown language 'xx'"),
    (["surgery", "--fit-langs", "zh"], "at least two fit languages"),
    (["layers", "--layers", "3"], "the block needs at least two layers"),
    (["layers", "--layers", "2-4"], "layer 4 is out of range"),
    (["jacobian", "--text", "/nonexistent/file.txt"], "cannot read text file"),
    (["jacobian", "--langs", "zh", "qq"], "unknown language 'qq'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    common = ["--quiet"] if args[0] in ("surgery", "layers", "jacobian") else FAST
    code = _exit_code([args[0], *common, "--out", str(out), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("interp-tl: error:")
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_fails_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["alignment", *FAST, "--out", str(blocker / "sub")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_no_partial_files_when_rendering_fails(tmp_path, toy_model, monkeypatch):
    from interp_tl.studies import AlignmentConfig, run_alignment

    result = run_alignment(toy_model, AlignmentConfig(n_pairs=5, n_perms=20, n_boot=0, layers=(0,)))

    def broken(_):
        raise RuntimeError("plot failed")

    monkeypatch.setitem(report.PLOTS, "alignment", broken)
    with pytest.raises(RuntimeError):
        report.write_result(result, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.json"
    report.atomic_write(target, b"old")
    report.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_parse_layers():
    assert parse_layers("0-2,5") == (0, 1, 2, 5)


def test_console_script_offline_hub_model_is_one_line(tmp_path):
    """A hub model whose weights are not cached, offline: one line saying how to get them, exit 2."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "interp_tl.cli", "alignment", "--model", "gpt2", "--out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not in the local Hugging Face cache" in lines[0] and "`hf download gpt2`" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_written_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        report.atomic_write(tmp_path / "x.json", b"{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
