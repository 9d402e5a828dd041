"""torch.distributed set-up for torchrun / SLURM launches, and a no-op single-process fallback.

Everything rank-dependent in the trainer goes through ``DistContext`` so the same loop
runs as one process (tests, laptops) and as N processes on M nodes (torchrun sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``). NCCL is used
on GPUs, gloo on CPU (the two-process CPU test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False  # we called init_process_group, so we tear it down

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Average a scalar over ranks (for logging); the identity on one process."""
        if not self.is_distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on one (e.g. a non-finite loss somewhere)."""
        if not self.is_distributed:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(tensor)
        return bool(tensor.item() > 0)

    def all_equal(self, value: int) -> bool:
        """True on every rank if every rank passed the same ``value`` (e.g. the step it resumes)."""
        if not self.is_distributed:
            return True
        tensor = torch.tensor([value, -value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)  # [max, -min]
        return bool(tensor[0].item() == -tensor[1].item())

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``auto``: the local GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"run.device={name!r} but no CUDA device is available; use run.device=cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group torchrun (or a test's spawn) describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialised_here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        initialised_here = True
    return DistContext(rank, world_size, local_rank, device, initialised_here)
