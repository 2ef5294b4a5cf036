"""Training recipes: how one step turns a clean batch into the inputs of the training forward pass and
a loss.

  standard  cross-entropy on clean inputs.
  fgsm      "fast adversarial training" (Wong, Rice, Kolter, ICLR 2020, https://arxiv.org/abs/2001.03994):
            one signed-gradient step of size 1.25*eps from a uniform random start in the eps-ball. The
            gradient is taken at the unclipped start, as in the paper's algorithm and their MNIST code
            (only the result is clipped to the [0, 1] box); `clip_start=True` clips the start first, as
            their CIFAR-10 code. At MNIST's eps 0.3 the clipped start collapses (docs/TRAINING.md).
            Meant to be used with the cyclic learning rate (`schedules`, the CLI's default for it).
  pgd       PGD adversarial training (Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083):
            cross-entropy on the last iterate of `steps` PGD steps from a random start.
  trades    TRADES (Zhang et al., ICML 2019, https://arxiv.org/abs/1901.08573): cross-entropy on clean
            inputs plus beta * KL(p(x) || p(x')), x' maximizing that KL in the eps-ball (start
            x + 0.001 * N(0, 1)).

A recipe is a frozen dataclass with `inputs(model, x, y, rnd)` (the attack runs on `model`, a plain
module) and `loss(outputs, y) -> (loss, logits scored for training accuracy)`; the trainer runs the
training forward once for all inputs, so DistributedDataParallel sees one forward per step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from attacks import canonical_norm, check_eps, clip_to_box, project

from ._random import BatchRandom
from .adversary import ascend, uniform_start


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


@dataclass(frozen=True)
class Recipe:
    name: ClassVar[str] = "recipe"
    adversarial: ClassVar[bool] = False
    scale_attack_loss: bool = field(default=False, compare=False, repr=False)   # set for fp16

    def inputs(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               rnd: BatchRandom) -> tuple[torch.Tensor, ...]:
        return (x,)

    def loss(self, outputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _ce(outputs[0], y), outputs[0]

    def describe(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "scale_attack_loss"}
        return {"defense": self.name, **d}

    def scaled(self, fraction: float) -> "Recipe":
        """The recipe with eps (and step size) times `fraction` (eps warm-up); itself when there is no eps."""
        return self


@dataclass(frozen=True)
class Standard(Recipe):
    name: ClassVar[str] = "standard"


@dataclass(frozen=True)
class _Threat(Recipe):
    eps: float = 8 / 255
    norm: str = "linf"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        check_eps(self.eps, self.norm)
        if self.eps <= 0:
            raise ValueError(f"{self.name} training needs eps > 0, got {self.eps}")

    def scaled(self, fraction: float) -> "Recipe":
        if fraction >= 1.0:
            return self
        fraction = max(fraction, 1e-6)
        changes: dict[str, Any] = {"eps": self.eps * fraction}
        if getattr(self, "step_size", None) is not None:
            changes["step_size"] = self.step_size * fraction  # type: ignore[attr-defined]
        return replace(self, **changes)


@dataclass(frozen=True)
class FastFGSM(_Threat):
    """FGSM with a random start; `step_size` defaults to 1.25 * eps (Wong et al. 2020)."""
    name: ClassVar[str] = "fgsm"
    adversarial: ClassVar[bool] = True
    step_size: float | None = None
    clip_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_size is None:
            object.__setattr__(self, "step_size", 1.25 * self.eps)
        if not self.step_size > 0:
            raise ValueError(f"step size must be > 0, got {self.step_size}")

    def inputs(self, model, x, y, rnd):
        start = uniform_start(x, self.eps, self.norm, rnd, clip=self.clip_start)
        return (ascend(model, x, lambda logits: F.cross_entropy(logits.float(), y, reduction="sum"),
                       eps=self.eps, norm=self.norm, steps=1, step_size=self.step_size, start=start,
                       scale_loss=self.scale_attack_loss),)


@dataclass(frozen=True)
class PGDTraining(_Threat):
    """PGD-`steps` from a uniform random start; `step_size` defaults to 2.5 * eps / steps."""
    name: ClassVar[str] = "pgd"
    adversarial: ClassVar[bool] = True
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.step_size is None:
            object.__setattr__(self, "step_size", 2.5 * self.eps / self.steps)
        if not self.step_size > 0:
            raise ValueError(f"step size must be > 0, got {self.step_size}")

    def inputs(self, model, x, y, rnd):
        start = uniform_start(x, self.eps, self.norm, rnd)
        return (ascend(model, x, lambda logits: F.cross_entropy(logits.float(), y, reduction="sum"),
                       eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size, start=start,
                       scale_loss=self.scale_attack_loss),)


@dataclass(frozen=True)
class TRADES(PGDTraining):
    """Natural cross-entropy + beta * KL(p(x) || p(x_adv)); the inner maximization ascends the KL."""
    name: ClassVar[str] = "trades"
    beta: float = 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def inputs(self, model, x, y, rnd):
        with torch.no_grad():
            was = model.training
            model.eval()
            p_nat = F.softmax(model(x).float(), dim=1)
            model.train(was)
        start = clip_to_box(x, project(0.001 * rnd.normal(*x.shape[1:]).to(x.dtype), self.eps, self.norm))

        def kl(logits: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(logits.float(), dim=1), p_nat, reduction="sum")
        x_adv = ascend(model, x, kl, eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                       start=start, scale_loss=self.scale_attack_loss)
        return (x, x_adv)

    def loss(self, outputs, y):
        nat, adv = outputs
        robust = F.kl_div(F.log_softmax(adv.float(), dim=1), F.softmax(nat.float(), dim=1), reduction="batchmean")
        return _ce(nat, y) + self.beta * robust, nat


RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (Standard, FastFGSM, PGDTraining, TRADES)}
# and "gaussian" (noise augmentation), registered at the end of this module from defenses/smoothing.py


def make_recipe(name: str, *, eps: float | None = None, norm: str = "linf", steps: int | None = None,
                step_size: float | None = None, beta: float | None = None, clip_start: bool = False,
                sigma: float | None = None, scale_attack_loss: bool = False) -> Recipe:
    """Build a recipe by name, passing only the arguments it takes (ValueError on a bad value)."""
    if name not in RECIPES:
        raise ValueError(f"unknown defense {name!r}; expected one of {', '.join(RECIPES)}")
    cls = RECIPES[name]
    if cls is Standard:
        return Standard(scale_attack_loss=scale_attack_loss)
    if cls.name == "gaussian":   # Gaussian noise augmentation, no eps (defenses/smoothing.py)
        return cls(scale_attack_loss=scale_attack_loss, **({} if sigma is None else {"sigma": sigma}))
    kwargs: dict[str, Any] = {"norm": norm, "scale_attack_loss": scale_attack_loss}
    if eps is not None:
        kwargs["eps"] = eps
    if step_size is not None:
        kwargs["step_size"] = step_size
    if steps is not None and cls is not FastFGSM:
        kwargs["steps"] = steps
    if beta is not None and cls is TRADES:
        kwargs["beta"] = beta
    if cls is FastFGSM:
        kwargs["clip_start"] = clip_start
    return cls(**kwargs)


# Gaussian noise augmentation lives beside randomized smoothing, which certifies what it trains
from .smoothing import GaussianAugmentation  # noqa: E402

RECIPES[GaussianAugmentation.name] = GaussianAugmentation
