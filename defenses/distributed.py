"""Several processes through DistributedDataParallel, detected from the environment `torchrun` sets
(WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Backend nccl on CUDA, gloo on the CPU. Without
those variables (or WORLD_SIZE=1) everything runs in one process, unchanged."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def world_from_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's variables; (1, 0, 0) when they are absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {e}") from None
    return world, rank, local


def setup(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun with more than one process. `device` is the
    device asked for; with CUDA each process takes cuda:LOCAL_RANK."""
    world, rank, local = world_from_env()
    if world <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"process with LOCAL_RANK {local} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank=rank, world=world, local_rank=local, device=device, backend=backend)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
