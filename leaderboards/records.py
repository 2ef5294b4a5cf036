"""Typed records of evaluation results, the unit every table, plot and comparison is built from.

Per-example outcomes are kept so any aggregate can be recomputed; aggregates are fractions in [0, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .stats import wilson_interval


@dataclass(frozen=True)
class PerExample:
    """`broken_eps`: the smallest tested eps that broke each example (None: none did; 0: wrong clean),
    for attacks whose eps-balls nest; None for threats stored per strength (corruptions)."""
    index: tuple[int, ...]
    clean_correct: tuple[bool, ...]
    correct: tuple[bool, ...]
    broken_eps: tuple[float | None, ...] | None = None
    broken_by: tuple[str | None, ...] | None = None   # the part of a composite attack that broke it

    def __post_init__(self) -> None:
        if not (len(self.index) == len(self.clean_correct) == len(self.correct)):
            raise ValueError("per-example arrays differ in length")
        for extra in (self.broken_eps, self.broken_by):
            if extra is not None and len(extra) != len(self.index):
                raise ValueError("per-example arrays differ in length")


@dataclass(frozen=True)
class ThreatResult:
    """Accuracy of one model on one data set under one attack at one eps."""
    run_id: str
    model: str
    dataset: str
    attack: str
    norm: str
    eps: float
    n: int
    clean_accuracy: float
    accuracy: float
    ci95: tuple[float, float]
    seconds: float
    forward: int
    backward: int
    params: dict[str, Any] = field(default_factory=dict)
    per_example: PerExample | None = None
    # for attacks made of parts (AutoAttack, the worst case over attacks): {"broken_by": {part: examples
    # broken at or below this eps}, "sub_attacks": [{name, seconds, forward, backward, attacked, fooled}],
    # "skipped": [{name, reason}], "package_warnings": [...]}; None for plain attacks
    breakdown: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        """adversarial, corruption or worst_case (`leaderboards.threats.threat_kind`)."""
        from .threats import threat_kind
        return threat_kind(self.attack)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        d["ci95"] = list(self.ci95)
        if self.per_example is not None:
            d["per_example"] = {k: list(v) for k, v in asdict(self.per_example).items() if v is not None}
        return d


def outcomes_at(clean_correct: np.ndarray, broken_eps: np.ndarray, eps: float) -> np.ndarray:
    """Robust at eps: clean-correct and not broken at any tested eps <= eps (NaN: never broken).

    A perturbation found inside a smaller ball also lies in every larger ball of the same norm, so an
    example broken at eps_i counts as broken at every eps_j >= eps_i: accuracy is monotone by construction."""
    broken = ~np.isnan(broken_eps) & (broken_eps <= eps)
    return clean_correct.astype(bool) & ~broken


def merge_reports(reports: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One report from an attack's per-batch reports (`AttackOutput.details`): per sub-attack, seconds,
    passes and examples attacked / fooled summed by name; skipped sub-attacks and package warnings
    listed once. Per-example entries (`broken_by`) are not merged here: they are stored per example."""
    parts = [r for r in reports if r]
    if not parts:
        return None
    total: dict[str, Any] = {"sub_attacks": [], "skipped": [], "package_warnings": []}
    rows: dict[str, dict[str, Any]] = {}
    for part in parts:
        for k, v in part.items():
            if k not in ("sub_attacks", "skipped", "package_warnings", "broken_by") and k not in total:
                total[k] = v
        for r in part.get("sub_attacks") or []:
            acc = rows.get(r["name"])
            if acc is None:
                acc = rows[r["name"]] = {"name": r["name"]}
                if "implementation" in r:
                    acc["implementation"] = r["implementation"]
                total["sub_attacks"].append(acc)
            for key in ("seconds", "forward", "backward", "attacked", "fooled"):
                if key in r:
                    acc[key] = acc.get(key, 0) + r[key]
        for key in ("skipped", "package_warnings"):
            for item in part.get(key) or []:
                if item not in total[key]:
                    total[key].append(item)
    return total


def _breakdown(clean: np.ndarray, broken_eps: np.ndarray | None, broken_by: Sequence[str | None] | None,
               eps: float, details: Sequence[dict[str, Any] | None] | None) -> dict[str, Any] | None:
    merged = merge_reports(details or [])
    if broken_by is None and merged is None:
        return None
    out: dict[str, Any] = dict(merged or {"sub_attacks": [], "skipped": [], "package_warnings": []})
    if broken_by is not None and broken_eps is not None:
        counts: dict[str, int] = {}
        for c, b, who in zip(clean, broken_eps, broken_by):
            if c and not np.isnan(b) and b <= eps:
                key = who if who is not None else "unattributed"
                counts[key] = counts.get(key, 0) + 1
        out["broken_by"] = counts
    return out


def summarize(*, run_id: str, model: str, dataset: str, attack: str, norm: str, eps: float,
              index: Sequence[int], clean_correct: np.ndarray, broken_eps: np.ndarray | None = None,
              correct: np.ndarray | None = None, seconds: float = 0.0, forward: int = 0, backward: int = 0,
              params: dict[str, Any] | None = None, keep_examples: bool = True,
              broken_by: Sequence[str | None] | None = None,
              details: Sequence[dict[str, Any] | None] | None = None) -> ThreatResult:
    """Aggregate per-example outcomes: pass `correct` directly, or `broken_eps` of a nested series.
    `broken_by` (per example) and `details` (the attack's per-batch reports) make the breakdown."""
    clean = np.asarray(clean_correct, dtype=bool)
    if correct is None:
        if broken_eps is None:
            raise ValueError("summarize needs broken_eps or correct")
        correct = outcomes_at(clean, np.asarray(broken_eps, dtype=float), eps)
    elif broken_eps is not None and not np.array_equal(
            np.asarray(correct, dtype=bool), outcomes_at(clean, np.asarray(broken_eps, dtype=float), eps)):
        raise ValueError("correct and broken_eps disagree")
    correct = np.asarray(correct, dtype=bool)
    n = int(clean.size)
    k = int(correct.sum())
    broken = None
    if broken_eps is not None:
        broken = tuple(None if np.isnan(b) else float(b) for b in np.asarray(broken_eps, dtype=float))
    by = None if broken_by is None else tuple(None if b is None else str(b) for b in broken_by)
    per = PerExample(tuple(int(i) for i in index), tuple(bool(b) for b in clean),
                     tuple(bool(b) for b in correct), broken, by) if keep_examples else None
    breakdown = _breakdown(clean, None if broken_eps is None else np.asarray(broken_eps, dtype=float), by, eps,
                           details)
    return ThreatResult(run_id=run_id, model=model, dataset=dataset, attack=attack, norm=norm, eps=float(eps),
                        n=n, clean_accuracy=float(clean.mean()) if n else 0.0,
                        accuracy=k / n if n else 0.0, ci95=wilson_interval(k, n), seconds=float(seconds),
                        forward=int(forward), backward=int(backward), params=dict(params or {}),
                        per_example=per, breakdown=breakdown)
