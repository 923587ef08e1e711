"""Prompt-sharded extraction on ``torch.distributed``: run the same command under ``torchrun``.

    torchrun --nproc-per-node 2 -m interp_tl.cli alignment --out results       # CPU: gloo
    torchrun --nproc-per-node 8 -m interp_tl.cli all --device cuda --out results  # one node, 8 GPUs
    torchrun --nproc-per-node 4 -m interp_tl.cli all --device cuda --n-devices 2 --out results  # 4 ranks x 2 GPUs

Every process (rank) loads the model on its own device and runs the same program. Each
:func:`interp_tl.cache.extract` keeps the single-process batches (prompts sorted by length and
chunked) and gives rank ``r`` the batches ``r, r + world, r + 2 world, ...``; each rank fills the
rows of its batches and an ``all_reduce`` (sum over ranks, every other row zero) gives every rank
the whole cache. A row is computed in the same batch, with the same padding, as in one process,
and ``x + 0`` is exact, so the numbers are the single process's bit for bit. Every rank then
computes the statistics (cheap next to the forward passes, and it keeps every later collective
call in step); only rank 0 prints and writes files. Nothing else is distributed: generation,
ablations and gradients run on every rank in full.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from interp_tl.errors import BadInputError, InterpTLError


class DistributedRunError(InterpTLError, RuntimeError):
    """Another process of a ``torchrun`` run failed, so this one cannot finish."""


@dataclass(frozen=True)
class Context:
    """This process's place in a ``torchrun`` run."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0

    def record(self) -> dict[str, object]:
        """What the provenance says about the run's distribution."""
        return {"world_size": self.world_size, "backend": self.backend, "sharded": "extraction batches"}


def requested() -> bool:
    """Whether this process was launched as one of several by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> Context | None:
    """The run's :class:`Context` once :func:`setup` has joined it, else None (a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return Context(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", "0")), torch.distributed.get_backend())


def setup(device: str = "cpu", n_devices: int = 1) -> tuple[Context | None, str]:
    """Join the ``torchrun`` run and return the context and this rank's device.

    The process group uses gloo on CPU; on GPUs gloo for CPU tensors (the caches) and NCCL for
    CUDA tensors.

    On CUDA every rank takes its own ``n_devices`` consecutive GPUs (TransformerLens' split of one
    model over several): rank ``LOCAL_RANK`` starts at GPU ``LOCAL_RANK * n_devices`` (``cuda`` /
    ``cuda:0`` become ``cuda:{LOCAL_RANK * n_devices}``), so 8 GPUs run 4 ranks of 2 GPUs each.
    Outside ``torchrun`` returns ``(None, device)`` and does nothing.

    Raises:
        BadInputError: torch was built without ``torch.distributed``, or a CUDA run has fewer GPUs
            than local ranks.
    """
    if not requested():
        return None, device
    if not torch.distributed.is_available():
        raise BadInputError("this torch has no torch.distributed: run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        first = local_rank * n_devices
        if first + n_devices > torch.cuda.device_count():
            raise BadInputError(f"local rank {local_rank} with n_devices={n_devices} needs GPUs {first}.."
                                f"{first + n_devices - 1}: this node has {torch.cuda.device_count()}")
        device = f"cuda:{first}"
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        # The caches are exchanged as CPU tensors (they are kept on the CPU), which NCCL cannot carry:
        # on GPUs, gloo carries CPU tensors and NCCL any CUDA tensor.
        torch.distributed.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return active(), device


def teardown() -> None:
    """Leave the run (no-op outside ``torchrun``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def my_chunks(n_chunks: int) -> range:
    """Which of ``n_chunks`` batches this process runs (all of them in a single process)."""
    ctx = active()
    if ctx is None:
        return range(n_chunks)
    return range(ctx.rank, n_chunks, ctx.world_size)


def combine(tensors: dict[str, torch.Tensor | None], names: list[str], n_rows: int) -> dict[str, torch.Tensor]:
    """Every rank's rows of each cache entry, on every rank (sum over ranks; other rows are zero).

    ``tensors[name]`` is this rank's ``[n_rows, ...]`` tensor (zeros outside its rows), or None when
    it ran no batch; the shape comes from the ranks that did.

    Raises:
        DistributedRunError: another rank failed (its connection closed) during the exchange.
    """
    ctx = active()
    if ctx is None:
        return {name: t for name, t in tensors.items() if t is not None}
    out = {}
    try:
        for name in names:
            local = tensors.get(name)
            shape = torch.zeros(8, dtype=torch.long)
            if local is not None:
                shape[0] = local.dim()
                shape[1:1 + local.dim()] = torch.tensor(local.shape)
                shape[7] = {torch.float32: 1, torch.float64: 2}[local.dtype]
            torch.distributed.all_reduce(shape, op=torch.distributed.ReduceOp.MAX)
            if int(shape[0]) == 0:  # ran on no rank: the caller reports it
                continue
            dims = [int(x) for x in shape[1:1 + int(shape[0])]]
            dtype = torch.float64 if int(shape[7]) == 2 else torch.float32
            local = torch.zeros(dims, dtype=dtype) if local is None else local.clone()  # not an inference tensor
            torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.SUM)
            out[name] = local
    except RuntimeError as exc:
        raise DistributedRunError(f"another process of the distributed run failed ({str(exc).splitlines()[0]})"
                                  ) from None
    return out
