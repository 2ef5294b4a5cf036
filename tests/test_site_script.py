"""The site's page script (sort, search, counts) run under node on a minimal DOM built from the generated
page, for machines without Chromium (tests/test_site.py renders it in a real browser where there is one).
A site of two data sets: each table is sorted within itself, the search filters both, the counts add up."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from leaderboards import ResultStore

from .test_leaderboards import add_run

SHIM = r"""
function El(tag, attrs) {
  this.tagName = tag; this.attrs = Object.assign({}, attrs || {}); this.children = []; this.hidden = false;
  this.listeners = {}; this.textContent = "";
}
El.prototype.getAttribute = function (k) { return k in this.attrs ? this.attrs[k] : null; };
El.prototype.setAttribute = function (k, v) { this.attrs[k] = String(v); };
El.prototype.removeAttribute = function (k) { delete this.attrs[k]; };
El.prototype.addEventListener = function (k, f) { this.listeners[k] = f; };
El.prototype.click = function () { if (this.listeners.click) this.listeners.click(); };
function Table(spec) {
  El.call(this, "table", {id: spec.id, "class": "leaderboard"});
  this.tHead = {rows: [{cells: spec.heads.map(function (h) { return new El("th", h); })}]};
  var body = {rows: []};
  body.appendChild = function (r) { var i = body.rows.indexOf(r); if (i >= 0) body.rows.splice(i, 1); body.rows.push(r); };
  spec.rows.forEach(function (r) {
    var tr = new El("tr", {"data-rank": r.rank, "data-model": r.model});
    tr.cells = r.sorts.map(function (s) { return new El("td", {"data-sort": s}); });
    tr.textContent = r.text;
    body.rows.push(tr);
  });
  this.tBodies = [body];
}
Table.prototype = Object.create(El.prototype);
var spec = JSON.parse(process.argv[2]);
var tables = spec.tables.map(function (t) { return new Table(t); });
var search = new El("input"), count = new El("span"), body = new El("body"), data = new El("script");
data.textContent = spec.data;
global.location = {hash: spec.hash};
global.history = {replaceState: function (a, b, h) { location.hash = h; }};
global.window = {addEventListener: function () {}};
global.document = {
  body: body, images: [], readyState: "complete",
  getElementById: function (id) { return {"board-data": data, search: search, count: count}[id]; },
  querySelectorAll: function (q) { return q === "table.leaderboard" ? tables : []; }
};
var script = require("fs").readFileSync(spec.script, "utf8");
eval(script);
function state() {
  return {models: body.getAttribute("data-models"), count: count.textContent, hash: location.hash,
          tables: tables.map(function (t) { return {visible: t.getAttribute("data-visible"), order: t.getAttribute("data-order")}; })};
}
var out = [state()];
if (spec.click) { tables[spec.click[0]].tHead.rows[0].cells[spec.click[1]].click(); out.push(state()); }
if (spec.type !== undefined) { search.value = spec.type; search.listeners.input(); out.push(state()); }
console.log(JSON.stringify(out));
"""


class _Tables(HTMLParser):
    """The leaderboard tables of a page: heads (data-key, data-type), rows (rank, model, data-sort, text)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self.row: dict | None = None
        self.data = ""
        self._in_data = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "leaderboard" in (a.get("class") or ""):
            self.tables.append({"id": a.get("id"), "heads": [], "rows": []})
        elif tag == "th" and self.tables and a.get("data-key"):
            self.tables[-1]["heads"].append({"data-key": a["data-key"], "data-type": a["data-type"]})
        elif tag == "tr" and "data-rank" in a:
            self.row = {"rank": a["data-rank"], "model": a["data-model"], "sorts": [], "text": ""}
            self.tables[-1]["rows"].append(self.row)
        elif tag == "td" and self.row is not None:
            self.row["sorts"].append(a.get("data-sort") or "")
        elif tag == "script" and a.get("id") == "board-data":
            self._in_data = True

    def handle_endtag(self, tag):
        if tag == "tr":
            self.row = None
        if tag == "script":
            self._in_data = False

    def handle_data(self, data):
        if self.row is not None:
            self.row["text"] += data
        if self._in_data:
            self.data += data


@pytest.fixture(scope="module")
def two_board_site(tmp_path_factory):
    from robustness.cli import main
    d = tmp_path_factory.mktemp("site2")
    db = d / "s.db"
    with ResultStore(db) as s:
        add_run(s, "r-digits", "2026-01-01T00:00:00+0000", {
            "digits-cnn": {"clean": 19, "attacks": {"pgd": [5, 1]}},
            "digits-cnn-at": {"clean": 18, "attacks": {"pgd": [15, 12]}},
            "digits-small": {"clean": 16, "attacks": {"pgd": [9, 7]}}}, eps=(0.05, 0.1), dataset="digits")
        add_run(s, "r-cifar", "2026-01-02T00:00:00+0000", {
            "resnet20": {"clean": 18, "attacks": {"pgd": [2, 0]}},
            "wrn-at": {"clean": 17, "attacks": {"pgd": [12, 10]}}}, dataset="cifar10")
    assert main(["site", "--db", str(db), "--out", str(d / "out"), "--no-plots"]) == 0
    return d / "out"


def _run(site, tmp_path, **spec) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found (the page script is also checked in Chromium by tests/test_site.py)")
    from leaderboards.site import _SCRIPT
    script = tmp_path / "page.js"
    script.write_text(_SCRIPT)
    shim = tmp_path / "shim.js"
    shim.write_text(SHIM)
    page = _Tables((site / "index.html").read_text())
    arg = json.dumps({"tables": page.tables, "data": page.data, "script": str(script), "hash": "", **spec})
    proc = subprocess.run([node, str(shim), arg], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_tables_sort_within_themselves_and_the_search_spans_both(two_board_site, tmp_path):
    page = _Tables((two_board_site / "index.html").read_text())
    assert [t["id"] for t in page.tables] == ["leaderboard", "leaderboard-2"]
    assert [[r["model"] for r in t["rows"]] for t in page.tables] == [
        ["wrn-at", "resnet20"], ["digits-cnn-at", "digits-small", "digits-cnn"]]
    heads = [h["data-key"] for h in page.tables[1]["heads"]]
    out = _run(two_board_site, tmp_path, click=[1, heads.index("model")], type="cnn")
    start, clicked, typed = out
    assert start["models"] == "5" and start["count"] == "5 of 5 models"
    assert [t["order"] for t in start["tables"]] == ["1,2", "1,2,3"]
    # a click on a model heading sorts every table by name, ascending, each within itself (one state, in the URL)
    assert clicked["tables"][1]["order"] == "3,1,2" and clicked["tables"][0]["order"] == "2,1"
    assert clicked["hash"] == "#sort=model%3Aasc"
    # the search runs over both tables
    assert typed["count"] == "2 of 5 models" and [t["visible"] for t in typed["tables"]] == ["0", "2"]
    assert typed["hash"].endswith("&q=cnn")


def test_the_state_comes_from_the_url(two_board_site, tmp_path):
    (state,) = _run(two_board_site, tmp_path, hash="#sort=rank:desc&q=resnet")
    assert state["tables"][1]["order"] == "" and state["tables"][0]["visible"] == "1" and state["count"] == "1 of 5 models"
