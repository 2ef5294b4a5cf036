"""PGD: projected gradient descent.

Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
Norm: L-inf or L2.
Arguments:
    norm: "linf" or "l2".
    steps: ascent steps per restart (10).
    step_size: absolute step; default 2.5 * eps / steps (the paper's rule of thumb). With a decaying
        schedule it is the first step, and the default doubles (5 * eps / steps), so that the steps add
        up to about the same distance as the constant schedule's.
    schedule: how the step size changes over the steps of a restart (t = 0 .. steps-1):
        "constant" (the paper), "cosine" (step_size * (1 + cos(pi t / steps)) / 2), or "step" (halved
        after half and after three quarters of the steps).
    restarts: random restarts; each runs only on examples no earlier restart fooled (1). An example no
        restart fooled gets the final iterate of the last one.
    random_start: start from a uniform draw in the eps-ball (True).
    loss: "ce", "margin" (Carlini-Wagner) or "dlr" ("ce").
    targeted: drive each example to `target` instead of away from its label (False). Without `target`
        the call is refused (AttackConfigError): an evaluation run passes no targets, and apgd-t or
        autoattack are the targeted evaluations that choose their own.
    early_stop: stop attacking an example as soon as it is fooled (True). The fooling point is kept,
        so the attack is never weaker than without early stopping, and costs far fewer passes.
Example:
    >>> attack = PGD(norm="linf", steps=10)
    >>> out = attack(model, x, y, eps=8/255)
    >>> robust = ~out.fooled
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._core import (AttackOutput, ascent_direction, canonical_norm, check_eps, clip_to_box, frozen, get_loss,
                    project, random_start, refuse_missing_target, require_counts)
from .errors import AttackConfigError


SCHEDULES = ("constant", "cosine", "step")


def step_schedule(step_size: float, steps: int, schedule: str = "constant") -> list[float]:
    """The step size of each of `steps` steps under a schedule (see the module docstring)."""
    if schedule == "constant":
        return [step_size] * steps
    if schedule == "cosine":
        return [step_size * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
    if schedule == "step":
        return [step_size * (0.25 if t >= 0.75 * steps else 0.5 if t >= 0.5 * steps else 1.0) for t in range(steps)]
    raise AttackConfigError(f"unknown step-size schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def iterate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str, steps: int,
            step_size: float, loss: str = "ce", targeted: bool = False, target: torch.Tensor | None = None,
            start: torch.Tensor | None = None, early_stop: bool = True, verify: bool = True,
            schedule: str = "constant") -> AttackOutput:
    """The ascent loop FGSM and PGD share. `start` is the initial perturbation (zeros if None);
    `schedule` varies the step size over the steps, starting at `step_size`.
    verify=False skips the forward pass that checks the last iterate (a caller that re-checks every
    output anyway, like the engine, saves it): `fooled` then counts only what the loop saw.

    Bookkeeping costs one device-to-host sync per step (how many examples were fooled): fooled rows
    are stored and dropped from the batch only in steps where some were, by index (no boolean-mask
    indexing, each of which is a sync of its own); the rows kept are in their original order, so every
    step computes on exactly the examples, in the order, that a mask-indexed loop would."""
    loss_fn = get_loss(loss)
    goal = target if targeted else y
    if targeted and target is None:
        raise refuse_missing_target("the attack")
    n = x.shape[0]
    x_adv = x.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    active = torch.arange(n, device=x.device)
    x0, g0 = x, goal
    delta = torch.zeros_like(x) if start is None else start.clone()
    fwd = bwd = 0
    sizes = step_schedule(step_size, steps, schedule)

    def hit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == labels if targeted else pred != labels

    for t in range(steps):
        xa = (x0 + delta).detach().requires_grad_(True)
        logits = model(xa)
        m = xa.shape[0]
        fwd += m
        done = hit(logits.detach(), g0)
        k = int(done.sum())                      # the step's one sync
        keep = None
        if k:
            # stable: the rows not fooled first, in their order, then the fooled ones
            order = torch.argsort(done.to(torch.int8), stable=True)
            gone, keep = order[m - k:], order[:m - k]
            x_adv.index_copy_(0, active[gone], xa.detach()[gone])
            fooled[active[gone]] = True
            if early_stop and k == m:
                active = active[:0]
                break
        value = loss_fn(logits, g0)
        if targeted:
            value = -value
        grad, = torch.autograd.grad(value.sum(), xa)
        bwd += m
        delta = delta + sizes[t] * ascent_direction(grad, norm)
        delta = clip_to_box(x0, project(delta, eps, norm)).detach()
        if early_stop and keep is not None:
            active, x0, g0, delta = active[keep], x0[keep], g0[keep], delta[keep]
    if active.numel() and not verify:
        x_adv[active] = torch.where((~fooled[active]).view(-1, *([1] * (x.dim() - 1))), x0 + delta, x_adv[active])
    elif active.numel():
        with torch.no_grad():
            xa = x0 + delta
            logits = model(xa)
        fwd += xa.shape[0]
        done = hit(logits, g0)
        # the final iterate replaces the clean copy, and an earlier fooling point only if it fools too
        take = (done | ~fooled[active]).view(-1, *([1] * (x.dim() - 1)))
        x_adv[active] = torch.where(take, xa, x_adv[active])
        fooled[active[done]] = True
    return AttackOutput(x_adv=x_adv.detach(), fooled=fooled, forward=fwd, backward=bwd)

@dataclass(frozen=True)
class PGD:
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    targeted: bool = False
    early_stop: bool = True
    schedule: str = "constant"

    name = "pgd"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        require_counts(self, 'steps', 'restarts')
        if self.step_size is not None and not self.step_size > 0:
            raise AttackConfigError(f"step_size must be > 0, got {self.step_size}")
        get_loss(self.loss)
        if self.schedule not in SCHEDULES:
            raise AttackConfigError(f"unknown step-size schedule {self.schedule!r}; "
                                    f"expected one of {', '.join(SCHEDULES)}")

    def step_for(self, eps: float) -> float:
        """The (first) step size at eps."""
        if self.step_size is not None:
            return self.step_size
        return (2.5 if self.schedule == "constant" else 5.0) * eps / self.steps

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, target: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, verify: bool = True) -> AttackOutput:
        """Attack (x, y). `seeds` (one int per example) make random starts independent of batching.
        Whatever `verify` says, x_adv holds each example's first fooling point, or else the final iterate
        of the last restart run on it; verify=False only skips the forward pass that checks that last
        iterate (the caller re-checks it), so `fooled` may then miss examples, never invent them."""
        check_eps(eps, self.norm)
        if self.targeted and target is None:
            raise refuse_missing_target(self.name)
        x_adv, fooled = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        fwd = bwd = 0
        if eps == 0 or x.shape[0] == 0:
            return AttackOutput(x_adv, fooled, 0, 0)
        with frozen(model):
            for r in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                xs = x[todo]
                start = None
                if self.random_start:
                    rs = None if seeds is None else seeds[todo.cpu()] + r * 1_000_003
                    start = random_start(xs, eps, self.norm, rs, generator)
                out = iterate(model, xs, y[todo], eps, norm=self.norm, steps=self.steps,
                              step_size=self.step_for(eps), loss=self.loss, targeted=self.targeted,
                              target=None if target is None else target[todo], start=start,
                              early_stop=self.early_stop, verify=verify or r < self.restarts - 1,
                              schedule=self.schedule)
                fwd, bwd = fwd + out.forward, bwd + out.backward
                # a fooling point once found is never replaced; every other example takes this restart's
                # final iterate, so with verify=False the last restart's (never evaluated) final step
                # reaches the caller's re-check instead of an earlier point already known not to fool
                x_adv[todo] = out.x_adv
                fooled[todo[out.fooled]] = True
        return AttackOutput(x_adv, fooled, fwd, bwd)
