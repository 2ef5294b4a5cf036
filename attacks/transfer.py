"""Transfer attacks: adversarial examples crafted on surrogate models, evaluated on the target.

Papers: Papernot, McDaniel, Goodfellow, "Transferability in Machine Learning", 2016
(https://arxiv.org/abs/1605.07277); Liu, Chen, Liu, Song, "Delving into Transferable Adversarial Examples
and Black-box Attacks", ICLR 2017 (ensembles; https://arxiv.org/abs/1611.02770); Athalye, Carlini, Wagner
2018 (a transfer from the model with its non-differentiable parts removed, against gradient masking).

Why: the target's gradients are never used, so a defense that masks them cannot hide behind that; and
alone it is the black-box threat of an attacker who owns a similar model. The attack runs on the surrogate
(an ensemble: the mean of the surrogates' log-softmax outputs, so models with larger logits do not
dominate), then the target classifies the result: the target sees one forward pass per example and no
gradient (a black-box attack in the registry's sense).

Surrogates are modules taking [0, 1] pixels, or the string "self": the target itself with its
non-differentiable parts taken out of the forward pass (attacks/bpda.py `Removed`, parts "auto").
The inner attack (PGD by default) runs without early stop where it has one: a point that only just
fools the surrogate rarely fools the target. Per-example seeds reach the inner attack as they are.
Example:
    >>> out = Transfer((surrogate,), PGD(steps=20, early_stop=False), names=("resnet20",))(model, x, y, 8/255)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ._core import AttackOutput, frozen
from .bpda import Removed, approximated
from .eot import without_early_stop
from .errors import AttackConfigError
from .wrapped import inner_name, inner_record

SELF = "self"


class Ensemble(nn.Module):
    """Mean of the members' log-softmax outputs (one member: its logits, unchanged)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        # a new Module says training=True, and an attack restores "the model's" mode on exit: that would
        # put the members (the target itself, for "self") in train mode
        self.train(any(m.training for m in members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](x)
        return torch.stack([torch.log_softmax(m(x).float(), dim=1) for m in self.members]).mean(0)


class Transfer:
    """Craft with `attack` on the surrogates, evaluate on the target (see the module docstring).
    `names` and `weights_sha256` (one per surrogate) are what the stored result says was used."""

    white_box = False

    def __init__(self, surrogates: Sequence[nn.Module | str], attack: Any, *, names: Sequence[str] | None = None,
                 weights_sha256: Sequence[str | None] | None = None) -> None:
        if not surrogates:
            raise AttackConfigError("a transfer attack needs at least one surrogate model")
        for s in surrogates:
            if not (isinstance(s, nn.Module) or s == SELF):
                raise AttackConfigError(f"a surrogate is a torch module or {SELF!r}, got {type(s).__name__}")
        self.surrogates = tuple(surrogates)
        self.attack = attack
        self.names = tuple(names) if names is not None else tuple(
            SELF if s == SELF else type(s).__name__ for s in surrogates)
        self.weights_sha256 = tuple(weights_sha256) if weights_sha256 is not None else (None,) * len(surrogates)
        if len(self.names) != len(self.surrogates) or len(self.weights_sha256) != len(self.surrogates):
            raise AttackConfigError("one name and one weights digest per surrogate")
        self._removed: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return f"transfer:{'+'.join(self.names)}:{inner_name(self.attack)}"

    @property
    def norm(self) -> str:
        return getattr(self.attack, "norm", "linf")

    def __repr__(self) -> str:
        return f"Transfer(surrogates={self.names}, attack={self.attack!r})"

    def record(self) -> dict[str, Any]:
        """What the stored result says: the inner attack's settings and each surrogate, name and digest."""
        inner = inner_record(self.attack)
        surrogates = []
        for name, sha, s in zip(self.names, self.weights_sha256, self.surrogates):
            row: dict[str, Any] = {"name": name, "weights_sha256": sha}
            if s == SELF:
                row["weights_sha256"] = "the target's"
                row["removed"] = [a.describe() for a in self._removed.values()][:1]
            surrogates.append(row)
        return {"attack": inner_name(self.attack), **inner,
                "surrogates": surrogates}

    def _ensemble(self, model: nn.Module, x: torch.Tensor) -> nn.Module:
        members = []
        for s in self.surrogates:
            if s == SELF:
                key = id(model)
                if key not in self._removed:
                    with frozen(model):
                        self._removed[key] = approximated(model, "auto", x[:1])
                members.append(Removed(model, self._removed[key]))
            else:
                p = next(iter(s.parameters()), None)
                if p is not None and p.device != x.device:
                    s.to(x.device)
                members.append(s.eval())
        return Ensemble(members)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True) -> AttackOutput:
        n = x.shape[0]
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        if eps == 0 or n == 0:
            return AttackOutput(x.clone(), fooled, 0, 0)
        with frozen(model):
            surrogate = self._ensemble(model, x)    # eval mode, as the target ("self") is now
            out = self.attack(surrogate, x, y, eps, seeds=seeds, generator=generator, verify=False)
            fwd = 0
            if verify:   # the only query to the target; the engine re-checks with verify=False anyway
                with torch.no_grad():
                    fooled = model(out.x_adv).argmax(1) != y
                fwd = n
        details = {"surrogates": list(self.names), "surrogate_forward": int(out.forward),
                   "surrogate_backward": int(out.backward), "surrogate_fooled": int(out.fooled.sum())}
        return AttackOutput(out.x_adv.detach(), fooled, fwd, 0, details)


