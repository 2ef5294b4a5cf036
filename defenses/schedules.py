"""Learning-rate schedules as per-step multipliers of each parameter group's base rate (for
`torch.optim.lr_scheduler.LambdaLR`, stepped once per optimizer step; resumable through its state).

  cosine    1/2 (1 + cos(pi t)), from the full rate to 0.
  cyclic    the one-cycle triangle of fast adversarial training (Wong et al. 2020): linearly from 0 up
            to the full rate at 2/5 of training, then linearly down to 0.
  step      the full rate, x0.1 from half-way, x0.01 from three quarters (Madry et al.; Rice et al. 2020).
  constant  the full rate throughout.
"""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "cyclic", "step", "constant")


class LRFactor:
    """Multiplier for the rate of optimizer step `i` (0-based) of `total`. A plain object with plain
    attributes, so LambdaLR's state_dict stores it and a training-state file loads it safely."""

    def __init__(self, kind: str, total: int) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
        self.kind, self.total = kind, max(1, int(total))

    def __call__(self, i: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(i, self.total) / self.total))
        if self.kind == "step":
            t = i / self.total
            return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
        t = min(i + 1, self.total) / self.total   # cyclic: the rate at the end of step i, never 0 at the start
        return t / 0.4 if t <= 0.4 else (1.0 - t) / 0.6
