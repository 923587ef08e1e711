"""Activations as TransformerLens ``ActivationCache``: batched extraction, one position per prompt, files.

The analyses of :mod:`interp_tl.analyses` take an ``ActivationCache`` holding **one position per
prompt** (the position axis kept, at length 1, so every TransformerLens cache method still works:
``cache["resid_post", 3]``, ``decompose_resid``, ``accumulated_resid``,
``get_full_resid_decomposition``, ``stack_head_results``). There are two ways to get one:

* from a user's own ``logits, cache = model.run_with_cache(tokens)`` (any padding side, with or
  without BOS): :func:`last_token` / :func:`token_mean` reduce it, reading where each prompt's real
  tokens are from the attention mask or the tokens the user passes, never from an assumption
  about padding;
* from :func:`extract`, which runs length-sorted, left-padded, masked batches
  (:mod:`interp_tl.batching`) with ``return_type=None`` under ``torch.inference_mode()``, stops after
  the last block any requested hook needs, and reduces every activation inside its hook before
  the batch's full activation is freed, so memory holds the kept vectors, not a cache of every
  position.

While :func:`extract` runs, MLPs whose activation is TransformerLens's ``gelu_new`` (GPT-2) compute
it with torch's fused ``gelu(approximate="tanh")``: the same formula (max difference 2.4e-7 on
N(0, 1) inputs), one kernel instead of seven elementwise passes over ``[batch, pos, d_mlp]``.
The model is restored on exit.

Caches are stored as float32 on the CPU (float64 models keep float64): statistics never see
float16/bfloat16 values. :func:`save_caches` / :func:`load_caches` write and read them as
safetensors with JSON metadata (model, weights fingerprint, hooks, prompts, BOS, a content hash);
nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from transformer_lens import ActivationCache
from transformer_lens.utilities.activation_functions import gelu_new

from interp_tl.batching import batches
from interp_tl.distributed import combine
from interp_tl.errors import BadInputError, LayerRangeError, ProvenanceMismatchError
from interp_tl.files import atomic_write
from interp_tl.tokens import Tokenized, check_lengths

Reduce = Literal["last", "mean", "all"]
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
#: Hook points whose position axes are (query, key) at dims 2 and 3 instead of one axis at dim 1.
_QK_HOOKS = ("attn.hook_pattern", "attn.hook_attn_scores")
FORMAT = "interp_tl.activations/1"


def check_layers(model, layers: Sequence[int | np.integer] | None) -> list[int]:
    """Return ``layers`` (default all), raising :class:`LayerRangeError` for any out of range."""
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n))
    layers = [int(layer) for layer in layers]
    if not layers:
        raise BadInputError("no layers selected")
    for layer in layers:
        if not 0 <= layer < n:
            raise LayerRangeError(f"layer {layer} is out of range: the model has layers 0..{n - 1}")
    return layers


def check_hooks(model, hook_names: Sequence[str]) -> None:
    """Raise :class:`BadInputError` for a hook name the model does not have."""
    for name in hook_names:
        if name not in model.hook_dict:
            match = _BLOCK.match(name)
            if match and int(match.group(1)) >= model.cfg.n_layers:
                raise LayerRangeError(
                    f"hook {name!r} is out of range: the model has layers 0..{model.cfg.n_layers - 1}"
                )
            raise BadInputError(f"the model has no hook point {name!r}")


def layer_hook_names(model, kinds: Sequence[str], layers: Sequence[int] | None = None) -> list[str]:
    """``blocks.{L}.{kind}`` for every kind and layer (default all), e.g. kinds ``hook_resid_pre``."""
    return [f"blocks.{layer}.{kind}" for layer in check_layers(model, layers) for kind in kinds]


def _stop_layer(model, hook_names: Sequence[str]) -> int | None:
    """Blocks needed to reach every hook: run no further (None: the whole model)."""
    last = -1
    for name in hook_names:
        match = _BLOCK.match(name)
        if match:
            last = max(last, int(match.group(1)))
        elif name not in ("hook_embed", "hook_pos_embed", "hook_tokens"):
            return None
    return last + 1 if last + 1 < model.cfg.n_layers else None


def _stored(x: torch.Tensor) -> torch.Tensor:
    """What a cache keeps: float32 (float64 stays float64) on the CPU, detached."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.detach().to("cpu")


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


