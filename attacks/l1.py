"""L1 threat model: the exact projection onto the L1 ball intersected with the pixel box, and an L1 PGD
with sparse steepest-ascent steps.

Papers: Tramer, Boneh, "Adversarial Training and Robustness for Multiple Perturbations", NeurIPS 2019
(SLIDE, sparse L1 descent: the step moves only the coordinates with the largest gradient magnitudes;
https://arxiv.org/abs/1904.13000); Croce, Hein, "Mind the box: l1-APGD for sparse adversarial attacks on
image classifiers", ICML 2021 (https://arxiv.org/abs/2103.01208): the box matters under L1, so project
onto ball and box together, and do not spend steps on coordinates the box stops.
Norm: L1 (eps is the sum of absolute pixel changes, e.g. 12 on CIFAR-10 as in Croce & Hein 2021).

Projection (`project_l1_box`): the nearest point (in L2) to v of {d : ||d||_1 <= eps, lo <= d <= hi} with
lo = -x <= 0 <= hi = 1 - x. Its KKT conditions give d_i = sign(v_i) min(max(|v_i| - lam, 0), u_i) with u_i
the room in v_i's direction (hi_i or -lo_i) and lam >= 0 the smallest value with sum |d_i| <= eps (lam = 0
when the clipped v is inside the ball). The sum is continuous and non-increasing in lam; lam is found by
bisection in float64 to 2^-64 of its range and the upper end taken, so the result is inside the ball
by construction (then rounded once to the pixels' dtype).

The attack (PGD-L1): from a random point of the ball (a Laplace direction, radius eps U^(1/D), clipped to
the box), each step takes the coordinates whose gradient points where the box still allows a move,
keeps the top `sparsity` fraction of them by |gradient| (at least one), moves eps * step / k along the
gradient's sign on each of those k, and projects. The step size follows a cosine schedule from `step_size`
(relative to eps) to 0, restarts as PGD's, per-example early stop and per-example seeded starts.
Arguments:
    steps: 50. restarts: 1. step_size: first step as a fraction of eps (1.0). sparsity: fraction of the
    movable coordinates moved per step (0.01). loss: "ce", "margin" or "dlr" ("ce"). early_stop: True.
Example:
    >>> out = PGDL1(steps=50)(model, x, y, eps=12.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._core import AttackOutput, _per_example, check_eps, frozen, get_loss, require_counts
from .apgd import derive_seeds
from .errors import AttackConfigError

_BISECTIONS = 64


def project_l1_box(v: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per example, the nearest point to v (a perturbation of x) with ||d||_1 <= eps and x + d in [0, 1]."""
    shape, dtype = v.shape, v.dtype
    v64, x64 = v.detach().flatten(1).double(), x.detach().flatten(1).double()
    room = torch.where(v64 > 0, 1 - x64, x64).clamp(min=0)     # how far d_i may go in v_i's direction
    a = v64.abs()
    d = torch.minimum(a, room)
    over = d.sum(1) > eps
    if over.any():
        ao, ro = a[over], room[over]
        lo = torch.zeros(ao.shape[0], 1, dtype=torch.float64, device=v.device)
        hi = ao.max(1, keepdim=True).values
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            s = torch.minimum((ao - mid).clamp(min=0), ro).sum(1, keepdim=True)
            big = s > eps
            lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
        d[over] = torch.minimum((ao - hi).clamp(min=0), ro)
    out = torch.sign(v64) * d
    return out.to(dtype).view(shape)


