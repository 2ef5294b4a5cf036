"""The per-example cascade, pure: one batch of examples, the attacks and eps in, per-example outcomes and
costs out. No store, no processes; the runner (robustness/runner.py) calls it once per batch.

Principles (AutoAttack's, applied to any attack list):
- per-example flags: only examples still classified correctly are attacked further;
- eps ascending: an example broken at eps_i is broken at every larger eps (its perturbation lies in the
  larger ball), so it is not attacked again and robust accuracy cannot rise with eps;
- every adversarial example is re-checked here (a point of the threat model: shape, finite, [0, 1],
  inside the eps-ball up to float32 rounding; then misclassified by one more forward pass) before it
  counts: the engine, not the attack, decides;
- random draws are seeded per example (`example_seeds`), so an example's outcome does not depend on
  the batch it is in, on resume, or on how examples are spread over processes.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from attacks.errors import ThreatModelViolation
from leaderboards import Cost, Outcome
from leaderboards.store import series_key

from .errors import UserError
from .specs import WORST_CASE, corruption_label

__all__ = ["BatchResult", "cascade", "corruption_pass", "example_seeds", "min_norm_stage", "threat_model_excess"]

MIN_NORM_STEPS = 20   # FMN's steps in the stage: about the passes of one PGD-10 run without early stop


def min_norm_stage(name: str | None, norm: str) -> Any:
    """The minimum-norm stage a RunSpec asks for (`min_norm`: None, "fmn" or "fmn:STEPS"), or None."""
    if name is None:
        return None
    kind, _, steps = str(name).strip().lower().partition(":")
    if kind != "fmn":
        raise UserError(f"unknown minimum-norm stage {name!r}; the one there is: fmn (or fmn:STEPS)")
    try:
        n_steps = int(steps) if steps else MIN_NORM_STEPS
    except ValueError:
        raise UserError(f"bad minimum-norm stage {name!r}: the steps after 'fmn:' must be a whole number") from None
    if n_steps < 1:
        raise UserError(f"bad minimum-norm stage {name!r}: steps must be >= 1")
    from attacks import canonical_norm
    from attacks.errors import AttackError
    try:
        key = canonical_norm(norm)
    except AttackError as e:
        raise UserError(str(e)) from None
    if key not in ("linf", "l2"):
        raise UserError(f"the minimum-norm stage fmn supports linf and l2, not {norm}")
    from attacks.fmn import FMN
    return FMN(norm=key, steps=n_steps)


@dataclass(frozen=True)
class BatchResult:
    """A batch's per-example outcomes (one series per attack, the worst case, each corruption severity)
    and its costs (seconds and passes per attack and eps, with the attack's own report)."""
    outcomes: tuple[Outcome, ...]
    costs: tuple[Cost, ...]


def example_seeds(seed: int, label: str, eps: float, indices: np.ndarray) -> torch.Tensor:
    """One 63-bit seed per (run seed, attack, eps, example): random starts independent of batching."""
    prefix = f"{seed}|{label}|{eps!r}|".encode()
    return torch.tensor([int.from_bytes(hashlib.sha256(prefix + str(int(i)).encode()).digest()[:8], "little")
                         & 0x7FFF_FFFF_FFFF_FFFF for i in indices], dtype=torch.int64)


# Rounding slack of the threat-model check, relative to the pixel values: x + delta is rounded to
# float32 (half an ulp, 2**-24 relative), and clipping to the box may round once more; 2**-22 leaves a
# factor 2 above that. Relative, not absolute, so at eps = 1e-6 a perturbation of 1.5 eps is still caught.
_ROUNDING = 2.0 ** -22


def threat_model_excess(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> str | None:
    """None if x_adv is a point of the threat model around x (shape, finite, [0, 1], inside the eps-ball
    up to float32 rounding of the projection); otherwise what is wrong, with the excess, in words.
    l1: the sum of |changes| (each pixel's rounding slack added up); l0: eps counts pixel positions
    (all channels of one; coordinates for inputs that are not NCHW images) that changed beyond rounding."""
    if tuple(x_adv.shape) != tuple(x.shape):
        return f"returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}"
    if not x_adv.is_floating_point():
        return f"returned {x_adv.dtype} pixels, not floats"
    if x_adv.numel() == 0:
        return None
    a, b = x.detach().double(), x_adv.detach().double()
    finite = torch.isfinite(b)
    if not finite.all():
        k = int((~finite).flatten(1).any(1).sum())
        return (f"returned non-finite pixels (NaN or inf) for {k} examples (NaN input gradients of the model "
                f"make NaN steps)")
    lo, hi = float(b.min()), float(b.max())
    if lo < 0 or hi > 1:
        return f"returned pixels outside [0, 1] (min {lo:.9g}, max {hi:.9g})"
    d = (b - a).flatten(1)
    slack = _ROUNDING * torch.maximum(a.abs(), b.abs()).flatten(1)
    if norm == "linf":
        size = d.abs().max(1).values
        bad = (d.abs() > eps * (1 + _ROUNDING) + slack).any(1)
    elif norm == "l2":
        size = d.norm(dim=1)
        bad = size > eps * (1 + 1e-5) + slack.norm(dim=1)
    elif norm == "l1":
        # the rounding of each pixel adds up: the slack vector's L1 norm
        size = d.abs().sum(1)
        bad = size > eps * (1 + _ROUNDING) + slack.sum(1)
    elif norm == "l0":
        # pixel positions (all channels of one) that moved beyond rounding; eps counts them
        moved = (b - a).abs() > _ROUNDING * torch.maximum(a.abs(), b.abs())
        if moved.dim() == 4:
            moved = moved.any(1)
        size = moved.flatten(1).sum(1).double()
        bad = size > eps
    else:
        raise ValueError(f"no threat-model check for norm {norm!r}")
    if not bad.any():
        return None
    worst = float(size[bad].max())
    return (f"perturbation of {worst:.6g} ({norm}) exceeds eps {eps:.6g} by {worst - eps:.3g} "
            f"on {int(bad.sum())} of {x.shape[0]} examples")


def _split_report(label: str, details: dict[str, Any] | None, n: int) -> tuple[dict[str, Any] | None, list | None]:
    """An attack's `details` as (what is stored per batch, the per-example `broken_by` names or None).
    Plain data only reaches the store; a per-example list of the wrong length is an attack bug."""
    if not details:
        return None, None
    report = {k: v for k, v in details.items() if k != "broken_by"}
    names = details.get("broken_by")
    if names is not None:
        names = list(names)
        if len(names) != n:
            raise ThreatModelViolation(label, 0.0, "-", f"reported broken_by for {len(names)} of {n} examples")
    return json.loads(json.dumps(report, default=str)), names


def _refuse_non_finite(model_label: str, what: str, logits: torch.Tensor) -> None:
    if not torch.isfinite(logits).all():
        k = int((~torch.isfinite(logits)).any(1).sum())
        raise UserError(f"model {model_label} produced NaN or infinite logits on {k} {what}: a non-finite "
                        f"output is neither right nor wrong, so no accuracy is reported; make the model's "
                        f"forward pass finite on every input in [0, 1]")


def cascade(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray,
            attacks: Sequence[tuple[str, Any]], eps: Sequence[float], *, seed: int, norm: str,
            model_label: str = "model", clean: np.ndarray | None = None,
            clean_seconds: float = 0.0, min_norm: Any = None) -> BatchResult:
    """Each attack over the ascending eps on the examples still robust; per example the smallest eps
    that broke it, the part of a composite attack that did, and the worst case over the attacks.
    `clean` (per example, classified correctly) is computed here when not given.

    `min_norm` (an attack with `minimize(model, x, y) -> attacks.fmn.MinNorm`, e.g. `attacks.FMN`): a
    minimum-norm stage run once on the clean-correct examples first. At each eps its point per example,
    projected onto the eps-ball, goes through the same threat-model check and re-check as any attack's;
    where it fools the model the example is broken at that eps (credited to `min_norm.name`), and each
    attack runs only on the others, with the seeds and inputs it gets without the stage. So an example
    broken without the stage is broken with it at every eps, and wherever the attack still runs its
    outcome is the same."""
    if clean is None:
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(x)
        _refuse_non_finite(model_label, "clean examples", logits)
        clean = (logits.argmax(1) == y).cpu().numpy()
        clean_seconds = time.perf_counter() - t0
    outcomes: list[Outcome] = []
    costs: list[Cost] = []
    n = len(idx)
    worst = worst_by = None
    stage = _min_norm_stage(model, x, y, clean, min_norm) if min_norm is not None else None
    for a_i, (label, attack) in enumerate(attacks):
        broken = np.where(clean, np.nan, 0.0)
        by = np.full(n, None, dtype=object)
        composite = stage is not None
        for e in eps:
            alive = np.flatnonzero(np.isnan(broken))
            t0 = time.perf_counter()
            fwd = bwd = 0
            report = None
            if stage is not None and len(alive) and e > 0:
                hit, passes = _min_norm_at(model, x, y, alive, stage, e, norm, model_label)
                broken[hit] = e
                by[hit] = stage.name
                fwd += passes
                alive = np.flatnonzero(np.isnan(broken))
            if len(alive) and e > 0:
                sel = torch.as_tensor(alive, device=x.device)
                xs, ys = x[sel], y[sel]
                out = attack(model, xs, ys, e, seeds=example_seeds(seed, label, e, idx[alive]), verify=False)
                fwd, bwd = fwd + out.forward, bwd + out.backward
                what = threat_model_excess(xs, out.x_adv, e, norm)
                if what is not None:
                    raise ThreatModelViolation(label, e, norm, what)
                with torch.no_grad():
                    adv_logits = model(out.x_adv)
                fwd += len(alive)
                _refuse_non_finite(model_label, f"adversarial examples of {label} at eps={e:g}", adv_logits)
                still = (adv_logits.argmax(1) == ys).cpu().numpy()
                broken[alive[~still]] = e
                report, names = _split_report(label, out.details, len(alive))
                if names is not None:
                    composite = True
                    by[alive[~still]] = [names[j] if names[j] is not None else "unattributed"
                                         for j in np.flatnonzero(~still)]
                elif stage is not None:
                    by[alive[~still]] = label
            seconds = time.perf_counter() - t0
            if a_i == 0 and e == eps[0]:
                seconds += clean_seconds
                if stage is not None:   # the stage's one run is paid with the first point
                    seconds, fwd, bwd = seconds + stage.seconds, fwd + stage.forward, bwd + stage.backward
                    report = {**(report or {}), "min_norm_stage": stage.report()}
            costs.append(Cost(label, e, seconds, fwd, bwd, report))
        outcomes.extend(Outcome(label, int(i), bool(c), None if np.isnan(b) else float(b), w if composite else None)
                        for i, c, b, w in zip(idx, clean, broken, by))
        if worst is None:
            worst, worst_by = broken.copy(), np.full(n, label, dtype=object)
        else:
            # fmin: NaN (never broken) loses; the first attack to break an example at the smallest eps
            # is credited with it
            earlier = ~np.isnan(broken) & (np.isnan(worst) | (broken < worst))
            worst_by[earlier] = label
            worst = np.fmin(worst, broken)
    if len(attacks) > 1:
        # AutoAttack's principle for any list: robust only if it survived every attack
        outcomes.extend(Outcome(WORST_CASE, int(i), bool(c), None if np.isnan(b) else float(b),
                                w if c and not np.isnan(b) else None)
                        for i, c, b, w in zip(idx, clean, worst, worst_by))
    return BatchResult(tuple(outcomes), tuple(costs))


@dataclass(frozen=True)
class _Stage:
    """The minimum-norm stage's result for one batch: `rows[i]` is example i's row in `x_adv`/`norms`
    (-1: not attacked, not clean-correct)."""
    name: str
    rows: np.ndarray
    x_adv: torch.Tensor
    norms: torch.Tensor
    seconds: float
    forward: int
    backward: int

    def report(self) -> dict[str, Any]:
        found = torch.isfinite(self.norms)
        return {"name": self.name, "seconds": self.seconds, "forward": self.forward, "backward": self.backward,
                "attacked": int(self.norms.numel()), "found": int(found.sum()),
                "median_norm": float(self.norms[found].median()) if bool(found.any()) else None}


def _min_norm_stage(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clean: np.ndarray,
                    min_norm: Any) -> _Stage:
    t0 = time.perf_counter()
    ok = np.flatnonzero(clean)
    rows = np.full(len(clean), -1)
    rows[ok] = np.arange(len(ok))
    sel = torch.as_tensor(ok, device=x.device)
    best = min_norm.minimize(model, x[sel], y[sel])
    if tuple(best.x_adv.shape) != tuple(x[sel].shape) or tuple(best.norms.shape) != (len(ok),):
        raise ThreatModelViolation(getattr(min_norm, "name", "min-norm stage"), 0.0, "-",
                                   f"returned shapes {tuple(best.x_adv.shape)}, {tuple(best.norms.shape)} "
                                   f"for {len(ok)} examples")
    return _Stage(getattr(min_norm, "name", "min-norm"), rows, best.x_adv, best.norms,
                  time.perf_counter() - t0, best.forward, best.backward)


def _min_norm_at(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, alive: np.ndarray, stage: _Stage,
                 eps: float, norm: str, model_label: str) -> tuple[np.ndarray, int]:
    """Which of the `alive` examples the stage's points, projected onto the eps-ball and the box, break
    at eps (checked like any attack's output); and the forward passes that took."""
    from attacks import project
    rows = stage.rows[alive]
    has = rows >= 0
    has[has] = torch.isfinite(stage.norms[torch.as_tensor(rows[has])]).cpu().numpy()
    cand = alive[has]
    if not len(cand):
        return cand, 0
    sel = torch.as_tensor(cand, device=x.device)
    xs, ys = x[sel], y[sel]
    xm = stage.x_adv[torch.as_tensor(rows[has], device=x.device)]
    xp = (xs + project(xm - xs, eps, norm)).clamp(0.0, 1.0)
    what = threat_model_excess(xs, xp, eps, norm)
    if what is not None:
        raise ThreatModelViolation(stage.name, eps, norm, what)
    with torch.no_grad():
        logits = model(xp)
    _refuse_non_finite(model_label, f"minimum-norm points of {stage.name} at eps={eps:g}", logits)
    fooled = (logits.argmax(1) != ys).cpu().numpy()
    return cand[fooled], len(cand)


def corruption_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, clean: np.ndarray,
                    corruptions: Sequence[str], severities: Sequence[int], *, seed: int,
                    preset: str | None = None, precomputed: Any = None, channels_last: bool = False,
                    model_label: str = "model") -> BatchResult:
    """Accuracy under each corruption and severity, on every example (not only clean-correct ones:
    corruption accuracy is plain accuracy on corrupted images). Each severity is its own outcome
    series (`corruption:NAME@S`), since severities do not nest the way eps-balls do. Random draws are
    seeded per (run seed, corruption, severity, example)."""
    from attacks.corruptions import corrupt
    outcomes: list[Outcome] = []
    costs: list[Cost] = []
    xc_in = x.contiguous()
    for name in corruptions:
        label = corruption_label(name)
        for sev in severities:
            t0 = time.perf_counter()
            if precomputed is not None:
                xc = precomputed.batch(name, sev, idx).to(x.device)
            else:
                xc = _corrupt(corrupt, xc_in, name, sev, example_seeds(seed, label, float(sev), idx), preset)
            if channels_last and xc.dim() == 4:
                xc = xc.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                logits = model(xc)
            _refuse_non_finite(model_label, f"images under {name} at severity {sev}", logits)
            ok = (logits.argmax(1) == y).cpu().numpy()
            costs.append(Cost(label, float(sev), time.perf_counter() - t0, len(idx), 0))
            key = series_key(label, float(sev))
            outcomes.extend(Outcome(key, int(i), bool(c), None if k else 0.0) for i, c, k in zip(idx, clean, ok))
    return BatchResult(tuple(outcomes), tuple(costs))


def _corrupt(corrupt, x: torch.Tensor, name: str, sev: int, seeds: torch.Tensor, preset: str | None) -> torch.Tensor:
    """Per-example seeds where the corruptions take them (an image's corruption then does not depend on
    its batch); otherwise one generator seeded from the batch's first example, as before."""
    import inspect
    if "seeds" in inspect.signature(corrupt).parameters:
        return corrupt(x, name, sev, seeds=seeds, preset=preset)
    g = torch.Generator().manual_seed(int(seeds[0]))
    return corrupt(x, name, sev, generator=g, preset=preset)
