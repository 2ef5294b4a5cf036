"""Which stored results a leaderboard shows, and the leaderboard itself (rows of models, columns of threats).

Which run wins
--------------
Only complete runs count. For each (model, data set, threat) the newest complete run that evaluated it
wins: newest by the run's creation time (the moment the command was first started; a resumed run keeps
its time), ties broken by insertion order. Re-running an evaluation therefore replaces the older numbers
threat by threat, while threats only an older run measured stay on the board. A row's clean accuracy,
example count and metadata (architecture, extra data, paper) come from the newest run among those
that supplied its cells; `BoardRow.runs` lists every run that did.

Order
-----
Rows are sorted by their worst case, best first: the accuracy under a stored `worst-case` attack when the
row has one, otherwise the lowest accuracy across the threats shown. A board of corruptions only (attacks
`corruption:NAME`, eps = severity) is sorted by the mean accuracy over its corruptions and severities
instead, the usual corruption-robustness summary (the worst case there is one corruption at severity 5).
Rows missing some shown threat come after the complete rows (their summary is over fewer threats, so it
would flatter them). Ties keep the order of (model, data set) names.

Which rows
----------
A row is one model on one data set: results are grouped by (model label, model identity, data set), where
the identity is the digest of what makes two evaluations the same function (the weights' sha256, the
normalization and preprocessing, the architecture; `model_identity`). Two checkpoints evaluated under one
label (`arch:resnet20` for an epoch-50 and an epoch-100 file) are two rows, never one row with cells from
each: the label of each gets a visible suffix, the run's tag where the tags tell them apart, else the
short weights hash (`arch:resnet20 #1a2b3c4d`). Results stored without model metadata group by label.

Data sets
---------
Ranks compare models on one data set only: `build_boards` makes one board per data set (the CLI's
default), `build_board` one over everything selected (with a data set column when it mixes several).

Only the `results` aggregates are read (never the per-example rows), so a board over a large store is fast.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from .protocols import Protocol
from .records import ThreatResult
from .stats import wilson_interval
from .store import ResultStore
from .threats import WORST_CASE, Threat, same_eps, threat_labels


@dataclass(frozen=True)
class Filters:
    """Keep only these data sets / attacks / eps / norms / models (None: all)."""
    datasets: tuple[str, ...] | None = None
    attacks: tuple[str, ...] | None = None
    eps: tuple[float, ...] | None = None
    norms: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None

    def keep(self, r: ThreatResult) -> bool:
        if self.datasets is not None and not any(dataset_matches(r.dataset, d) for d in self.datasets):
            return False
        if self.attacks is not None and r.attack not in self.attacks:
            return False
        if self.eps is not None and not any(same_eps(r.eps, e) for e in self.eps):
            return False
        if self.norms is not None and r.norm not in self.norms:
            return False
        if self.models is not None and r.model not in self.models:
            return False
        return True


DIGEST_SEP = "#"   # `test#1f2e3d4c`: a data set named by the user (or its folder) and its content digest


def dataset_matches(stored: str, wanted: str) -> bool:
    """A filter names a data set by its full stored name or by the part before its content digest."""
    return stored == wanted or (DIGEST_SEP in stored and stored.rsplit(DIGEST_SEP, 1)[0] == wanted)


def _model_fields(info: Mapping[str, Any]) -> Mapping[str, Any]:
    m = info.get("model") if isinstance(info, Mapping) else None
    return m if isinstance(m, Mapping) else {}


def model_identity(info: Mapping[str, Any]) -> str | None:
    """A digest of what makes two stored models the same function: the weights' sha256 with the
    normalization, preprocessing and architecture they ran under (the same weights without their
    --mean/--std are another model). None when the record has no weights digest."""
    m = _model_fields(info)
    weights = m.get("weights_sha256")
    if not weights:
        return None
    facts = {"weights": weights, "mean": m.get("mean"), "std": m.get("std"), "preprocess": m.get("preprocess"),
             "arch": m.get("arch"), "source": m.get("source")}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(info: Mapping[str, Any]) -> str | None:
    """The sha256 of the file the weights were read from, where the model source recorded it."""
    extra = _model_fields(info).get("extra")
    v = extra.get("file_sha256") if isinstance(extra, Mapping) else None
    return v if isinstance(v, str) and v else None


@dataclass(frozen=True)
class Cell:
    threat: Threat
    run_id: str
    n: int
    accuracy: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class LeftOut:
    run_id: str
    model: str | None
    reason: str


@dataclass(frozen=True)
class BoardRow:
    rank: int
    model: str
    dataset: str
    n: int
    clean_accuracy: float
    clean_ci95: tuple[float, float]
    cells: Mapping[Threat, Cell]
    worst: float | None
    complete: bool
    mean: float | None
    score: float | None                          # what rows are sorted by: worst, or mean for corruptions
    runs: tuple[str, ...]
    arch: str | None = None
    extra_data: str | None = None
    paper: str | None = None
    paper_url: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""                              # the model's stored name (`model` may carry a suffix)
    identity: str | None = None                  # `model_identity`: weights + normalization digest
    weights_sha256: str | None = None
    file_sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.model)


@dataclass(frozen=True)
class Board:
    threats: tuple[Threat, ...]
    rows: tuple[BoardRow, ...]
    protocol: Protocol | None = None
    left_out: tuple[LeftOut, ...] = ()
    unfinished_runs: int = 0

    @property
    def corruptions_only(self) -> bool:
        return bool(self.threats) and all(t.corruption for t in self.threats)

    @property
    def score_title(self) -> str:
        return "Mean over corruptions" if self.corruptions_only else "Worst case"

    @property
    def labels(self) -> dict[Threat, str]:
        return threat_labels(list(self.threats))

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(sorted({r.dataset for r in self.rows}))

    def has(self, column: str) -> bool:
        """Whether any row has this metadata column (arch, extra_data, paper)."""
        return any(getattr(r, column) for r in self.rows)


@dataclass(frozen=True)
class RowId:
    """Who a board row is: the stored label, the model identity and how the row is named."""
    name: str                                    # the label, or label + suffix when the label is shared
    label: str
    identity: str | None
    weights_sha256: str | None = None
    file_sha256: str | None = None


@dataclass(frozen=True)
class Selection:
    """The winning result per (row name, data set, threat), plus what was left out and why. The row name
    is the model's label, with a suffix where one label stands for several models on a data set."""
    chosen: Mapping[tuple[str, str, Threat], ThreatResult]
    order: Mapping[str, int]                    # run_id -> recency (higher is newer)
    infos: Mapping[tuple[str, str], Mapping[str, Any]]   # (run_id, model) -> models.info
    left_out: tuple[LeftOut, ...]
    unfinished_runs: int
    rows: Mapping[tuple[str, str], RowId] = field(default_factory=dict)   # (row name, data set) -> who

    def row(self, name: str, dataset: str) -> RowId:
        return self.rows.get((name, dataset)) or RowId(name, name, None)

    def for_dataset(self, dataset: str) -> "Selection":
        """The part of the selection on one data set."""
        return replace(self, chosen={k: v for k, v in self.chosen.items() if k[1] == dataset},
                       rows={k: v for k, v in self.rows.items() if k[1] == dataset})


