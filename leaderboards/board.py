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

Only the `results` aggregates are read (never the per-example rows), so a board over a large store is fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
        if self.datasets is not None and r.dataset not in self.datasets:
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
class Selection:
    """The winning result per (model, data set, threat), plus what was left out and why."""
    chosen: Mapping[tuple[str, str, Threat], ThreatResult]
    order: Mapping[str, int]                    # run_id -> recency (higher is newer)
    infos: Mapping[tuple[str, str], Mapping[str, Any]]   # (run_id, model) -> models.info
    left_out: tuple[LeftOut, ...]
    unfinished_runs: int


def _threat_of(r: ThreatResult) -> Threat:
    return Threat(r.attack, r.norm, float(r.eps))


def select(store: ResultStore, filters: Filters = Filters(), protocol: Protocol | None = None) -> Selection:
    """The newest complete run per (model, data set, threat), after filters and the protocol."""
    runs = store.runs()
    order = {r.run_id: i for i, r in enumerate(runs) if r.status == "complete"}
    unfinished = sum(1 for r in runs if r.status != "complete")
    results = [r for r in store.results() if r.run_id in order and filters.keep(r)]
    infos = {(m["run_id"], m["model"]): m["info"] for m in store.model_infos()}
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
    for r in results:
        key = (r.model, r.dataset, _threat_of(r))
        old = chosen.get(key)
        if old is None or order[r.run_id] > order[old.run_id]:
            chosen[key] = r
    return Selection(chosen, order, infos, tuple(left_out), unfinished)


def _same_threat(a: Threat, b: Threat) -> bool:
    return a.attack == b.attack and (not b.norm or a.norm == b.norm) and same_eps(a.eps, b.eps)


def _canonical(r: ThreatResult, wanted: Iterable[Threat]) -> ThreatResult:
    from dataclasses import replace
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
    sel = select(store, filters, protocol)
    return board_from_selection(sel, protocol)


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
        cells = {t: Cell(t, r.run_id, r.n, r.accuracy, tuple(r.ci95)) for t, r in cells_r.items() if t in threats}
        if not cells:
            continue
        wc = [c.accuracy for t, c in cells.items() if t.attack == WORST_CASE]
        worst = min(wc) if wc else min(c.accuracy for c in cells.values())
        mean = sum(c.accuracy for c in cells.values()) / len(cells)
        corr_only = all(t.corruption for t in threats)
        info = sel.infos.get((newest.run_id, model), {})
        runs = tuple(sorted({c.run_id for c in cells.values()}, key=lambda rid: -sel.order[rid]))
        k = round(newest.clean_accuracy * newest.n)
        rows.append(BoardRow(rank=0, model=model, dataset=dataset, n=newest.n,
                             clean_accuracy=newest.clean_accuracy, clean_ci95=wilson_interval(k, newest.n),
                             cells=cells, worst=worst, complete=len(cells) == len(threats), mean=mean,
                             score=mean if corr_only else worst, runs=runs,
                             info=info, **model_metadata(info)))
    rows.sort(key=lambda r: (not r.complete, -(r.score if r.score is not None else -1.0)))
    from dataclasses import replace
    ranked = tuple(replace(r, rank=i + 1) for i, r in enumerate(rows))
    return Board(threats, ranked, protocol, sel.left_out, sel.unfinished_runs)


def parse_filters(datasets: Sequence[str] | None = None, attacks: Sequence[str] | None = None,
                  eps: Sequence[float] | None = None, norms: Sequence[str] | None = None,
                  models: Sequence[str] | None = None) -> Filters:
    t = lambda v: tuple(v) if v else None  # noqa: E731
    return Filters(t(datasets), t(attacks), t(eps), t(norms), t(models))