@contextmanager
def fused_gelu(model) -> Iterator[int]:
    """Within the block, MLPs using TransformerLens's ``gelu_new`` use torch's fused tanh GELU.

    Same function to float rounding; hooks (``hook_pre``, ``hook_post``) see the same tensors.
    Every swapped ``act_fn`` is put back on exit, also when the body raises.
    """
    swapped = [block.mlp for block in getattr(model, "blocks", []) if getattr(block.mlp, "act_fn", None) is gelu_new]
    for mlp in swapped:
        mlp.act_fn = _gelu_tanh
    try:
        yield len(swapped)
    finally:
        for mlp in swapped:
            mlp.act_fn = gelu_new


class _Collector:
    """Reduces each hooked activation of a batch and writes it into per-prompt outputs."""

    def __init__(self, n: int, width: int, reduce: Reduce):
        self.n, self.width, self.reduce = n, width, reduce
        self.out: dict[str, torch.Tensor] = {}
        self.rows = torch.empty(0, dtype=torch.long)
        self.weights = torch.empty(0)

    def start_batch(self, rows: np.ndarray, weights: torch.Tensor) -> None:
        """The next batch's rows (indices into the prompts) and per-position weights ``[batch, pos]``."""
        self.rows, self.weights = torch.as_tensor(rows, dtype=torch.long), weights

    def hook(self, act: torch.Tensor, hook) -> None:
        if self.reduce == "last":
            self._keep(hook.name, act[:, -1:])
            return
        if act.dtype in (torch.float16, torch.bfloat16):  # average in float32, not in 8 or 11 bits
            act = act.float()
        w = self.weights.to(act.dtype).view(*self.weights.shape, *([1] * (act.dim() - 2)))
        if self.reduce == "mean":
            kept = ((act * w).sum(1) / w.sum(1))[:, None]
        else:  # padding zeroed, then left-padded to the widest prompt of the whole set
            kept = F.pad(act * w, (0, 0) * (act.dim() - 2) + (self.width - act.shape[1], 0))
        self._keep(hook.name, kept)

    def _keep(self, name: str, kept: torch.Tensor) -> None:
        kept = _stored(kept)
        if name not in self.out:
            # an ordinary tensor (the hooks run in inference mode): returned as it is, never copied
            with torch.inference_mode(False):
                self.out[name] = torch.zeros((self.n, *kept.shape[1:]), dtype=kept.dtype)
        self.out[name][self.rows] = kept


def _mean_weights(mask: torch.Tensor, lengths: np.ndarray, prepend_bos: bool) -> torch.Tensor:
    """The attention mask, with each row's BOS (first real token) zeroed when BOS was prepended."""
    weights = mask.clone()
    if prepend_bos:
        weights[torch.arange(len(lengths)), mask.shape[1] - torch.as_tensor(lengths)] = 0
    return weights


class _SharedExtractions:
    """Last-token extractions planned for several consumers: each runs once, for the union of their hooks."""

    def __init__(self, model, requests: Sequence[tuple[Tokenized, Sequence[str], int]]):
        self.model = model
        self.union: dict[tuple, list[str]] = {}
        counts: dict[tuple, int] = {}
        for tokens, names, batch_size in requests:
            key = _request_key(tokens, batch_size)
            self.union[key] = list(dict.fromkeys([*self.union.get(key, []), *names]))
            counts[key] = counts.get(key, 0) + 1
        self.union = {key: names for key, names in self.union.items() if counts[key] > 1}  # shared only
        self.done: dict[tuple, ActivationCache] = {}

    def serve(self, model, tokens: Tokenized, names: list[str], batch_size: int, progress: bool, desc: str
              ) -> ActivationCache | None:
        if model is not self.model:
            return None
        key = _request_key(tokens, batch_size)
        union = self.union.get(key)
        if union is None or not set(names) <= set(union):
            return None
        if key not in self.done:
            self.done[key] = _extract(model, tokens, union, batch_size, "last", progress, f"{desc} (shared)", ())
        full = self.done[key]
        return ActivationCache({name: full.cache_dict[name] for name in names}, model)


def _request_key(tokens: Tokenized, batch_size: int) -> tuple:
    return (tuple(map(tuple, tokens.ids)), tokens.prepend_bos, batch_size)


_shared: list[_SharedExtractions] = []


