"""APGD and APGD-T: auto-PGD, a step-size-free PGD.

Paper: Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690 (section 3).
Norm: L-inf or L2.

The algorithm (written from the paper):
- start from a random point of the eps-ball; the step size starts at 2 * eps;
- each step is a projected sign (L-inf) or normalized (L2) gradient step z, followed by a momentum
  update x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})) with alpha = 0.75 (1 on the
  first step);
- at checkpoints w_j = ceil(p_j * steps), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
  the step size of an example is halved, and its iterate reset to the best point found so far, if
  (1) the loss rose in fewer than rho = 0.75 of the steps since the last checkpoint, or
  (2) its step size was not halved at the last checkpoint and its best loss has not improved since.
- APGD-T ascends the targeted DLR loss -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) once for each of
  the top-k classes other than the predicted one (k = 9 by default), each run only on examples the
  earlier targets did not break. Its goal is still misclassification (into any class).

Engineering on top of the paper (the results are per example the same, only cheaper):
- per-example early stop: an example leaves the batch once it is misclassified (its fooling point kept);
- no backward pass after the last iterate (gradients are taken with respect to the input only, as the
  reference package does; `frozen` is for the eval mode and the restored flags, not for speed);
- per-example seeded random starts (`seeds`), so results do not depend on batch composition.

Arguments:
    norm: "linf" or "l2".
    steps: iterations per restart (100).
    restarts: random restarts; each runs only on examples no earlier restart fooled (1).
    loss: "ce", "dlr" or "margin" (APGD only; "ce").
    rho: checkpoint condition (1) threshold (0.75).
    momentum: the alpha of the momentum update (0.75).
    eot_iter: gradients averaged over this many forward passes (for randomized models; 1).
    n_target_classes (APGD-T): how many of the most likely other classes to target (9; at most
        classes - 1, which is used when the model has fewer).
    max_batch (APGD-T): target classes are attacked several at a time, as many as keep
        examples x targets <= max_batch (256); a row that breaks its example stops the example's other
        rows. Per example the outcome is the paper's (each target run is independent and seeded); the
        batches are just fuller: few examples are left by then, and a batch of 20 uses a CPU or GPU poorly.
Example:
    >>> out = APGD(norm="linf", loss="dlr")(model, x, y, eps=8/255)
    >>> out = APGDT()(model, x, y, eps=8/255)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import torch

from ._core import (AttackOutput, ascent_direction, canonical_norm, check_eps, clip_to_box, frozen, get_loss,
                    project, random_start, require_classes, require_counts)
from .errors import AttackConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

_MASK63 = 0x7FFF_FFFF_FFFF_FFFF


def derive_seeds(seeds: torch.Tensor | None, *salt: int) -> torch.Tensor | None:
    """Per-example seeds for a sub-run (a restart, a target class): a fixed mix of the example's own
    seed and the salt, so every (example, sub-run) draws its own start whatever the batch."""
    if seeds is None:
        return None
    out = []
    for s in seeds.tolist():
        v = int(s)
        for k in salt:
            v = (v * 6364136223846793005 + 1442695040888963407 + int(k) * 0x9E3779B97F4A7C15) & _MASK63
        out.append(v)
    return torch.tensor(out, dtype=torch.int64)


def checkpoints(steps: int) -> list[int]:
    """Iterations (1-based counts of steps taken) after which the step-size conditions are checked:
    the paper's w_j = ceil(p_j * steps), in exact arithmetic (0.41 * 100 is 41.000000000000004 in floats,
    whose ceil would be 42)."""
    p = [Fraction(0), Fraction(22, 100)]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))
        if nxt > 1:
            break
        p.append(nxt)
    out = sorted({max(1, math.ceil(q * steps)) for q in p[1:]})
    return [w for w in out if w <= steps]


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): ascending it pushes the target above the label,
    invariant to the logits' scale. Needs at least 4 classes."""
    require_classes(logits.shape[1], 4, "the targeted DLR loss (apgd-t)", "use apgd or pgd instead")
    z = logits.float()
    zs, _ = z.sort(dim=1)
    zy = z.gather(1, y[:, None]).squeeze(1)
    zt = z.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)


def _untargeted(name: str) -> LossFn:
    fn = get_loss(name)
    return lambda logits, y, _t: fn(logits, y)


def _index(state: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[keep] for k, v in state.items()}


