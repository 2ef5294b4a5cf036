"""torch.distributed for the evaluation engine, started by torchrun (no home-made scheduler).

One process without torchrun's environment is a world of size 1 and takes none of these paths' costs.
Under `torchrun --nproc-per-node N -m robustness run ...` each rank evaluates its share of the batches
on its own device (cuda:LOCAL_RANK with NCCL, or the CPU with gloo); rank 0 gathers the per-example
outcomes after every round and is the only process that touches the store.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def device_name(self, requested: str) -> str:
        """Each rank on its own GPU: `auto`/`cuda` become cuda:LOCAL_RANK under torchrun."""
        if not self.active:
            return requested
        if requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        if requested == "auto":
            return "cpu"
        return requested

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (in rank order); None elsewhere."""
        if not self.active:
            return [obj]
        out = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_world() -> World:
    """The world torchrun describes in the environment, with the process group initialised once."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and os.environ.get("ROBUST_BENCH_BACKEND", "") != "gloo"
        if use_nccl:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return World(rank, size, local)


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