@contextmanager
def shared_extractions(model, requests: Sequence[tuple[Tokenized, Sequence[str], int]]) -> Iterator[None]:
    """Within the block, :func:`extract` of the same prompts at their last token runs the model once.

    ``requests`` are the ``(tokens, hook_names, batch_size)`` that consumers (e.g. the studies of
    ``interp-tl all``) will ask for with ``reduce="last"``; where two or more share their prompts
    and batch size, the first such call extracts the union of their hooks and every call gets its
    own hooks from it (the same tensors: every value is computed in the same batches with the same
    padding as alone, so the numbers are the same bit for bit; tested). Other calls run as usual.
    """
    _shared.append(_SharedExtractions(model, requests))
    try:
        yield
    finally:
        _shared.pop()


def extract(
    model,
    tokens: Tokenized,
    hook_names: Sequence[str],
    batch_size: int = 32,
    reduce: Reduce = "last",
    progress: bool = False,
    desc: str = "extracting activations",
    fwd_hooks: Sequence[tuple] = (),
) -> ActivationCache:
    """Run the model on every prompt in batches and keep one reduced activation per prompt and hook.

    Args:
        model: a HookedTransformer.
        tokens: from :func:`interp_tl.tokens.tokenize` (BOS handling travels with them).
        hook_names: hook points with a position axis after batch, e.g. ``hook_embed``,
            ``blocks.3.hook_resid_pre``, ``blocks.3.hook_attn_out``, ``blocks.3.attn.hook_z``.
        batch_size: prompts per forward pass.
        reduce: ``last`` (last real token), ``mean`` (mean over real tokens, BOS excluded when it
            was prepended), both ``[n, 1, ...]``; or ``all`` (every position, ``[n, max_len, ...]``,
            left-padded with zeros: :func:`padded_mask` gives the real positions).
        progress: show a tqdm bar over batches.
        desc: label of the progress bar, in words.
        fwd_hooks: extra ``(name, hook)`` pairs run before the collecting hooks (e.g. an ablation).

    Returns:
        An ``ActivationCache`` bound to ``model``, rows in the order of ``tokens.ids``.

    Raises:
        BadInputError: unknown hooks, bad batch size or reduce, a hook that never ran, or
            ``mean`` over prompts that hold only their BOS.

    Pitfall: hooks must have the position axis at dim 1; attention patterns
    (``[batch, head, q, k]``) are not reduced here.
    """
    hook_names = list(dict.fromkeys(hook_names))
    if _shared and reduce == "last" and not fwd_hooks:  # a planned union is checked when it is extracted
        served = _shared[-1].serve(model, tokens, hook_names, batch_size, progress, desc)
        if served is not None:
            return served
    return _extract(model, tokens, hook_names, batch_size, reduce, progress, desc, fwd_hooks)


def _extract(model, tokens: Tokenized, hook_names: list[str], batch_size: int, reduce: Reduce, progress: bool,
             desc: str, fwd_hooks: Sequence[tuple]) -> ActivationCache:
    check_hooks(model, hook_names)
    check_lengths(model, tokens)
    if batch_size < 1:
        raise BadInputError(f"batch size must be at least 1, got {batch_size}")
    if reduce not in ("last", "mean", "all"):
        raise BadInputError(f"unknown reduce {reduce!r}: choose last, mean or all")
    if reduce == "mean" and tokens.prepend_bos and tokens.lengths.min() < 2:
        raise BadInputError("a prompt has only its BOS token: no real tokens to average")
    collector = _Collector(len(tokens), int(tokens.lengths.max()), reduce)
    wanted = set(hook_names)
    hooks = list(fwd_hooks) + [(lambda name: name in wanted, collector.hook)]
    stop = _stop_layer(model, hook_names)
    with torch.inference_mode(), fused_gelu(model):
        for batch in batches(model, tokens, batch_size, progress, desc, shard=True):
            weights = batch.attention_mask
            if reduce == "mean":
                weights = _mean_weights(weights, batch.lengths, tokens.prepend_bos)
            collector.start_batch(batch.rows, weights)
            model.run_with_hooks(batch.tokens, attention_mask=batch.attention_mask, return_type=None,
                                 stop_at_layer=stop, fwd_hooks=hooks)
    out = combine(collector.out, hook_names, len(tokens))  # under torchrun: every rank's rows, on every rank
    missing = [name for name in hook_names if name not in out]
    if missing:
        raise BadInputError(
            f"hook {missing[0]!r} exists but never ran in this model's forward pass "
            "(e.g. hook_attn_in needs use_attn_in, hook_result needs use_attn_result)"
        )
    # ordinary tensors, never copied; a tensor made in inference mode (by another path) is cloned out of it
    return ActivationCache({name: out[name].clone() if out[name].is_inference() else out[name]
                            for name in hook_names}, model)


