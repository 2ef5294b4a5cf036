"""Typed errors of the attacks package. `attacks` cannot import the harness, so it raises its own
errors; the CLI maps every one of them to a single line and exit code 2 in one place."""
from __future__ import annotations


class AttackError(Exception):
    """Base of every error this package raises on purpose."""


class AttackConfigError(AttackError, ValueError):
    """Settings that make no sense (negative steps, an unknown loss, DLR on a 2-class model, a
    targeted attack without targets). A ValueError too, so older `except ValueError` callers still work."""


class AttackUnavailable(AttackError, ImportError):
    """The attack needs a package that is not installed (torchattacks, pyautoattack)."""


class ThreatModelViolation(AttackError):
    """An attack returned a point outside its threat model (outside the eps-ball or [0, 1], the wrong
    shape, or not finite). No number is reported for it."""

    def __init__(self, attack: str, eps: float, norm: str, what: str) -> None:
        self.attack, self.eps, self.norm, self.what = attack, eps, norm, what
        super().__init__(f"attack {attack} broke the threat model at eps={eps:g} ({norm}): {what}; "
                         f"no result is reported for it")
