"""`robust-bench site`: a static leaderboard that opens from disk. Checked as files, and rendered in headless
Chromium (skipped, saying why, when no Chromium is installed; `.ci/apt-packages` installs it on CI)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from leaderboards.site import json_for_script, model_slug

from .test_leaderboards import build_fixed_store, png_size

HOSTILE = '<img src=x onerror=alert(1)></script><script>alert(2)</script>"\'&'
ROWS = 6  # the fixed store's five models plus the hostile one


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    from robustness.cli import main
    d = tmp_path_factory.mktemp("site")
    db = build_fixed_store(d / "s.db", hostile=HOSTILE)
    assert main(["site", "--db", str(db), "--out", str(d / "out")]) == 0
    return d / "out"


class Dom(HTMLParser):
    """Elements (tag, attrs) and the text of a document, for checks that must not be fooled by strings."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def _assert_hostile_is_text(text: str) -> None:
    dom = Dom(text)
    assert not dom.find("img", src="x"), "the hostile model name became an <img> element"
    assert all(not any(k.startswith("on") for k in a) for _, a in dom.elements), "an event handler attribute"
    scripts = [a for t, a in dom.elements if t == "script"]
    assert len(scripts) <= 2                                 # the JSON block and the page's own script
    assert not any(a.get("href", "").lower().startswith("javascript:") for t, a in dom.elements if t == "a")


def test_files_and_escaping(site):
    index = (site / "index.html").read_text()
    assert (site / "leaderboard.json").is_file()
    w, h = png_size(site / "plots" / "eps.png")
    assert f'src="plots/eps.png" alt="eps plot" width="{w}" height="{h}"' in index
    assert not (site / "plots" / "severity.png").exists()      # no corruption results in this store
    _assert_hostile_is_text(index)
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;/script&gt;" in index
    # the JSON block: no way out of the <script> element, and it still parses to the original strings
    block = re.search(r'<script type="application/json" id="board-data">(.*?)</script>', index, re.S).group(1)
    assert "<" not in block and ">" not in block and "&" not in block
    data = json.loads(block)
    assert HOSTILE in [r["model"] for r in data["rows"]] and len(data["rows"]) == ROWS
    # every model has a page; a hostile name yields a harmless file name
    pages = sorted(p.name for p in (site / "models").iterdir())
    assert len(pages) == ROWS and all(re.fullmatch(r"[A-Za-z0-9._-]+\.html", p) for p in pages)
    hostile_page = site / "models" / f"{model_slug(HOSTILE, 'toy')}.html"
    text = hostile_page.read_text()
    _assert_hostile_is_text(text)
    assert "javascript:alert(1)" in text and 'href="javascript' not in text     # shown, never linked
    assert "<script>" not in text.replace("<script>alert", "")                   # model pages run no script


def test_model_page_lists_runs_and_metadata(site):
    page = (site / "models" / f"{model_slug('wrn-28-10-at', 'toy')}.html").read_text()
    assert "WideResNet-28-10" in page and 'href="https://arxiv.org/abs/1905.13736"' in page
    assert "Runs (2)" in page
    assert page.index("run-b-000002") < page.index("run-a-000001")              # newest first
    assert "(on the leaderboard)" in page and 'href="../index.html"' in page
    assert "v2" in page                                                          # the run's tag


def test_json_for_script_escapes():
    text = json_for_script({"a": "</script><!--&\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!--&\u2028"}


def test_site_cli_errors(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    db = build_fixed_store(tmp_path / "s.db")
    r = cli("site", "--db", db, "--out", tmp_path / "file")
    assert r.code == 2 and "not a folder" in r.err
    r = cli("site", "--db", tmp_path / "none.db", "--out", tmp_path / "o")
    assert r.code == 2 and "no results database" in r.err


# ---- in a real browser ----

def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium found (Debian: apt-get install chromium; CI installs it from .ci/apt-packages)")


def render(url: str, tmp_path: Path) -> str:
    """The DOM after load, scripts run, as headless Chromium sees a file:// URL (no network)."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
           "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<body" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def _body(dom: Dom) -> dict[str, str | None]:
    return next(a for t, a in dom.elements if t == "body")


def test_site_in_chromium(site, tmp_path):
    url = (site / "index.html").resolve().as_uri()
    dom = Dom(render(url, tmp_path))
    body = _body(dom)
    assert body.get("data-models") == str(ROWS), "the page script did not run or could not read its JSON"
    assert int(body["data-images-total"]) >= 1
    assert body["data-images-loaded"] == body["data-images-total"], "a plot did not load"
    assert all(a.get("data-loaded") == "yes" for a in dom.find("img"))
    rows = [a for t, a in dom.elements if t == "tr" and "data-rank" in a]
    assert [a["data-model"] for a in rows][:3] == ["wrn-28-10-at", "alpha-net", "beta-net"]
    assert len(rows) == ROWS
    _assert_hostile_is_text("".join(f"<{t} {' '.join(k for k in a)}>" for t, a in dom.elements))
    assert not dom.find("img", src="x")
    assert any(HOSTILE in t for t in dom.text), "the hostile name is not shown as text"
    table = dom.find("table", id="leaderboard")[0]
    assert table["data-visible"] == str(ROWS)


def test_sort_and_search_from_the_url(site, tmp_path):
    base = (site / "index.html").resolve().as_uri()
    dom = Dom(render(base + "#sort=model:asc&q=-NET", tmp_path))        # case-insensitive
    table = dom.find("table", id="leaderboard")[0]
    assert table["data-visible"] == "2" and table["data-order"] == "2,3"  # alpha-net, beta-net
    assert dom.find("input", id="search") is not None
    dom = Dom(render(base + "#sort=t3:desc", tmp_path))                    # pgd@8/255, best first
    order = dom.find("table", id="leaderboard")[0]["data-order"].split(",")
    models = {a["data-rank"]: a["data-model"] for t, a in dom.elements if t == "tr" and "data-rank" in a}
    assert models[order[0]] == "wrn-28-10-at" and models[order[-1]] == "fgsm-only"   # empty cells sort last
    th = [a for t, a in dom.elements if t == "th" and a.get("data-key") == "t3"][0]
    assert th.get("aria-sort") == "descending"


def test_model_page_in_chromium(site, tmp_path):
    page = site / "models" / f"{model_slug(HOSTILE, 'toy')}.html"
    dom = Dom(render(page.resolve().as_uri(), tmp_path))
    assert not dom.find("img", src="x") and any(HOSTILE in t for t in dom.text)
