"""Distributed training helpers: one process per GPU under ``torchrun``, a single process otherwise.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything below degrades to a
no-op, so the training code reads the same either way.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Code extraction and validation keep ranks apart for a while; the default timeout is too short for that.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | torch.device) -> Dist:
    """Join the process group if launched by torchrun (nccl on CUDA, gloo on CPU); pick this rank's device.

    The group is joined once per process and left at exit: stages run one after another in one
    process share it, because leaving and re-joining on the same port races with the other ranks.
    """
    device = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=TIMEOUT)
        atexit.register(cleanup)
    return Dist(rank, world_size, device)


def is_main() -> bool:
    """Whether this process logs and writes files (rank 0, or the only process)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all processes (``t`` itself when there is one)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, rank: int, world_size: int) -> range:
    """The indices of ``range(n)`` this rank handles: every ``world_size``-th one, like DistributedSampler."""
    return range(rank, n, world_size)
