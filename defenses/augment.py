"""Batch augmentation on tensors, with draws from `BatchRandom` (so it is reproducible and independent of
how a batch is split over processes): random crop with zero padding, horizontal flip."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._random import BatchRandom

AUGMENTATIONS = ("none", "crop", "flip", "crop-flip")


def augment(x: torch.Tensor, kind: str, rnd: BatchRandom, padding: int = 4) -> torch.Tensor:
    """`crop`: pad by `padding` pixels of 0 and cut a random window of the original size; `flip`: mirror
    left-right with probability 1/2; `crop-flip`: both (the standard CIFAR augmentation)."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; expected one of {', '.join(AUGMENTATIONS)}")
    if kind == "none" or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    if "crop" in kind:
        off = rnd.randint(2 * padding + 1, 2)
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = (off[:, 0:1] + torch.arange(h, device=x.device))[:, :, None]        # n, h, 1
        cols = (off[:, 1:2] + torch.arange(w, device=x.device))[:, None, :]        # n, 1, w
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)       # n, h, w, c -> n, c, h, w
    if "flip" in kind:
        flip = (rnd.uniform() < 0.5).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    return x.contiguous()
