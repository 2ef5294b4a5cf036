"""The harness: model and data set sources, the evaluation engine and the `robust-bench` CLI.

Names are imported on first use, so `robust-bench leaderboard` and friends do not pay for torch."""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"AttackSpec": "specs", "RunSpec": "specs", "Evaluator": "runner", "RunOutcome": "runner",
         "export_json": "runner", "UserError": "errors",
         "evaluate": "api", "load_model": "api", "load_dataset": "api", "Evaluation": "api",
         "ExampleOutcomes": "api", "format_report": "report",
         "TrainSpec": "training", "TrainOutcome": "training", "TrainingFailed": "training", "train": "training",
         "compress": "compression", "CompressSpec": "compression", "CompressOutcome": "compression",
         "CompressionStats": "compression", "evaluate_compressed": "compression",
         # randomized smoothing: `rb.certify_smoothed(rb.CertifySpec(...))` (rb.certify is the module)
         "CertifySpec": "certify", "CertifyOutcome": "certify", "certify_smoothed": "certify"}



# whole packages under the harness's name: `rb.attacks.PGD(steps=50)`, `rb.leaderboards.load(...)`
_PACKAGES = ("attacks", "defenses", "leaderboards")

__all__ = sorted(_LAZY) + list(_PACKAGES)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _PACKAGES:
        return importlib.import_module(name)
    raise AttributeError(f"module 'robustness' has no attribute {name!r}")
