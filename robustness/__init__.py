"""The harness: model and data set sources, the evaluation engine and the `robust-bench` CLI.

Names are imported on first use, so `robust-bench leaderboard` and friends do not pay for torch."""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"AttackSpec": "engine", "Evaluator": "engine", "RunOutcome": "engine", "RunSpec": "engine",
         "export_json": "engine", "UserError": "errors"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'robustness' has no attribute {name!r}")
