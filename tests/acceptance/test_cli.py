"""CLI: files written, provenance, and one-line errors with a non-zero exit and no partial files."""

import os
import subprocess
import sys

import pytest
import strict_json

from interp_tl import report
from interp_tl.cache import load_caches
from interp_tl.cli import main, parse_layers

FAST = ["--n-pairs", "10", "--n-boot", "0", "--n-perms", "50", "--quiet"]


def test_alignment_writes_json_png_and_the_cache(tmp_path, capsys):
    assert main(["alignment", *FAST, "--out", str(tmp_path), "--save-activations", "--layers", "0-1,3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alignment.json", "alignment.png",
                                                         "alignment_activations.safetensors", "index.html",
                                                         "index.json", "index.md"]
    data = strict_json.read(tmp_path / "alignment.json")
    assert [r["layer"] for r in data["layer_results"]] == [0, 1, 3]
    prov = data["provenance"]
    assert prov["model"]["processing"] == "none" and prov["prompts"]["n"] == 10 and prov["config"]["n_perms"] == 50
    caches, meta = load_caches(tmp_path / "alignment_activations.safetensors")
    assert meta["study"] == "alignment" and meta["prompts"]["n"] == 10
    assert meta["model"]["weights_fingerprint"] == prov["model"]["weights_fingerprint"]
    assert caches["last"]["blocks.3.hook_resid_pre"].shape == (20, 1, 128)  # zh then en, last token
    assert (tmp_path / "alignment.png").read_bytes()[:4] == b"\x89PNG"
    assert "alignment: en and zh last-token residuals align most after layer" in capsys.readouterr().out
    # the saved cache gives the same numbers without running the model
    again = tmp_path / "again"
    assert main(["alignment", *FAST, "--out", str(again), "--layers", "0-1,3", "--from-activations",
                 str(tmp_path / "alignment_activations.safetensors")]) == 0
    redo = strict_json.read(again / "alignment.json")
    assert redo["layer_results"] == data["layer_results"] and redo["head_shares"] == data["head_shares"]


def test_from_activations_refuses_other_prompts_models_and_tampering(tmp_path, capsys):
    saved = tmp_path / "alignment_activations.safetensors"
    assert main(["alignment", *FAST, "--out", str(tmp_path), "--save-activations", "--layers", "1"]) == 0
    capsys.readouterr()
    cases = [
        (["--n-pairs", "15"], "other prompts"),
        (["--model", "interp-tl/toy-random"], "not the same model"),
        (["--processing", "default"], "not the same model"),
    ]
    for extra, message in cases:
        assert main(["alignment", *FAST, "--out", str(tmp_path / "x"), "--layers", "1", "--from-activations",
                     str(saved), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    tampered = bytearray(saved.read_bytes())
    tampered[-5] ^= 0xFF  # a byte of the last tensor
    (tmp_path / "t.safetensors").write_bytes(bytes(tampered))
    assert main(["alignment", *FAST, "--out", str(tmp_path / "y"), "--layers", "1", "--from-activations",
                 str(tmp_path / "t.safetensors")]) == 2
    assert "changed after it was written" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    assert main(["alignment", *FAST, "--out", str(tmp_path / "z"), "--from-activations",
                 str(tmp_path / "junk.safetensors")]) == 2
    assert "cannot read activations file" in capsys.readouterr().err


def test_lens_writes_its_files_and_reanalyses_a_saved_cache(tmp_path, capsys):
    args = ["lens", "--n-pairs", "10", "--langs", "zh", "en", "--n-boot", "100", "--max-new-tokens", "10", "--quiet"]
    assert main([*args, "--out", str(tmp_path), "--save-activations"]) == 0
    assert {"lens.json", "lens.png", "lens_activations.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    caches, meta = load_caches(tmp_path / "lens_activations.safetensors")
    assert set(caches) == {"prompt", "number"} and caches["number"]["blocks.3.hook_resid_post"].shape == (20, 1, 128)
    assert "lens: last-token resid_pre of another problem" in capsys.readouterr().out
    again = tmp_path / "again"
    assert main([*args, "--out", str(again), "--from-activations", str(tmp_path / "lens_activations.safetensors")]) == 0
    first, second = strict_json.read(tmp_path / "lens.json"), strict_json.read(again / "lens.json")
    assert first["lens"] == second["lens"] and first["patching"] == second["patching"]


def test_all_writes_every_study_and_an_index(tmp_path):
    assert main(["all", *FAST, "--out", str(tmp_path / "run"), "--langs", "es", "ar"]) == 0
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"alignment.json", "alignment.png", "embedding.json", "embedding.png", "surgery.json", "surgery.png",
            "layers.json", "layers.png", "jacobian.json", "jacobian.png", "heads.json", "heads.png", "lens.json",
            "lens.png", "index.md", "index.json", "index.html"} == names
    index = strict_json.read(tmp_path / "run" / "index.json")
    assert [s["study"] for s in index["studies"]] == ["alignment", "embedding", "surgery", "layers", "jacobian",
                                                     "heads", "lens"]
    surgery = strict_json.read(tmp_path / "run" / "surgery.json")
    assert surgery["provenance"]["prompts"]["n"] == 10 and [r["lang"] for r in surgery["baseline"]] == ["es", "ar"]
    jacobian = strict_json.read(tmp_path / "run" / "jacobian.json")
    assert jacobian["provenance"]["sequences"]["languages"] == ["es", "ar"]
    assert strict_json.read(tmp_path / "run" / "embedding.json")["languages"] == ["es", "ar"]
    lens = strict_json.read(tmp_path / "run" / "lens.json")
    assert lens["languages"] == ["es", "ar"] and set(lens["patching"]["trials"]["language_pairs"]) == {"es>ar", "ar>es"}


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

    from dataclasses import replace

    from interp_tl.studies import STUDIES

    monkeypatch.setitem(STUDIES, "alignment", replace(STUDIES["alignment"], plot=broken))
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
