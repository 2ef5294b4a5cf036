"""A static HTML leaderboard: opens from disk (file://), needs no server and no network.

    DIR/index.html           the leaderboard: sortable, searchable table (inline vanilla JS), the plots
    DIR/plots/*.png|svg      accuracy against eps; for corruption results, against severity and a heatmap
    DIR/models/<slug>.html   a page per model: metadata, its leaderboard entry, every complete run of it
    DIR/leaderboard.json     the table's data (the same JSON as `leaderboard --format json`)

Safety: every string from the store (model names, tags, paths, metadata) is HTML-escaped; the table data
is embedded as JSON in <script type="application/json"> with `<`, `>` and `&` written as \\u escapes (so a
`</script>` in a name cannot end the element); links from metadata are kept only when they are http(s);
file names of model pages are derived from a hash, never from the raw name; a Content-Security-Policy
allows only the page's own inline script and style (by hash) and local images.

The page state (sort column and direction, search text) lives in the URL hash, e.g.
index.html#sort=model:asc&q=resnet, so a view can be bookmarked.

Files: the site writes into a new or empty folder, or into the folder of an earlier site, which it knows by
DIR/.robust-bench-site.json, the list of files that build wrote. A rebuild deletes only those files (pages of
models no longer on the board must not linger) and refuses to write over any other file: a user's ./models
or ./plots next to the store is never touched (`SiteError`).
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .board import Board, BoardRow, Filters, Selection, boards_from_selection, model_identity, model_metadata, select
from .protocols import Protocol
from .stats import wilson_interval
from .store import ResultStore, RunRecord
from .tables import boards_json, html_table, interval, pct, sorted_by, title
from .threats import threat_labels, Threat


def e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def json_for_script(data: Any) -> str:
    """JSON safe inside a <script> element and in HTML: no `<`, `>`, `&`, U+2028/2029 left raw."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def model_slug(model: str, dataset: str = "") -> str:
    """A file name for a model's page: a readable part plus a hash (unique, no path characters)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.")[:40] or "model"
    digest = hashlib.sha256(f"{model}\0{dataset}".encode()).hexdigest()[:10]
    return f"{readable}-{digest}"


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem auto;max-width:1400px;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border-bottom:1px solid #ddd;padding:.35rem .6rem;text-align:right;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0}
table.leaderboard th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.model,td.text,th.text{text-align:left}
.ci{color:#777;font-size:.8em}.missing,.partial{color:#a00}
tr:hover td{background:#fafaf0}
#search{font-size:1rem;padding:.3rem .5rem;width:20rem;max-width:90%}
figure{display:inline-block;margin:1rem 1rem 1rem 0;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #eee}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dl.meta dt{font-weight:600}
dl.meta dd{margin:0;overflow-wrap:anywhere}
.note{color:#555;font-size:.9rem}.scroll{overflow-x:auto}
code{background:#f4f4f4;padding:0 .2rem}
"""

