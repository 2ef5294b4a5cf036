"""`robust-bench compare`: the statistics, and the gate on real runs of the built-in digits models."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from leaderboards.compare import (NotComparable, compare, load_run, mcnemar_exact, paired_difference_ci, to_junit,
                                  to_markdown)


# ---- statistics ----

def _binom_two_sided(b: int, c: int) -> float:
    m, k = b + c, min(b, c)
    tail = sum(Fraction(math.comb(m, i), 2 ** m) for i in range(k + 1))
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize("b,c", [(0, 0), (1, 0), (0, 5), (1, 9), (3, 3), (10, 4), (40, 61), (0, 120), (500, 430)])
def test_mcnemar_exact_matches_the_binomial_tail(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(_binom_two_sided(b, c), rel=1e-12, abs=1e-300)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_mcnemar_known_values():
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)       # 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert 0 <= mcnemar_exact(0, 3000) < 1e-300                  # huge counts: no overflow


def test_paired_interval():
    # identical outcomes: no change, an interval around 0 (Tango: +-z^2 / (n + z^2) when nothing changed)
    lo, hi = paired_difference_ci(50, 0, 0, 50)
    z2 = 1.959963984540054 ** 2
    assert lo == pytest.approx(-z2 / (100 + z2), rel=1e-6) and hi == pytest.approx(z2 / (100 + z2), rel=1e-6)
    # the candidate loses 30 of 100 examples the baseline got right: clearly below 0, around -0.3
    lo, hi = paired_difference_ci(60, 30, 0, 10)
    assert lo < -0.3 < hi < 0
    # every estimate lies in its interval, and the interval in [-1, 1]
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b, c, d = (int(v) for v in rng.integers(0, 30, size=4))
        if a + b + c + d == 0:
            continue
        lo, hi = paired_difference_ci(a, b, c, d)
        est = (c - b) / (a + b + c + d)
        assert -1 <= lo <= est + 1e-12 and est - 1e-12 <= hi <= 1
    # a paired interval is narrower than the unpaired one when outcomes agree mostly
    lo, hi = paired_difference_ci(80, 5, 2, 13)
    assert hi - lo < 0.15
    assert paired_difference_ci(0, 0, 0, 0) == (-1.0, 1.0)


# ---- real runs of the built-in models ----

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The standard and the adversarially trained digits CNN, PGD at eps 0.1, all 360 test digits."""
    from robustness.cli import main
    d = tmp_path_factory.mktemp("compare")
    db = d / "r.db"
    common = ["--db", str(db), "--device", "cpu", "--quiet", "--attack", "fgsm,pgd", "--eps", "0.1",
              "--subset", "first"]
    out = {}
    for name, model, extra in [("std", "digits-cnn", []), ("at", "digits-cnn-at", []),
                               ("std100", "digits-cnn", ["--n-examples", "100"])]:
        path = d / f"{name}.json"
        assert main(["run", "--model", model, "--json", str(path), *common, *extra]) == 0
        out[name] = path
    out["db"] = db
    return out


