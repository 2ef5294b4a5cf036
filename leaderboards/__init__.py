"""Results store, tables, curves, the HTML leaderboard and regression comparison."""
from .board import Board, BoardRow, Filters, build_board
from .compare import NotComparable, compare, compare_refs, load_run, mcnemar_exact, paired_difference_ci
from .frame import load
from .protocols import Protocol, ProtocolError, load_protocol, protocol_matches, protocol_names
from .records import PerExample, ThreatResult, merge_reports, outcomes_at, summarize
from .stats import wilson_interval
from .store import Cost, OlderSchema, Outcome, ResultStore, RunRecord, StoreError, SCHEMA_VERSION
from .tables import FORMATS, render
from .threats import Threat

__all__ = ["Board", "BoardRow", "Cost", "FORMATS", "Filters", "NotComparable", "OlderSchema", "Outcome", "PerExample", "Protocol",
           "ProtocolError", "ResultStore", "RunRecord", "SCHEMA_VERSION", "StoreError", "Threat", "ThreatResult",
           "build_board", "compare", "compare_refs", "load", "load_protocol", "load_run", "mcnemar_exact", "merge_reports",
           "outcomes_at", "paired_difference_ci", "protocol_matches", "protocol_names", "render", "summarize",
           "wilson_interval"]
