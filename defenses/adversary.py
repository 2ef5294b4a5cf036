"""The inner maximization of adversarial training: steepest ascent on a per-batch objective inside the
eps-ball, built from the projection core of `attacks` (the same threat model the benchmark evaluates).

Unlike an evaluation attack this keeps the *last* iterate for every example (not the first point that
fools the model): training wants the highest loss, not merely a misclassification.
"""
from __future__ import annotations

from typing import Callable

import torch

from attacks import ascent_direction, clip_to_box, frozen, project

from ._random import BatchRandom

# fp16 input gradients of a mean loss can underflow; the ascent direction does not depend on the scale
_FP16_LOSS_SCALE = 1024.0


def uniform_start(x: torch.Tensor, eps: float, norm: str, rnd: BatchRandom, clip: bool = True) -> torch.Tensor:
    """A uniform draw from the eps-ball around each example (L-inf: the cube; L2: uniform in volume),
    clipped to the [0, 1] box unless `clip` is False. Returns the perturbation."""
    shape = tuple(x.shape[1:])
    if norm == "linf":
        delta = (2 * rnd.uniform(*shape) - 1) * eps
    else:
        direction = rnd.normal(*shape)
        direction = direction / (direction.flatten(1).norm(dim=1).view(-1, *([1] * len(shape))) + 1e-12)
        radius = rnd.uniform(1) ** (1.0 / x[0].numel())
        delta = direction * radius.view(-1, *([1] * len(shape))) * eps
    delta = delta.to(dtype=x.dtype)
    return clip_to_box(x, delta) if clip else delta


def ascend(model: torch.nn.Module, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor], *,
           eps: float, norm: str, steps: int, step_size: float, start: torch.Tensor | None = None,
           scale_loss: bool = False) -> torch.Tensor:
    """`steps` ascent steps on `objective(model(x + delta))` (a scalar), projected onto the eps-ball and
    the box after each step; returns x + delta, detached. The model runs in eval mode with parameter
    gradients off (`attacks.frozen`), so batch-norm statistics are not touched by the attack."""
    delta = torch.zeros_like(x) if start is None else start.detach().clone()
    scale = _FP16_LOSS_SCALE if scale_loss else 1.0
    with frozen(model):
        for _ in range(steps):
            xa = (x + delta).detach().requires_grad_(True)
            value = objective(model(xa))
            grad, = torch.autograd.grad(value * scale, xa)
            delta = delta + step_size * ascent_direction(grad.float().to(x.dtype), norm)
            delta = clip_to_box(x, project(delta, eps, norm)).detach()
    return (x + delta).detach()