def test_flags_a_real_drop(cli, runs, tmp_path):
    junit = tmp_path / "c.xml"
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    r = cli("compare", runs["at"], runs["std"], "--max-drop", "5", "--junit", junit, "--summary", summary)
    assert r.code == 1, r
    assert "regression" in r.err and "pgd@0.1" in r.err
    assert "❌ regression" in r.out and "**FAIL**" in r.out
    lines = r.out.splitlines()
    head = next([c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| Baseline"))
    pgd = next([c.strip() for c in line.strip("|").split("|")] for line in lines if "| pgd@0.1 |" in line)
    row = dict(zip(head, pgd))
    assert -45 < float(row["Change (pp)"]) < -25                # the AT model holds ~35 points more
    lo, hi = (float(v) for v in row["95% CI (pp)"].strip("[]").split(","))
    assert lo < float(row["Change (pp)"]) < hi < 0
    assert float(row["McNemar p"]) < 1e-6
    assert summary.read_text().startswith("# earlier step\n### robust-bench compare")
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["clean", "fgsm@0.1", "pgd@0.1", "worst-case@0.1"]
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert "pgd@0.1" in failed and "clean" not in failed
    assert root.find("testsuite").get("failures") == str(len(failed))


def test_identical_runs_pass(cli, runs):
    r = cli("compare", runs["std"], runs["std"], "--max-drop", "0")
    assert r.code == 0, r
    assert "✅ no regression" in r.out and "FAIL" not in r.out


def test_run_ids_from_the_store(cli, runs):
    from leaderboards import ResultStore
    with ResultStore(runs["db"]) as s:
        ids = {}
        for run in s.runs():
            (name, meta), = run.metadata["models"].items()
            if meta["n"] == 360:
                ids[name] = run.run_id
    r = cli("compare", ids["digits-cnn-at"][:6], ids["digits-cnn"], "--db", runs["db"], "--max-drop", "5")
    assert r.code == 1, r
    r = cli("compare", ids["digits-cnn"], runs["std"], "--db", runs["db"], "--max-drop", "0")
    assert r.code == 0, r                                       # the store and its JSON export agree


def test_tolerated_or_insignificant_drops_pass(cli, runs):
    assert cli("compare", runs["at"], runs["std"], "--max-drop", "60").code == 0
    assert cli("compare", runs["at"], runs["std"], "--max-drop", "5", "--alpha", "1e-40").code == 0
    r = cli("compare", runs["std"], runs["at"], "--max-drop", "0")   # an improvement
    assert r.code == 0 and "pass" in r.out


def test_report_only_without_max_drop(cli, runs):
    r = cli("compare", runs["at"], runs["std"])
    assert r.code == 0 and "report only" in r.out and "worse" in r.out


def test_refuses_other_examples(cli, runs):
    r = cli("compare", runs["std"], runs["std100"], "--max-drop", "1")
    assert r.code == 2 and "not comparable" in r.err and "other examples" in r.err


def _edited(src: Path, dst: Path, edit) -> Path:
    doc = json.loads(src.read_text())
    edit(doc)
    dst.write_text(json.dumps(doc))
    return dst


def test_refuses_other_attack_settings_data_or_threats(cli, runs, tmp_path):
    def steps(doc):
        for r in doc["results"]:
            if r["attack"] == "pgd":
                r["params"]["steps"] = 3
    r = cli("compare", runs["std"], _edited(runs["std"], tmp_path / "a.json", steps))
    assert r.code == 2 and "pgd ran with other settings (steps=10 vs 3)" in r.err

    def dataset(doc):
        for r in doc["results"]:
            r["dataset"] = "mnist"
    r = cli("compare", runs["std"], _edited(runs["std"], tmp_path / "b.json", dataset))
    assert r.code == 2 and "data set" in r.err

    def drop_fgsm(doc):
        doc["results"] = [r for r in doc["results"] if r["attack"] != "fgsm"]
    r = cli("compare", runs["std"], _edited(runs["std"], tmp_path / "c.json", drop_fgsm))
    assert r.code == 2 and "other threats" in r.err and "fgsm" in r.err

    def shift(doc):
        for r in doc["results"]:
            r["per_example"]["index"] = [i + 1000 for i in r["per_example"]["index"]]
    r = cli("compare", runs["std"], _edited(runs["std"], tmp_path / "d.json", shift))
    assert r.code == 2 and "other examples" in r.err


def test_bad_references(cli, runs, tmp_path):
    r = cli("compare", tmp_path / "nope.json", runs["std"])
    assert r.code == 2 and "no such file" in r.err
    r = cli("compare", "abcdef", runs["std"], "--db", runs["db"])
    assert r.code == 2 and "no run 'abcdef'" in r.err
    (tmp_path / "x.json").write_text("{}")
    r = cli("compare", tmp_path / "x.json", runs["std"])
    assert r.code == 2 and "not a robust-bench run export" in r.err
    assert cli("compare", runs["std"], runs["std"], "--alpha", "2").code == 2


def test_multi_model_runs_pair_by_name_or_by_option(runs, tmp_path):
    both = json.loads(runs["std"].read_text())
    both["results"] += json.loads(runs["at"].read_text())["results"]
    path = tmp_path / "both.json"
    path.write_text(json.dumps(both))
    run = load_run(str(path))
    cmp = compare(run, run)
    assert {r.candidate_model for r in cmp.rows} == {"digits-cnn", "digits-cnn-at"} and not cmp.failed
    with pytest.raises(NotComparable, match="different models"):
        compare(run, load_run(str(runs["std"])))
    cmp = compare(run, load_run(str(runs["std"])), baseline_model="digits-cnn-at", max_drop=5)
    assert cmp.failed and "| digits-cnn-at | digits-cnn | pgd@0.1 |" in to_markdown(cmp)
    assert 'classname="robust-bench.compare.digits-cnn" name="pgd@0.1"' in to_junit(cmp)
    two = compare(run, run, max_drop=5)
    assert 'name="digits-cnn-at -&gt; digits-cnn-at: pgd@0.1"' in to_junit(two)
