"""Adaptive attacks in a run (docs/CHECKS.md, "Adaptive attacks"):

- how `transfer:MODEL[+MODEL...][:ATTACK]` attacks load their surrogates: the way `run` loads models
  (`attacks` knows only torch; importing this module hands it the loader);
- `expand`: what `--adaptive` adds when a model check fires on the first batch (randomized_forward:
  an `eot:` row per gradient attack; gradient_masking: a `bpda:` row per gradient attack and a transfer
  from the model with its masking parts removed, `transfer:self:pgd`);
- `review`: after the run, a worst case that an adaptive row moved beyond noise marks the non-adaptive
  rows at that eps unreliable (params["unreliable"] = True, the `adaptive_attack_stronger` warning), as
  RobustBench flags entries that later adaptive attacks broke;
- `attack_params`: what a result stores as the attack's settings (the wrappers say what they wrap).
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from attacks import check_applicable
from attacks.errors import AttackConfigError, AttackError
from attacks.sanity import Finding, beyond_noise
from attacks.transfer import SELF, set_surrogate_loader, split_transfer

from .errors import UserError
from .specs import AttackSpec, RunSpec

__all__ = ["ADAPTIVE_PREFIXES", "Adaptive", "UNRELIABLE", "attack_params", "expand", "is_adaptive",
           "load_surrogate", "review", "split_transfer", "suggestion"]

ADAPTIVE_PREFIXES = ("eot:", "bpda:", "transfer:")
UNRELIABLE = "adaptive_attack_stronger"


@dataclass(frozen=True)
class Adaptive:
    """What `--adaptive` adds when a model check fires. `eot`: forward passes per model call of the
    eot: rows; `bpda`: the parts the bpda: rows approximate ("auto", or module paths joined by '+');
    `transfer`: the surrogates of the transfer row ("self": the model with its masking parts removed);
    `transfer_attack`: the attack that crafts on them."""
    eot: int = 20
    bpda: str = "auto"
    transfer: tuple[str, ...] = (SELF,)
    transfer_attack: str = "pgd"

    def __post_init__(self) -> None:
        if isinstance(self.eot, bool) or not isinstance(self.eot, int) or self.eot < 2:
            raise UserError(f"adaptive eot must be a whole number >= 2, got {self.eot!r}")
        if not self.transfer:
            raise UserError("adaptive transfer needs at least one surrogate (self: the model, its masking "
                            "parts removed)")


def is_adaptive(label: str, params: dict[str, Any] | None = None) -> bool:
    """An adaptive row: an eot:/bpda:/transfer: attack, or one run with eot > 1."""
    if label.startswith(ADAPTIVE_PREFIXES):
        return True
    return bool(params) and isinstance(params.get("eot"), int) and params["eot"] > 1


def attack_params(attack: Any) -> dict[str, Any]:
    """The settings a result stores for an attack object: its own record() (wrappers, transfer) or its
    dataclass fields."""
    if hasattr(attack, "record"):
        return attack.record()
    return dataclasses.asdict(attack) if dataclasses.is_dataclass(attack) else {}


# ---- transfer: surrogates load the way `run` loads models ----

def load_surrogate(name: str, options: Any) -> tuple[Any, str | None]:
    """A transfer attack's surrogate by model name, with the run's model options (--weights, --mean,
    --std, --num-classes): (module taking [0, 1] pixels, weights sha256)."""
    from .models import ModelOptions, create_model
    if options is not None and not isinstance(options, ModelOptions):
        raise AttackConfigError("model_options of a transfer attack come from the run (--weights, --mean, --std), "
                                "not from --attack-args")
    try:
        loaded = create_model(name, options)
    except UserError as e:
        raise AttackConfigError(f"surrogate {name}: {e}") from None
    return loaded.module, loaded.info.weights_sha256


set_surrogate_loader(load_surrogate)


# ---- --adaptive ----

def _with(params: tuple[tuple[str, Any], ...], key: str, value: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted({**dict(params), key: value}.items()))


def planned(spec: RunSpec, codes: set[str], options: Adaptive) -> tuple[AttackSpec, ...]:
    """The adaptive attacks `--adaptive` adds for the fired check codes (none already listed)."""
    from .preparation import entry_of
    listed = {a.shown for a in spec.attacks}
    base = [a for a in spec.attacks if not is_adaptive(a.name, a.kwargs) and entry_of(a.name).white_box]
    new: list[AttackSpec] = []

    def add(name: str, params: tuple[tuple[str, Any], ...], label: str | None) -> None:
        if (label or name) not in listed and all((label or name) != a.shown for a in new):
            new.append(AttackSpec(name, params, label))
    if "randomized_forward" in codes:
        for a in base:
            add(f"eot:{a.name}", _with(a.params, "eot", options.eot), f"eot:{a.label}" if a.label else None)
    if "gradient_masking" in codes:
        for a in base:
            add(f"bpda:{a.name}", _with(a.params, "bpda", options.bpda), f"bpda:{a.label}" if a.label else None)
        like = next((a for a in base if a.name == options.transfer_attack), None)
        params = like.params if like is not None else ()
        if "randomized_forward" in codes:
            params = _with(params, "eot", options.eot)
        add(f"transfer:{'+'.join(options.transfer)}:{options.transfer_attack}", params, None)
    return tuple(new)


def expand(spec: RunSpec, prepared: Sequence[Any], options: Adaptive,
           log: Callable[[str], None] = lambda s: None) -> tuple[RunSpec, list[tuple[str, Any]]] | None:
    """The spec and attacks with the adaptive rows the prepared models' check findings call for, or
    None when no check fired. Each new attack is checked against every model before a run is stored."""
    from .preparation import resolve_attacks
    codes = {f.code for p in prepared for f in p.findings}
    new = planned(spec, codes, options)
    if not new:
        log("--adaptive: no model check fired (randomized_forward, gradient_masking); no adaptive attack added")
        return None
    log(f"--adaptive: {', '.join(sorted(codes & {'randomized_forward', 'gradient_masking'}))} fired; adding "
        f"{', '.join(a.shown for a in new)}")
    spec, attacks = resolve_attacks(dataclasses.replace(spec, attacks=spec.attacks + new))
    added = {a.shown for a in new}
    for p in prepared:
        for label, attack in attacks:
            if label in added:
                try:
                    check_applicable(attack, p.data.info.num_classes)
                except AttackError as e:
                    raise UserError(f"attack {label} on model {p.label}: {e}") from None
    return spec, attacks


def suggestion(findings: Sequence[Finding], argv: Sequence[str] | None, spec: RunSpec,
               options: Adaptive | None = None) -> list[Finding]:
    """The findings with the command that re-evaluates adaptively appended to the randomized_forward and
    gradient_masking messages (or, after --adaptive, the rows that did)."""
    codes = {f.code for f in findings}
    added = planned(spec, codes, options or Adaptive())
    ran = [a.shown for a in spec.attacks if is_adaptive(a.name, a.kwargs)]
    out = []
    for f in findings:
        if f.code == "gradient_masking" and (f.attack or "").startswith(("bpda:", "transfer:")):
            continue    # the adaptive rows are the answer to the masked gradients, not affected by them
        if f.code not in ("randomized_forward", "gradient_masking"):
            out.append(f)
            continue
        want = "eot:" if f.code == "randomized_forward" else ("bpda:", "transfer:")
        mine = [a for a in ran if a.startswith(want)]
        if mine:
            extra = f"; adaptive rows in this run: {', '.join(mine)}"
        else:
            rows = ", ".join(a.shown for a in added if a.name.startswith(want)) or "eot:/bpda:/transfer: attacks"
            cmd = ("robust-bench " + shlex.join([*argv, "--adaptive"])) if argv is not None else \
                "evaluate(..., adaptive=Adaptive()) / robust-bench run ... --adaptive"
            extra = f"; to re-evaluate adaptively ({rows}), run: {cmd}"
        out.append(dataclasses.replace(f, message=f.message + extra))
    return out


# ---- after the run ----

def review(results: Sequence[Any], correct_of: Callable[[str, str, float], np.ndarray],
           labels: Sequence[str]) -> tuple[list[Any], list[Finding]]:
    """Mark non-adaptive rows unreliable where the adaptive rows moved the worst case beyond noise.

    `results`: the run's ThreatResults; `correct_of(model, attack, eps)`: per example, still correct
    (the store's outcomes, in one example order); `labels`: the run's attack labels. Returns the results
    (params["adaptive"] on adaptive rows, params["unreliable"] on the marked ones) and the findings."""
    params = {r.attack: r.params for r in results}
    adaptive = [a for a in labels if is_adaptive(a, params.get(a))]
    plain = [a for a in labels if a not in adaptive]
    if not adaptive:
        return list(results), []
    marked: set[tuple[str, float]] = set()
    findings: list[Finding] = []
    cells = sorted({(r.model, r.eps) for r in results if r.attack in labels})
    for model, eps in cells:
        if not plain:
            break
        ok_plain = np.logical_and.reduce([correct_of(model, a, eps) for a in plain])
        per = {a: correct_of(model, a, eps) for a in adaptive}
        ok_all = np.logical_and.reduce([ok_plain, *per.values()])
        n = int(ok_plain.size)
        before, after = float(ok_plain.mean()) if n else 0.0, float(ok_all.mean()) if n else 0.0
        if n and beyond_noise(before, after, n, n):
            marked.add((model, eps))
            best = max(per, key=lambda a: int((ok_plain & ~per[a]).sum()))
            extra = int((ok_plain & ~per[best]).sum())
            for a in plain:
                findings.append(Finding(
                    UNRELIABLE,
                    f"the adaptive attacks lower the worst case from {100 * before:.1f}% (non-adaptive attacks: "
                    f"{', '.join(plain)}) to {100 * after:.1f}% at eps={eps:g}; {best} alone breaks {extra} "
                    f"examples the non-adaptive attacks left correct, so the non-adaptive rows are unreliable "
                    f"(marked unreliable, as RobustBench marks entries broken by later adaptive attacks)",
                    model=model, attack=a, eps=eps))
    out = []
    for r in results:
        p = dict(r.params or {})
        if r.attack in adaptive:
            p["adaptive"] = True
        elif r.attack in plain and (r.model, r.eps) in marked:
            p["unreliable"] = True
        out.append(dataclasses.replace(r, params=p) if p != (r.params or {}) else r)
    return out, findings