def apgd_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str, steps: int,
             loss_fn: LossFn, target: torch.Tensor | None = None, start: torch.Tensor | None = None,
             rho: float = 0.75, momentum: float = 0.75, eot_iter: int = 1,
             early_stop: bool = True, groups: torch.Tensor | None = None) -> AttackOutput:
    """One APGD run from x + start on all of x. Success is misclassification (pred != y) in every mode.
    `groups` (one id per row): rows that attack the same example (e.g. one per target class) share an id,
    and with early stop a row that succeeds also stops the other rows of its group.
    x_adv: the fooling point where found, else the highest-loss point. Every returned point was
    evaluated by a forward pass in the loop, so `fooled` is exact for a deterministic model."""
    n = x.shape[0]
    shape1 = (-1,) + (1,) * (x.dim() - 1)
    x_adv = x.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    fwd = bwd = 0
    if n == 0 or steps < 1:
        return AttackOutput(x_adv, fooled, 0, 0)

    def evaluate(xa: torch.Tensor, yy: torch.Tensor, tt: torch.Tensor | None,
                 need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        nonlocal fwd, bwd
        if not need_grad:
            with torch.no_grad():
                logits = model(xa)
                fwd += xa.shape[0]
                return logits, loss_fn(logits, yy, tt).detach(), None
        grad = torch.zeros_like(xa)
        value = torch.zeros(xa.shape[0], device=xa.device)
        for _ in range(eot_iter):
            xr = xa.detach().requires_grad_(True)
            logits = model(xr)
            v = loss_fn(logits, yy, tt)
            g, = torch.autograd.grad(v.sum(), xr)
            fwd, bwd = fwd + xa.shape[0], bwd + xa.shape[0]
            grad += g
            value += v.detach()
        return logits.detach(), value / eot_iter, grad / eot_iter

    delta0 = torch.zeros_like(x) if start is None else start
    xk = x + clip_to_box(x, project(delta0, eps, norm))
    logits, loss, grad = evaluate(xk, y, target, True)
    st = {"idx": torch.arange(n, device=x.device), "x0": x, "y": y, "xk": xk, "xprev": xk, "grad": grad,
          "loss": loss, "best": loss.clone(), "xbest": xk.clone(), "gbest": grad.clone(),
          "step": torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype),
          "last_best": loss.clone(), "reduced": torch.ones(n, dtype=torch.bool, device=x.device),
          "n_incr": torch.zeros(n, device=x.device)}
    if target is not None:
        st["t"] = target
    if groups is not None:
        st["grp"] = groups

    def stop(hit: torch.Tensor) -> torch.Tensor:
        """Rows to drop after `hit`: the hits and, with groups, their siblings."""
        if "grp" in st:
            return torch.isin(st["grp"], st["grp"][hit])
        return hit

    def record(logits: torch.Tensor) -> torch.Tensor:
        hit = logits.argmax(1) != st["y"]
        if hit.any():
            x_adv[st["idx"][hit]] = st["xk"][hit]
            fooled[st["idx"][hit]] = True
        return hit

    hit = record(logits)
    if early_stop and hit.any():
        st = _index(st, ~stop(hit))
    marks = set(checkpoints(steps))
    last_mark = 0
    for i in range(1, steps + 1):
        if st["idx"].numel() == 0:
            break
        a = 1.0 if i == 1 else momentum
        x0, xk, step = st["x0"], st["xk"], st["step"].view(shape1)
        z = x0 + clip_to_box(x0, project(xk - x0 + step * ascent_direction(st["grad"], norm), eps, norm))
        moved = xk + a * (z - xk) + (1 - a) * (xk - st["xprev"])
        xn = x0 + clip_to_box(x0, project(moved - x0, eps, norm))
        st["xprev"], st["xk"] = xk, xn
        logits, loss, grad = evaluate(xn, st["y"], st.get("t"), i < steps)
        st["n_incr"] = st["n_incr"] + (loss > st["loss"]).float()
        st["loss"] = loss
        better = loss > st["best"]
        st["best"] = torch.where(better, loss, st["best"])
        st["xbest"] = torch.where(better.view(shape1), xn, st["xbest"])
        if grad is not None:
            st["grad"] = grad
            st["gbest"] = torch.where(better.view(shape1), grad, st["gbest"])
        hit = record(logits)
        if i in marks and i < steps:
            span = i - last_mark
            cond1 = st["n_incr"] < rho * span
            cond2 = ~st["reduced"] & (st["best"] <= st["last_best"])
            reduce = cond1 | cond2
            st["step"] = torch.where(reduce, st["step"] / 2, st["step"])
            r1 = reduce.view(shape1)
            st["xk"] = torch.where(r1, st["xbest"], st["xk"])
            st["xprev"] = torch.where(r1, st["xbest"], st["xprev"])
            st["grad"] = torch.where(r1, st["gbest"], st["grad"])
            st["loss"] = torch.where(reduce, st["best"], st["loss"])
            st["reduced"], st["last_best"] = reduce, st["best"].clone()
            st["n_incr"] = torch.zeros_like(st["n_incr"])
            last_mark = i
        if early_stop and hit.any():
            st = _index(st, ~stop(hit))
    # examples never fooled: hand back their highest-loss point
    if st["idx"].numel():
        rest = st["idx"][~fooled[st["idx"]]]
        if rest.numel():
            keep = ~fooled[st["idx"]]
            x_adv[rest] = st["xbest"][keep]
    return AttackOutput(x_adv.detach(), fooled, fwd, bwd)


