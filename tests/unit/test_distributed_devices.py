"""Under torchrun on GPUs each rank takes its own block of n_devices GPUs (no GPU needed to check)."""

from __future__ import annotations

import pytest
import torch

from interp_tl import distributed
from interp_tl.errors import BadInputError


@pytest.fixture
def rank_of_four(monkeypatch):
    """A process that torchrun started as local rank 3 of 4, on a node with 8 GPUs (faked)."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # no process group is made
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed, "active", lambda: None)
    return chosen


@pytest.mark.parametrize(("device", "n_devices", "want"), [("cuda", 1, "cuda:3"), ("cuda:0", 2, "cuda:6")])
def test_each_rank_starts_at_its_own_block_of_gpus(rank_of_four, device, n_devices, want):
    assert distributed.setup(device, n_devices)[1] == want
    assert rank_of_four == [want]


def test_too_few_gpus_for_the_ranks_is_refused_in_one_line(rank_of_four):
    with pytest.raises(BadInputError, match=r"local rank 3 with n_devices=3 needs GPUs 9\.\.11: this node has 8"):
        distributed.setup("cuda", 3)
    assert rank_of_four == []


def test_cpu_ranks_keep_the_cpu(rank_of_four):
    assert distributed.setup("cpu", 1)[1] == "cpu"


@pytest.mark.parametrize(("device", "backend"), [("cpu", "gloo"), ("cuda", "cpu:gloo,cuda:nccl")])
def test_the_process_group_can_carry_the_cpu_caches(monkeypatch, rank_of_four, device, backend):
    """The caches travel as CPU tensors: on GPUs NCCL alone could not carry them, so gloo does."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    asked = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: asked.append(backend))
    distributed.setup(device, 1)
    assert asked == [backend]
