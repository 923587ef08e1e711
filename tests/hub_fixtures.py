"""Offline Hugging Face hub caches for the tests: real architecture classes, shrunk, random weights.

:func:`build_hub` writes, under ``<hf_home>/hub``, the hub layout (``models--org--name/refs/main``
and ``snapshots/<revision>/``) of

* ``Qwen/Qwen2.5-3B`` as ``Qwen2ForCausalLM`` (q/k/v biases, grouped-query attention, rotary,
  RMSNorm, SwiGLU) and ``Qwen/Qwen3-4B`` as ``Qwen3ForCausalLM`` (adds q/k RMSNorms, no
  biases), both at d_model 128, 4 layers, 4 heads, 2 KV heads, tied embeddings;
* ``gpt2`` (``openai-community/gpt2``, the hub's own name since the rename) as ``GPT2LMHeadModel``
  at d_model 128, 4 layers, 4 heads; ``models--gpt2`` links to it, as a cache made by
  ``hf download gpt2`` is named.

Weights are random (seeded; norm gains ``1 + 0.1 N(0, 1)`` and biases ``0.02 N(0, 1)`` so that
weight processing changes numbers), the tokenizer a byte-level BPE trained with ``tokenizers``
on the package's problem templates (``AutoTokenizer`` loads it; no BOS by default, as Qwen's).
None of their numbers are the real models': they exercise TransformerLens' real loading path
offline. Building all three takes a few seconds and leaves the global random state alone.

Point a new process at the cache with :func:`offline_env` (``HF_HOME``, ``HF_HUB_OFFLINE=1``), this
process with :func:`point_hub` (a pytest ``monkeypatch`` undoes it). :func:`fake_cached_repo` writes
placeholder entries for tests of the cache lookup alone. Nothing here is imported by the package.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

REVISION = "0123456789abcdef0123456789abcdef01234567"
QWEN2 = "Qwen/Qwen2.5-3B"
QWEN3 = "Qwen/Qwen3-4B"
GPT2 = "gpt2"
GPT2_REPO = "openai-community/gpt2"
#: Shrunk shapes shared by the two Qwen fixtures.
QWEN_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  tie_word_embeddings=True)
SEEDS = {QWEN2: 1, QWEN3: 2, GPT2_REPO: 3}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def template_texts() -> list[str]:
    """Every string of ``interp_tl/data/problem_templates.json`` plus the numbers 0..999."""
    text = resources.files("interp_tl.data").joinpath("problem_templates.json").read_text("utf-8")
    return list(_strings(json.loads(text))) + [str(i) for i in range(1000)]


@lru_cache(maxsize=None)
def _trained_bpe_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(template_texts() * 3, trainer)
    return tok.to_str()


def bpe_tokenizer(vocab_size: int = 600):
    """A byte-level BPE (``PreTrainedTokenizerFast``) trained on the problem templates; EOS = PAD = id 0."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_trained_bpe_json(vocab_size))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _snapshot(hf_home: Path, repo: str) -> Path:
    base = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(REVISION)
    return snap