def padded_mask(tokens: Tokenized) -> Int[torch.Tensor, "n_prompts max_len"]:
    """The attention mask of an ``extract(..., reduce="all")`` cache: every prompt left-padded to the longest."""
    width = int(tokens.lengths.max())
    positions = torch.arange(width)[None, :]
    return (positions >= width - torch.as_tensor(tokens.lengths)[:, None]).long()


def _mask_from(cache: ActivationCache, attention_mask, tokens) -> torch.Tensor:
    if attention_mask is not None:
        return torch.as_tensor(attention_mask).detach().to("cpu").long()
    if tokens is None:
        raise BadInputError("say where each prompt's tokens are: pass attention_mask= or tokens=")
    if isinstance(tokens, Tokenized):
        return padded_mask(tokens)
    if cache.model is None:
        raise BadInputError("the cache is bound to no model: pass attention_mask= instead of tokens=")
    return token_mask(cache.model, tokens)


def token_mask(model, tokens: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, "batch pos"]:
    """The attention mask of ids padded by ``model.to_tokens``: 1 on real tokens.

    TransformerLens' ``get_attention_mask`` with the model's tokenizer, its padding side and
    ``cfg.default_prepend_bos`` (a leading BOS that shares the pad id is kept). Pass the mask
    yourself when the ids were padded some other way.
    """
    from transformer_lens.utilities.tokenize_utils import get_attention_mask

    tok = torch.as_tensor(tokens).detach().to("cpu")
    if getattr(model, "tokenizer", None) is None:
        return torch.ones_like(tok)
    return get_attention_mask(model.tokenizer, tok, bool(model.cfg.default_prepend_bos)).long()


def last_positions(mask: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, " batch"]:
    """Index of each row's last real token (the last 1 of its mask), for left or right padding.

    Raises:
        BadInputError: a row with no real token.
    """
    mask = torch.as_tensor(mask).long()
    if mask.dim() != 2:
        raise BadInputError(f"an attention mask is [batch, pos], got shape {tuple(mask.shape)}")
    empty = (mask.sum(1) == 0).nonzero()
    if len(empty):
        raise BadInputError(f"prompt {int(empty[0, 0])} has no real token in the attention mask")
    positions = torch.arange(mask.shape[1])
    return torch.where(mask > 0, positions, -1).max(1).values


def _position_dims(name: str) -> tuple[int, ...]:
    return (2,) if name.endswith(_QK_HOOKS) or name.endswith(tuple(h + "_grad" for h in _QK_HOOKS)) else (1,)


def _reduced(cache: ActivationCache, reduce_one) -> ActivationCache:
    out = {}
    for name, value in cache.cache_dict.items():
        if value.dim() < 2:
            out[name] = value
            continue
        (dim,) = _position_dims(name)
        out[name] = _stored(reduce_one(value, dim))
    return ActivationCache(out, cache.model)


def _check_rows(cache: ActivationCache, mask: torch.Tensor) -> None:
    for name, value in cache.cache_dict.items():
        (dim,) = _position_dims(name)
        if value.dim() > dim and (value.shape[0], value.shape[dim]) != tuple(mask.shape):
            raise BadInputError(
                f"the mask is {tuple(mask.shape)} but {name} has {value.shape[0]} prompts and "
                f"{value.shape[dim]} positions"
            )


