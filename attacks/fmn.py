"""FMN: the fast minimum-norm attack.

Paper: Pintor, Roli, Brendel, Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm
Constraints", NeurIPS 2021. https://arxiv.org/abs/2102.12827 (Algorithm 1).
Norm: L-inf or L2.

The algorithm (written from the paper): minimize the logit margin L = z_y - max_{j != y} z_j (negative
once misclassified) by normalized gradient steps inside an eps_k-ball whose radius adapts per example:
- not adversarial and no adversarial point found yet: eps_k = |delta| + L / |grad L|_dual, the distance
  to the linearized decision boundary (dual norm: L1 for L-inf, L2 for L2);
- not adversarial, one found before: eps_k = eps_{k-1} (1 + gamma_k) (grow back towards the boundary);
- adversarial: eps_k = min(eps_{k-1} (1 - gamma_k), |delta*|), delta* the smallest adversarial
  perturbation so far (shrink);
then delta <- delta - alpha_k grad / |grad|_2, projected onto the eps_k-ball and the box [0, 1]. Both
gamma_k and the step alpha_k decay from their initial to their final values by cosine annealing.
The result per example is the smallest adversarial perturbation found, and its norm.

On an exactly linear model the L2 version can stop on the decision boundary without crossing it (the
first radius is the exact distance; adv-lib's implementation does the same); networks are not linear.
Deterministic (it starts from delta = 0), so an example's result does not depend on its batch.
What we add: a forward pass on the last iterate (the paper's loop ends on a step it never evaluates),
and, called with a fixed eps (`__call__`), the smallest point projected onto the eps-ball, which is a
point of the threat model whether or not the minimum was inside it; the caller re-checks it.
Arguments:
    norm: "linf" or "l2".
    steps: iterations (100; the paper reports most of the gain within the first 100).
    alpha_init, alpha_final: the first and last size of the L2-normalized gradient step (1.0 and
        alpha_init / 100, for both norms; a larger L-inf step measured weaker on the CIFAR ResNet-20).
    gamma_init, gamma_final: the radius' first and last relative change (0.05, 0.001: the paper's).
Example:
    >>> best = FMN(norm="linf", steps=100).minimize(model, x, y)
    >>> best.norms   # per example: the smallest L-inf perturbation found that fools the model
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._core import AttackOutput, canonical_norm, check_eps, clip_to_box, frozen, project, require_counts
from .errors import AttackConfigError

__all__ = ["FMN", "MinNorm"]


@dataclass(frozen=True)
class MinNorm:
    """Per example: the smallest adversarial point found (x itself where none), its distance to x in
    the norm (inf where none), and the cost in example-passes."""
    x_adv: torch.Tensor
    norms: torch.Tensor
    forward: int
    backward: int


def _norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def _project_radius(delta: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
    """Nearest point of each example's own ball (radius per example)."""
    r = radius.view(-1, *([1] * (delta.dim() - 1))).to(delta.dtype)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, r), -r)
    size = delta.flatten(1).norm(dim=1).view_as(r)
    return delta * (r / (size + 1e-12)).clamp(max=1.0)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def _anneal(first: float, last: float, k: int, steps: int) -> float:
    return last + (first - last) * 0.5 * (1 + math.cos(math.pi * k / steps))


