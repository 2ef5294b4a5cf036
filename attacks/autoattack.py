"""AutoAttack, our implementation: an ensemble of parameter-free attacks, worst case per example.

Paper: Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690
Norm: L-inf or L2.

Versions (the paper's and the reference package's line-ups):
    standard: APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes), Square (5000 queries);
              100 iterations, one restart each.
    plus:     APGD-CE and APGD-DLR (5 restarts), FAB (5 restarts), Square, APGD-T, FAB-T.
    rand:     APGD-CE and APGD-DLR with gradients averaged over 20 forward passes (EOT), for
              randomized defenses.
Each sub-attack runs only on the examples every earlier one failed to break, so the result is the
worst case over the sub-attacks, example by example.

Which code runs: APGD, APGD-T, FAB and FAB-T are ours (attacks/apgd.py, attacks/fab.py), with
per-example early stop, no weight gradients and per-example seeds. Square is the reference package's
implementation (pyautoattack or GitHub autoattack, through `_compat.import_autoattack`), called on the
remaining examples with a seed taken from the first remaining example's seed, inside a forked RNG so
torch's global random state is left as it was; its passes are counted through `PassCounter`.

The number of classes is read from the model's logits on the examples (never assumed): target counts
are capped at classes - 1; with fewer than 4 classes APGD-T (targeted DLR) is skipped, with fewer than 3
APGD-DLR, and the skipped sub-attacks are listed in `details["skipped"]`.

`AttackOutput.details`: {"version", "n_classes", "skipped", "sub_attacks": [{"name", "implementation",
"seconds", "forward", "backward", "attacked", "fooled"}]} -- the time and passes of each sub-attack and
how many examples it ran on and broke.
Arguments:
    norm: "linf" or "l2".
    version: "standard", "plus" or "rand".
    steps: APGD and FAB iterations (100).
    n_target_classes: targets of APGD-T and FAB-T (9).
    square_queries: Square's query budget (5000).
    attacks: a custom line-up, "+"- or comma-separated or a tuple (on the command line:
        --attack-args attacks=apgd-ce+apgd-t), from apgd-ce, apgd-dlr, apgd-t, fab, fab-t,
        square (overrides the version's; restarts as in the version).
Example:
    >>> out = AutoAttack(norm="linf")(model, x, y, eps=8/255)
    >>> out.details["sub_attacks"][0]["name"], out.details["sub_attacks"][0]["seconds"]
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ._core import AttackOutput, PassCounter, canonical_norm, check_eps, frozen
from .apgd import APGD, APGDT, derive_seeds
from .fab import FAB

SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
_PACKAGE_NORM = {"linf": "Linf", "l2": "L2"}


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _fork_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@dataclass(frozen=True)
class SquareFromPackage:
    """The reference package's Square attack on our calling convention (see the module docstring)."""
    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8

    name = "square"
    implementation = "package"

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, verify: bool = True, **_: Any) -> AttackOutput:
        from ._compat import import_autoattack
        pkg = import_autoattack()
        square = importlib.import_module(pkg.__name__ + ".square")
        counter = PassCounter(model)
        seed = int(seeds[0]) if seeds is not None and len(seeds) else 0
        sq = square.SquareAttack(counter, p_init=self.p_init, n_queries=self.n_queries, eps=eps,
                                 norm=_PACKAGE_NORM[self.norm], n_restarts=1, seed=seed, verbose=False,
                                 device=x.device, resc_schedule=False)
        with frozen(model), _fork_rng(x.device), torch.no_grad():
            x_adv = sq.perturb(x, y)
            fooled = counter(x_adv).argmax(1) != y   # Square returns points, not flags: one check pass
        fwd, bwd = counter.counts()
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd)


