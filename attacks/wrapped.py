"""What an attack that wraps another one (EOT, BPDA, transfer) passes through: the inner attack's norm and
the settings the engine's applicability checks read, and its settings for the stored result."""
from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["WrapsAttack", "inner_name", "inner_record"]


def inner_name(attack: Any) -> str:
    return getattr(attack, "name", type(attack).__name__)


def inner_record(attack: Any) -> dict[str, Any]:
    """The inner attack's settings as stored with a result (its own `record()`, or its dataclass fields)."""
    if hasattr(attack, "record"):
        return dict(attack.record())
    return dataclasses.asdict(attack) if dataclasses.is_dataclass(attack) else {}


class WrapsAttack:
    """Mixin for a wrapper with an `attack` attribute: `name` is `PREFIX:inner`; norm, targeting, loss and
    class count are the inner attack's (so `check_applicable` judges the attack that really runs)."""
    prefix = ""
    attack: Any

    @property
    def name(self) -> str:
        return f"{self.prefix}:{inner_name(self.attack)}"

    @property
    def norm(self) -> str:
        return getattr(self.attack, "norm", "linf")

    @property
    def targeted(self) -> bool:
        return bool(getattr(self.attack, "targeted", False))

    @property
    def chooses_targets(self) -> bool:
        return bool(getattr(self.attack, "chooses_targets", False))

    @property
    def loss(self) -> Any:
        return getattr(self.attack, "loss", None)

    @property
    def min_classes(self) -> int:
        return int(getattr(self.attack, "min_classes", 2))