def target_group(targets_left: int, examples: int, max_batch: int) -> int:
    """How many target classes to attack at once: as many as keep examples x targets <= max_batch
    (at least one). The outcome per example does not depend on it (each (example, target, restart)
    run has its own seed; an example is broken if any of its runs breaks it); only the batch sizes do.
    Small batches waste the hardware (the last robust examples of a batch, one target at a time)."""
    return max(1, min(targets_left, max_batch // max(examples, 1)))


def _verify(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor, fooled: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Re-check the returned points (matters only for randomized models; the loop already saw them)."""
    with torch.no_grad():
        hit = model(x_adv).argmax(1) != y
    return hit, int(x_adv.shape[0])


@dataclass(frozen=True)
class APGD:
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    rho: float = 0.75
    momentum: float = 0.75
    eot_iter: int = 1
    early_stop: bool = True

    name = "apgd"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        require_counts(self, 'steps', 'restarts', 'eot_iter')
        if not 0 < self.rho <= 1 or not 0 < self.momentum <= 1:
            raise AttackConfigError("rho and momentum must lie in (0, 1]")
        get_loss(self.loss)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True) -> AttackOutput:
        check_eps(eps, self.norm)
        x_adv, fooled = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if eps == 0 or x.shape[0] == 0:
            return AttackOutput(x_adv, fooled, 0, 0)
        fwd = bwd = 0
        loss_fn = _untargeted(self.loss)
        with frozen(model):
            for r in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                xs = x[todo]
                rs = derive_seeds(None if seeds is None else seeds[todo.cpu()], 1, r)
                start = random_start(xs, eps, self.norm, rs, generator)
                out = apgd_run(model, xs, y[todo], eps, norm=self.norm, steps=self.steps, loss_fn=loss_fn,
                               start=start, rho=self.rho, momentum=self.momentum, eot_iter=self.eot_iter,
                               early_stop=self.early_stop)
                fwd, bwd = fwd + out.forward, bwd + out.backward
                # as PGD: the examples not yet fooled take this restart's point (its highest-loss one)
                x_adv[todo] = out.x_adv
                fooled[todo[out.fooled]] = True
            if verify:
                fooled, extra = _verify(model, x_adv, y, fooled)
                fwd += extra
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd)


@dataclass(frozen=True)
class APGDT:
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    n_target_classes: int = 9
    rho: float = 0.75
    momentum: float = 0.75
    eot_iter: int = 1
    early_stop: bool = True
    max_batch: int = 256

    name = "apgd-t"
    min_classes = 4          # the targeted DLR loss reads the 4 largest logits

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        require_counts(self, 'steps', 'restarts', 'n_target_classes', 'eot_iter', 'max_batch')

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True) -> AttackOutput:
        check_eps(eps, self.norm)
        x_adv, fooled = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if eps == 0 or x.shape[0] == 0:
            return AttackOutput(x_adv, fooled, 0, 0)
        fwd = bwd = 0
        first = True
        with frozen(model):
            with torch.no_grad():
                clean = model(x)
            fwd += x.shape[0]
            k = clean.shape[1]
            require_classes(k, 4, "the targeted DLR loss (apgd-t)", "use apgd or pgd instead")
            order = clean.argsort(dim=1)          # ascending: order[:, -1] is the predicted class
            fooled |= order[:, -1] != y           # already misclassified: nothing to do
            n_t = min(self.n_target_classes, k - 1)
            t0 = 0
            while t0 < n_t:
                remaining = int((~fooled).sum())
                if remaining == 0:
                    break
                g = target_group(n_t - t0, remaining, self.max_batch)
                chunk = list(range(t0, t0 + g))
                t0 += g
                for r in range(self.restarts):
                    todo = (~fooled).nonzero().squeeze(1)
                    if todo.numel() == 0:
                        break
                    m = todo.numel()
                    rows = todo.repeat(len(chunk))                    # target-major: chunk[0] rows first
                    tgt = torch.cat([order[todo, -(t + 2)] for t in chunk])
                    rs = None if seeds is None else torch.cat(
                        [derive_seeds(seeds[todo.cpu()], 2, t, r) for t in chunk])
                    xs = x[rows]
                    start = random_start(xs, eps, self.norm, rs, generator)
                    out = apgd_run(model, xs, y[rows], eps, norm=self.norm, steps=self.steps,
                                   loss_fn=targeted_dlr_loss, target=tgt, start=start, rho=self.rho,
                                   momentum=self.momentum, eot_iter=self.eot_iter, early_stop=self.early_stop,
                                   groups=rows if len(chunk) > 1 else None)
                    fwd, bwd = fwd + out.forward, bwd + out.backward
                    hit = out.fooled.view(len(chunk), m)
                    first_hit = hit.float().argmax(0)                  # the first target that succeeded
                    any_hit = hit.any(0)
                    pick = first_hit * m + torch.arange(m, device=x.device)
                    if first:
                        x_adv[todo] = out.x_adv[pick]                  # highest-loss point of the first target
                        first = False
                    x_adv[todo[any_hit]] = out.x_adv[pick[any_hit]]
                    fooled[todo[any_hit]] = True
            if verify:
                fooled, extra = _verify(model, x_adv, y, fooled)
                fwd += extra
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd)


__all__ = ["APGD", "APGDT", "apgd_run", "checkpoints", "derive_seeds", "target_group", "targeted_dlr_loss"]
