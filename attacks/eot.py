"""EOT: expectation over transformation, for models whose forward pass is random.

Papers: Athalye, Engstrom, Ilyas, Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018
(https://arxiv.org/abs/1707.07397); Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of
Security", ICML 2018, section 4.3 (https://arxiv.org/abs/1802.00420).

Why: on a randomized model one attack run is one sample; a step that fools this draw of the noise may not
fool the next, and the gradient of one draw points in a random direction. EOT attacks the expectation
instead. Any attack becomes an EOT attack by handing it `EOTModel(model, n)`: every call of the model
runs n forward passes and returns log of the mean of their softmax outputs, the log-probabilities of the
*expected* classifier. So every loss the attack ascends is a loss of the expected prediction, and its
gradient is the average over the n passes of each pass's probability gradient: cross-entropy becomes
-log E[p_y], whose gradient is -E[grad p_y] / E[p_y]. On a deterministic model nothing changes (log-softmax
shifts the logits by one number per row: cross-entropy, margins, DLR, argmax and FAB's logit differences
are those of the logits).

Not to be confused with APGD's `eot_iter`, which averages the loss gradients of the passes (AutoAttack's
`rand` version); `eot` is the same wrapper for every attack, ours or a package's.

What is counted: each model call costs n passes (forward and backward alike). Success is judged on the
model itself: with verify=True the returned points are re-checked by one ordinary forward pass, so
`fooled` says what one draw of the model does, as the engine's own re-check does.
Example:
    >>> out = EOT(PGD(steps=20), n=20)(model, x, y, eps=8/255)
    >>> attack = with_eot(create_attack("pgd"), 20)   # what --attack-args eot=20 builds
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ._core import AttackOutput, frozen
from .errors import AttackConfigError
from .wrapped import WrapsAttack, inner_record


class EOTModel(nn.Module):
    """`model` seen through n forward passes: log of the mean softmax (log-probabilities of the expected
    classifier). n separate passes, not one pass over an n-fold batch, so a model that draws its noise
    once per batch still gets n draws."""

    def __init__(self, model: nn.Module, n: int) -> None:
        super().__init__()
        self.model, self.n = model, int(n)
        self.train(model.training)   # a new Module says training=True; packages restore "the model's" mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n == 1:
            return self.model(x)
        logp = torch.stack([torch.log_softmax(self.model(x).float(), dim=1) for _ in range(self.n)])
        return torch.logsumexp(logp, dim=0) - math.log(self.n)


def without_early_stop(attack: Any) -> Any:
    """The attack with early_stop=False where it has that setting (else itself)."""
    if dataclasses.is_dataclass(attack) and any(f.name == "early_stop" for f in dataclasses.fields(attack)):
        return dataclasses.replace(attack, early_stop=False)
    return attack


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AttackConfigError(f"eot must be a whole number >= 1 (forward passes per model call), got {n!r}")
    return n


@dataclass(frozen=True)
class EOT(WrapsAttack):
    """`attack` against the expected prediction of n forward passes (see the module docstring)."""
    attack: Any
    n: int = 20

    def __post_init__(self) -> None:
        _check_n(self.n)
        # a point where the expected prediction has only just flipped fools about one draw in two: keep
        # ascending to the last step (for a randomized model early stop is a weakness)
        object.__setattr__(self, "attack", without_early_stop(self.attack))

    # what the engine and the sanity checks read from an attack object
    prefix = "eot"

    def record(self) -> dict[str, Any]:
        """The settings stored with a result: the inner attack's, plus eot."""
        inner = inner_record(self.attack)
        return {**inner, "eot": self.n}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True, **kw: Any) -> AttackOutput:
        with frozen(model):
            wrapped = EOTModel(model, self.n)   # made in eval mode: the inner attack restores what it finds
            out = self.attack(wrapped, x, y, eps, seeds=seeds, generator=generator, verify=False, **kw)
            fwd, bwd = out.forward * self.n, out.backward * self.n
            fooled = out.fooled
            if verify and x.shape[0]:
                with torch.no_grad():
                    fooled = model(out.x_adv).argmax(1) != y
                fwd += x.shape[0]
        details = dict(out.details or {})
        if details.get("broken_by") is not None and verify:
            details["broken_by"] = [b if f else None for b, f in zip(details["broken_by"], fooled.tolist())]
        return AttackOutput(out.x_adv, fooled, fwd, bwd, details or None)


def with_eot(attack: Any, n: int | None) -> Any:
    """`attack` itself for n in (None, 1), else EOT(attack, n)."""
    if n is None:
        return attack
    n = _check_n(n)
    return attack if n == 1 else EOT(attack, n)


__all__ = ["EOT", "EOTModel", "with_eot", "without_early_stop"]
