"""Leaderboards: run selection, ordering, the five table formats (golden files), filters, protocols,
`run --protocol`, plots and the notebook DataFrame. A small fixed store is built in each test."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from leaderboards import ResultStore
from leaderboards.board import Filters, build_board
from leaderboards.protocols import ProtocolError, load_protocol, protocol_from_dict, protocol_names
from leaderboards.store import Cost, Outcome
from leaderboards.synthetic import add_synthetic_run

from .conftest import ROOT

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
E4, E8 = 4 / 255, 8 / 255
N = 20


# ---- a small fixed store (fixed run ids and dates: outputs are byte-for-byte reproducible) ----

def add_run(store: ResultStore, run_id: str, created: str, models: dict, *, eps=(E4, E8), dataset="toy",
            norm="linf", complete=True, params=None, tag=None, n=N, spec_extra=None) -> str:
    """models: name -> {"clean": k, "info": {...}, "attacks": {attack: [robust count per eps]}}.
    Example i is clean-correct iff i < k, and survives eps e iff i < count at e."""
    attacks = sorted({a for m in models.values() for a in m["attacks"]})
    spec = {"models": list(models), "dataset": dataset, "split": "test", "norm": norm, "eps": list(eps),
            "n_examples": n, "subset": "first", "seed": 0,
            "attacks": [{"name": a, "params": dict((params or {}).get(a, {}))} for a in attacks]}
    spec.update(spec_extra or {})
    store._db.execute("INSERT INTO runs(run_id, key, created, status, tag, spec, metadata) VALUES "
                      "(?, ?, ?, 'running', ?, ?, '{}')", (run_id, "key-" + run_id, created, tag, json.dumps(spec)))
    idx = np.arange(n)
    results = []
    for name, m in models.items():
        info = {"model": {"name": name, "arch": None, "extra": {}}, "eps": list(eps), "norm": norm}
        info["model"].update(m.get("info", {}))
        store.register_model(run_id, name, dataset, info, idx.tolist())
        clean = idx < m["clean"]
        outcomes, costs, broken_by = [], [], {}
        for attack, counts in m["attacks"].items():
            broken = np.where(clean, np.nan, 0.0)
            for e, k in zip(eps, counts):
                broken[np.isnan(broken) & (idx >= k)] = e
            broken_by[attack] = broken
            outcomes += [Outcome(attack, int(i), bool(c), None if np.isnan(b) else float(b))
                         for i, c, b in zip(idx, clean, broken)]
            costs += [Cost(attack, e, 0.5, n, n) for e in eps]
        store.write_batch(run_id, name, 0, outcomes, costs)
        for attack in m["attacks"]:
            for e in eps:
                results.append(store.recompute(run_id, name, attack, e, dataset=dataset, norm=norm,
                                               params={"norm": norm, **(params or {}).get(attack, {})}))
    if complete:
        store.finish_run(run_id, results)
    return run_id


# the weights digest (and its file's) as a model source records them: the board shows the short hash
WRN_INFO = {"arch": "WideResNet-28-10", "weights_sha256": "3f2a9c1b" + "0" * 56,
            "extra": {"extra_data": True, "paper": "https://arxiv.org/abs/1905.13736", "file_sha256": "e1" * 32}}


def build_fixed_store(path: Path, *, hostile: str | None = None) -> Path:
    with ResultStore(path) as s:
        add_run(s, "run-a-000001", "2026-01-01T10:00:00+0000", {
            "wrn-28-10-at": {"clean": 18, "attacks": {"fgsm": [16, 14], "pgd": [15, 5]}, "info": WRN_INFO},
            "resnet-18|std_v1": {"clean": 19, "attacks": {"fgsm": [6, 1], "pgd": [3, 0]},
                                 "info": {"arch": "ResNet-18", "extra": {"extra_data": False}}},
            "alpha-net": {"clean": 17, "attacks": {"fgsm": [12, 9], "pgd": [11, 8]}, "info": {"arch": "CNN"}},
            "beta-net": {"clean": 17, "attacks": {"fgsm": [12, 9], "pgd": [11, 8]}, "info": {"arch": "CNN"}},
            "fgsm-only": {"clean": 20, "attacks": {"fgsm": [20, 20]}},
        }, params={"pgd": {"steps": 10}})
        # newer run: re-evaluates wrn's PGD (replaces it), keeps its FGSM from run A
        add_run(s, "run-b-000002", "2026-02-01T10:00:00+0000", {
            "wrn-28-10-at": {"clean": 18, "attacks": {"pgd": [14, 10]}, "info": WRN_INFO},
        }, params={"pgd": {"steps": 10}}, tag="v2")
        # unfinished run: never shown
        add_run(s, "run-c-000003", "2026-03-01T10:00:00+0000", {
            "unfinished-net": {"clean": 20, "attacks": {"pgd": [20, 20]}}}, complete=False)
        if hostile:
            add_run(s, "run-h-000004", "2026-01-15T10:00:00+0000", {
                hostile: {"clean": 15, "attacks": {"fgsm": [10, 7], "pgd": [9, 6]},
                          "info": {"arch": hostile, "extra": {"paper": "javascript:alert(1)", "extra_data": hostile}}},
            }, params={"pgd": {"steps": 10}}, tag=hostile)
    return path


@pytest.fixture
def fixed_db(tmp_path) -> Path:
    return build_fixed_store(tmp_path / "fixed.db")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"golden file {path} was missing and has been written; check it and rerun")
    assert text == path.read_text(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 to rewrite)"


# ---- selection and order ----

def test_newest_complete_run_wins_per_threat(fixed_db):
    with ResultStore(fixed_db) as s:
        board = build_board(s)
    rows = {r.model: r for r in board.rows}
    assert "unfinished-net" not in rows and board.unfinished_runs == 1
    wrn = rows["wrn-28-10-at"]
    cells = {board.labels[t]: c for t, c in wrn.cells.items()}
    assert cells["pgd@8/255"].run_id == "run-b-000002" and cells["pgd@8/255"].accuracy == pytest.approx(10 / N)
    assert cells["fgsm@8/255"].run_id == "run-a-000001"      # only the old run measured FGSM
    assert wrn.runs == ("run-b-000002", "run-a-000001")      # newest first


def test_sorted_by_worst_case_partial_rows_last_ties_stable(fixed_db):
    with ResultStore(fixed_db) as s:
        board = build_board(s)
    order = [r.model for r in board.rows]
    # worst cases: wrn 10/20 (new PGD), alpha = beta 8/20 (tie: name order), resnet 0; fgsm-only lacks PGD
    assert order == ["wrn-28-10-at", "alpha-net", "beta-net", "resnet-18|std_v1", "fgsm-only"]
    assert [r.rank for r in board.rows] == [1, 2, 3, 4, 5]
    assert not board.rows[-1].complete and board.rows[0].complete
    assert board.rows[0].worst == pytest.approx(0.5)


def test_worst_case_attack_is_the_sort_key_when_stored(tmp_path):
    with ResultStore(tmp_path / "w.db") as s:
        add_run(s, "r1", "2026-01-01T00:00:00+0000", {
            "a": {"clean": 20, "attacks": {"pgd": [18, 18], "worst-case": [4, 4]}},
            "b": {"clean": 20, "attacks": {"pgd": [10, 10], "worst-case": [9, 9]}}})
        board = build_board(s)
    assert [r.model for r in board.rows] == ["b", "a"]
    assert board.rows[0].worst == pytest.approx(9 / N)


def test_filters(fixed_db):
    with ResultStore(fixed_db) as s:
        board = build_board(s, Filters(attacks=("pgd",), eps=(E8,)))
        assert [board.labels[t] for t in board.threats] == ["pgd@8/255"]
        assert "fgsm-only" not in [r.model for r in board.rows]
        assert build_board(s, Filters(datasets=("other",))).rows == ()
        assert [r.model for r in build_board(s, Filters(models=("beta-net",))).rows] == ["beta-net"]


# ---- formats ----

@pytest.mark.parametrize("fmt,ext", [("md", "md"), ("csv", "csv"), ("latex", "tex"), ("html", "html"),
                                     ("json", "json")])
def test_golden_formats(cli, fixed_db, fmt, ext):
    r = cli("leaderboard", "--db", fixed_db, "--format", fmt)
    assert r.code == 0, r
    assert "ignored 1 unfinished run" in r.err
    check_golden(f"leaderboard.{ext}", r.out)


def test_out_file_and_filters_from_cli(cli, fixed_db, tmp_path):
    out = tmp_path / "t.md"
    r = cli("leaderboard", "--db", fixed_db, "--attack", "pgd", "--eps", "8/255", "--out", out)
    assert r.code == 0 and r.out == "", r
    text = out.read_text()
    assert "pgd@8/255" in text and "fgsm@" not in text and "pgd@4/255" not in text


def test_escaping_per_format(fixed_db):
    from leaderboards.tables import render
    with ResultStore(fixed_db) as s:
        board = build_board(s)
    md = render(board, "md")
    assert "resnet-18\\|std\\_v1" in md                     # no broken table cell, no emphasis
    tex = render(board, "latex")
    assert "resnet-18\\textbar{}std\\_v1" in tex and "\\href{https://arxiv.org/abs/1905.13736}" in tex
    js = json.loads(render(board, "json"))
    assert js["rows"][0]["paper_url"] == "https://arxiv.org/abs/1905.13736"


def test_hostile_strings_in_tables(tmp_path):
    from leaderboards.tables import render
    bad = '<img src=x onerror=alert(1)>|</script>&_*`=cmd'
    db = build_fixed_store(tmp_path / "h.db", hostile=bad)
    with ResultStore(db) as s:
        board = build_board(s)
    html = render(board, "html")
    assert "<img src=x" not in html and "</script>&" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'href="javascript:' not in html                    # a non-web "paper" link stays text
    md = render(board, "md")
    import re
    for line in md.splitlines():
        if line.startswith("| "):
            for cell in line[2:-2].split(" | "):
                cell = re.sub(r"\]\(<https://[^<>\s]+>\)$", "]", cell)  # a paper link's own brackets
                assert not re.search(r"(?<!\\)[<>|]", cell), cell
    assert "\\<img src=x onerror=alert(1)\\>\\|\\</script\\>" in md
    import csv
    import io
    rows = list(csv.DictReader(io.StringIO(render(board, "csv"))))
    assert bad in [r["model"] for r in rows]


def test_errors(cli, tmp_path, fixed_db):
    r = cli("leaderboard", "--db", tmp_path / "missing.db")
    assert r.code == 2 and "no results database" in r.err
    r = cli("leaderboard", "--db", fixed_db, "--dataset", "nothing")
    assert r.code == 2 and "no complete results" in r.err
    r = cli("leaderboard", "--db", fixed_db, "--eps", "x/255")
    assert r.code == 2 and "bad eps" in r.err
    assert cli("leaderboard", "--db", fixed_db, "--format", "pdf").code == 2


# ---- protocols ----

def test_shipped_protocols_load():
    names = protocol_names()
    for expected in ("cifar10-linf-8", "cifar10-corruptions", "imagenet-linf-4", "digits-linf"):
        assert expected in names
    p = load_protocol("cifar10-linf-8")
    assert p.dataset == "cifar10" and p.norm == "linf" and p.eps == (8 / 255,)
    assert dict(p.attacks[1].params)["steps"] == 100
    assert len(p.expected_indices()) == 10000
    c = load_protocol("cifar10-corruptions")
    assert c.corruptions and c.eps == (1, 2, 3, 4, 5) and len(c.attacks) == 15 and c.norm is None
    imnet = load_protocol("imagenet-linf-4").expected_indices()
    assert len(imnet) == 5000 and len(set(imnet.tolist())) == 5000 and imnet.max() < 50000
    assert load_protocol(ROOT / "leaderboards" / "protocols" / "digits-linf.yaml") == load_protocol("digits-linf")


@pytest.mark.parametrize("doc,message", [
    ({"dataset": "d", "eps": [0.1], "attacks": ["pgd"]}, "`norm` is required"),
    ({"dataset": "d", "eps": [0.1], "attacks": ["pgd"], "norm": "l3"}, "norm must be"),
    ({"dataset": "d", "eps": ["x"], "attacks": ["pgd"], "norm": "linf"}, "bad eps"),
    ({"dataset": "d", "eps": [0.1], "attacks": ["pgd", "pgd"], "norm": "linf"}, "listed twice"),
    ({"dataset": "d", "eps": [0.1], "attacks": ["pgd"], "norm": "linf", "colour": 1}, "unknown key"),
    ({"eps": [0.1], "attacks": ["pgd"], "norm": "linf"}, "`dataset` is required"),
])
def test_protocol_validation(doc, message):
    with pytest.raises(ProtocolError, match=message):
        protocol_from_dict(doc)


def test_unknown_protocol_is_a_user_error(cli, fixed_db):
    r = cli("leaderboard", "--db", fixed_db, "--protocol", "no-such-protocol")
    assert r.code == 2 and "unknown protocol" in r.err and "digits-linf" in r.err


def _toy_protocol(tmp_path, **changes) -> Path:
    doc = {"name": "toy-linf", "title": "Toy", "dataset": "toy", "n_examples": N, "subset": "first",
           "dataset_size": N, "norm": "linf", "eps": ["8/255"], "attacks": [{"name": "pgd", "params": {"steps": 10}}]}
    doc.update(changes)
    import yaml
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_protocol_matches_reasons(fixed_db, tmp_path):
    p = load_protocol(_toy_protocol(tmp_path))
    with ResultStore(fixed_db) as s:
        run = s.get_run("run-a-000001")
        rows = s.model_rows(run.run_id)
    assert p.matches(run.spec, rows) == (True, "")
    wrn = [r for r in rows if r["model"] == "wrn-28-10-at"]
    assert p.matches(run.spec, [{**wrn[0], "indices": list(range(1, N + 1))}])[1].startswith("wrn-28-10-at: other examples")
    assert "data set" in p.matches(run.spec, [{**wrn[0], "dataset": "cifar10"}])[1]
    assert "not evaluated at eps" in load_protocol(_toy_protocol(tmp_path, eps=[0.5])).matches(run.spec, rows)[1]
    assert "attack apgd was not run" in load_protocol(
        _toy_protocol(tmp_path, attacks=["apgd"])).matches(run.spec, rows)[1]
    steps20 = load_protocol(_toy_protocol(tmp_path, attacks=[{"name": "pgd", "params": {"steps": 20}}]))
    assert steps20.matches(run.spec, rows) == (False, "attack pgd: steps=10, protocol needs steps=20")
    # parameters left at their defaults are compared through the stored (effective) parameters
    loss = load_protocol(_toy_protocol(tmp_path, attacks=[{"name": "pgd", "params": {"loss": "ce"}}]))
    assert not loss.matches(run.spec, rows)[0]
    assert loss.matches(run.spec, rows, attack_params={"pgd": {"loss": "ce", "steps": 10}}) == (True, "")


def test_leaderboard_protocol_leaves_out_with_reasons(cli, fixed_db, tmp_path):
    with ResultStore(fixed_db) as s:  # a run on other examples
        add_run(s, "run-d-000005", "2026-04-01T00:00:00+0000", {"late-net": {"clean": 10, "attacks": {"pgd": [9, 9]}}},
                n=10, params={"pgd": {"steps": 10}})
    r = cli("leaderboard", "--db", fixed_db, "--protocol", _toy_protocol(tmp_path), "--format", "json")
    assert r.code == 0, r
    assert "left out run run-d-000005 (late-net): late-net: other examples" in r.err
    doc = json.loads(r.out)
    assert [t["label"] for t in doc["threats"]] == ["pgd@8/255"]
    assert "late-net" not in [row["model"] for row in doc["rows"]]
    assert doc["rows"][0]["model"] == "wrn-28-10-at" and doc["protocol"]["name"] == "toy-linf"
    assert doc["left_out"][0]["run_id"] == "run-d-000005"


def _run_parser():
    from robustness.cli import build_parser
    return build_parser()


def test_run_protocol_fills_the_spec():
    from robustness.cli.run import spec_from_args
    args = _run_parser().parse_args(["run", "--protocol", "cifar10-linf-8", "--model", "m.pt"])
    spec = spec_from_args(args)
    assert spec.dataset == "cifar10" and spec.n_examples == 10000 and spec.subset == "first"
    assert spec.norm == "linf" and spec.eps == (8 / 255,)
    assert [(a.name, dict(a.params)) for a in spec.attacks] == [
        ("fgsm", {"loss": "ce"}), ("pgd", {"loss": "dlr", "random_start": True, "restarts": 2, "steps": 100})]
    imnet = spec_from_args(_run_parser().parse_args(["run", "--protocol", "imagenet-linf-4"]))
    assert (imnet.subset, imnet.seed, imnet.n_examples) == ("random", 0, 5000)
    # options the protocol does not set stay the user's
    spec = spec_from_args(_run_parser().parse_args(["run", "--protocol", "digits-linf", "--seed", "3",
                                                    "--batch-size", "64"]))
    assert spec.seed == 3 and spec.batch_size == 64


@pytest.mark.parametrize("extra,named", [
    (["--eps", "0.2"], "--eps"), (["--attack", "fgsm,pgd"], "--attack"),   # even a value equal to the default
    (["--steps", "5", "--norm", "linf"], "--norm, --steps"), (["--n-examples", "10"], "--n-examples"),
    (["--dataset", "digits", "--subset", "random"], "--dataset, --subset")])
def test_run_protocol_conflicts_name_the_flags(cli, extra, named):
    r = cli("run", "--protocol", "digits-linf", *extra)
    assert r.code == 2 and named in r.err and "--protocol digits-linf" in r.err, r


def test_run_protocol_seed_conflicts_only_for_random_subsets(cli):
    r = cli("run", "--protocol", "imagenet-linf-4", "--seed", "1")
    assert r.code == 2 and "--seed" in r.err


def test_run_by_protocol_then_leaderboard_by_protocol(cli, tmp_path):
    """The real engine, on a small protocol of the built-in digits: the run matches its protocol."""
    import yaml
    proto = tmp_path / "digits-mini.yaml"
    proto.write_text(yaml.safe_dump({"name": "digits-mini", "dataset": "digits", "n_examples": 48, "subset": "first",
                                     "dataset_size": 360, "norm": "linf", "eps": [0.1],
                                     "attacks": [{"name": "fgsm"}, {"name": "pgd", "params": {"steps": 3}}]}))
    db = tmp_path / "r.db"
    r = cli("run", "--protocol", proto, "--model", "digits-cnn", "--db", db, "--device", "cpu", "--quiet")
    assert r.code == 0, r
    other = cli("run", "--model", "digits-cnn-at", "--db", db, "--device", "cpu", "--quiet", "--n-examples", "48",
                "--subset", "first", "--eps", "0.1", "--attack", "pgd", "--steps", "5")
    assert other.code == 0, other
    r = cli("leaderboard", "--db", db, "--protocol", proto)
    assert r.code == 0, r
    assert "| digits-cnn |" in r.out and "digits-cnn-at" not in r.out
    assert "left out run" in r.err and "attack fgsm was not run" in r.err


# ---- the notebook frame ----

def test_load_dataframe(fixed_db):
    import leaderboards
    df = leaderboards.load(fixed_db)
    assert len(df) == 4 * 2 * 2 + 2 + 2  # run A: 4 models x 2 attacks x 2 eps, fgsm-only 2; run B: 2
    assert {"run_id", "model", "threat", "accuracy", "ci_low", "ci_high", "newest", "arch"} <= set(df.columns)
    wrn_pgd = df[(df.model == "wrn-28-10-at") & (df.attack == "pgd")]
    assert sorted(wrn_pgd[wrn_pgd.newest].run_id) == ["run-b-000002", "run-b-000002"]
    assert "unfinished-net" not in set(df.model)
    assert df[df.model == "wrn-28-10-at"].arch.iloc[0] == "WideResNet-28-10"


def test_load_without_pandas_says_what_to_install(fixed_db, monkeypatch):
    import leaderboards
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        leaderboards.load(fixed_db)


# ---- plots ----

def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


CORRUPTIONS = ["fog", "snow", "gaussian_noise", "jpeg_compression"]


@pytest.fixture
def corruption_db(tmp_path) -> Path:
    path = tmp_path / "c.db"
    with ResultStore(path) as s:
        models = {"robust-net": 0.8, "plain-net": 0.2}
        add_synthetic_run(s, models=models, attacks=["fgsm", "pgd"], eps=[E4, E8], n=200, dataset="toy", seed=1)
        add_synthetic_run(s, models=models, attacks=[f"corruption:{c}" for c in CORRUPTIONS], eps=[1, 2, 3, 4, 5],
                          n=200, dataset="toy", seed=2,
                          attack_strength={f"corruption:{c}": 0.3 + 0.2 * i for i, c in enumerate(CORRUPTIONS)})
    return path


@pytest.mark.parametrize("kind", ["eps", "severity", "corruptions"])
def test_plots_are_images_of_the_requested_size(cli, corruption_db, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    r = cli("plot", "--kind", kind, "--db", corruption_db, "--out", out, "--size", "900x600")
    assert r.code == 0, r
    assert png_size(out) == (900, 600)
    svg = tmp_path / f"{kind}.svg"
    assert cli("plot", "--kind", kind, "--db", corruption_db, "--out", svg).code == 0
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = svg.read_text()
    assert ("plain-net" in text) and ("robust-net" in text)
    if kind != "eps":
        assert "gaussian_noise" in text


def test_plot_reads_the_corruption_convention(corruption_db):
    from leaderboards.board import select
    from leaderboards.curves import _corruption_data
    with ResultStore(corruption_db) as s:
        sel = select(s)
    data, shown = _corruption_data(sel, [("robust-net", "toy"), ("plain-net", "toy")])
    assert set(data[("plain-net", "toy")]) == set(CORRUPTIONS)
    assert sorted(data[("plain-net", "toy")]["fog"]) == [1, 2, 3, 4, 5]


def test_plot_errors(cli, fixed_db, tmp_path):
    r = cli("plot", "--kind", "severity", "--db", fixed_db, "--out", tmp_path / "s.png")
    assert r.code == 2 and "no corruption results" in r.err
    r = cli("plot", "--kind", "eps", "--db", fixed_db, "--out", tmp_path / "s.pdf")
    assert r.code == 2 and ".png or .svg" in r.err
    r = cli("plot", "--kind", "eps", "--db", fixed_db, "--out", tmp_path / "s.png", "--size", "big")
    assert r.code == 2 and "--size" in r.err


def test_eps_plot_default_size_and_model_cap(fixed_db, tmp_path):
    from leaderboards.curves import plot
    with ResultStore(fixed_db) as s:
        res = plot(s, "eps", tmp_path / "e.png", max_models=2)
    w, h = png_size(tmp_path / "e.png")
    assert w > 600 and h > 300 and res.panels == 2
    assert res.models == ("wrn-28-10-at", "alpha-net") and "2 best of 5" in res.note


# ---- layering ----

def test_leaderboards_never_imports_robustness():
    code = ("import sys, leaderboards, leaderboards.site, leaderboards.curves, leaderboards.compare, "
            "leaderboards.frame, leaderboards.tables, leaderboards.synthetic; "
            "bad = [m for m in sys.modules if m == 'robustness' or m.startswith('robustness.')]; "
            "assert not bad, bad; assert 'matplotlib' not in sys.modules and 'pandas' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for path in (ROOT / "leaderboards").glob("*.py"):
        src = path.read_text()
        assert "import robustness" not in src and "from robustness" not in src, path


def test_corruption_boards_rank_by_the_mean(tmp_path):
    """Corruptions only: sorted by the mean over corruptions and severities, not by the single worst cell."""
    with ResultStore(tmp_path / "c.db") as s:
        add_run(s, "r1", "2026-01-01T00:00:00+0000", {
            "steady": {"clean": 20, "attacks": {"corruption:fog": [12, 12, 12], "corruption:snow": [12, 12, 12]}},
            "fragile": {"clean": 20, "attacks": {"corruption:fog": [20, 20, 20], "corruption:snow": [20, 20, 10]}},
        }, eps=(1, 2, 3))
        board = build_board(s)
    assert board.corruptions_only and board.score_title == "Mean over corruptions"
    assert [r.model for r in board.rows] == ["fragile", "steady"]      # means 0.917 vs 0.6; worst 0.5 vs 0.6
    assert [board.labels[t] for t in board.threats][:2] == ["corruption:fog@1", "corruption:fog@2"]
    from leaderboards.tables import render
    assert "Mean over corruptions %" in render(board, "md")


def test_protocol_examples_are_the_engines():
    """A protocol restates the engine's example choice (leaderboards cannot import robustness): keep them equal."""
    from robustness.data import select_indices
    for name in protocol_names():
        p = load_protocol(name)
        if p.dataset_size:
            assert np.array_equal(p.expected_indices(),
                                  select_indices(p.dataset_size, p.n_examples, p.subset, p.seed)), name


