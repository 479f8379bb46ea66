"""Data-parallel bookkeeping: this process's rank, joining a torchrun job, the device it trains
on. Launch with `torchrun --nproc_per_node N -m extrapos train ...`; `init_distributed()` joins
the process group (NCCL on CUDA, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from extrapos.core.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_info() -> DistInfo:
    """The current process group's rank and size (0 of 1 when none is initialized)."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo()


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL when CUDA is
    available, else gloo. A no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return distributed_info()
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run a single process")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return distributed_info()


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """`auto` → cuda:LOCAL_RANK when CUDA is available, else cpu; `cuda` → this rank's GPU."""
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} asked for, but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{info.local_rank}")
    return device


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
