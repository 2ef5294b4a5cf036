"""Per-step random draws that do not depend on how a batch is split over processes.

Every random number a training step needs (augmentation offsets and flips, random starts of the inner
attack) is drawn for the whole global batch from a generator seeded by (run seed, epoch, step); each
process keeps the rows of its own examples. One process with batch B and N processes with B/N each
therefore see the same numbers for the same example, and a resumed run sees the numbers the
uninterrupted one would have seen.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, stable across runs, machines and Python versions."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class BatchRandom:
    """Draws of shape (global_batch, *shape), sliced to rows rank, rank + world, ... (the layout of a
    DistributedSampler's shard within a global batch)."""

    def __init__(self, seed: int, global_batch: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.n, self.rank, self.world = global_batch, rank, world

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.rank::self.world] if self.world > 1 else t

    def uniform(self, *shape: int) -> torch.Tensor:
        return self._rows(torch.rand((self.n, *shape), generator=self.generator, device=self.device))

    def normal(self, *shape: int) -> torch.Tensor:
        return self._rows(torch.randn((self.n, *shape), generator=self.generator, device=self.device))

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return self._rows(torch.randint(high, (self.n, *shape), generator=self.generator, device=self.device))