def last_token(
    cache: ActivationCache,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    tokens: Int[torch.Tensor, "batch pos"] | Tokenized | None = None,
) -> ActivationCache:
    """The cache at each prompt's last real token, position axis kept at length 1.

    Args:
        cache: from ``model.run_with_cache(tokens)`` (or :func:`extract` with ``reduce="all"``),
            with batch and position axes.
        attention_mask: ``[batch, pos]``, 1 on real tokens (left or right padding).
        tokens: instead of the mask: the ``[batch, pos]`` ids the cache was run on (the mask is
            then TransformerLens' ``get_attention_mask`` with the model's tokenizer, padding side
            and ``default_prepend_bos``), or a :class:`~interp_tl.tokens.Tokenized`.

    Returns:
        An ``ActivationCache`` bound to the same model; attention patterns keep the query row of
        the last token (``[batch, head, 1, key]``).

    Raises:
        BadInputError: neither a mask nor tokens, shapes that do not match, or an empty row.
    """
    mask = _mask_from(cache, attention_mask, tokens)
    _check_rows(cache, mask)
    last = last_positions(mask)
    rows = torch.arange(len(last))

    def pick(value: torch.Tensor, dim: int) -> torch.Tensor:
        moved = value.movedim(dim, 1)
        return moved[rows, last.to(value.device)][:, None].movedim(1, dim)

    return _reduced(cache, pick)


def token_mean(
    cache: ActivationCache,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    tokens: Int[torch.Tensor, "batch pos"] | Tokenized | None = None,
    skip_first: bool = False,
) -> ActivationCache:
    """The cache averaged over each prompt's real tokens, position axis kept at length 1.

    Args:
        cache: a cache with batch and position axes.
        attention_mask: ``[batch, pos]``, 1 on real tokens.
        tokens: instead of the mask (see :func:`last_token`).
        skip_first: leave out each prompt's first real token (its BOS, when one was prepended).

    Raises:
        BadInputError: as :func:`last_token`, or a prompt left with no token to average.
    """
    mask = _mask_from(cache, attention_mask, tokens).clone()
    _check_rows(cache, mask)
    if skip_first:
        first = torch.where(mask > 0, torch.arange(mask.shape[1]), mask.shape[1]).min(1).values
        mask[torch.arange(len(first)), first] = 0
    if (mask.sum(1) == 0).any():
        raise BadInputError("a prompt has no real token left to average")

    def mean(value: torch.Tensor, dim: int) -> torch.Tensor:
        w = mask.to(value.device, value.dtype).view(*mask.shape, *([1] * (value.dim() - 2))).movedim(1, dim)
        return (value * w).sum(dim, keepdim=True) / w.sum(dim, keepdim=True)

    return _reduced(cache, mean)


def one_position(cache: ActivationCache, names: Sequence[str]) -> None:
    """Check that ``names`` are in ``cache`` with one position per prompt (raise otherwise).

    Raises:
        BadInputError: a missing hook, or more than one position (reduce with :func:`last_token`).
    """
    for name in names:
        if name not in cache.cache_dict:
            raise BadInputError(f"the cache has no {name!r}: run the model with that hook cached")
        value = cache.cache_dict[name]
        (dim,) = _position_dims(name)
        if value.dim() <= dim or value.shape[dim] != 1:
            raise BadInputError(
                f"{name} has {value.shape[dim] if value.dim() > dim else 0} positions per prompt: reduce the "
                "cache to one with last_token(cache, attention_mask=...) or token_mean(...)"
            )


def from_arrays(arrays: Mapping[str, np.ndarray], model=None) -> ActivationCache:
    """A one-position cache from ``{hook name: [n, ...] array}`` (e.g. activations saved by other code).

    Each array gets a position axis of length 1 after the batch axis (attention patterns after
    the head axis), so the analyses read it like an extracted cache.
    """
    out = {}
    for name, value in arrays.items():
        tensor = torch.as_tensor(np.asarray(value))
        (dim,) = _position_dims(name)
        out[name] = tensor.unsqueeze(dim)
    return ActivationCache(out, model)


def select_rows(cache: ActivationCache, rows: Sequence[int] | np.ndarray | slice) -> ActivationCache:
    """The cache restricted to some prompts (rows of the batch axis), bound to the same model."""
    index = rows if isinstance(rows, slice) else torch.as_tensor(np.asarray(rows), dtype=torch.long)
    return ActivationCache({k: v[index] for k, v in cache.cache_dict.items()}, cache.model)


def split_languages(cache: ActivationCache, langs: Sequence[str]) -> dict[str, ActivationCache]:
    """Split a cache of ``len(langs)`` equal blocks of prompts (``langs[0]`` first) into one per language."""
    n_rows = next(iter(cache.cache_dict.values())).shape[0]
    if n_rows % len(langs):
        raise BadInputError(f"{n_rows} prompts do not split into {len(langs)} languages")
    n = n_rows // len(langs)
    return {lang: select_rows(cache, slice(i * n, (i + 1) * n)) for i, lang in enumerate(langs)}