@pytest.mark.parametrize("bad", ["=HYPERLINK(\"http://x\")", "+1+cmd", "-2+cmd", "@SUM(A1)", "\t=cmd", "\r=cmd",
                                 "\n=cmd", "-inf", "-nan"])
def test_csv_cells_never_start_a_formula(tmp_path, bad):
    """OWASP's CSV-injection triggers (=, +, -, @, tab, CR) at the start of any text cell, the header
    included (attack names come from the store), are quoted; plain numbers stay numbers."""
    import csv
    import io
    from leaderboards.tables import render
    path = tmp_path / "c.db"
    with ResultStore(path) as s:
        add_run(s, "run-c-000001", "2026-01-01T10:00:00+0000",
                {bad: {"clean": 15, "attacks": {bad: [10, 7]}, "info": {"arch": bad}}})
    with ResultStore(path) as s:
        board = build_board(s)
    rows = list(csv.reader(io.StringIO(render(board, "csv"), newline="")))
    cells = [c for row in rows for c in row]
    shown = bad.replace("\r", "\n")   # a lone CR would split the row: written as LF in a quoted field
    assert "'" + shown in cells and shown not in cells
    for c in cells:
        assert c[:1] not in ("=", "+", "@", "\t", "\r", "\n") and not (c[:1] == "-" and not c[1:2].isdigit()), c
    assert any(c == "75.00" for c in cells)   # 15 of 20 clean: numbers are not quoted
