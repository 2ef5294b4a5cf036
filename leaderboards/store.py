"""The results store: one SQLite file, versioned schema, per-example outcomes.

Why SQLite: one file a user can copy, transactional batches (a killed run loses at most the batch in
flight and never half of one), and safe concurrent writers through WAL and `BEGIN IMMEDIATE`.

Tables (schema version 3; version 1 lacked `warnings`, version 2 the attribution columns; both are
upgraded in place on open, which adds what is missing and changes nothing stored):
  runs      one row per invocation-with-the-same-arguments; `key` identifies the arguments, so the
            same command finds its unfinished run and resumes it.
  models    per (run, model): data set, model metadata, example indices.
  outcomes  per (run, model, attack, example): clean correctness and the smallest tested eps that broke
            it (NULL: survived every eps). Robust accuracy at any tested eps is derived from this.
            `broken_by`: which part of a composite attack broke it (AutoAttack's sub-attack; for the
            worst case, the attack), NULL where nothing did or the attack has no parts.
  costs     per (run, model, attack, eps, batch): seconds, forward and backward example-passes, and
            `details`: the attack's own report for that batch (JSON; e.g. per sub-attack passes,
            examples attacked and fooled, sub-attacks skipped and why, the package's warnings).
  batches   per (run, model, batch): the completion marker, written in the same transaction.
  results   aggregates per (run, model, attack, eps), derived from outcomes when a run finishes.
  warnings  findings of the sanity checks (why a number may not be trusted), per run.
  certificates          per (run, model, example): randomized smoothing's CERTIFY (robust-bench certify):
                        label, predicted class (NULL: abstained), certified L2 radius, pA's lower bound
                        and the votes behind it.
  smoothed_predictions  per (run, model, example, radius): PREDICT of the smoothed classifier on the
                        example (radius 0) or on its attacked copy within that L2 radius (NULL: abstained).
  These two are created by the first certification written (`_LAZY_TABLES`), so a version-3 store
  without them needs no upgrade and stays readable by older robust-bench.
  steps     per (run, model, batch, key): a finished part of the batch in flight (an AutoAttack
            sub-attack: its output tensors, passes, report; attacks/progress.py), kept so an interrupted
            batch does not redo it; deleted when the batch commits. Created on first use, like the two above.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .records import ThreatResult, outcomes_at, summarize

SCHEMA_VERSION = 3

# columns added after version 1: (table, column, type), added on open to older stores
_ADDED_COLUMNS = (("outcomes", "broken_by", "TEXT"), ("costs", "details", "TEXT"), ("results", "breakdown", "TEXT"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id   TEXT PRIMARY KEY,
    key      TEXT NOT NULL,
    created  TEXT NOT NULL,
    finished TEXT,
    status   TEXT NOT NULL CHECK (status IN ('running', 'complete')),
    tag      TEXT,
    spec     TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs(key);
CREATE TABLE IF NOT EXISTS models (
    run_id  TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    model   TEXT NOT NULL,
    dataset TEXT NOT NULL,
    info    TEXT NOT NULL,
    indices TEXT NOT NULL,
    PRIMARY KEY (run_id, model)
);
CREATE TABLE IF NOT EXISTS batches (
    run_id TEXT NOT NULL,
    model  TEXT NOT NULL,
    batch  INTEGER NOT NULL,
    PRIMARY KEY (run_id, model, batch)
);
CREATE TABLE IF NOT EXISTS outcomes (
    run_id        TEXT NOT NULL,
    model         TEXT NOT NULL,
    attack        TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    clean_correct INTEGER NOT NULL,
    broken_eps    REAL,
    broken_by     TEXT,
    PRIMARY KEY (run_id, model, attack, idx)
);
CREATE TABLE IF NOT EXISTS costs (
    run_id   TEXT NOT NULL,
    model    TEXT NOT NULL,
    attack   TEXT NOT NULL,
    eps      REAL NOT NULL,
    batch    INTEGER NOT NULL,
    seconds  REAL NOT NULL,
    forward  INTEGER NOT NULL,
    backward INTEGER NOT NULL,
    details  TEXT,
    PRIMARY KEY (run_id, model, attack, eps, batch)
);
CREATE TABLE IF NOT EXISTS warnings (
    run_id  TEXT NOT NULL,
    model   TEXT,
    attack  TEXT,
    eps     REAL,
    code    TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS warnings_by_run ON warnings(run_id);
CREATE TABLE IF NOT EXISTS results (
    run_id         TEXT NOT NULL,
    model          TEXT NOT NULL,
    dataset        TEXT NOT NULL,
    attack         TEXT NOT NULL,
    norm           TEXT NOT NULL,
    eps            REAL NOT NULL,
    n              INTEGER NOT NULL,
    clean_accuracy REAL NOT NULL,
    accuracy       REAL NOT NULL,
    ci_low         REAL NOT NULL,
    ci_high        REAL NOT NULL,
    seconds        REAL NOT NULL,
    forward        INTEGER NOT NULL,
    backward       INTEGER NOT NULL,
    params         TEXT NOT NULL,
    breakdown      TEXT,
    PRIMARY KEY (run_id, model, attack, eps)
);
"""