def _threat_of(r: ThreatResult) -> Threat:
    return Threat(r.attack, r.norm, float(r.eps))


def _row_names(results: Sequence[ThreatResult], infos: Mapping[tuple[str, str], Mapping[str, Any]],
               order: Mapping[str, int], tags: Mapping[str, str | None]) -> dict[tuple[str, str, str], RowId]:
    """(run_id, label, data set) -> RowId. A label that stands for one model on a data set keeps its name;
    one shared by several models gets a suffix on each: the tag of each model's newest run where those
    tags tell them apart, else the shortest prefix of the weights (or identity) digest that does."""
    members: dict[tuple[str, str], dict[str | None, list[str]]] = {}
    for r in results:
        ident = model_identity(infos.get((r.run_id, r.model), {}))
        runs = members.setdefault((r.model, r.dataset), {}).setdefault(ident, [])
        if r.run_id not in runs:
            runs.append(r.run_id)
    out: dict[tuple[str, str, str], RowId] = {}
    for (label, dataset), groups in members.items():
        names: dict[str | None, str] = {ident: label for ident in groups}
        newest = {ident: max(runs, key=lambda rid: order.get(rid, -1)) for ident, runs in groups.items()}
        weights = {ident: _model_fields(infos.get((newest[ident], label), {})).get("weights_sha256")
                   for ident in groups}
        if len(groups) > 1:
            by_tag = {ident: tags.get(newest[ident]) for ident in groups}
            if all(by_tag.values()) and len(set(by_tag.values())) == len(groups):
                names = {ident: f"{label} [{by_tag[ident]}]" for ident in groups}
            else:
                digests = {ident: (weights[ident] if len({weights[i] for i in groups}) == len(groups)
                                   else ident) or "" for ident in groups}
                k = 8
                while k < 64 and len({d[:k] for d in digests.values()}) < len(groups):
                    k += 4
                names = {ident: f"{label} #{digests[ident][:k]}" if digests[ident] else f"{label} (no weights record)"
                         for ident in groups}
        for ident, runs in groups.items():
            row = RowId(names[ident], label, ident, weights[ident] or None,
                        file_sha256(infos.get((newest[ident], label), {})))
            for rid in runs:
                out[(rid, label, dataset)] = row
    return out


