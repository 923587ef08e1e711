"""Loading models as TransformerLens ``HookedTransformer`` with explicit weight processing.

One entry point, :func:`load_model`, for every model a study runs on:

* TransformerLens names (``gpt2``, ``Qwen/Qwen2.5-3B``, ``Qwen/Qwen3-4B``, any official name or
  alias) load with ``HookedTransformer.from_pretrained`` from the local Hugging Face cache, or
  download on first use when the hub is reachable. Offline, a model whose weights are not
  cached fails at once with :class:`ModelNotAvailableError` (one line saying how to get them)
  instead of TransformerLens' 20 s of retries and a traceback. ``n_devices`` passes
  TransformerLens' own split of a large model over several GPUs through.
* ``interp-tl/polyglot-toy`` is the offline default: a small GPT-2-style model trained on the
  parallel problem set in all seven languages (``experiments/train_polyglot.py``), shipped in
  ``interp_tl/data/polyglot_toy`` (safetensors, config, BPE tokenizer, training record).
* ``interp-tl/toy-random`` is built from a ``HookedTransformerConfig`` with a fixed seed and the
  byte-level tokenizer of ``interp_tl/data/byte_tokenizer``. Its weights are random: its
  numbers test the machinery, not multilingual models.

Neither needs a download, and loading them leaves the global random state untouched.

Weight processing is always explicit (see :data:`PROCESSING`) and recorded by
:func:`model_provenance`; ``none`` reproduces the raw Hugging Face activations that the
research scripts read, ``default`` is TransformerLens' default (fold_ln, centred writing
weights, centred unembed, folded value biases), which turns every residual-stream hook into
``x - mean(x)`` on LayerNorm models and so changes cosine statistics.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import sys
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlparse

import torch

from interp_tl.errors import BadInputError, ModelNotAvailableError
from interp_tl.presets import DEFAULT_MODEL, DTYPE_NAMES, POLYGLOT_MODEL, PROCESSING, TOY_MODEL

__all__ = ["DEFAULT_MODEL", "POLYGLOT_MODEL", "PROCESSING", "TOY_MODEL"]  # re-exported: users import them from here

_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}

# What load_model knows about each model it returned (processing preset, name); weak so that
# models are freed normally.
_LOADED: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


@contextmanager
def quiet_tl_deprecation() -> Iterator[None]:
    """Silence the one DeprecationWarning TransformerLens 3.9 emits on every model construction.

    3.9 points users to ``TransformerBridge`` (4.0 removed ``HookedTransformer``); interp_tl stays
    on 3.x on purpose, so the warning says nothing to our users.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TransformerBridge.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*HookedTransformer.*")
        yield


def byte_tokenizer_path() -> str:
    """Folder of the shipped byte-level tokenizer (256 byte tokens + ``<|endoftext|>`` = id 256)."""
    return str(resources.files("interp_tl.data").joinpath("byte_tokenizer"))


def load_byte_tokenizer():
    """Load the shipped byte-level tokenizer: token id = UTF-8 byte value, BOS = EOS = PAD = 256.

    It covers every script of the problem set and shares digit tokens across languages; a CJK
    character is three tokens, an Arabic or Hangul one two.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(byte_tokenizer_path())


def polyglot_path():
    """Folder of the shipped ``interp-tl/polyglot-toy`` (config, weights, tokenizer, training log)."""
    return resources.files("interp_tl.data").joinpath("polyglot_toy")


@contextmanager
def keep_global_rng() -> Iterator[None]:
    """Leave Python's, numpy's and torch's global random state as they were (model construction uses them)."""
    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def build_polyglot_model(processing: str = "none", dtype: str | torch.dtype = "float32", device: str = "cpu",
                         n_devices: int = 1):
    """Load the shipped ``interp-tl/polyglot-toy``: trained weights (safetensors), config and BPE tokenizer.

    Raises:
        ModelNotAvailableError: the package was installed without its data files.
    """
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    flags = _processing_flags(processing)
    folder = polyglot_path()
    try:
        cfg_dict = json.loads(folder.joinpath("config.json").read_text("utf-8"))
        state = load_file(str(folder.joinpath("model.safetensors")))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except OSError as exc:
        raise ModelNotAvailableError(
            f"{POLYGLOT_MODEL} is missing from the installed package ({exc.__class__.__name__}): reinstall interp_tl"
        ) from None
    cfg = HookedTransformerConfig(**cfg_dict, dtype=_dtype(dtype), device=device, n_devices=n_devices)
    with quiet_tl_deprecation(), keep_global_rng():
        model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="left")
    if processing == "none":
        model.load_state_dict(state, strict=True)
    else:
        model.load_and_process_state_dict(state, **flags)
    return model.eval()


