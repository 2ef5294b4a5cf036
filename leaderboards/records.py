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

    def __post_init__(self) -> None:
        if not (len(self.index) == len(self.clean_correct) == len(self.correct)):
            raise ValueError("per-example arrays differ in length")
        if self.broken_eps is not None and len(self.broken_eps) != len(self.index):
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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
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


def summarize(*, run_id: str, model: str, dataset: str, attack: str, norm: str, eps: float,
              index: Sequence[int], clean_correct: np.ndarray, broken_eps: np.ndarray | None = None,
              correct: np.ndarray | None = None, seconds: float = 0.0, forward: int = 0, backward: int = 0,
              params: dict[str, Any] | None = None, keep_examples: bool = True) -> ThreatResult:
    """Aggregate per-example outcomes: pass `correct` directly, or `broken_eps` of a nested series."""
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
    per = PerExample(tuple(int(i) for i in index), tuple(bool(b) for b in clean),
                     tuple(bool(b) for b in correct), broken) if keep_examples else None
    return ThreatResult(run_id=run_id, model=model, dataset=dataset, attack=attack, norm=norm, eps=float(eps),
                        n=n, clean_accuracy=float(clean.mean()) if n else 0.0,
                        accuracy=k / n if n else 0.0, ci95=wilson_interval(k, n), seconds=float(seconds),
                        forward=int(forward), backward=int(backward), params=dict(params or {}),
                        per_example=per)
