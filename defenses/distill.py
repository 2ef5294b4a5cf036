"""Distillation recipes: a student learns from a teacher's outputs (soft labels).

  distill  knowledge distillation (Hinton, Vinyals, Dean 2015, https://arxiv.org/abs/1503.02531):
           alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y).
  rslad    robust soft-label adversarial distillation (Zi, Zhao, Ma, Jiang, ICCV 2021,
           https://arxiv.org/abs/2108.07969): the student sees adversarial examples x' that maximize
           KL(teacher(x) || student(x')) in the eps-ball (PGD from x + 0.001 * N(0, 1)) and learns the robust
           teacher's clean soft labels on them: 5/6 * KL(t(x) || s(x')) + 1/6 * KL(t(x) || s(x)); no hard labels.
           (ARD, Goldblum et al. 2020, is the variant with a cross-entropy inner attack and a label term.)

Both plug into the same Trainer as the other recipes. The teacher's outputs of a batch are computed in
`inputs` and read in `loss` (the trainer calls them in that order once per step); the teacher stays in eval
mode with no gradients.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks import clip_to_box, project

from .adversary import ascend
from .recipes import Recipe, _Threat


def _teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = next(iter(teacher.parameters()), None)
    if p is not None and p.device != x.device:
        teacher.to(x.device)
    was = teacher.training
    teacher.eval()
    with torch.no_grad():
        out = teacher(x).float()
    teacher.train(was)
    return out


def _kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    return F.kl_div(F.log_softmax(student_logits.float(), dim=1), teacher_probs, reduction=reduction)


@dataclass(frozen=True)
class Distill(Recipe):
    """Hinton et al.'s soft-label distillation (see the module docstring)."""
    name: ClassVar[str] = "distill"
    teacher: Any = field(default=None, compare=False, repr=False)
    temperature: float = 4.0
    alpha: float = 0.9
    _batch: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, nn.Module):
            raise ValueError("distillation needs a teacher model (an nn.Module taking [0, 1] pixels)")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "temperature": self.temperature, "alpha": self.alpha}

    def inputs(self, model, x, y, rnd):
        self._batch["teacher"] = _teacher_logits(self.teacher, x)
        return (x,)

    def loss(self, outputs, y):
        s, t = outputs[0], self._batch.pop("teacher")
        tau = self.temperature
        soft = _kl(s / tau, F.softmax(t / tau, dim=1)) * tau * tau
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(s.float(), y), s


@dataclass(frozen=True)
class RSLAD(_Threat):
    """Robust soft-label adversarial distillation (see the module docstring); `step_size` defaults to
    2.5 * eps / steps (2/255 for 10 steps at 8/255, the paper's setting)."""
    name: ClassVar[str] = "rslad"
    adversarial: ClassVar[bool] = True
    teacher: Any = field(default=None, compare=False, repr=False)
    steps: int = 10
    step_size: float | None = None
    adversarial_weight: float = 5 / 6
    _batch: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.teacher, nn.Module):
            raise ValueError("robust distillation needs a teacher model (an nn.Module taking [0, 1] pixels)")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.step_size is None:
            object.__setattr__(self, "step_size", 2.5 * self.eps / self.steps)
        if not self.step_size > 0:
            raise ValueError(f"step size must be > 0, got {self.step_size}")
        if not 0 <= self.adversarial_weight <= 1:
            raise ValueError(f"adversarial_weight must be in [0, 1], got {self.adversarial_weight}")

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "eps": self.eps, "norm": self.norm, "steps": self.steps,
                "step_size": self.step_size, "adversarial_weight": self.adversarial_weight}

    def inputs(self, model, x, y, rnd):
        p_t = F.softmax(_teacher_logits(self.teacher, x), dim=1)
        self._batch["teacher"] = p_t
        start = clip_to_box(x, project(0.001 * rnd.normal(*x.shape[1:]).to(x.dtype), self.eps, self.norm))
        x_adv = ascend(model, x, lambda logits: _kl(logits, p_t, reduction="sum"), eps=self.eps, norm=self.norm,
                       steps=self.steps, step_size=self.step_size, start=start, scale_loss=self.scale_attack_loss)
        return (x, x_adv)

    def loss(self, outputs, y):
        nat, adv = outputs
        p_t = self._batch.pop("teacher")
        w = self.adversarial_weight
        return w * _kl(adv, p_t) + (1 - w) * _kl(nat, p_t), nat


DISTILL_RECIPES = {"distill": Distill, "rslad": RSLAD}

__all__ = ["DISTILL_RECIPES", "Distill", "RSLAD"]