def select(store: ResultStore, filters: Filters = Filters(), protocol: Protocol | None = None) -> Selection:
    """The newest complete run per (model, data set, threat), after filters and the protocol."""
    runs = store.runs()
    order = {r.run_id: i for i, r in enumerate(runs) if r.status == "complete"}
    unfinished = sum(1 for r in runs if r.status != "complete")
    # rows are named before any filter, so a row's name does not depend on what else is asked for
    complete = [r for r in store.results() if r.run_id in order]
    infos = {(m["run_id"], m["model"]): m["info"] for m in store.model_infos()}
    names = _row_names(complete, infos, order, {r.run_id: r.tag for r in runs})
    results = [r for r in complete if replace(filters, models=None).keep(r)]
    if filters.models is not None:
        results = [r for r in results if r.model in filters.models or
                   names[(r.run_id, r.model, r.dataset)].name in filters.models]
    left_out: list[LeftOut] = []
    if protocol is not None:
        wanted = set(protocol.threats)
        specs = {r.run_id: r.spec for r in runs}
        candidates = sorted({(r.run_id, r.model) for r in results}, key=lambda k: (order[k[0]], k[1]))
        params: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for r in results:
            params.setdefault((r.run_id, r.model), {})[r.attack] = r.params
        ok: set[tuple[str, str]] = set()
        rows_by_run: dict[str, dict[str, dict[str, Any]]] = {}
        for run_id, model in candidates:
            if run_id not in rows_by_run:
                rows_by_run[run_id] = {m["model"]: m for m in store.model_rows(run_id)}
            row = rows_by_run[run_id].get(model)
            if row is None:
                left_out.append(LeftOut(run_id, model, f"{model}: no model record"))
                continue
            good, reason = protocol.matches(specs[run_id], [row], attack_params=params[(run_id, model)])
            if good:
                ok.add((run_id, model))
            else:
                left_out.append(LeftOut(run_id, model, reason))
        results = [r for r in results if (r.run_id, r.model) in ok and
                   any(_same_threat(_threat_of(r), t) for t in wanted)]
        # store the protocol's own eps/norm spelling, so columns line up across runs
        results = [_canonical(r, wanted) for r in results]
    chosen: dict[tuple[str, str, Threat], ThreatResult] = {}
    rows: dict[tuple[str, str], RowId] = {}
    for r in results:
        row = names[(r.run_id, r.model, r.dataset)]
        key = (row.name, r.dataset, _threat_of(r))
        rows[(row.name, r.dataset)] = row
        old = chosen.get(key)
        if old is None or order[r.run_id] > order[old.run_id]:
            chosen[key] = r
    return Selection(chosen, order, infos, tuple(left_out), unfinished, rows)


def _same_threat(a: Threat, b: Threat) -> bool:
    return a.attack == b.attack and (not b.norm or a.norm == b.norm) and same_eps(a.eps, b.eps)


def _canonical(r: ThreatResult, wanted: Iterable[Threat]) -> ThreatResult:
    for t in wanted:
        if _same_threat(_threat_of(r), t):
            return replace(r, eps=t.eps)
    return r


def _threat_sort_key(t: Threat) -> tuple:
    return (t.corruption, t.norm, t.attack == WORST_CASE, t.attack, t.eps)


def _text(v: Any) -> str | None:
    if v is None or v == "" or v == {} or v == []:
        return None
    if isinstance(v, bool):
        return "yes" if v else "no"
    return " ".join(str(v).split())