def l1_random_start(x: torch.Tensor, eps: float, seeds: torch.Tensor | None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw from the L1 ball of radius eps (Laplace direction, radius eps U^(1/D)) clipped to the box."""
    n, shape = x.shape[0], x.shape[1:]
    if n == 0:
        return torch.zeros_like(x)
    dim = x[0].numel()

    def draw(g):
        u = torch.rand(shape, generator=g).clamp(1e-12, 1 - 1e-12)
        lap = -torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())
        r = torch.rand((), generator=g) ** (1.0 / dim)
        return lap / (lap.abs().sum() + 1e-12) * r
    delta = (_per_example(n, seeds, generator, draw) * eps).to(device=x.device, dtype=x.dtype)
    return project_l1_box(delta, x, eps)


def l1_excess(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Per example: L1 size of the perturbation minus eps (float64)."""
    return (x_adv.double() - x.double()).flatten(1).abs().sum(1) - eps


@dataclass(frozen=True)
class PGDL1:
    norm: str = "l1"
    steps: int = 50
    restarts: int = 1
    step_size: float = 1.0
    sparsity: float = 0.01
    loss: str = "ce"
    early_stop: bool = True

    name = "pgd-l1"

    def __post_init__(self) -> None:
        if self.norm != "l1":
            raise AttackConfigError(f"pgd-l1 is an L1 attack, not {self.norm}")
        require_counts(self, "steps", "restarts")
        if not self.step_size > 0:
            raise AttackConfigError(f"step_size must be > 0, got {self.step_size}")
        if not 0 < self.sparsity <= 1:
            raise AttackConfigError(f"sparsity must lie in (0, 1], got {self.sparsity}")
        get_loss(self.loss)

    def _run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        loss_fn = get_loss(self.loss)
        n = x.shape[0]
        x_adv, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        idx = torch.arange(n, device=x.device)
        x0, y0, delta = x, y, start
        fwd = bwd = 0
        for t in range(self.steps + 1):
            xa = (x0 + delta).clamp(0.0, 1.0).detach().requires_grad_(t < self.steps)
            with torch.set_grad_enabled(t < self.steps):
                logits = model(xa)
            fwd += xa.shape[0]
            hit = logits.detach().argmax(1) != y0
            if hit.any():
                x_adv[idx[hit]] = xa.detach()[hit]
                fooled[idx[hit]] = True
            keep = ~hit if self.early_stop else torch.ones_like(hit)
            if t == self.steps or not keep.any():
                if keep.any():
                    x_adv[idx[keep]] = xa.detach()[keep]
                break
            grad, = torch.autograd.grad(loss_fn(logits, y0).sum(), xa)
            bwd += xa.shape[0]
            grad, xa_d = grad[keep].flatten(1), xa.detach()[keep].flatten(1)
            idx, x0, y0, delta = idx[keep], x0[keep], y0[keep], delta[keep]
            movable = ((grad > 0) & (xa_d < 1)) | ((grad < 0) & (xa_d > 0))
            score = torch.where(movable, grad.abs(), torch.zeros_like(grad))
            k = (movable.sum(1).float() * self.sparsity).ceil().clamp(min=1).long()
            kmax = int(k.max())
            top = score.topk(kmax, dim=1)
            take = torch.arange(kmax, device=x.device)[None] < k[:, None]
            take &= top.values > 0
            step = torch.zeros_like(grad)
            size = eps * self.step_size * 0.5 * (1 + math.cos(math.pi * t / self.steps))
            vals = torch.where(take, size / k[:, None].float(), torch.zeros_like(top.values))
            step.scatter_(1, top.indices, vals * torch.sign(grad.gather(1, top.indices)))
            delta = project_l1_box(delta + step.view_as(delta), x0, eps).detach()
        return x_adv, fooled, fwd, bwd

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True) -> AttackOutput:
        """Every returned point was evaluated in the loop (the last iterate included), so `fooled` is
        exact for a deterministic model whatever `verify` says; verify=True re-checks (randomized models)."""
        check_eps(eps, "l1")
        x_adv, fooled = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if eps == 0 or x.shape[0] == 0:
            return AttackOutput(x_adv, fooled, 0, 0)
        fwd = bwd = 0
        with frozen(model):
            for r in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                rs = derive_seeds(None if seeds is None else seeds[todo.cpu()], 41, r)
                start = l1_random_start(x[todo], eps, rs, generator)
                xa, hit, f, b = self._run(model, x[todo], y[todo], eps, start)
                fwd, bwd = fwd + f, bwd + b
                x_adv[todo] = xa
                fooled[todo[hit]] = True
            if verify:
                with torch.no_grad():
                    fooled = model(x_adv).argmax(1) != y
                fwd += x.shape[0]
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd)


__all__ = ["PGDL1", "l1_excess", "l1_random_start", "project_l1_box"]
