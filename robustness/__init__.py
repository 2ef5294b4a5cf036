"""The harness: model and data set sources, the evaluation engine and the `robust-bench` CLI."""
from .engine import AttackSpec, Evaluator, RunOutcome, RunSpec, export_json
from .errors import UserError

__all__ = ["AttackSpec", "Evaluator", "RunOutcome", "RunSpec", "UserError", "export_json"]