def toy_config(seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu", n_devices: int = 1):
    """The ``interp-tl/toy-random`` config: GPT-2 style (LayerNorm, absolute positions, GELU)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(dtype=dtype, device=device, n_devices=n_devices,
        model_name=TOY_MODEL, n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512,
        d_vocab=257, n_ctx=512, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", default_prepend_bos=True, seed=seed,
    )


def randomize_norms_and_biases_(model, seed: int = 0, scale: float = 0.1) -> None:
    """Give every LayerNorm gain ``1 + 3·scale·N(0,1)`` and every bias ``scale·N(0,1)``, in place.

    A freshly initialised HookedTransformer has unit gains and zero biases, in which state
    weight processing is a no-op; after this, ``none`` / ``fold_ln`` / ``default`` differ as
    they do on trained models.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype)
            if leaf == "w" and ".ln" in f".{name}":
                param.copy_(1.0 + 3 * scale * noise)
            elif leaf.startswith("b") or leaf in ("_b_K", "_b_V"):
                param.copy_(scale * noise)


def _processing_flags(processing: str) -> dict[str, bool]:
    if processing not in PROCESSING:
        raise BadInputError(f"unknown processing {processing!r}: choose one of {', '.join(PROCESSING)}")
    return dict(PROCESSING[processing])


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise BadInputError(f"unknown dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def process_weights(model, processing: str) -> None:
    """Apply a processing preset to a model built from a config, in place (all flags explicit).

    Uses ``load_and_process_state_dict`` because ``process_weights_`` cannot turn
    ``fold_value_biases`` off.
    """
    flags = _processing_flags(processing)
    _refuse_broken_fold_ln(model.cfg, flags)
    if processing != "none":
        model.load_and_process_state_dict(model.state_dict(), **flags)


def _refuse_broken_fold_ln(cfg, flags: dict[str, bool]) -> None:
    # TL 3.9 drops the gate bias when folding LayerNorm into a gated MLP (logits move ~0.8).
    if flags["fold_ln"] and cfg.gated_mlp and cfg.normalization_type == "LN":
        raise BadInputError(
            "fold_ln is wrong in TransformerLens 3.9 for LayerNorm models with a gated MLP "
            "(the gate bias is dropped): use --processing none"
        )


def build_toy_model(processing: str = "none", dtype: str | torch.dtype = "float32", device: str = "cpu", seed: int = 0,
                    n_devices: int = 1):
    """Build ``interp-tl/toy-random``: seeded weights, randomized norms/biases, byte tokenizer."""
    from transformer_lens import HookedTransformer

    with quiet_tl_deprecation(), keep_global_rng():  # the config's seed reseeds every global generator
        cfg = toy_config(seed, _dtype(dtype), device, n_devices)
        model = HookedTransformer(cfg, tokenizer=load_byte_tokenizer(), default_padding_side="left")
    randomize_norms_and_biases_(model, seed=seed)
    process_weights(model, processing)
    return model.eval()


def _official_name(name: str) -> str:
    from transformer_lens import loading_from_pretrained as loading

    try:
        return loading.get_official_model_name(name)
    except ValueError:
        raise ModelNotAvailableError(
            f"unknown model {name!r}: use {DEFAULT_MODEL}, {TOY_MODEL} or a TransformerLens model name such as gpt2, "
            "Qwen/Qwen2.5-3B, Qwen/Qwen3-4B"
        ) from None


#: Files of which one must be cached, beside ``config.json``, for ``from_pretrained`` to work offline.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens (False when ``HF_HUB_OFFLINE`` is set)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def weights_cached(repo: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo``'s ``config.json`` and weights (any repo id form)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    def cached(filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo, filename), str)
        except HFValidationError:  # not a repo id (e.g. a local path): nothing cached under it
            return False

    return cached("config.json") and any(cached(name) for name in WEIGHT_FILES)


def require_weights(official: str) -> None:
    """Return when ``from_pretrained(official)`` can read or fetch the weights; else one line of what to do.

    ``official`` is TransformerLens' official name (``gpt2``, ``Qwen/Qwen2.5-3B``), the repo id it
    reads from the cache. Cached: returns. Uncached and the hub reachable: returns, and
    TransformerLens downloads. Uncached and offline (``HF_HUB_OFFLINE`` or no connection):
    raises before TransformerLens' retries and traceback.

    Raises:
        ModelNotAvailableError: the weights are neither cached nor downloadable.
    """
    from huggingface_hub import constants

    if weights_cached(official):
        return
    offline = bool(constants.HF_HUB_OFFLINE)
    if not offline and hub_reachable():
        return
    why = "HF_HUB_OFFLINE is set: unset it to download them," if offline else f"{constants.ENDPOINT} cannot be reached:"
    hint = ""
    if "/" not in official and weights_cached(f"openai-community/{official}"):
        hint = f" (the cache holds openai-community/{official}, which TransformerLens does not read for {official!r})"
    raise ModelNotAvailableError(
        f"the weights of {official!r} are not in the local Hugging Face cache ({constants.HF_HUB_CACHE}){hint} "
        f"and {why} run `hf download {official}` where the hub is reachable and point HF_HOME at that cache, "
        f"or use the offline default --model {DEFAULT_MODEL}"
    )


def check_devices(device: str, n_devices: int) -> None:
    """Refuse, before anything is loaded, a device or split the machine cannot give.

    ``n_devices > 1`` is TransformerLens' own split of the blocks over consecutive CUDA devices,
    starting at ``device``'s index.

    Raises:
        BadInputError: ``n_devices`` below 1, a device string torch does not know, a split on a
            non-CUDA device, or more CUDA devices than the machine has.
    """
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise BadInputError(f"n_devices must be a whole number of at least 1, got {n_devices!r}")
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BadInputError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_devices > 1 and where.type != "cuda":
        raise BadInputError(f"n_devices={n_devices} splits the model over CUDA GPUs, but the device is {device!r} "
                            f"(this machine has {available} CUDA devices): use a CUDA device or n_devices=1")
    needed = (where.index or 0) + n_devices if where.type == "cuda" else 0
    if needed > available:
        raise BadInputError(f"device {device!r} with n_devices={n_devices} needs {needed} CUDA devices, "
                            f"this machine has {available}")
    mps = getattr(torch.backends, "mps", None)
    if where.type == "mps" and not (mps is not None and mps.is_available()):
        raise BadInputError(f"device {device!r} is not available on this machine (no Apple GPU): use cpu")
    if where.type not in ("cpu", "cuda", "mps"):
        raise BadInputError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")


def model_config(name: str = DEFAULT_MODEL):
    """The ``HookedTransformerConfig`` of a model :func:`load_model` can load, without loading its weights.

    Lets a caller check layers, heads and sizes against the model before the (slow) load.

    Raises:
        ModelNotAvailableError: unknown name, or weights neither cached nor downloadable.
    """
    if name == TOY_MODEL:
        return toy_config()
    if name == POLYGLOT_MODEL:
        from transformer_lens import HookedTransformerConfig

        try:
            cfg = json.loads(polyglot_path().joinpath("config.json").read_text("utf-8"))
        except OSError as exc:
            raise ModelNotAvailableError(f"{POLYGLOT_MODEL} is missing from the installed package "
                                         f"({exc.__class__.__name__}): reinstall interp_tl") from None
        return HookedTransformerConfig(**cfg)
    from transformer_lens import loading_from_pretrained as loading

    official = _official_name(name)
    require_weights(official)
    with quiet_tl_deprecation():
        return loading.get_pretrained_model_config(official)


def load_model(
    name: str = DEFAULT_MODEL,
    processing: str = "none",
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    n_devices: int = 1,
):
    """Load a model as a ``HookedTransformer`` with explicit weight processing.

    Args:
        name: ``interp-tl/polyglot-toy`` (offline default, trained), ``interp-tl/toy-random``
            (random weights) or any TransformerLens model name.
        processing: ``none`` (raw weights, the seeds' activations), ``fold_ln`` or ``default``
            (TransformerLens' from_pretrained default). See :data:`PROCESSING`.
        dtype: ``float32`` (default), ``float64``, ``float16`` or ``bfloat16``.
        device: torch device string (with ``n_devices > 1``, the first CUDA device of the split).
        n_devices: TransformerLens' own split of the blocks over this many CUDA devices
            (``n_devices`` of ``from_pretrained`` / the config); recorded in the provenance.

    Returns:
        The model in eval mode, with a tokenizer.

    Raises:
        ModelNotAvailableError: unknown name, or weights neither cached nor downloadable.
        BadInputError: unknown processing or dtype, fold_ln on a LayerNorm gated-MLP model, or
            a device / ``n_devices`` this machine does not have (all before anything is loaded).

    Pitfall: ``default`` centres every residual-stream write on LayerNorm models, so cosines
    (and the alignment z) differ from ``none``; the choice is recorded in the provenance.
    """
    flags = _processing_flags(processing)
    torch_dtype = _dtype(dtype)
    check_devices(device, n_devices)
    if name == TOY_MODEL:
        model = build_toy_model(processing, torch_dtype, device, n_devices=n_devices)
    elif name == POLYGLOT_MODEL:
        model = build_polyglot_model(processing, torch_dtype, device, n_devices=n_devices)
    else:
        model = _load_pretrained(name, flags, torch_dtype, device, n_devices)
    record_loaded(model, name, processing)
    return model


def record_loaded(model, name: str, processing: str, **extra: Any) -> None:
    """Remember how ``model`` was made (name, processing preset and flags, e.g. an edit) for provenance."""
    _LOADED[model] = {"name": name, "processing": processing, **_processing_flags(processing), **extra}


def _load_pretrained(name: str, flags: dict[str, bool], dtype: torch.dtype, device: str, n_devices: int = 1):
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    official = _official_name(name)
    require_weights(official)
    if flags["fold_ln"]:
        _refuse_broken_fold_ln(loading.get_pretrained_model_config(official), flags)
    try:  # TransformerLens prints "Loaded pretrained model ..." to stdout: keep stdout for results
        with quiet_tl_deprecation(), contextlib.redirect_stdout(sys.stderr):
            model = HookedTransformer.from_pretrained(official, dtype=dtype, device=device, n_devices=n_devices,
                                                      **flags)
    except OSError as exc:
        raise ModelNotAvailableError(f"could not load {official!r}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def weights_fingerprint(model) -> str:
    """A short hash of the model's parameters (names, shapes and values), for goldens.

    Hashes every parameter's name and shape and a strided sample of up to 65,536 values of
    each (as float32), so it is cheap on billion-parameter models and changes when weights do.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 65536)
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(flat[::step].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_provenance(model) -> dict[str, Any]:
    """What produced a model's activations: name, processing flags, dtype, devices, shape, BOS default.

    Models built by the caller (not via :func:`load_model`) report processing as inferred:
    ``fold_ln`` is visible in the config (``LNPre`` / ``RMSPre``), centring is not.
    """
    cfg = model.cfg
    known = _LOADED.get(model)
    if known is None:
        folded = cfg.normalization_type in ("LNPre", "RMSPre")
        known = {"name": cfg.model_name, "processing": "unknown (model supplied by caller)", "fold_ln": folded}
    return {
        **known,
        "architecture": cfg.original_architecture or "HookedTransformerConfig",
        "normalization_type": cfg.normalization_type,
        "positional_embedding_type": cfg.positional_embedding_type,
        "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab,
        "dtype": str(cfg.dtype).replace("torch.", ""),
        "n_devices": int(cfg.n_devices),
        "default_prepend_bos": bool(cfg.default_prepend_bos),
        "weights_fingerprint": weights_fingerprint(model),
    }


def versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import scipy

    from interp_tl import __version__

    def dist(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {
        "interp_tl": __version__, "transformer_lens": dist("transformer-lens"), "transformers": dist("transformers"),
        "torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
    }