# Sorting, search and the image check. Reads nothing but this page's DOM and its JSON block.
_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("board-data").textContent);
  var body = document.body;
  var boards = data.boards || [data];
  body.setAttribute("data-models", String(boards.reduce(function (n, b) { return n + b.rows.length; }, 0)));
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.leaderboard"));
  var search = document.getElementById("search");
  var count = document.getElementById("count");
  var state = {key: "rank", dir: "asc", q: ""};

  function readHash() {
    var h = location.hash.replace(/^#/, "");
    h.split("&").forEach(function (part) {
      var kv = part.split("=");
      if (kv.length < 2) return;
      var v = decodeURIComponent(kv.slice(1).join("="));
      if (kv[0] === "q") state.q = v;
      if (kv[0] === "sort") {
        var s = v.split(":");
        state.key = s[0];
        state.dir = s[1] === "desc" ? "desc" : "asc";
      }
    });
  }
  function writeHash() {
    var h = "sort=" + encodeURIComponent(state.key + ":" + state.dir);
    if (state.q) h += "&q=" + encodeURIComponent(state.q);
    if (history.replaceState) history.replaceState(null, "", "#" + h);
  }
  function heads(table) { return Array.prototype.slice.call(table.tHead.rows[0].cells); }
  function applyTable(table) {
    var col = -1, type = "text", ths = heads(table), tbody = table.tBodies[0];
    ths.forEach(function (th, i) {
      th.removeAttribute("aria-sort");
      if (th.getAttribute("data-key") === state.key) { col = i; type = th.getAttribute("data-type"); }
    });
    var rows = Array.prototype.slice.call(tbody.rows);
    if (col >= 0) {
      ths[col].setAttribute("aria-sort", state.dir === "asc" ? "ascending" : "descending");
      var sign = state.dir === "asc" ? 1 : -1;
      rows.forEach(function (r, i) { r._i = i; });
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
        if (type === "num") {
          if (x === "" && y === "") return a._i - b._i;
          if (x === "") return 1;
          if (y === "") return -1;
          var d = (parseFloat(x) - parseFloat(y)) * sign;
          return d !== 0 ? d : a._i - b._i;
        }
        var c = x.localeCompare(y) * sign;
        return c !== 0 ? c : a._i - b._i;
      });
      rows.forEach(function (r) { tbody.appendChild(r); });
    }
    var q = state.q.toLowerCase(), shown = 0;
    rows.forEach(function (r) {
      var hit = !q || r.textContent.toLowerCase().indexOf(q) >= 0;
      r.hidden = !hit;
      if (hit) shown += 1;
    });
    table.setAttribute("data-visible", String(shown));
    table.setAttribute("data-order", rows.filter(function (r) { return !r.hidden; })
      .map(function (r) { return r.getAttribute("data-rank"); }).join(","));
    return [shown, rows.length];
  }
  function apply() {
    var shown = 0, total = 0;
    tables.forEach(function (t) { var n = applyTable(t); shown += n[0]; total += n[1]; });
    count.textContent = shown + " of " + total + " models";
  }
  tables.forEach(function (table) {
    heads(table).forEach(function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-key");
        if (state.key === key) state.dir = state.dir === "asc" ? "desc" : "asc";
        else { state.key = key; state.dir = th.getAttribute("data-type") === "num" && key !== "rank" && key !== "n" ? "desc" : "asc"; }
        apply(); writeHash();
      });
      th.tabIndex = 0;
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") th.click(); });
    });
  });
  search.addEventListener("input", function () { state.q = search.value; apply(); writeHash(); });
  readHash();
  search.value = state.q;
  apply();

  function checkImages() {
    var imgs = Array.prototype.slice.call(document.images), ok = 0;
    imgs.forEach(function (img) {
      var loaded = img.complete && img.naturalWidth > 0;
      img.setAttribute("data-loaded", loaded ? "yes" : "no");
      if (loaded) ok += 1;
    });
    body.setAttribute("data-images-total", String(imgs.length));
    body.setAttribute("data-images-loaded", String(ok));
  }
  if (document.readyState === "complete") checkImages();
  else window.addEventListener("load", checkImages);
})();
"""


def _page(page_title: str, content: str, *, script: str | None = None, json_block: str | None = None,
          depth: int = 0) -> str:
    csp = ["default-src 'none'", "img-src 'self' file: data:", f"style-src {_csp_hash(_STYLE)}",
           f"script-src {_csp_hash(script) if script else chr(39) + 'none' + chr(39)}", "base-uri 'none'",
           "form-action 'none'"]
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{e("; ".join(csp))}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             '<meta name="referrer" content="no-referrer">',
             f"<title>{e(page_title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>", content]
    if json_block is not None:
        parts.append(f'<script type="application/json" id="board-data">{json_block}</script>')
    if script:
        parts.append(f"<script>{script}</script>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class SiteResult:
    out: Path
    index: Path
    model_pages: tuple[Path, ...]
    plots: tuple[Path, ...]
    rows: int


def _plot_files(sel, boards: Sequence[Board], out: Path, fmt: str, max_models: int) -> list[tuple[Path, str, str]]:
    """Draw what the data allows (panels per data set); returns (path, alt text, caption)."""
    from .curves import NothingToPlot, plot_corruption_heatmap, plot_eps, plot_severity
    ranked = [(r.model, r.dataset) for b in boards for r in b.rows]
    made = []
    jobs = [("eps", plot_eps, "Accuracy against eps per model, with 95% interval bands; eps 0 is clean accuracy."),
            ("severity", plot_severity, "Accuracy against corruption severity, per corruption and on average."),
            ("corruptions", plot_corruption_heatmap, "Accuracy per corruption and severity.")]
    for name, fn, caption in jobs:
        path = out / "plots" / f"{name}.{fmt}"
        try:
            res = fn(sel, ranked, path, max_models=max_models)
        except NothingToPlot:
            continue
        made.append((path, f"{name} plot", caption + (f" Shows {res.note}." if res.note else "")))
    return made


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    except OSError:
        pass
    return None


MARKER = ".robust-bench-site.json"
_OWN = re.compile(r"index\.html|leaderboard\.json|models/[A-Za-z0-9._-]+\.html|plots/(eps|severity|corruptions)\.(png|svg)")
_PLOTS = ("eps", "severity", "corruptions")


class SiteError(Exception):
    """The output folder cannot be written without touching files the site did not write."""


def _previous_files(out: Path) -> set[str]:
    """The files an earlier build recorded in its marker (ours to replace); creates `out` if it is new.
    Refuses a folder that holds other things and carries no marker."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SiteError(f"{out} exists and is not a folder")
    if not out.exists():
        if not out.parent.is_dir():
            raise SiteError(f"folder {out.parent} does not exist (the site creates only its own folder)")
        out.mkdir()
        return set()
    marker = out / MARKER
    if not marker.exists():
        if any(out.iterdir()):
            raise SiteError(f"{out} already holds files that robust-bench site did not write; pass a new or empty "
                            f"folder, or the folder of an earlier site")
        return set()
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, list):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise SiteError(f"{marker} is damaged: cannot tell which files the earlier site wrote; remove the folder "
                        f"or pass another one") from None
    return {f for f in files if isinstance(f, str) and _OWN.fullmatch(f)}