@dataclass(frozen=True)
class FMN:
    norm: str = "linf"
    steps: int = 100
    alpha_init: float = 1.0
    alpha_final: float | None = None
    gamma_init: float = 0.05
    gamma_final: float = 0.001

    name = "fmn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        if self.norm not in ("linf", "l2"):
            raise AttackConfigError(f"fmn supports linf and l2, not {self.norm}")
        require_counts(self, "steps")
        for name in ("alpha_init", "alpha_final", "gamma_init", "gamma_final"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise AttackConfigError(f"{name} must be > 0, got {v}")
        if not self.gamma_init < 1:
            raise AttackConfigError(f"gamma_init must be < 1, got {self.gamma_init}")

    def alphas(self) -> tuple[float, float]:
        a0 = self.alpha_init
        return a0, self.alpha_final if self.alpha_final is not None else a0 / 100

    def minimize(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> MinNorm:
        """The smallest adversarial perturbation FMN finds per example (see the module docstring)."""
        n = x.shape[0]
        x_best = x.clone()
        best = torch.full((n,), float("inf"), device=x.device)
        if n == 0:
            return MinNorm(x_best, best, 0, 0)
        a0, a1 = self.alphas()
        cap = 1.0 if self.norm == "linf" else math.sqrt(x[0].numel())   # the box's own diameter
        delta = torch.zeros_like(x)
        radius = torch.zeros(n, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        fwd = bwd = 0
        view = (-1, *([1] * (x.dim() - 1)))
        with frozen(model):
            for k in range(self.steps):
                alpha, gamma = _anneal(a0, a1, k, self.steps), _anneal(self.gamma_init, self.gamma_final, k, self.steps)
                xa = (x + delta).detach().requires_grad_(True)
                logits = model(xa)
                fwd += n
                adv = logits.detach().argmax(1) != y
                margin = _margin(logits, y)
                grad, = torch.autograd.grad(margin.sum(), xa)
                bwd += n
                size = _norm(delta, self.norm).float()
                better = adv & (size < best)
                best = torch.where(better, size, best)
                x_best = torch.where(better.view(view), xa.detach(), x_best)
                found |= adv
                dual = grad.flatten(1).norm(p=1 if self.norm == "linf" else 2, dim=1).float()
                to_boundary = size + margin.detach().clamp(min=0) / dual.clamp(min=1e-12)
                radius = torch.where(adv, torch.minimum(radius * (1 - gamma), best),
                                     torch.where(found, radius * (1 + gamma), to_boundary)).clamp(max=cap)
                step = grad / (grad.flatten(1).norm(dim=1).view(view) + 1e-12)
                delta = _project_radius(delta - alpha * step, radius, self.norm)
                delta = clip_to_box(x, delta).detach()
            with torch.no_grad():   # the last step's point, which the loop never evaluated
                xa = x + delta
                adv = model(xa).argmax(1) != y
            fwd += n
            size = _norm(delta, self.norm).float()
            better = adv & (size < best)
            best = torch.where(better, size, best)
            x_best = torch.where(better.view(view), xa, x_best)
        return MinNorm(x_best.detach(), best, fwd, bwd)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, target: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, verify: bool = True) -> AttackOutput:
        """At a fixed eps: the smallest point found, projected onto the eps-ball (where the minimum lies
        outside it, its projection may still fool). Deterministic: `seeds` and `generator` are unused.
        verify=False skips the pass that checks the projected points; `fooled` then counts only the
        minima found inside the ball."""
        check_eps(eps, self.norm)
        if target is not None:
            raise AttackConfigError("fmn is untargeted")
        if eps == 0 or x.shape[0] == 0:
            return AttackOutput(x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device), 0, 0)
        best = self.minimize(model, x, y)
        return at_eps(model, x, y, best, eps, self.norm, verify=verify)


def at_eps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, best: MinNorm, eps: float, norm: str, *,
           verify: bool = True) -> AttackOutput:
    """The minimum-norm points projected onto the eps-ball (and the box); with verify, one forward pass
    says which fool the model. Without, `fooled` holds the minima that were already inside the ball."""
    x_adv = (x + project(best.x_adv - x, eps, norm)).clamp(0.0, 1.0)
    found = torch.isfinite(best.norms)
    x_adv = torch.where(found.view(-1, *([1] * (x.dim() - 1))), x_adv, x)
    if not verify:
        return AttackOutput(x_adv.detach(), found & (best.norms <= eps), best.forward, best.backward)
    with torch.no_grad(), frozen(model):
        fooled = model(x_adv).argmax(1) != y
    return AttackOutput(x_adv.detach(), fooled & found, best.forward + x.shape[0], best.backward)
