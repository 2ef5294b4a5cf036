"""Results store, tables, curves, the HTML leaderboard and regression comparison."""
from .records import PerExample, ThreatResult, outcomes_at, summarize
from .stats import wilson_interval
from .store import Cost, Outcome, ResultStore, RunRecord, StoreError, SCHEMA_VERSION

__all__ = ["Cost", "Outcome", "PerExample", "ResultStore", "RunRecord", "SCHEMA_VERSION", "StoreError",
           "ThreatResult", "outcomes_at", "summarize", "wilson_interval"]
