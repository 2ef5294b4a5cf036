"""A leaderboard as Markdown, CSV, LaTeX, HTML or JSON.

Accuracies print as percentages with one decimal and the 95% Wilson interval in brackets; JSON keeps
fractions in [0, 1] like the run exports. Every output is deterministic for a given store (no dates).
Text from the store (model names, architectures, links) is escaped for the format it lands in.

Several data sets: `render_boards` writes one table per data set (Markdown, LaTeX and HTML one after the
other; JSON `{"boards": [...]}`); CSV holds one table, so it needs one data set (`NeedsOneDataset`).
"""
from __future__ import annotations

import csv
import html
import io
import json
import re
from typing import Any, Callable, Sequence

from .board import Board, BoardRow
from .threats import Threat

FORMATS = ("md", "csv", "latex", "html", "json")
SHORT_HASH = 8


class NeedsOneDataset(ValueError):
    """A format that holds one table (CSV) was asked for boards of several data sets."""


def short_hash(digest: str | None) -> str:
    return digest[:SHORT_HASH] if digest else ""


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def interval(ci: tuple[float, float]) -> str:
    return f"[{pct(ci[0])}, {pct(ci[1])}]"


def _columns(board: Board) -> list[str]:
    """Optional columns shown only when some row has them."""
    cols = []
    if len(board.datasets) > 1:
        cols.append("dataset")
    cols += [c for c in ("arch", "extra_data", "paper") if board.has(c)]
    if board.has("weights_sha256"):
        cols.append("weights")
    return cols


_TITLES = {"dataset": "Data set", "arch": "Architecture", "extra_data": "Extra data", "paper": "Paper",
           "weights": "Weights"}


def _meta_text(r: BoardRow, c: str) -> str:
    if c == "weights":
        return short_hash(r.weights_sha256)
    return getattr(r, c) or ""


def title(board: Board) -> str:
    if board.protocol is not None:
        return board.protocol.title or board.protocol.name
    ds = ", ".join(board.datasets) or "no data"
    return f"Robust accuracy, {ds}"


def sorted_by(board: Board) -> str:
    if board.corruptions_only:
        return "the mean accuracy over the corruptions and severities shown"
    return "the worst case over the threats shown"


def _cell_text(row: BoardRow, t: Threat) -> str | None:
    c = row.cells.get(t)
    return None if c is None else f"{pct(c.accuracy)} {interval(c.ci95)}"


# ---- Markdown ----

_MD_SPECIAL = set("\\`*_[]<>|&#")


