"""Data-parallel bookkeeping: this process's rank, joining a torchrun job, the device it trains
on. Launch with `torchrun --nproc_per_node N -m extrapos train ...`; `init_distributed()` joins
the process group (NCCL on CUDA, gloo on CPU)."""

from __future__ import annotations

import os
import warnings
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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def oversubscription(processes: int, threads: int, cores: int) -> str | None:
    """Why `processes` ranks on one machine with `threads` intra-op threads each oversubscribe
    `cores` cores (None when they fit). OpenMP threads spin while they wait for work; two
    processes whose pools together exceed the cores made training up to 10× slower here (issue
    16), so each rank should have at most cores // processes threads."""
    if processes * threads <= cores:
        return None
    fair = max(1, cores // processes)
    return (
        f"{processes} processes x {threads} threads on {cores} cores oversubscribe the CPU "
        f"(spinning OpenMP threads can make training several times slower); set "
        f"OMP_NUM_THREADS={fair} for torchrun (it sets 1 when OMP_NUM_THREADS is unset)"
    )


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
    else:  # CPU ranks share the machine's cores: warn once per job when they oversubscribe it
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        reason = oversubscription(ranks_here, torch.get_num_threads(), usable_cores())
        if reason is not None and local == 0:
            warnings.warn(reason, stacklevel=2)
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