def numpy(cache: ActivationCache, name: str) -> Float[np.ndarray, "n ..."]:
    """A one-position cache entry as a ``[n, ...]`` float64 numpy array (the position axis dropped)."""
    one_position(cache, [name])
    value = cache.cache_dict[name]
    (dim,) = _position_dims(name)
    return value.detach().to("cpu").select(dim, 0).double().numpy()


# ---------------------------------------------------------------------------------------------
# files


def content_hash(caches: Mapping[str, ActivationCache]) -> str:
    """sha256 over every tensor's key, dtype, shape and bytes (in key order)."""
    digest = hashlib.sha256()
    for label in sorted(caches):
        for name in sorted(caches[label].cache_dict):
            value = caches[label].cache_dict[name].detach().to("cpu").contiguous()
            digest.update(f"{label}/{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def cache_bytes(caches: Mapping[str, ActivationCache], metadata: Mapping[str, Any]) -> bytes:
    """Several named caches as one safetensors file (keys ``label/hook``) with JSON metadata.

    The metadata (``interp_tl`` key of the safetensors header) holds ``metadata`` plus the format,
    the labels and hooks, and :func:`content_hash`.
    """
    from safetensors.torch import save

    tensors = {f"{label}/{name}": value.detach().to("cpu").contiguous()
               for label, cache in caches.items() for name, value in cache.cache_dict.items()}
    meta = {**metadata, "format": FORMAT, "hooks": {label: sorted(c.cache_dict) for label, c in caches.items()},
            "sha256": content_hash(caches)}
    return save(tensors, metadata={"interp_tl": json.dumps(meta, sort_keys=True)})


def save_caches(path: str | Path, caches: Mapping[str, ActivationCache], metadata: Mapping[str, Any]) -> None:
    """Write :func:`cache_bytes` to ``path`` atomically.

    The model the caches are bound to is recorded (``model``: :func:`interp_tl.models.model_provenance`,
    with its weights fingerprint) unless ``metadata`` already says; :func:`load_caches` checks it.
    """
    meta = dict(metadata)
    model = next(iter(caches.values())).model if caches else None
    if "model" not in meta and model is not None:
        from interp_tl.models import model_provenance

        meta["model"] = model_provenance(model)
    atomic_write(path, cache_bytes(caches, meta))


def load_caches(path: str | Path, model=None) -> tuple[dict[str, ActivationCache], dict[str, Any]]:
    """Read a file written by :func:`save_caches`; nothing is unpickled.

    Args:
        path: the ``.safetensors`` file.
        model: the model to bind the caches to (and whose weights fingerprint must match the
            recorded one); None binds them to no model (only the plain-tensor methods work).

    Returns:
        ``({label: cache}, metadata)``.

    Raises:
        ProvenanceMismatchError: not such a file, its tensors do not hash to the recorded value
            (changed after writing), or ``model``'s weights are not the recorded ones.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError) as exc:
        raise ProvenanceMismatchError(f"cannot read activations file {str(path)!r}: {exc}") from None
    try:
        meta = json.loads(header["interp_tl"])
        assert meta["format"] == FORMAT
    except (KeyError, ValueError, AssertionError, TypeError):
        raise ProvenanceMismatchError(f"{str(path)!r} is not an interp_tl activations file") from None
    caches: dict[str, dict[str, torch.Tensor]] = {label: {} for label in meta["hooks"]}
    for key, value in tensors.items():
        label, _, name = key.partition("/")
        if label not in caches:
            raise ProvenanceMismatchError(f"{str(path)!r} holds {key!r}, which its metadata does not list")
        caches[label][name] = value
    out = {label: ActivationCache(c, model) for label, c in caches.items()}
    if {label: sorted(c) for label, c in caches.items()} != meta["hooks"] or content_hash(out) != meta["sha256"]:
        raise ProvenanceMismatchError(f"{str(path)!r} was changed after it was written (content hash mismatch)")
    if model is not None:
        from interp_tl.models import weights_fingerprint

        recorded = meta.get("model", {}).get("weights_fingerprint")
        if recorded != weights_fingerprint(model):
            raise ProvenanceMismatchError(
                f"{str(path)!r} was extracted from weights {recorded}, this model's are "
                f"{weights_fingerprint(model)}: not the same model"
            )
    return out, meta