# ---- transfer:MODEL[+MODEL...][:ATTACK] in the registry ----

# name, model options -> (module taking [0, 1] pixels, weights sha256): set by the harness
# (robustness/adaptive.py), which knows how `run` loads models; this package knows only torch
_LOADER: Callable[[str, Any], tuple[nn.Module, str | None]] | None = None


def set_surrogate_loader(loader: Callable[[str, Any], tuple[nn.Module, str | None]]) -> None:
    """How transfer: attacks load their surrogates by name (the harness sets it when imported)."""
    global _LOADER
    _LOADER = loader


def _is_attack(name: str) -> bool:
    from .registry import get_attack_entry
    if not name or name.startswith("transfer:"):
        return False
    try:
        get_attack_entry(name)
        return True
    except Exception:  # noqa: BLE001 - an unknown name, or a family whose package is missing
        return False


def split_transfer(rest: str) -> tuple[tuple[str, ...], str]:
    """(surrogate model names, attack name) of `transfer:REST`. The attack is the longest tail after a
    ':' that names an attack, else pgd: `transfer:arch.py:resnet20:pgd`, `transfer:m1+m2`,
    `transfer:m:torchattacks:MIFGSM`. A model whose own name ends in an attack name (file.py:fgsm) needs
    the attack spelled out (transfer:file.py:fgsm:pgd)."""
    rest = rest.strip()
    model, attack = rest, "pgd"
    for i in reversed([i for i, c in enumerate(rest) if c == ":"]):
        if rest[:i].strip() and _is_attack(rest[i + 1:].strip()):
            model, attack = rest[:i], rest[i + 1:].strip()
    names = tuple(m.strip() for m in model.split("+"))
    if not rest or not all(names):
        raise AttackConfigError(f"transfer:{rest}: name the surrogate models, e.g. transfer:resnet50, "
                                f"transfer:m1+m2:pgd, or transfer:self (the model without its masking parts)")
    return names, attack


def transfer_entry(rest: str) -> Any:
    """The registry entry of transfer:REST: the inner attack's arguments, and `model_options` (what the
    harness loads surrogates with; the run passes its own)."""
    import inspect
    from .entry import AttackEntry
    from .registry import create_attack, get_attack_entry
    names, inner_name = split_transfer(rest)
    inner = get_attack_entry(inner_name)

    def build(**kw: Any) -> Transfer:
        opts = kw.pop("model_options", None)
        surrogates: list[nn.Module | str] = []
        shas: list[str | None] = []
        for name in names:
            if name == SELF:
                surrogates.append(SELF)
                shas.append(None)
                continue
            if _LOADER is None:
                raise AttackConfigError(f"surrogate {name}: loading models by name needs the harness "
                                        f"(robust-bench run, or import robustness.adaptive); pass modules to "
                                        f"attacks.transfer.Transfer instead")
            module, sha = _LOADER(name, opts)
            surrogates.append(module.eval())
            shas.append(sha)
        attack = without_early_stop(create_attack(inner_name, **kw))
        return Transfer(surrogates, attack, names=names, weights_sha256=shas)

    params = {**inner.parameters(), "model_options": None}
    build.__signature__ = inspect.Signature(   # type: ignore[attr-defined]
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in params.items()])
    return AttackEntry(f"transfer:{rest}", build, inner.norms,
                       f"{inner_name} crafted on {' + '.join(names)}, evaluated on the target (transfer)",
                       white_box=False, batch_dependent=inner.batch_dependent)


__all__ = ["Ensemble", "SELF", "Transfer", "set_surrogate_loader", "split_transfer", "transfer_entry"]
