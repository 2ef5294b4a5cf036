"""FGSM: the fast gradient sign method.

Paper: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
https://arxiv.org/abs/1412.6572
Norm: L-inf (sign of the gradient) or L2 (the normalized gradient; "fast gradient method").
Arguments:
    norm: "linf" or "l2".
    loss: "ce", "margin" or "dlr" ("ce").
    targeted: step toward `target` instead of away from the label (False); refused without `target`.
One step of size eps from the clean input: exactly PGD with steps=1, step_size=eps and no random start.
Example:
    >>> out = FGSM()(model, x, y, eps=8/255)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._core import AttackOutput, canonical_norm, check_eps, frozen, get_loss, refuse_missing_target
from .pgd import iterate


@dataclass(frozen=True)
class FGSM:
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False

    name = "fgsm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        get_loss(self.loss)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, target: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, verify: bool = True) -> AttackOutput:
        check_eps(eps, self.norm)
        if self.targeted and target is None:
            raise refuse_missing_target(self.name)
        if eps == 0 or x.shape[0] == 0:
            return AttackOutput(x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device), 0, 0)
        with frozen(model):
            return iterate(model, x, y, eps, norm=self.norm, steps=1, step_size=eps, loss=self.loss,
                           targeted=self.targeted, target=target, early_stop=False, verify=verify)
