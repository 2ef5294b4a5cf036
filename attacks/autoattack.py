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

Which code runs: all of it is ours: APGD, APGD-T (attacks/apgd.py), FAB, FAB-T (attacks/fab.py) and
Square (attacks/square.py, with the package's AutoAttack settings: 5000 queries, p_init 0.8, the p
schedule not rescaled), with per-example early stop and per-example seeds, so an example's outcome does
not depend on its batch. The reference package is `autoattack-package`.

The number of classes is read from the model's logits on the examples (never assumed): target counts
are capped at classes - 1; with fewer than 4 classes APGD-T (targeted DLR) is skipped, with fewer than 3
APGD-DLR, and the skipped sub-attacks are listed in `details["skipped"]`.

`AttackOutput.details` (plain data, for JSON):
    version, n_classes;
    skipped: [{"name", "reason"}] -- sub-attacks of the line-up that did not run;
    sub_attacks: [{"name", "implementation", "seconds", "forward", "backward", "attacked", "fooled"}] --
        time and passes of each sub-attack, how many examples it ran on and how many it broke;
    broken_by: one entry per input row, aligned with x: the name of the sub-attack that broke the row
        (the first in the line-up to do so: it then leaves the later ones), "clean" for a row the model
        already misclassified, None for a row nothing broke. With verify=True a row the final re-check
        finds unbroken is None (randomized models); one it finds broken that no sub-attack claimed is
        "recheck".
`merge_details(total, part, index=None)` adds one call's details to a running total (the engine calls
once per batch and eps): per-sub-attack counts and times summed by name, skipped reasons collected
once, broken_by concatenated in call order (with `index`, the rows' example indices are concatenated
alongside in total["index"], so broken_by can be matched to examples).
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

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from . import progress
from ._core import AttackOutput, canonical_norm, check_eps, frozen
from .apgd import APGD, APGDT, derive_seeds
from .errors import AttackConfigError
from .fab import FAB
from .square import Square, SquareFromPackage

SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


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
        if self.norm not in ("linf", "l2"):
            raise AttackConfigError(f"autoattack is an L-inf or L2 attack, not {self.norm}")
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
            # the package's AutoAttack settings: p_init 0.8, the halving iterations not rescaled
            return Square(self.norm, n_queries=self.square_queries, p_init=0.8, rescale_schedule=False)
        raise ValueError(name)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True) -> AttackOutput:
        check_eps(eps, self.norm)
        n = x.shape[0]
        x_adv, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        details: dict[str, Any] = {"version": self.version if self.attacks is None else "custom",
                                   "n_classes": None, "skipped": [], "sub_attacks": [], "broken_by": [None] * n}
        if eps == 0 or n == 0:
            return AttackOutput(x_adv, fooled, 0, 0, details)
        lineup = self.lineup()
        fwd = bwd = 0
        with frozen(model), torch.no_grad():
            logits = model(x)
        fwd += n
        k = int(logits.shape[1])
        details["n_classes"] = k
        by: list[str | None] = [None] * n
        # clean-misclassified examples count as broken as they are (the engine passes only correct ones)
        fooled |= logits.argmax(1) != y
        for j in fooled.nonzero().squeeze(1).tolist():
            by[j] = "clean"
        for i, name in enumerate(lineup):
            if name == "apgd-t" and k < 4:
                details["skipped"].append({"name": name, "reason": f"targeted DLR needs >= 4 classes, model has {k}"})
                continue
            if name == "apgd-dlr" and k < 3:
                details["skipped"].append({"name": name, "reason": f"DLR needs >= 3 classes, model has {k}"})
                continue
            todo = (~fooled).nonzero().squeeze(1)
            entry = {"name": name, "implementation": "ours", "seconds": 0.0, "forward": 0, "backward": 0,
                     "attacked": int(todo.numel()), "fooled": 0}
            details["sub_attacks"].append(entry)
            if todo.numel() == 0:
                continue
            sub = self.sub_attack(name)
            sub_seeds = derive_seeds(None if seeds is None else seeds[todo.cpu()], 100 + i)
            # progress events and a finished sub-attack kept for a resume (attacks/progress.py)
            report = dict(attack=self.name, part=name, index=i + 1, total=len(lineup), eps=float(eps),
                          examples=int(todo.numel()))
            progress.emit(stage="start", **report)
            key = None if seeds is None else progress.step_key(
                repr(self), name, i, float(eps), tensors=(x[todo], y[todo], sub_seeds))
            out, seconds, kept = progress.attack_step(
                key, x.device, lambda: sub(model, x[todo], y[todo], eps, seeds=sub_seeds, generator=generator,
                                           verify=False), sync=lambda: _sync(x))
            progress.emit(stage="kept" if kept else "end", fooled=int(out.fooled.sum()), seconds=seconds, **report)
            entry.update(seconds=seconds, forward=out.forward, backward=out.backward,
                         fooled=int(out.fooled.sum()))
            fwd, bwd = fwd + out.forward, bwd + out.backward
            hit = out.fooled
            x_adv[todo[hit]] = out.x_adv[hit]
            fooled[todo[hit]] = True
            for j in todo[hit].tolist():
                by[j] = name
        if verify:
            with frozen(model), torch.no_grad():
                fooled = model(x_adv).argmax(1) != y
            fwd += n
            by = [(b or "recheck") if f else None for b, f in zip(by, fooled.tolist())]
        details["broken_by"] = by
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd, details)


def merge_details(total: dict[str, Any] | None, part: dict[str, Any] | None, *,
                  index: Sequence[int] | None = None) -> dict[str, Any] | None:
    """Add one call's `details` to a running total, for the engine, which calls an attack once per batch
    and eps but reports per (attack, eps): per sub-attack, seconds, forward, backward, attacked and fooled
    summed by name; skipped and package warnings collected once; broken_by concatenated in call order,
    and `index` (the example index of each of part's rows) alongside it in total["index"]. A total keeps
    "index" only while every part came with one (else the rows could not be matched to examples)."""
    if part is None:
        return total
    if total is None:
        total = {k: v for k, v in part.items()
                 if k not in ("sub_attacks", "skipped", "package_warnings", "broken_by", "index")}
        total.update(sub_attacks=[], skipped=[], package_warnings=[])
        if "broken_by" in part:
            total["broken_by"] = []
            if index is not None:
                total["index"] = []
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
    names = part.get("broken_by")
    if names is not None and "broken_by" in total:
        names = list(names)
        if index is not None and len(index) != len(names):
            raise ValueError(f"merge_details: {len(index)} indices for {len(names)} broken_by entries")
        total["broken_by"].extend(names)
        if "index" in total:
            if index is None:
                del total["index"]
            else:
                total["index"].extend(int(i) for i in index)
    elif "broken_by" in total:
        # a part without the per-row names: the concatenation would no longer line up with the rows
        del total["broken_by"]
        total.pop("index", None)
    return total


__all__ = ["AutoAttack", "Square", "SquareFromPackage", "SUB_ATTACKS", "VERSIONS", "merge_details"]
