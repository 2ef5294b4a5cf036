"""The evaluation engine, by responsibility (this module re-exports them under their old names):

- robustness/specs.py        what a run is: AttackSpec, RunSpec (frozen; `check()`, `from_protocol`)
- robustness/preparation.py  models, data and attacks resolved and probed before any store is opened
- robustness/cascade.py      the pure per-example cascade over attacks and eps, the threat-model check
- robustness/runner.py       the store, resume, ranks, aggregates and findings: `Evaluator`
- robustness/provenance.py   versions, git commit, device and date recorded with every run
- robustness/api.py          the Python API: `evaluate`, `load_model`, `load_dataset`
"""
from __future__ import annotations

from .cascade import BatchResult, cascade, corruption_pass, example_seeds, threat_model_excess
from .preparation import Autocast, Prepared, auto_batch_size, prepare, prepare_module, resolve_attacks, resolve_device
from .provenance import environment, git_commit
from .runner import BatchFailed, Evaluator, RunOutcome, export_json, run_document
from .specs import WORST_CASE, AttackSpec, RunSpec, corruption_label

__all__ = ["AttackSpec", "Autocast", "BatchFailed", "BatchResult", "Evaluator", "Prepared", "RunOutcome", "RunSpec",
           "WORST_CASE", "auto_batch_size", "cascade", "corruption_label", "corruption_pass", "environment",
           "example_seeds", "export_json", "git_commit", "prepare", "prepare_module", "resolve_attacks",
           "resolve_device", "run_document", "threat_model_excess"]
