"""Which process this is under torchrun, and the few collective calls the trainer makes.

Under torchrun (WORLD_SIZE > 1) the process group is initialised here (gloo on CPU, nccl on CUDA), as
the official `tools/finetune.py`, `main`, does with `init_process_group`; `gather_objects` and `barrier` are
the official `maskrcnn_benchmark/utils/comm.py` `all_gather` and `synchronize`. One process (no
torchrun) needs no process group: every call here is then a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from glip_label.precision import check_device


@dataclass
class DistContext:
    """This process's place in the run: rank, world size, its device, and whether it created the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA); else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = check_device(device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if chosen.type == "cuda":
        if world_size > 1:
            chosen = torch.device("cuda", local_rank)
        elif chosen.index is None:
            chosen = torch.device("cuda", 0)
        torch.cuda.set_device(chosen)
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        created = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world_size, local_rank, chosen, created)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """`obj` of every rank, in rank order (a one-element list in a single process)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if ctx.distributed:
        dist.barrier()


__all__ = ["DistContext", "barrier", "gather_objects", "setup_distributed"]
