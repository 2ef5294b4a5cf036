"""Learning-rate schedules as per-step multipliers of each parameter group's base rate (for
`torch.optim.lr_scheduler.LambdaLR`, stepped once per optimizer step; resumable through its state).

  cosine    1/2 (1 + cos(pi t)), from the full rate to 0.
  cyclic    the one-cycle triangle of fast adversarial training (Wong et al. 2020): linearly from 0 up
            to the full rate at `peak` of training (2/5 in their MNIST code, 1/2 in their CIFAR-10 code),
            then linearly down to 0.
  step      the full rate, x0.1 at each milestone (default: half-way and three quarters, as Madry et al.
            and Rice et al. 2020; TRADES decays at epoch 75 of 76).
  constant  the full rate throughout.
"""
from __future__ import annotations

import math
from typing import Sequence

SCHEDULES = ("cosine", "cyclic", "step", "constant")
DEFAULT_PEAK = 0.4
DEFAULT_MILESTONES = (0.5, 0.75)


class LRFactor:
    """Multiplier for the rate of optimizer step `i` (0-based) of `total`. `peak` (cyclic) and
    `milestones` (step) are fractions of training. A plain object with plain attributes, so LambdaLR's
    state_dict stores it and a training-state file loads it safely."""

    def __init__(self, kind: str, total: int, peak: float = DEFAULT_PEAK,
                 milestones: Sequence[float] = DEFAULT_MILESTONES) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
        if not 0 < peak < 1:
            raise ValueError(f"the cyclic schedule's peak must lie strictly between 0 and 1, got {peak}")
        ms = [float(m) for m in milestones]
        if any(not 0 < m < 1 for m in ms) or ms != sorted(ms):
            raise ValueError(f"step milestones must be increasing fractions of training in (0, 1), got {ms}")
        self.kind, self.total, self.peak, self.milestones = kind, max(1, int(total)), float(peak), ms

    def __call__(self, i: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(i, self.total) / self.total))
        if self.kind == "step":
            t = i / self.total
            return 10.0 ** -sum(t >= m for m in self.milestones)
        t = min(i + 1, self.total) / self.total   # cyclic: the rate at the end of step i, never 0 at the start
        return t / self.peak if t <= self.peak else (1.0 - t) / (1.0 - self.peak)