def md_escape(text: str) -> str:
    """Backslash-escape what Markdown (and GitHub's HTML pass-through) would interpret; one line."""
    text = " ".join(str(text).split())
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def to_markdown(board: Board) -> str:
    labels = board.labels
    cols = _columns(board)
    head = ["Rank", "Model"] + [_TITLES[c] for c in cols] + ["n", "Clean %"] + \
        [f"{md_escape(labels[t])} %" for t in board.threats] + [f"{board.score_title} %"]
    align = ["---:", ":---"] + [":---"] * len(cols) + ["---:"] * (2 + len(board.threats) + 1)
    lines = [f"### {md_escape(title(board))}", "",
             f"Accuracy % [95% Wilson interval]; rows sorted by {sorted_by(board)}.", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for r in board.rows:
        meta = []
        for c in cols:
            if c == "paper" and r.paper_url:
                meta.append(f"[{md_escape(r.paper or 'paper')}](<{r.paper_url.replace('>', '%3E')}>)")
            else:
                meta.append(md_escape(_meta_text(r, c)))
        cells = [_cell_text(r, t) or "—" for t in board.threats]
        worst = pct(r.score) + ("" if r.complete else " (partial)") if r.score is not None else "—"
        lines.append("| " + " | ".join([str(r.rank), md_escape(r.model)] + meta +
                                       [str(r.n), f"{pct(r.clean_accuracy)} {interval(r.clean_ci95)}"] +
                                       cells + [worst]) + " |")
    if not board.rows:
        lines.append("| " + " | ".join(["" for _ in head]) + " |")
    return "\n".join(lines) + "\n"


# ---- CSV ----

def to_csv(board: Board) -> str:
    """One row per model; accuracy and interval bounds in separate numeric columns (percent)."""
    labels = board.labels
    head = ["rank", "model", "dataset", "arch", "extra_data", "paper", "weights_sha256", "n", "clean",
            "clean_ci_low", "clean_ci_high"]
    for t in board.threats:
        head += [labels[t], f"{labels[t]} ci_low", f"{labels[t]} ci_high"]
    head += ["worst_case", "mean", "complete", "runs"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([_csv_safe(v) for v in head])
    f = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    for r in board.rows:
        row = [r.rank, r.model, r.dataset, r.arch or "", r.extra_data or "", r.paper_url or r.paper or "",
               r.weights_sha256 or "", r.n, f(r.clean_accuracy), f(r.clean_ci95[0]), f(r.clean_ci95[1])]
        for t in board.threats:
            c = r.cells.get(t)
            row += [f(c.accuracy), f(c.ci95[0]), f(c.ci95[1])] if c else ["", "", ""]
        row += [f(r.worst), f(r.mean), "yes" if r.complete else "no", " ".join(r.runs)]
        w.writerow([_csv_safe(v) for v in row])
    return buf.getvalue()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")   # OWASP's CSV injection triggers, plus LF
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _csv_safe(v: Any) -> Any:
    """Neutralise spreadsheet formulas in text cells (a leading =, +, -, @, tab, CR or LF) with a quote;
    plain decimal numbers stay as they are (float() would also pass '-inf', '\t5' or '1_0'). A lone CR
    becomes LF: the writer quotes fields holding its line terminator (LF) but not CR, and an unquoted CR
    would split the row."""
    if not isinstance(v, str):
        return v
    v = v.replace("\r\n", "\n").replace("\r", "\n")
    if v[:1] in _FORMULA_START and not _NUMBER.fullmatch(v):
        return "'" + v
    return v


# ---- LaTeX ----

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "|": r"\textbar{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in " ".join(str(text).split()))


def to_latex(board: Board) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}; paper links need hyperref)."""
    labels = board.labels
    cols = _columns(board)
    head = ["\\#", "Model"] + [_TITLES[c] for c in cols] + ["Clean"] + \
        [tex_escape(labels[t]) for t in board.threats] + [board.score_title]
    spec = "r" + "l" * (1 + len(cols)) + "r" * (len(board.threats) + 2)
    out = [f"% {tex_escape(title(board))}: accuracy % [95% Wilson interval]",
           f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
    for r in board.rows:
        meta = []
        for c in cols:
            if c == "paper" and r.paper_url:
                url = r.paper_url.replace("\\", "").replace("%", "\\%").replace("#", "\\#").replace("}", "%7D") \
                    .replace("{", "%7B")
                meta.append(f"\\href{{{url}}}{{{tex_escape(r.paper or 'paper')}}}")
            else:
                meta.append(tex_escape(_meta_text(r, c)))

        def cell(acc: float | None, ci: tuple[float, float] | None) -> str:
            if acc is None or ci is None:
                return "--"
            return f"{pct(acc)} {{\\scriptsize [{pct(ci[0])}, {pct(ci[1])}]}}"
        cells = [cell(r.cells[t].accuracy, r.cells[t].ci95) if t in r.cells else "--" for t in board.threats]
        worst = "--" if r.score is None else pct(r.score) + ("" if r.complete else "$^*$")
        out.append(" & ".join([str(r.rank), tex_escape(r.model)] + meta +
                              [cell(r.clean_accuracy, r.clean_ci95)] + cells + [worst]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


# ---- HTML ----

def html_table(board: Board, *, model_href: Callable[[BoardRow], str] | None = None,
               table_id: str = "leaderboard") -> str:
    """A <table>; each cell carries data-sort (a number or text) for client-side sorting."""
    e = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    labels = board.labels
    cols = _columns(board)
    head = [("rank", "#", "num"), ("model", "Model", "text")] + [(c, _TITLES[c], "text") for c in cols] + \
        [("n", "n", "num"), ("clean", "Clean %", "num")] + \
        [(f"t{i}", f"{labels[t]} %", "num") for i, t in enumerate(board.threats)] + [("worst", f"{board.score_title} %", "num")]
    out = [f'<table id="{e(table_id)}" class="leaderboard">', "<thead><tr>"]
    out += [f'<th data-key="{e(k)}" data-type="{typ}" scope="col"{" class=text" if typ == "text" else ""}>{e(text)}</th>'
            for k, text, typ in head]
    out += ["</tr></thead>", "<tbody>"]

    def num(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.4f}"
    for r in board.rows:
        tds = [f'<td data-sort="{r.rank}">{r.rank}</td>']
        name = e(r.model)
        if model_href is not None:
            name = f'<a href="{e(model_href(r))}">{name}</a>'
        tds.append(f'<td data-sort="{e(r.model)}" class="model">{name}</td>')
        for c in cols:
            if c == "paper" and r.paper_url:
                tds.append(f'<td data-sort="{e(r.paper or "")}" class="text"><a href="{e(r.paper_url)}" '
                           f'rel="noopener noreferrer">{e(r.paper or "paper")}</a></td>')
            else:
                text = _meta_text(r, c)
                tip = f' title="sha256 {e(r.weights_sha256)}"' if c == "weights" and r.weights_sha256 else ""
                tds.append(f'<td data-sort="{e(text)}" class="text"{tip}>{e(text)}</td>')
        tds.append(f'<td data-sort="{r.n}">{r.n}</td>')
        tds.append(f'<td data-sort="{num(r.clean_accuracy)}">{pct(r.clean_accuracy)} '
                   f'<span class="ci">{interval(r.clean_ci95)}</span></td>')
        for t in board.threats:
            c = r.cells.get(t)
            if c is None:
                tds.append('<td data-sort="" class="missing">—</td>')
            else:
                tds.append(f'<td data-sort="{num(c.accuracy)}">{pct(c.accuracy)} '
                           f'<span class="ci">{interval(c.ci95)}</span></td>')
        tds.append(f'<td data-sort="{num(r.score)}">{"—" if r.score is None else pct(r.score)}'
                   f'{"" if r.complete else " <span class=partial>(partial)</span>"}</td>')
        out.append(f'<tr data-rank="{r.rank}" data-model="{e(r.model)}">' + "".join(tds) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out) + "\n"


def to_html(board: Board) -> str:
    """A small standalone page holding the table (for the full site, see `leaderboards.site`)."""
    return _html_page([board])


def _html_page(boards: Sequence[Board]) -> str:
    t = html.escape(title(boards[0]) if len(boards) == 1 else "Robust accuracy, " +
                    ", ".join(d for b in boards for d in b.datasets))
    body = []
    for i, board in enumerate(boards):
        if len(boards) > 1:
            body.append(f"<h2>{html.escape(title(board))}</h2>\n")
        body.append(f"<p>Accuracy % [95% Wilson interval]; sorted by {sorted_by(board)}.</p>\n")
        body.append(html_table(board, table_id="leaderboard" if i == 0 else f"leaderboard-{i + 1}"))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{t}</title>\n<style>table{{border-collapse:collapse;font-family:sans-serif}}"
            "th,td{border:1px solid #ccc;padding:4px 8px}td{text-align:right}td.model{text-align:left}"
            ".ci{color:#666;font-size:85%}</style>\n</head>\n<body>\n"
            f"<h1>{t}</h1>\n" + "".join(body) + "</body>\n</html>\n")


# ---- JSON ----

def board_json(board: Board) -> dict[str, Any]:
    labels = board.labels
    return {
        "dataset": board.datasets[0] if len(board.datasets) == 1 else None,
        "protocol": board.protocol.to_json() if board.protocol else None,
        "threats": [{"label": labels[t], "attack": t.attack, "norm": t.norm, "eps": t.eps} for t in board.threats],
        "rows": [{"rank": r.rank, "model": r.model, "label": r.label, "dataset": r.dataset, "arch": r.arch,
                  "weights_sha256": r.weights_sha256, "file_sha256": r.file_sha256,
                  "extra_data": r.extra_data, "paper": r.paper, "paper_url": r.paper_url, "n": r.n,
                  "clean_accuracy": r.clean_accuracy, "clean_ci95": list(r.clean_ci95),
                  "threats": {labels[t]: {"accuracy": c.accuracy, "ci95": list(c.ci95), "n": c.n,
                                          "run_id": c.run_id}
                              for t in board.threats if (c := r.cells.get(t)) is not None},
                  "worst_case": r.worst, "mean": r.mean, "complete": r.complete, "runs": list(r.runs)} for r in board.rows],
        "left_out": [{"run_id": x.run_id, "model": x.model, "reason": x.reason} for x in board.left_out],
    }


def to_json(board: Board) -> str:
    return json.dumps(board_json(board), indent=1, sort_keys=True) + "\n"


def boards_json(boards: Sequence[Board]) -> dict[str, Any]:
    """One board: its document (as `board_json`); several: {"boards": [one per data set], "left_out"}."""
    if len(boards) == 1:
        return board_json(boards[0])
    docs = [board_json(b) for b in boards]
    for d in docs:
        d.pop("left_out")
    return {"boards": docs, "datasets": [d["dataset"] for d in docs],
            "left_out": [{"run_id": x.run_id, "model": x.model, "reason": x.reason} for x in boards[0].left_out]}


def render(board: Board, fmt: str) -> str:
    try:
        fn = {"md": to_markdown, "csv": to_csv, "latex": to_latex, "html": to_html, "json": to_json}[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}") from None
    return fn(board)


def render_boards(boards: Sequence[Board], fmt: str) -> str:
    """Boards of several data sets, a table each (see the module docstring)."""
    boards = list(boards)
    if len(boards) == 1:
        return render(boards[0], fmt)
    if fmt == "csv":
        names = ", ".join(d for b in boards for d in b.datasets)
        raise NeedsOneDataset(f"a CSV file holds one table and the results cover {len(boards)} data sets "
                              f"({names}): pass --dataset NAME for one of them")
    if fmt == "json":
        return json.dumps(boards_json(boards), indent=1, sort_keys=True) + "\n"
    if fmt == "html":
        return _html_page(boards)
    return "\n".join(render(b, fmt) for b in boards)
