"""The weight check before ``from_pretrained`` and the device check, for every name form and cache state.

No model is downloaded or built from the hub here: the cache is empty or holds placeholder files,
the reachability check is replaced, and TransformerLens' ``from_pretrained`` is a stub that
records its call (or fails the test when it must not be reached).
"""

import pytest
import torch
from hub_fixtures import fake_cached_repo, point_hub

from interp_tl import models
from interp_tl.cli import build_parser, main
from interp_tl.errors import BadInputError, ModelNotAvailableError

#: (name as typed, TransformerLens' official name = the repo id it reads)
NAMES = [("gpt2", "gpt2"), ("gpt2-small", "gpt2"), ("Qwen/Qwen2.5-3B", "Qwen/Qwen2.5-3B"),
         ("qwen2.5-3b", "Qwen/Qwen2.5-3B"), ("Qwen/Qwen3-4B", "Qwen/Qwen3-4B"), ("qwen3-4b", "Qwen/Qwen3-4B")]


@pytest.fixture
def calls(monkeypatch):
    """TransformerLens' from_pretrained replaced by a recorder that returns the toy model."""
    from transformer_lens import HookedTransformer

    made = []

    def fake(official, **kwargs):
        made.append((official, kwargs))
        return models.build_toy_model(n_devices=kwargs.get("n_devices", 1))

    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(fake))
    return made


def _reachable(monkeypatch, value: bool) -> None:
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: value)