def _claim(out: Path, targets: Sequence[str], previous: set[str]) -> None:
    """Refuse before deleting anything if a file we would write exists and is not ours."""
    for sub in ("models", "plots"):
        d = out / sub
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise SiteError(f"{d} exists and is not a folder the site wrote; move it or pass another folder")
    for t in targets:
        p = out / t
        if (p.exists() or p.is_symlink()) and (t not in previous or p.is_symlink() or not p.is_file()):
            raise SiteError(f"{p} exists and was not written by robust-bench site; move it or pass another folder")


def _write_marker(out: Path, files: Sequence[str]) -> None:
    (out / MARKER).write_text(json.dumps({"written_by": "robust-bench site", "files": sorted(set(files))},
                                         indent=1) + "\n", encoding="utf-8")


def build_site(store: ResultStore, out: str | Path, *, filters: Filters = Filters(),
               protocol: Protocol | None = None, plot_format: str = "png", plots: bool = True,
               max_models: int = 10, site_title: str | None = None) -> SiteResult:
    out = Path(out)
    if plot_format not in ("png", "svg"):
        raise ValueError("plot format must be png or svg")
    previous = _previous_files(out)
    sel = select(store, filters, protocol)
    boards = boards_from_selection(sel, protocol)
    all_rows = [(b, r) for b in boards for r in b.rows]

    def href(r: BoardRow) -> str:
        return f"models/{model_slug(r.model, r.dataset)}.html"
    draw = plots and bool(all_rows)
    from .compression import plot_report, render_report, site_report
    compression = site_report(store)
    targets = ["index.html", "leaderboard.json"] + [href(r) for _, r in all_rows] + \
        ([f"plots/{k}.{plot_format}" for k in _PLOTS] if draw else []) + \
        ([f"plots/compression.{plot_format}"] if draw and compression else [])
    _claim(out, targets, previous)
    _write_marker(out, sorted(previous | set(targets)))   # a build that dies half way still knows its files
    for f in sorted(previous):   # pages of models no longer on the board must not linger
        if (out / f).is_file() and not (out / f).is_symlink():
            (out / f).unlink()
    for sub in ("models", "plots"):
        d = out / sub
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    (out / "models").mkdir(exist_ok=True)
    if draw:
        (out / "plots").mkdir(exist_ok=True)
    data = boards_json(boards)
    made = _plot_files(sel, boards, out, plot_format, max_models) if draw else []
    if compression is not None and draw:
        made.append((plot_report(compression, out / "plots" / f"compression.{plot_format}"),
                     "worst-case accuracy against size", f"Compression: worst-case accuracy against size (base "
                     f"{compression.base}); the dashed line is the Pareto front"))
    first = boards[0]
    multi = len(boards) > 1
    page_title = site_title or (title(first) if not multi else
                                "Robust accuracy, " + ", ".join(d for b in boards for d in b.datasets))
    intro = [f"<h1>{e(page_title)}</h1>",
             f'<p class="note">{len(all_rows)} models' + (f" on {len(boards)} data sets, a table each (ranks "
                                                          "compare models on the same images only)" if multi else "")
             + ". Accuracy % with its 95% Wilson interval in brackets; click a column heading to sort, type to "
             "filter. A row is one set of weights (the short weights hash in the Weights column).</p>"]
    if first.protocol is not None:
        p = first.protocol
        intro.append(f'<p class="note">Protocol <code>{e(p.name)}</code>: {e(p.description)}</p>')
    if first.left_out:
        items = "".join(f"<li><code>{e(x.run_id)}</code>: {e(x.reason)}</li>" for x in first.left_out)
        intro.append(f"<details><summary>{len(first.left_out)} run(s) left out (not following the protocol)"
                     f"</summary><ul>{items}</ul></details>")
    controls = ('<p><label for="search">Search: </label><input id="search" type="search" '
                'placeholder="model, architecture, ..." autocomplete="off"> <span id="count" class="note"></span></p>')
    tables = []
    for i, board in enumerate(boards):
        threats_txt = ", ".join(board.labels[t] for t in board.threats) or "none"
        head = f"<h2>{e(', '.join(board.datasets) or 'no data')}</h2>\n" if multi else ""
        tables.append(f'{head}<p class="note">{len(board.rows)} models; threats: {e(threats_txt)}. Rows are ranked '
                      f'by {sorted_by(board)}.</p>\n<div class="scroll">'
                      + html_table(board, model_href=href, table_id="leaderboard" if i == 0 else f"leaderboard-{i + 1}")
                      + "</div>")
    figs = []
    for path, alt, caption in made:
        size = _image_size(path)
        wh = f' width="{size[0]}" height="{size[1]}"' if size else ""
        rel = path.relative_to(out).as_posix()
        figs.append(f'<figure><img src="{e(rel)}" alt="{e(alt)}"{wh}><figcaption class="note">{e(caption)}'
                    "</figcaption></figure>")
    if compression is not None:
        tables.append("<h2>Compression</h2>\n<div class=\"scroll\">" + render_report(compression, "html") + "</div>")
    content = "\n".join(intro + [controls] + tables + (["<h2>Plots</h2>"] + figs if figs else []) +
                        ['<p class="note">Data: <a href="leaderboard.json">leaderboard.json</a>. Generated by '
                         "robust-bench site.</p>"])
    index = out / "index.html"
    index.write_text(_page(page_title, content, script=_SCRIPT, json_block=json_for_script(data)), encoding="utf-8")
    (out / "leaderboard.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    runs = list(reversed(store.runs(status="complete")))   # newest first
    by_run_model: dict[tuple[str, str], list] = {}
    for r in store.results():
        by_run_model.setdefault((r.run_id, r.model), []).append(r)
    pages = [_model_page(b, r, runs, by_run_model, sel, out / href(r), page_title) for b, r in all_rows]
    if draw and not made and not any((out / "plots").iterdir()):
        (out / "plots").rmdir()
    _write_marker(out, ["index.html", "leaderboard.json"] + [href(r) for _, r in all_rows] +
                  [p.relative_to(out).as_posix() for p, _, _ in made])
    return SiteResult(out, index, tuple(pages), tuple(p for p, _, _ in made), len(all_rows))


def _clean_ci(r) -> tuple[float, float]:
    return wilson_interval(round(r.clean_accuracy * r.n), r.n)


def _model_page(board: Board, row: BoardRow, runs: Sequence[RunRecord], by_run_model: Mapping[tuple[str, str], list],
                sel: Selection, path: Path, site_title: str) -> Path:
    info = row.info or {}
    minfo = info.get("model") if isinstance(info.get("model"), dict) else {}
    meta = model_metadata(info)
    items = [("Model", row.model), ("Stored as", row.label if row.label != row.model else None),
             ("Data set", row.dataset), ("Architecture", meta["arch"]),
             ("Extra training data", meta["extra_data"]), ("Source", minfo.get("source")),
             ("Weights (sha256 of the tensors)", minfo.get("weights_sha256")),
             ("Weights file", minfo.get("weights_path")), ("Weights file (sha256 of the file)", row.file_sha256)]
    dl = ["<dl class=\"meta\">"]
    for k, v in items:
        if v:
            dl.append(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>")
    if meta["paper"]:
        link = (f'<a href="{e(meta["paper_url"])}" rel="noopener noreferrer">{e(meta["paper"])}</a>'
                if meta["paper_url"] else e(meta["paper"]))
        dl.append(f"<dt>Paper</dt><dd>{link}</dd>")
    extra = minfo.get("extra") if isinstance(minfo.get("extra"), dict) else {}
    if extra:
        dl.append(f"<dt>Metadata</dt><dd><pre>{e(json.dumps(extra, indent=1, sort_keys=True, default=str))}</pre></dd>")
    dl.append("</dl>")
    labels = board.labels
    entry = ["<table>", "<thead><tr><th class=\"text\">Threat</th><th>Accuracy %</th><th>95% interval</th>"
             "<th>n</th><th class=\"text\">Run</th></tr></thead><tbody>",
             f"<tr><td class=\"text\">clean</td><td>{pct(row.clean_accuracy)}</td><td>{interval(row.clean_ci95)}</td>"
             f"<td>{row.n}</td><td class=\"text\"><code>{e(row.runs[0])}</code></td></tr>"]
    for t in board.threats:
        c = row.cells.get(t)
        if c is None:
            entry.append(f"<tr><td class=\"text\">{e(labels[t])}</td><td class=\"missing\">—</td><td></td><td></td>"
                         "<td></td></tr>")
        else:
            entry.append(f"<tr><td class=\"text\">{e(labels[t])}</td><td>{pct(c.accuracy)}</td>"
                         f"<td>{interval(c.ci95)}</td><td>{c.n}</td><td class=\"text\"><code>{e(c.run_id)}</code>"
                         "</td></tr>")
    entry.append("</tbody></table>")
    runs_html = []
    for run in runs:
        if model_identity(sel.infos.get((run.run_id, row.label), {})) != row.identity:
            continue   # the same label for other weights: another row's run
        results = [r for r in by_run_model.get((run.run_id, row.label), []) if r.dataset == row.dataset]
        if not results:
            continue
        ts = sorted({Threat(r.attack, r.norm, r.eps) for r in results},
                    key=lambda t: (t.corruption, t.norm, t.attack, t.eps))
        tl = threat_labels(ts)
        by = {Threat(r.attack, r.norm, r.eps): r for r in results}
        used = "on the leaderboard" if run.run_id in row.runs else "superseded by a newer run"
        head = (f"<h3>Run <code>{e(run.run_id)}</code> <span class=\"note\">({e(used)})</span></h3>"
                f"<p class=\"note\">tag: {e(run.tag or '—')}; started {e(run.created)}; finished "
                f"{e(run.finished or '—')}; {results[0].n} examples</p>")
        rows = ["<table><thead><tr><th class=\"text\">Threat</th><th>Accuracy %</th><th>95% interval</th>"
                "<th class=\"text\">Parameters</th></tr></thead><tbody>",
                f"<tr><td class=\"text\">clean</td><td>{pct(results[0].clean_accuracy)}</td>"
                f"<td>{interval(_clean_ci(results[0]))}</td><td></td></tr>"]
        for t in ts:
            r = by[t]
            params = ", ".join(f"{k}={v}" for k, v in sorted(r.params.items()))
            rows.append(f"<tr><td class=\"text\">{e(tl[t])}</td><td>{pct(r.accuracy)}</td><td>{interval(r.ci95)}</td>"
                        f"<td class=\"text\">{e(params)}</td></tr>")
        rows.append("</tbody></table>")
        runs_html.append(head + "\n".join(rows))
    content = "\n".join([f'<p><a href="../index.html">← {e(site_title)}</a></p>', f"<h1>{e(row.model)}</h1>",
                         f"<p class=\"note\">Rank {row.rank} of {len(board.rows)} on {e(row.dataset)}.</p>",
                         "\n".join(dl), "<h2>Leaderboard entry</h2>", "\n".join(entry),
                         f"<h2>Runs ({len(runs_html)})</h2>"] + runs_html)
    path.write_text(_page(f"{row.model} — {site_title}", content), encoding="utf-8")
    return path
