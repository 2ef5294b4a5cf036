"""Threats (attack, norm, eps) and how they are named in tables, plots and comparisons.

Corruptions follow a convention: the attack is named `corruption:NAME` and its "eps" is the severity
(1..5). Everything that reads results recognises that convention through `is_corruption`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

CORRUPTION_PREFIX = "corruption:"
WORST_CASE = "worst-case"


# what kind of threat a result is: an attack at an eps, a corruption at a severity, or the engine's worst
# case over several attacks. The one place that reads the naming conventions above.
ADVERSARIAL, CORRUPTION, COMBINED = "adversarial", "corruption", "worst_case"


def threat_kind(attack: str) -> str:
    if is_corruption(attack):
        return CORRUPTION
    return COMBINED if attack == WORST_CASE else ADVERSARIAL


def is_corruption(attack: str) -> bool:
    return attack.startswith(CORRUPTION_PREFIX)


def corruption_name(attack: str) -> str:
    return attack[len(CORRUPTION_PREFIX):] if is_corruption(attack) else attack


def parse_number(text: str | int | float) -> float:
    """A float, or a fraction like 8/255. ValueError on anything else."""
    if isinstance(text, bool):
        raise ValueError(f"not a number: {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        t = str(text).strip()
        try:
            if "/" in t:
                num, den = t.split("/", 1)
                value = float(Fraction(num.strip())) / float(Fraction(den.strip()))
            else:
                value = float(t)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"not a number or a fraction like 8/255: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def same_eps(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 + 1e-6 * max(abs(a), abs(b))


def format_eps(eps: float, norm: str = "linf", attack: str = "") -> str:
    """0.1 -> '0.1'; 8/255 -> '8/255' (L-inf budgets that are whole 255ths); severities -> '3'."""
    if is_corruption(attack):
        return f"{eps:g}"
    short = f"{eps:g}"
    k = eps * 255
    if norm == "linf" and abs(k - round(k)) < 1e-6 and 1 <= round(k) < 255 and len(short) > 5:
        return f"{round(k)}/255"
    return short


@dataclass(frozen=True, order=True)
class Threat:
    attack: str
    norm: str
    eps: float

    @property
    def corruption(self) -> bool:
        return is_corruption(self.attack)

    def label(self, with_norm: bool = False) -> str:
        base = f"{self.attack}@{format_eps(self.eps, self.norm, self.attack)}"
        return f"{base} ({self.norm})" if with_norm and not self.corruption else base


def threat_labels(threats: list[Threat]) -> dict[Threat, str]:
    """Short labels; the norm is added only when the shown threats mix norms."""
    norms = {t.norm for t in threats if not t.corruption}
    labels = {t: t.label(with_norm=len(norms) > 1) for t in threats}
    if len(set(labels.values())) < len(labels):  # two eps that print alike: fall back to full precision
        labels = {t: f"{t.attack}@{t.eps!r}" + (f" ({t.norm})" if len(norms) > 1 else "") for t in threats}
    return labels