# tables created on first use (see the module docstring): adding them changes no stored row or column
_LAZY_TABLES = {
    "certificates": """CREATE TABLE IF NOT EXISTS certificates (
    run_id     TEXT NOT NULL,
    model      TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    label      INTEGER NOT NULL,
    prediction INTEGER,
    radius     REAL,
    p_lower    REAL NOT NULL,
    count      INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (run_id, model, idx)
)""",
    "smoothed_predictions": """CREATE TABLE IF NOT EXISTS smoothed_predictions (
    run_id       TEXT NOT NULL,
    model        TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    radius       REAL NOT NULL,
    label        INTEGER NOT NULL,
    prediction   INTEGER,
    count_top    INTEGER NOT NULL,
    count_second INTEGER NOT NULL,
    p_value      REAL NOT NULL,
    n            INTEGER NOT NULL,
    PRIMARY KEY (run_id, model, idx, radius)
)""",
    "steps": """CREATE TABLE IF NOT EXISTS steps (
    run_id  TEXT NOT NULL,
    model   TEXT NOT NULL,
    batch   INTEGER NOT NULL,
    key     TEXT NOT NULL,
    state   BLOB NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (run_id, model, batch, key)
)"""}


class StoreError(RuntimeError):
    pass


class OlderSchema(StoreError):
    """A store written by an older robust-bench: reading it needs the upgrade a writable open does."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    key: str
    created: str
    finished: str | None
    status: str
    tag: str | None
    spec: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    attack: str
    idx: int
    clean_correct: bool
    broken_eps: float | None
    broken_by: str | None = None


@dataclass(frozen=True)
class Cost:
    attack: str
    eps: float
    seconds: float
    forward: int
    backward: int
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class Certified:
    """One example's randomized-smoothing certificate: `prediction` None = abstained (`radius` None)."""
    idx: int
    label: int
    prediction: int | None
    radius: float | None
    p_lower: float
    count: int
    n: int


@dataclass(frozen=True)
class SmoothedPrediction:
    """PREDICT of a smoothed classifier on an example (`radius` 0) or on its attacked copy within an L2
    `radius`; `prediction` None = abstained."""
    idx: int
    label: int
    radius: float
    prediction: int | None
    count_top: int
    count_second: int
    p_value: float
    n: int


def series_key(attack: str, eps: float) -> str:
    """Outcome series of a non-nested threat at one strength, e.g. `corruption:fog@3`."""
    return f"{attack}@{eps:g}"


def _now() -> str:
    """UTC with microseconds: sorts as text, across time zones and within a second."""
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _opt_int(v: int | None) -> int | None:
    return None if v is None else int(v)