@dataclass(frozen=True)
class AutoAttack:
    norm: str = "linf"
    version: str = "standard"
    steps: int = 100
    n_target_classes: int = 9
    square_queries: int = 5000
    attacks: tuple[str, ...] | str | None = None

    name = "autoattack"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        if self.version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {self.version!r}; expected one of {', '.join(VERSIONS)}")
        if self.attacks is not None:
            items = self.attacks.replace("+", ",").split(",") if isinstance(self.attacks, str) else self.attacks
            items = tuple(a.strip().lower() for a in items if a.strip())
            bad = [a for a in items if a not in SUB_ATTACKS]
            if bad or not items:
                raise ValueError(f"unknown AutoAttack sub-attack(s) {', '.join(bad) or '(none given)'}; "
                                 f"expected from {', '.join(SUB_ATTACKS)}")
            object.__setattr__(self, "attacks", items)
        if self.steps < 1 or self.n_target_classes < 1 or self.square_queries < 1:
            raise ValueError("steps, n_target_classes and square_queries must be >= 1")

    def lineup(self) -> tuple[str, ...]:
        return self.attacks if self.attacks is not None else VERSIONS[self.version]  # type: ignore[return-value]

    def sub_attack(self, name: str) -> Callable[..., AttackOutput]:
        plus = self.version == "plus"
        eot = 20 if self.version == "rand" else 1
        restarts = 5 if plus else 1
        if name == "apgd-ce":
            return APGD(self.norm, steps=self.steps, restarts=restarts, loss="ce", eot_iter=eot)
        if name == "apgd-dlr":
            return APGD(self.norm, steps=self.steps, restarts=restarts, loss="dlr", eot_iter=eot)
        if name == "apgd-t":
            return APGDT(self.norm, steps=self.steps, n_target_classes=self.n_target_classes)
        if name == "fab":
            return FAB(self.norm, steps=self.steps, restarts=restarts)
        if name == "fab-t":
            return FAB(self.norm, steps=self.steps, targeted=True, n_target_classes=self.n_target_classes)
        if name == "square":
            return SquareFromPackage(self.norm, n_queries=self.square_queries)
        raise ValueError(name)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True) -> AttackOutput:
        check_eps(eps, self.norm)
        n = x.shape[0]
        x_adv, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        details: dict[str, Any] = {"version": self.version if self.attacks is None else "custom",
                                   "n_classes": None, "skipped": [], "sub_attacks": []}
        if eps == 0 or n == 0:
            return AttackOutput(x_adv, fooled, 0, 0, details)
        lineup = self.lineup()
        if "square" in lineup:
            from ._compat import import_autoattack
            import_autoattack()   # fail before hours of APGD, not after
        fwd = bwd = 0
        with frozen(model), torch.no_grad():
            logits = model(x)
        fwd += n
        k = int(logits.shape[1])
        details["n_classes"] = k
        # clean-misclassified examples count as broken as they are (the engine passes only correct ones)
        fooled |= logits.argmax(1) != y
        for i, name in enumerate(lineup):
            if name == "apgd-t" and k < 4:
                details["skipped"].append({"name": name, "reason": f"targeted DLR needs >= 4 classes, model has {k}"})
                continue
            if name == "apgd-dlr" and k < 3:
                details["skipped"].append({"name": name, "reason": f"DLR needs >= 3 classes, model has {k}"})
                continue
            todo = (~fooled).nonzero().squeeze(1)
            entry = {"name": name, "implementation": "package" if name == "square" else "ours",
                     "seconds": 0.0, "forward": 0, "backward": 0, "attacked": int(todo.numel()), "fooled": 0}
            details["sub_attacks"].append(entry)
            if todo.numel() == 0:
                continue
            sub = self.sub_attack(name)
            sub_seeds = derive_seeds(None if seeds is None else seeds[todo.cpu()], 100 + i)
            _sync(x)
            t0 = time.perf_counter()
            out = sub(model, x[todo], y[todo], eps, seeds=sub_seeds, generator=generator, verify=False)
            _sync(x)
            entry.update(seconds=time.perf_counter() - t0, forward=out.forward, backward=out.backward,
                         fooled=int(out.fooled.sum()))
            fwd, bwd = fwd + out.forward, bwd + out.backward
            hit = out.fooled
            x_adv[todo[hit]] = out.x_adv[hit]
            fooled[todo[hit]] = True
        if verify:
            with frozen(model), torch.no_grad():
                fooled = model(x_adv).argmax(1) != y
            fwd += n
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd, details)


def merge_details(total: dict[str, Any] | None, part: dict[str, Any] | None) -> dict[str, Any] | None:
    """Add one batch's `details` to a running total (per sub-attack: seconds, forward, backward,
    attacked, fooled summed by name; skipped and package warnings collected once). For the engine,
    which calls an attack once per batch and eps but reports per (attack, eps)."""
    if part is None:
        return total
    if total is None:
        total = {k: v for k, v in part.items() if k not in ("sub_attacks", "skipped", "package_warnings")}
        total.update(sub_attacks=[], skipped=[], package_warnings=[])
    rows = {r["name"]: r for r in total["sub_attacks"]}
    for r in part.get("sub_attacks", []):
        acc = rows.get(r["name"])
        if acc is None:
            acc = rows[r["name"]] = {"name": r["name"], "implementation": r.get("implementation")}
            total["sub_attacks"].append(acc)
        for key in ("seconds", "forward", "backward", "attacked", "fooled"):
            if key in r:
                acc[key] = acc.get(key, 0) + r[key]
    for key in ("skipped", "package_warnings"):
        for item in part.get(key) or []:
            if item not in total[key]:
                total[key].append(item)
    return total


__all__ = ["AutoAttack", "SquareFromPackage", "SUB_ATTACKS", "VERSIONS", "merge_details"]