def randomize_norms_and_biases_(model, seed: int) -> None:
    """Norm gains ``1 + 0.1 N(0, 1)``, biases ``0.02 N(0, 1)`` (a fresh HF model has 1 and 0), in place."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if "norm" in name or ".ln_" in name:
                param.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.02 * noise)
            elif name.endswith("bias"):
                param.copy_(0.02 * noise)


def _save(hf_home: Path, repo: str, config, tokenizer, tokenizer_config: dict[str, Any]) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    snap = _snapshot(hf_home, repo)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEEDS[repo])
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize_norms_and_biases_(model, SEEDS[repo])
    model.save_pretrained(snap, safe_serialization=True)
    tokenizer.save_pretrained(snap)
    path = snap / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text("utf-8")), **tokenizer_config}, indent=1), "utf-8")
    return snap


def build_qwen(hf_home: Path, repo: str = QWEN2) -> Path:
    """Write ``Qwen/Qwen2.5-3B`` (Qwen2) or ``Qwen/Qwen3-4B`` (Qwen3, q/k norms) into the cache; its snapshot."""
    from transformers import AutoConfig

    tokenizer = bpe_tokenizer()
    eos = tokenizer.eos_token_id
    family = {QWEN2: ("qwen2", "Qwen2ForCausalLM", {}), QWEN3: ("qwen3", "Qwen3ForCausalLM", {"head_dim": 32})}
    model_type, arch, extra = family[repo]
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos,
                                  **QWEN_SHAPE, **extra)
    config.architectures = [arch]
    return _save(hf_home, repo, config, tokenizer,
                 {"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "bos_token": None,
                  "model_max_length": 32768})


def build_gpt2(hf_home: Path) -> Path:
    """Write ``openai-community/gpt2`` (GPT-2 architecture, shrunk) and the ``gpt2`` alias; its snapshot."""
    from transformers import GPT2Config

    tokenizer = bpe_tokenizer()
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=128, n_layer=4, n_head=4,
                        bos_token_id=eos, eos_token_id=eos)
    config.architectures = ["GPT2LMHeadModel"]
    snap = _save(hf_home, GPT2_REPO, config, tokenizer,
                 {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "bos_token": "<|endoftext|>",
                  "model_max_length": 1024})
    cfg = json.loads((snap / "config.json").read_text("utf-8"))
    cfg["n_ctx"] = 1024  # the hub's gpt2 config.json has it; TransformerLens reads it
    (snap / "config.json").write_text(json.dumps(cfg, indent=1), "utf-8")
    alias = Path(hf_home) / "hub" / "models--gpt2"
    if not alias.exists():
        alias.symlink_to(snap.parents[1].name)
    return snap


def build_hub(hf_home: Path, repos: tuple[str, ...] = (QWEN2, QWEN3, GPT2)) -> Path:
    """Write the offline cache of ``repos`` under ``hf_home`` (the ``HF_HOME`` folder); returns ``hf_home``."""
    hf_home = Path(hf_home)
    for repo in repos:
        build_gpt2(hf_home) if repo == GPT2 else build_qwen(hf_home, repo)
    return hf_home


def offline_env(hf_home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a process that reads only this cache: ``HF_HOME`` set, ``HF_HUB_OFFLINE=1``."""
    import os

    env = dict(os.environ if base is None else base)
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_ASSETS_CACHE"):
        env.pop(key, None)
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


def point_hub(monkeypatch, hf_home: Path, offline: bool = True) -> None:
    """Point this process at the cache under ``hf_home`` (offline or not), undone by ``monkeypatch``.

    huggingface_hub reads ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, at import, into
    ``huggingface_hub.constants``, which it (and transformers) read at call time: both the
    environment and those constants are set, and ``monkeypatch`` undoes both, so nothing leaks
    into other tests.
    """
    from huggingface_hub import constants

    hf_home = Path(hf_home)
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_ASSETS_CACHE",
                "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def fake_cached_repo(hf_home: Path, repo: str, files: tuple[str, ...] = ("config.json", "model.safetensors")) -> Path:
    """A cache entry holding only placeholder ``files`` (enough for a cache lookup, not for loading)."""
    snap = _snapshot(Path(hf_home), repo)
    for name in files:
        (snap / name).write_text("{}")
    return snap


def snapshot_path(hf_home: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in the cache (``gpt2`` is ``openai-community/gpt2``)."""
    repo = GPT2_REPO if repo == GPT2 else repo
    return Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / REVISION


def half_precision_works(dtype: str) -> bool:
    """Whether this machine's CPU runs a ``dtype`` (``float16`` / ``bfloat16``) matmul and softmax correctly."""
    import torch

    try:
        x = torch.ones(4, 4, dtype=getattr(torch, dtype))
        return bool(((x @ x).float() == 4).all()) and bool(torch.softmax(x, -1).isfinite().all())
    except RuntimeError:
        return False