def model_metadata(info: Mapping[str, Any]) -> dict[str, str | None]:
    """RobustBench-style columns from a models.info record: architecture, extra training data, paper."""
    model = info.get("model") if isinstance(info.get("model"), Mapping) else {}
    extra = model.get("extra") if isinstance(model.get("extra"), Mapping) else {}
    arch = _text(model.get("arch") or extra.get("architecture"))
    data = extra.get("extra_data", extra.get("additional_data"))
    paper_raw = extra.get("paper") or extra.get("link")
    paper = paper_url = None
    if isinstance(paper_raw, Mapping):
        paper_url = paper_raw.get("url") or paper_raw.get("link")
        paper = _text(paper_raw.get("title") or paper_raw.get("name") or paper_url)
    elif paper_raw:
        paper = _text(paper_raw)
        paper_url = paper
    if not (isinstance(paper_url, str) and paper_url.lower().startswith(("https://", "http://"))
            and not any(c.isspace() for c in paper_url)):
        paper_url = None  # only web links become links (never javascript: or file: URLs)
    elif paper == paper_url:  # a bare link: show it without the scheme
        paper = paper_url.split("://", 1)[1].rstrip("/")
    return {"arch": arch, "extra_data": _text(data), "paper": paper, "paper_url": paper_url}


def build_board(store: ResultStore, filters: Filters = Filters(), protocol: Protocol | None = None) -> Board:
    """One board over every selected result (ranks across data sets if it mixes several; see build_boards)."""
    sel = select(store, filters, protocol)
    return board_from_selection(sel, protocol)


def build_boards(store: ResultStore, filters: Filters = Filters(),
                 protocol: Protocol | None = None) -> tuple[Board, ...]:
    """One board per data set, in name order, each ranked on its own: a model is never ranked against a
    model measured on other images. No results: one empty board."""
    return boards_from_selection(select(store, filters, protocol), protocol)


def boards_from_selection(sel: Selection, protocol: Protocol | None = None) -> tuple[Board, ...]:
    datasets = sorted({d for _, d, _ in sel.chosen})
    if not datasets:
        return (board_from_selection(sel, protocol),)
    return tuple(board_from_selection(sel.for_dataset(d), protocol) for d in datasets)


def board_from_selection(sel: Selection, protocol: Protocol | None = None) -> Board:
    by_row: dict[tuple[str, str], dict[Threat, ThreatResult]] = {}
    for (model, dataset, threat), r in sel.chosen.items():
        by_row.setdefault((model, dataset), {})[threat] = r
    if protocol is not None:
        # the protocol's order (attacks as listed, eps ascending); results were already limited to its
        # threats, with its eps spelling; corruption protocols name no norm, so take the stored one
        present = {t for cells in by_row.values() for t in cells}
        names = [a.name for a in protocol.attacks]
        threats = tuple(sorted(present, key=lambda t: (names.index(t.attack), t.eps, t.norm)))
    else:
        threats = tuple(sorted({t for cells in by_row.values() for t in cells}, key=_threat_sort_key))
    rows = []
    for (model, dataset) in sorted(by_row):
        cells_r = by_row[(model, dataset)]
        newest = max(cells_r.values(), key=lambda r: sel.order[r.run_id])
        who = sel.row(model, dataset)
        cells = {t: Cell(t, r.run_id, r.n, r.accuracy, tuple(r.ci95)) for t, r in cells_r.items() if t in threats}
        if not cells:
            continue
        wc = [c.accuracy for t, c in cells.items() if t.attack == WORST_CASE]
        worst = min(wc) if wc else min(c.accuracy for c in cells.values())
        mean = sum(c.accuracy for c in cells.values()) / len(cells)
        corr_only = all(t.corruption for t in threats)
        info = sel.infos.get((newest.run_id, newest.model), {})
        runs = tuple(sorted({c.run_id for c in cells.values()}, key=lambda rid: -sel.order[rid]))
        k = round(newest.clean_accuracy * newest.n)
        rows.append(BoardRow(rank=0, model=model, dataset=dataset, n=newest.n,
                             clean_accuracy=newest.clean_accuracy, clean_ci95=wilson_interval(k, newest.n),
                             cells=cells, worst=worst, complete=len(cells) == len(threats), mean=mean,
                             score=mean if corr_only else worst, runs=runs,
                             info=info, label=who.label, identity=who.identity, weights_sha256=who.weights_sha256,
                             file_sha256=who.file_sha256, **model_metadata(info)))
    rows.sort(key=lambda r: (not r.complete, -(r.score if r.score is not None else -1.0)))
    ranked = tuple(replace(r, rank=i + 1) for i, r in enumerate(rows))
    return Board(threats, ranked, protocol, sel.left_out, sel.unfinished_runs)


def parse_filters(datasets: Sequence[str] | None = None, attacks: Sequence[str] | None = None,
                  eps: Sequence[float] | None = None, norms: Sequence[str] | None = None,
                  models: Sequence[str] | None = None) -> Filters:
    t = lambda v: tuple(v) if v else None  # noqa: E731
    return Filters(t(datasets), t(attacks), t(eps), t(norms), t(models))