class ResultStore:
    """Open (creating if needed) a results database. Safe to share between processes."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, read_only: bool = False) -> None:
        """`read_only`: never write (SQLite `mode=ro`), so a store the user cannot write is readable and no
        byte of it changes; a store of an older schema raises `OlderSchema` (its upgrade would write)."""
        self.path = Path(path)
        if (read_only or not create) and not self.path.exists():
            raise StoreError(f"no results database at {self.path}")
        if (read_only or not create) and self.path.is_file() and self.path.stat().st_size == 0:
            # SQLite would take it for a new database and write a schema into it
            raise StoreError(f"{self.path} is an empty file, not a results database")
        self.read_only = read_only
        try:
            self._db = self._connect_read_only() if read_only else \
                sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open results database {self.path}: {e}") from None
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA busy_timeout = 120000")
            if read_only:
                self._check_version()
            else:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.path} is not a usable results database: {e}") from None
        except StoreError:
            self._db.close()
            raise

    def _connect_read_only(self) -> sqlite3.Connection:
        """`mode=ro`; where SQLite cannot create the WAL index beside a read-only file and no WAL file is
        there (every write checkpointed), `immutable=1`, which is then exact."""
        from urllib.parse import quote
        uri = "file:" + quote(str(self.path.resolve())) + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=120, isolation_level=None)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise
            return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=120, isolation_level=None)

    def _check_version(self) -> None:
        row = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        v = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if row else None
        if v is None:
            raise StoreError(f"{self.path} is not a results database (no schema version)")
        version = int(v[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this robust-bench reads up to "
                             f"{SCHEMA_VERSION}: upgrade robust-bench")
        if version < SCHEMA_VERSION:
            raise OlderSchema(f"{self.path} has schema version {version}, older than this robust-bench's "
                              f"{SCHEMA_VERSION}, and reading it needs an upgrade it cannot write here: run "
                              f"robust-bench on a writable copy once")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so concurrent writers queue instead of failing."""
        for attempt in range(50):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 49:
                    raise
                time.sleep(0.1 * (attempt + 1))
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            row = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            version = None
            if row is not None:
                v = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = int(v[0]) if v else None
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}; this robust-bench reads up to "
                                 f"{SCHEMA_VERSION}: upgrade robust-bench")
            if version == SCHEMA_VERSION:
                return  # nothing to write: opening a store never modifies it
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            for table, column, kind in _ADDED_COLUMNS:
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))

    # ---- runs ----
    def find_run(self, key: str) -> RunRecord | None:
        """The newest run with these arguments, finished or not."""
        row = self._db.execute("SELECT * FROM runs WHERE key=? ORDER BY created DESC, rowid DESC LIMIT 1",
                               (key,)).fetchone()
        return self._run(row) if row else None

    def get_run(self, run_id: str) -> RunRecord:
        row = self._db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:   # a prefix, compared as text: `%` and `_` are characters, not patterns
            rows = self._db.execute("SELECT * FROM runs WHERE substr(run_id, 1, ?) = ?",
                                    (len(run_id), run_id)).fetchall() if run_id else []
            if len(rows) != 1:
                raise StoreError(f"no run {run_id!r} in {self.path}" if not rows
                                 else f"run id prefix {run_id!r} is ambiguous in {self.path}")
            row = rows[0]
        return self._run(row)

    def runs(self, status: str | None = None) -> list[RunRecord]:
        q = "SELECT * FROM runs" + (" WHERE status=?" if status else "") + " ORDER BY created, rowid"
        return [self._run(r) for r in self._db.execute(q, (status,) if status else ())]

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(row["run_id"], row["key"], row["created"], row["finished"], row["status"], row["tag"],
                         json.loads(row["spec"]), json.loads(row["metadata"]))

    def create_run(self, key: str, spec: dict[str, Any], metadata: dict[str, Any], tag: str | None = None) -> str:
        """A new run, or, when an identical command created one since its `find_run` (two started together),
        that running one: both then fill the same run, batch by batch (`write_batch` skips stored ones)."""
        run_id = uuid.uuid4().hex[:12]
        with self._tx() as db:
            row = db.execute("SELECT run_id FROM runs WHERE key=? AND status='running' ORDER BY created DESC, "
                             "rowid DESC LIMIT 1", (key,)).fetchone()
            if row is not None:
                return row[0]
            db.execute("INSERT INTO runs(run_id, key, created, status, tag, spec, metadata) "
                       "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                       (run_id, key, _now(), tag, json.dumps(spec, sort_keys=True),
                        json.dumps(metadata, sort_keys=True)))
        return run_id

    def delete_run(self, run_id: str) -> None:
        with self._tx() as db:
            lazy = tuple(t for t in _LAZY_TABLES if self._has_table(t))
            for table in lazy + ("warnings", "results", "costs", "outcomes", "batches", "models", "runs"):
                db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                (name,)).fetchone() is not None

    def register_model(self, run_id: str, model: str, dataset: str, info: dict[str, Any],
                       indices: Sequence[int]) -> None:
        """Record which examples a model is evaluated on; refuses a changed selection on resume."""
        idx = json.dumps([int(i) for i in indices])
        with self._tx() as db:
            row = db.execute("SELECT indices FROM models WHERE run_id=? AND model=?", (run_id, model)).fetchone()
            if row is not None:
                if row[0] != idx:
                    raise StoreError(f"run {run_id} evaluated {model} on other examples; refusing to mix them")
                return
            db.execute("INSERT INTO models(run_id, model, dataset, info, indices) VALUES (?, ?, ?, ?, ?)",
                       (run_id, model, dataset, json.dumps(info, sort_keys=True), idx))

    def model_rows(self, run_id: str) -> list[dict[str, Any]]:
        return [{"model": r["model"], "dataset": r["dataset"], "info": json.loads(r["info"]),
                 "indices": json.loads(r["indices"])}
                for r in self._db.execute("SELECT * FROM models WHERE run_id=? ORDER BY rowid", (run_id,))]

    def model_infos(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Like `model_rows`, without the example indices (cheap over a whole store), with run_id."""
        q = "SELECT run_id, model, dataset, info FROM models" + (" WHERE run_id=?" if run_id else "") + \
            " ORDER BY run_id, rowid"
        return [{"run_id": r[0], "model": r[1], "dataset": r[2], "info": json.loads(r[3])}
                for r in self._db.execute(q, (run_id,) if run_id else ())]

    def done_batches(self, run_id: str, model: str) -> set[int]:
        return {r[0] for r in self._db.execute("SELECT batch FROM batches WHERE run_id=? AND model=?",
                                               (run_id, model))}

    def write_batch(self, run_id: str, model: str, batch: int, outcomes: Iterable[Outcome],
                    costs: Iterable[Cost], *, certificates: Sequence[Certified] = (),
                    predictions: Sequence[SmoothedPrediction] = ()) -> bool:
        """Commit one batch atomically (with its certificates and smoothed predictions, if any). Returns
        False (writing nothing) if it was already stored, e.g. by a concurrent process running the same
        command."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM batches WHERE run_id=? AND model=? AND batch=?",
                          (run_id, model, batch)).fetchone():
                return False
            if certificates:
                db.execute(_LAZY_TABLES["certificates"])
                db.executemany("INSERT INTO certificates(run_id, model, idx, label, prediction, radius, p_lower, "
                               "count, n) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [(run_id, model, int(c.idx), int(c.label), _opt_int(c.prediction),
                                 None if c.radius is None else float(c.radius), float(c.p_lower), int(c.count),
                                 int(c.n)) for c in certificates])
            if predictions:
                db.execute(_LAZY_TABLES["smoothed_predictions"])
                db.executemany("INSERT INTO smoothed_predictions(run_id, model, idx, radius, label, prediction, "
                               "count_top, count_second, p_value, n) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [(run_id, model, int(p.idx), float(p.radius), int(p.label), _opt_int(p.prediction),
                                 int(p.count_top), int(p.count_second), float(p.p_value), int(p.n))
                                for p in predictions])
            db.executemany("INSERT INTO outcomes(run_id, model, attack, idx, clean_correct, broken_eps, broken_by) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(run_id, model, o.attack, int(o.idx), int(bool(o.clean_correct)),
                             None if o.broken_eps is None else float(o.broken_eps), o.broken_by) for o in outcomes])
            db.executemany("INSERT INTO costs(run_id, model, attack, eps, batch, seconds, forward, backward, details) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(run_id, model, c.attack, float(c.eps), batch, float(c.seconds), int(c.forward),
                             int(c.backward), None if c.details is None else json.dumps(c.details, sort_keys=True))
                            for c in costs])
            db.execute("INSERT INTO batches(run_id, model, batch) VALUES (?, ?, ?)", (run_id, model, batch))
            if self._has_table("steps"):   # the batch's kept parts are now in its outcomes
                db.execute("DELETE FROM steps WHERE run_id=? AND model=? AND batch=?", (run_id, model, batch))
        return True

    def keep_step(self, run_id: str, model: str, batch: int, key: str, state: bytes) -> None:
        """Keep a finished part of an unfinished batch (see `steps` in the module docstring)."""
        with self._tx() as db:
            db.execute(_LAZY_TABLES["steps"])
            db.execute("INSERT OR REPLACE INTO steps(run_id, model, batch, key, state, created) VALUES "
                       "(?, ?, ?, ?, ?, ?)", (run_id, model, int(batch), key, sqlite3.Binary(state), _now()))

    def kept_steps(self, run_id: str, model: str, batch: int) -> dict[str, bytes]:
        if not self._has_table("steps"):
            return {}
        return {r[0]: bytes(r[1]) for r in self._db.execute(
            "SELECT key, state FROM steps WHERE run_id=? AND model=? AND batch=?", (run_id, model, int(batch)))}

    def certificates(self, run_id: str, model: str) -> list[Certified]:
        """The stored certificates of a smoothed model, ordered by example index (empty if none)."""
        if not self._has_table("certificates"):
            return []
        rows = self._db.execute("SELECT idx, label, prediction, radius, p_lower, count, n FROM certificates "
                                "WHERE run_id=? AND model=? ORDER BY idx", (run_id, model))
        return [Certified(*r) for r in rows]

    def smoothed_predictions(self, run_id: str, model: str, radius: float | None = None) -> list[SmoothedPrediction]:
        """PREDICT's stored answers, ordered by radius and example index; `radius` keeps one radius."""
        if not self._has_table("smoothed_predictions"):
            return []
        q = ("SELECT idx, label, radius, prediction, count_top, count_second, p_value, n FROM smoothed_predictions "
             "WHERE run_id=? AND model=?")
        args: list[Any] = [run_id, model]
        if radius is not None:
            q += " AND abs(radius - ?) < 1e-9"
            args.append(float(radius))
        return [SmoothedPrediction(*r) for r in self._db.execute(q + " ORDER BY radius, idx", args)]

    def outcomes(self, run_id: str, model: str, attack: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index, clean_correct, broken_eps with NaN for never broken), ordered by example index."""
        rows = self._db.execute("SELECT idx, clean_correct, broken_eps FROM outcomes WHERE run_id=? AND model=? "
                                "AND attack=? ORDER BY idx", (run_id, model, attack)).fetchall()
        idx = np.array([r[0] for r in rows], dtype=np.int64)
        clean = np.array([bool(r[1]) for r in rows], dtype=bool)
        broken = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=float)
        return idx, clean, broken

    def threat_outcomes(self, run_id: str, model: str, attack: str,
                        eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index, clean_correct, correct at eps): the one place that knows how outcome series read.

        Attacks store one series per attack whose broken_eps nests across eps (see `outcomes_at`).
        Threats whose strengths do not nest (a corruption at severity 3 may fool a model that severity 4
        does not) store one series per strength, keyed `ATTACK@EPS`, where correct = never broken."""
        key = series_key(attack, eps)
        idx, clean, broken = self.outcomes(run_id, model, key)
        if idx.size:
            return idx, clean, np.isnan(broken)
        idx, clean, broken = self.outcomes(run_id, model, attack)
        return idx, clean, outcomes_at(clean, broken, eps)

    def attacks_of(self, run_id: str, model: str) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT attack FROM outcomes WHERE run_id=? AND model=? "
                                               "ORDER BY attack", (run_id, model))]

    def cost(self, run_id: str, model: str, attack: str, eps: float) -> tuple[float, int, int]:
        r = self._db.execute("SELECT COALESCE(SUM(seconds), 0), COALESCE(SUM(forward), 0), "
                             "COALESCE(SUM(backward), 0) FROM costs WHERE run_id=? AND model=? AND attack=? "
                             "AND eps=?", (run_id, model, attack, float(eps))).fetchone()
        return float(r[0]), int(r[1]), int(r[2])

    def attribution(self, run_id: str, model: str, attack: str) -> np.ndarray:
        """Per example (ordered by index, like `outcomes`): the part of the attack that broke it, or None."""
        rows = self._db.execute("SELECT broken_by FROM outcomes WHERE run_id=? AND model=? AND attack=? ORDER BY idx",
                                (run_id, model, attack)).fetchall()
        return np.array([r[0] for r in rows], dtype=object)

    def batch_details(self, run_id: str, model: str, attack: str, eps: float) -> list[dict[str, Any]]:
        """The attack's own per-batch reports at one eps, in batch order (empty if it made none)."""
        rows = self._db.execute("SELECT details FROM costs WHERE run_id=? AND model=? AND attack=? AND eps=? "
                                "AND details IS NOT NULL ORDER BY batch", (run_id, model, attack, float(eps)))
        return [json.loads(r[0]) for r in rows]

    def warnings(self, run_id: str) -> list[dict[str, Any]]:
        return [{"code": r["code"], "message": r["message"], "model": r["model"], "attack": r["attack"],
                 "eps": r["eps"]}
                for r in self._db.execute("SELECT * FROM warnings WHERE run_id=? ORDER BY rowid", (run_id,))]

    def finish_run(self, run_id: str, results: Sequence[ThreatResult],
                   warnings: Sequence[Mapping[str, Any]] = ()) -> None:
        """Store the aggregates and the checks' findings, and mark the run complete, in one transaction."""
        with self._tx() as db:
            db.execute("DELETE FROM warnings WHERE run_id=?", (run_id,))
            db.executemany("INSERT INTO warnings(run_id, model, attack, eps, code, message) VALUES (?, ?, ?, ?, ?, ?)",
                           [(run_id, w.get("model"), w.get("attack"), w.get("eps"), w["code"], w["message"])
                            for w in warnings])
            db.execute("DELETE FROM results WHERE run_id=?", (run_id,))
            db.executemany(
                "INSERT INTO results(run_id, model, dataset, attack, norm, eps, n, clean_accuracy, accuracy, "
                "ci_low, ci_high, seconds, forward, backward, params, breakdown) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, r.model, r.dataset, r.attack, r.norm, r.eps, r.n, r.clean_accuracy, r.accuracy,
                  r.ci95[0], r.ci95[1], r.seconds, r.forward, r.backward, json.dumps(r.params, sort_keys=True),
                  None if r.breakdown is None else json.dumps(r.breakdown, sort_keys=True))
                 for r in results])
            db.execute("UPDATE runs SET status='complete', finished=? WHERE run_id=?", (_now(), run_id))

    def results(self, run_id: str | None = None, *, with_examples: bool = False, **filters: Any) -> list[ThreatResult]:
        """Stored aggregates, optionally filtered by column (model=..., dataset=..., attack=..., eps=...)."""
        where, args = [], []
        if run_id is not None:
            where.append("run_id=?")
            args.append(run_id)
        for k, v in filters.items():
            if v is None:
                continue
            if k not in {"model", "dataset", "attack", "norm", "eps"}:
                raise ValueError(f"cannot filter results by {k!r}")
            if k == "eps":
                where.append("abs(eps - ?) < 1e-9")
            else:
                where.append(f"{k}=?")
            args.append(v)
        q = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "") + \
            " ORDER BY run_id, rowid"
        out = []
        for r in self._db.execute(q, args):
            per = None
            if with_examples:
                per = self.recompute(r["run_id"], r["model"], r["attack"], r["eps"]).per_example
            out.append(ThreatResult(run_id=r["run_id"], model=r["model"], dataset=r["dataset"], attack=r["attack"],
                                    norm=r["norm"], eps=r["eps"], n=r["n"], clean_accuracy=r["clean_accuracy"],
                                    accuracy=r["accuracy"], ci95=(r["ci_low"], r["ci_high"]), seconds=r["seconds"],
                                    forward=r["forward"], backward=r["backward"], params=json.loads(r["params"]),
                                    breakdown=json.loads(r["breakdown"]) if r["breakdown"] else None,
                                    per_example=per))
        return out

    def recompute(self, run_id: str, model: str, attack: str, eps: float, *, dataset: str = "",
                  norm: str = "", params: dict[str, Any] | None = None) -> ThreatResult:
        """An aggregate rebuilt from the per-example outcomes (the source of truth)."""
        idx, clean, correct = self.threat_outcomes(run_id, model, attack, eps)
        nested = self.outcomes(run_id, model, attack)
        same = nested[0].size == idx.size and np.array_equal(nested[0], idx)
        broken = nested[2] if same else None
        by = self.attribution(run_id, model, attack) if same else None
        if by is not None and all(b is None for b in by):
            by = None
        seconds, fwd, bwd = self.cost(run_id, model, attack, eps)
        if not dataset or not norm:
            row = self._db.execute("SELECT dataset, norm, params FROM results WHERE run_id=? AND model=? AND "
                                   "attack=? AND abs(eps-?)<1e-9", (run_id, model, attack, eps)).fetchone()
            if row is not None:
                dataset, norm = dataset or row[0], norm or row[1]
                params = params if params is not None else json.loads(row[2])
        return summarize(run_id=run_id, model=model, dataset=dataset, attack=attack, norm=norm, eps=eps,
                         index=idx, clean_correct=clean, correct=correct, broken_eps=broken,
                         seconds=seconds, forward=fwd, backward=bwd, params=params, broken_by=by,
                         details=self.batch_details(run_id, model, attack, eps))