@pytest.mark.parametrize(("name", "official"), NAMES)
def test_offline_uncached_is_one_line_saying_what_to_do(tmp_path, monkeypatch, capsys, calls, name, official):
    point_hub(monkeypatch, tmp_path / "hf", offline=True)
    out = tmp_path / "out"
    assert main(["alignment", "--model", name, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interp-tl: error: the weights of "), err
    assert f"`hf download {official}`" in err and "HF_HUB_OFFLINE is set" in err and str(tmp_path / "hf") in err
    assert "huggingface-cli" not in err and "HFValidationError" not in err and "openai-community/Qwen" not in err
    assert calls == [] and (not out.exists() or not any(out.iterdir()))


def test_unreachable_hub_says_so(tmp_path, monkeypatch, calls):
    point_hub(monkeypatch, tmp_path / "hf", offline=False)
    _reachable(monkeypatch, False)
    with pytest.raises(ModelNotAvailableError, match=r"cannot be reached: run `hf download Qwen/Qwen3-4B`") as info:
        models.load_model("Qwen/Qwen3-4B")
    assert "\n" not in str(info.value) and calls == []


@pytest.mark.parametrize(("name", "official"), NAMES)
def test_reachable_uncached_proceeds_to_download(tmp_path, monkeypatch, calls, name, official):
    point_hub(monkeypatch, tmp_path / "hf", offline=False)
    _reachable(monkeypatch, True)
    model = models.load_model(name, dtype="float64")
    assert calls == [(official, {"dtype": torch.float64, "device": "cpu", "n_devices": 1, **models.PROCESSING["none"]})]
    prov = models.model_provenance(model)
    assert prov["name"] == name and prov["processing"] == "none" and prov["n_devices"] == 1


def test_offline_check_never_asks_the_network(tmp_path, monkeypatch, calls):
    point_hub(monkeypatch, tmp_path / "hf", offline=True)

    def no_network(timeout=3.0):
        raise AssertionError("HF_HUB_OFFLINE is set: no connection may be tried")

    monkeypatch.setattr(models, "hub_reachable", no_network)
    with pytest.raises(ModelNotAvailableError):
        models.require_weights("Qwen/Qwen2.5-3B")


@pytest.mark.parametrize("official", ["gpt2", "Qwen/Qwen2.5-3B"])
def test_cached_offline_goes_to_transformer_lens(tmp_path, monkeypatch, calls, official):
    point_hub(monkeypatch, tmp_path / "hf", offline=True)
    fake_cached_repo(tmp_path / "hf", official)
    assert models.weights_cached(official)
    models.load_model(official, processing="none")
    assert [c[0] for c in calls] == [official]


def test_config_without_weights_is_not_cached(tmp_path, monkeypatch, calls):
    point_hub(monkeypatch, tmp_path / "hf", offline=True)
    fake_cached_repo(tmp_path / "hf", "Qwen/Qwen3-4B", files=("config.json", "tokenizer.json"))
    assert not models.weights_cached("Qwen/Qwen3-4B")
    fake_cached_repo(tmp_path / "hf", "Qwen/Qwen3-4B", files=("model.safetensors.index.json",))
    assert models.weights_cached("Qwen/Qwen3-4B")


def test_gpt2_under_its_new_org_only_is_named_in_the_message(tmp_path, monkeypatch, calls):
    """TransformerLens reads ``gpt2`` from ``models--gpt2``; a cache of ``openai-community/gpt2`` alone
    does not load offline (measured with transformers 5.24), so the check says so instead of passing."""
    point_hub(monkeypatch, tmp_path / "hf", offline=True)
    fake_cached_repo(tmp_path / "hf", "openai-community/gpt2")
    with pytest.raises(ModelNotAvailableError, match=r"holds openai-community/gpt2, which TransformerLens does not read"):
        models.load_model("gpt2")
    assert calls == []


def test_weights_cached_takes_any_string():
    assert not models.weights_cached("openai-community/Qwen/Qwen2.5-3B")  # the old check's invalid repo id
    assert not models.weights_cached("")


@pytest.mark.wrong_types
@pytest.mark.parametrize(("device", "n_devices", "message"), [
    ("cpu", 2, r"n_devices=2 splits the model over CUDA GPUs, but the device is 'cpu'"),
    ("cpu", 0, r"n_devices must be a whole number of at least 1, got 0"),
    ("cpu", 1.5, r"n_devices must be a whole number"),
    ("gpu", 1, r"unknown device 'gpu'"),
])
def test_device_requests_refused_in_one_line_before_loading(monkeypatch, calls, device, n_devices, message):
    _reachable(monkeypatch, True)
    for name in (models.TOY_MODEL, models.POLYGLOT_MODEL, "Qwen/Qwen2.5-3B"):
        with pytest.raises(BadInputError, match=message) as info:
            models.load_model(name, device=device, n_devices=n_devices)
        assert "\n" not in str(info.value)
    assert calls == []


def test_more_cuda_devices_than_the_machine_has(monkeypatch, calls):
    _reachable(monkeypatch, True)
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(BadInputError, match=rf"needs {have + 1} CUDA devices, this machine has {have}"):
        models.load_model("Qwen/Qwen2.5-3B", device="cuda", n_devices=have + 1)
    with pytest.raises(BadInputError, match=rf"needs {have + 2} CUDA devices"):
        models.load_model(models.TOY_MODEL, device="cuda:1", n_devices=have + 1)
    assert calls == []


def test_n_devices_passes_through_and_is_recorded(tmp_path, monkeypatch, calls):
    """With four (pretended) CUDA devices, n_devices=3 reaches from_pretrained and the provenance."""
    point_hub(monkeypatch, tmp_path / "hf", offline=False)
    _reachable(monkeypatch, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    models.check_devices("cuda:1", 3)
    with pytest.raises(BadInputError, match="needs 5 CUDA devices, this machine has 4"):
        models.check_devices("cuda:2", 3)
    monkeypatch.setattr(models, "check_devices", lambda device, n_devices: None)  # the stub builds on the CPU
    model = models.load_model("Qwen/Qwen2.5-3B", n_devices=3)
    assert calls[0][1]["n_devices"] == 3 and models.model_provenance(model)["n_devices"] == 3


def test_builtin_models_record_one_device():
    assert models.model_provenance(models.load_model(models.TOY_MODEL))["n_devices"] == 1


def test_cli_has_n_devices():
    assert build_parser().parse_args(["alignment", "--n-devices", "2"]).n_devices == 2
    assert build_parser().parse_args(["layers"]).n_devices == 1


def test_cli_n_devices_on_this_machine_is_one_line(tmp_path, capsys):
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert main(["alignment", "--n-devices", str(max(2, have + 1)), "--n-pairs", "5", "--n-boot", "0", "--n-perms", "20",
                 "--layers", "0", "--no-head-shares", "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n_devices" in err
