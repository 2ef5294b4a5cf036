"""What the registry knows about an attack. Its own module so that adapters (torchattacks) can build
entries without importing the registry, which imports them lazily: no import circle."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["AttackEntry"]


@dataclass(frozen=True)
class AttackEntry:
    name: str
    builder: Callable[..., Any]
    norms: tuple[str, ...]
    description: str
    white_box: bool = True
    batch_dependent: bool = False

    def parameters(self) -> dict[str, Any]:
        """Declared arguments and their defaults, and `eot`, which every attack takes (attacks/eot.py)."""
        own = self.declared()
        return own if "eot" in own else {**own, "eot": 1}

    def declared(self) -> dict[str, Any]:
        """The builder's own arguments and their defaults."""
        if dataclasses.is_dataclass(self.builder):
            return {f.name: f.default for f in dataclasses.fields(self.builder) if not f.name.startswith("_")}
        sig = inspect.signature(self.builder)
        return {k: (None if p.default is inspect.Parameter.empty else p.default)
                for k, p in sig.parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
