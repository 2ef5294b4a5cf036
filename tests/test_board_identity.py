"""Board rows are models, not labels: two weights under one label are two rows (issue 17), and a board
never ranks models measured on different data sets against each other."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from leaderboards import ResultStore
from leaderboards.board import build_board, build_boards, model_identity

from .test_leaderboards import N, add_run

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "robustness" / "weights"


def _info(sha: str, **more) -> dict:
    return {"arch": "arch.py:net", "source": "file", "weights_sha256": sha, **more}


def test_two_weights_under_one_label_are_two_rows_store(tmp_path):
    """Same label `arch:net`, two weights (an epoch-50 and an epoch-100 file): each row's cells come
    from its own weights only; a re-run of the same weights with another tag replaces cells in its row."""
    with ResultStore(tmp_path / "s.db") as s:
        add_run(s, "run-ep50", "2026-01-01T00:00:00+0000",
                {"arch:net": {"clean": 15, "attacks": {"fgsm": [10, 8], "pgd": [9, 5]}, "info": _info("a" * 64)}})
        add_run(s, "run-ep100", "2026-01-02T00:00:00+0000",
                {"arch:net": {"clean": 19, "attacks": {"autoattack": [17, 16]}, "info": _info("b" * 64)}})
        board = build_board(s)
        assert len(board.rows) == 2
        by_w = {r.weights_sha256: r for r in board.rows}
        assert {c.run_id for c in by_w["a" * 64].cells.values()} == {"run-ep50"}
        assert {c.run_id for c in by_w["b" * 64].cells.values()} == {"run-ep100"}
        assert by_w["a" * 64].clean_accuracy == pytest.approx(15 / N)
        assert by_w["b" * 64].clean_accuracy == pytest.approx(19 / N)
        names = sorted(r.model for r in board.rows)
        assert names == ["arch:net #aaaaaaaa", "arch:net #bbbbbbbb"]
        assert all(r.label == "arch:net" for r in board.rows)
        # the same weights again, newer, other tag: one row still, its PGD replaced
        add_run(s, "run-ep50-again", "2026-01-03T00:00:00+0000",
                {"arch:net": {"clean": 15, "attacks": {"pgd": [9, 4]}, "info": _info("a" * 64)}}, tag="v2")
        board = build_board(s)
        assert len(board.rows) == 2
        row = next(r for r in board.rows if r.weights_sha256 == "a" * 64)
        pgd8 = next(c for t, c in row.cells.items() if t.attack == "pgd" and t.eps > 0.02)
        assert pgd8.run_id == "run-ep50-again" and pgd8.accuracy == pytest.approx(4 / N)
        # the model filter takes the label (both rows) or a row's shown name (one)
        from leaderboards.board import Filters
        assert len(build_board(s, Filters(models=("arch:net",))).rows) == 2
        assert [r.weights_sha256 for r in build_board(s, Filters(models=("arch:net #bbbbbbbb",))).rows] == ["b" * 64]


def test_tags_name_the_rows_when_they_tell_them_apart(tmp_path):
    with ResultStore(tmp_path / "s.db") as s:
        add_run(s, "r1", "2026-01-01T00:00:00+0000",
                {"arch:net": {"clean": 15, "attacks": {"pgd": [9, 5]}, "info": _info("a" * 64)}}, tag="epoch-50")
        add_run(s, "r2", "2026-01-02T00:00:00+0000",
                {"arch:net": {"clean": 19, "attacks": {"pgd": [17, 16]}, "info": _info("b" * 64)}}, tag="epoch-100")
        add_run(s, "r3", "2026-01-02T00:00:00+0000",
                {"other": {"clean": 19, "attacks": {"pgd": [17, 16]}, "info": _info("c" * 64)}})
        board = build_board(s)
    assert sorted(r.model for r in board.rows) == ["arch:net [epoch-100]", "arch:net [epoch-50]", "other"]


def test_same_weights_without_their_normalization_are_another_model(tmp_path):
    """A forgotten --mean/--std evaluates other numbers with the same weights: not the same row."""
    with ResultStore(tmp_path / "s.db") as s:
        add_run(s, "r1", "2026-01-01T00:00:00+0000", {"arch:net": {
            "clean": 18, "attacks": {"pgd": [9, 5]}, "info": _info("a" * 64, mean=[0.5], std=[0.25])}})
        add_run(s, "r2", "2026-01-02T00:00:00+0000", {"arch:net": {
            "clean": 7, "attacks": {"fgsm": [3, 1]}, "info": _info("a" * 64)}})
        board = build_board(s)
    assert len(board.rows) == 2 and len({r.identity for r in board.rows}) == 2
    # the weights digest cannot tell them apart: the identity digest names them
    assert all(r.model.startswith("arch:net #") for r in board.rows)
    assert model_identity({"model": _info("a" * 64)}) != model_identity({"model": _info("a" * 64, mean=[0.5])})
    assert model_identity({"model": {"name": "x"}}) is None


def test_default_board_has_one_table_per_data_set(tmp_path, cli):
    """A store holding digits and CIFAR-10 runs: one table per data set, ranks within each."""
    db = tmp_path / "s.db"
    with ResultStore(db) as s:
        add_run(s, "r-digits", "2026-01-01T00:00:00+0000", {
            "digits-cnn": {"clean": 19, "attacks": {"pgd": [5, 1]}},
            "digits-cnn-at": {"clean": 18, "attacks": {"pgd": [15, 12]}}}, eps=(0.05, 0.1), dataset="digits")
        add_run(s, "r-cifar", "2026-01-02T00:00:00+0000", {
            "resnet20": {"clean": 18, "attacks": {"pgd": [2, 0]}},
            "wrn-at": {"clean": 17, "attacks": {"pgd": [12, 10]}}}, dataset="cifar10")
        boards = build_boards(s)
    assert [b.datasets for b in boards] == [("cifar10",), ("digits",)]
    assert [[(r.rank, r.model) for r in b.rows] for b in boards] == [
        [(1, "wrn-at"), (2, "resnet20")], [(1, "digits-cnn-at"), (2, "digits-cnn")]]
    assert {boards[0].labels[t] for t in boards[0].threats} == {"pgd@4/255", "pgd@8/255"}
    assert {boards[1].labels[t] for t in boards[1].threats} == {"pgd@0.05", "pgd@0.1"}
    r = cli("leaderboard", "--db", db)
    assert r.code == 0, r
    sections = r.out.split("### ")[1:]
    assert len(sections) == 2 and sections[0].startswith("Robust accuracy, cifar10")
    assert "| 1 | wrn-at |" in sections[0] and "digits" not in sections[0].split("\n", 1)[1]
    assert "| 1 | digits-cnn-at |" in sections[1] and "pgd@8/255" not in sections[1]
    doc = json.loads(cli("leaderboard", "--db", db, "--format", "json").out)
    assert [b["dataset"] for b in doc["boards"]] == ["cifar10", "digits"]
    assert [row["rank"] for row in doc["boards"][1]["rows"]] == [1, 2]
    latex = cli("leaderboard", "--db", db, "--format", "latex").out
    assert latex.count("\\begin{tabular}") == 2
    html = cli("leaderboard", "--db", db, "--format", "html").out
    assert html.count("<table") == 2
    csv = cli("leaderboard", "--db", db, "--format", "csv")
    assert csv.code == 2 and "--dataset" in csv.err and "cifar10, digits" in csv.err
    one = cli("leaderboard", "--db", db, "--format", "csv", "--dataset", "digits")
    assert one.code == 0 and "cifar10" not in one.out and one.out.count("\n") == 3
    # the site: a table per data set, each ranked on its own
    site = cli("site", "--db", db, "--out", tmp_path / "site", "--no-plots")
    assert site.code == 0, site
    index = (tmp_path / "site" / "index.html").read_text()
    assert index.count('<table id="leaderboard') == 2 and index.count('class="leaderboard"') == 2
    assert index.index("cifar10") < index.index("wrn-at") < index.index("digits-cnn-at")


# ---- the real engine: epoch-50 and epoch-100 checkpoints through one architecture file ----

ARCH = '''
import torch.nn as nn
from robustness.archs import DigitsCNN


def net():
    return DigitsCNN()
'''


def _state(name: str) -> dict:
    return torch.load(WEIGHTS / f"{name}.pt", weights_only=True)["state_dict"]


@pytest.fixture
def two_checkpoints(tmp_path) -> tuple[Path, Path, Path]:
    """arch.py:net with two checkpoints of it (the shipped standard and adversarially trained weights
    stand in for two epochs of one training)."""
    (tmp_path / "arch.py").write_text(ARCH)
    ep50, ep100 = tmp_path / "epoch-50.pt", tmp_path / "epoch-100.pt"
    torch.save({"state_dict": _state("digits-cnn-at"), "epoch": 50}, ep50)
    torch.save({"state_dict": _state("digits-cnn"), "epoch": 100}, ep100)
    return tmp_path / "arch.py", ep50, ep100


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_epoch_checkpoints_of_one_architecture_are_two_rows(cli, tmp_path, two_checkpoints):
    arch, ep50, ep100 = two_checkpoints
    db = tmp_path / "r.db"
    common = ["--dataset", "digits", "--n-examples", "60", "--eps", "0.1", "--device", "cpu", "--quiet",
              "--db", db]
    for w, attack, out in ((ep50, "fgsm,pgd", "a.json"), (ep100, "pgd", "b.json")):
        r = cli("run", "--model", f"{arch}:net", "--weights", w, "--attack", attack, "--steps", "5", *common,
                "--json", tmp_path / out)
        assert r.code == 0, r
    # the reference: each checkpoint on its own under the built-in names, in another store
    ref = tmp_path / "ref.db"
    r = cli("run", "--model", "digits-cnn-at,digits-cnn", "--attack", "fgsm,pgd", "--steps", "5",
            *common[:-1], ref, "--json", tmp_path / "ref.json")
    assert r.code == 0, r
    expected = {(x["model"], x["attack"]): x["accuracy"] for x in _json(tmp_path / "ref.json")["results"]}
    doc = json.loads(cli("leaderboard", "--db", db, "--format", "json").out)
    rows = doc["rows"]
    assert len(rows) == 2, rows
    from robustness.models.base import state_dict_sha256
    sha = {state_dict_sha256(_state("digits-cnn-at")): "digits-cnn-at", state_dict_sha256(_state("digits-cnn")): "digits-cnn"}
    for row in rows:
        ref_model = sha[row["weights_sha256"]]
        assert row["model"].startswith("arch:net #") and row["model"][10:] == row["weights_sha256"][:8]
        for label, cell in row["threats"].items():
            assert cell["accuracy"] == pytest.approx(expected[(ref_model, label.split("@")[0])]), (row["model"], label)
    assert rows[0]["model"] != rows[1]["model"]
    md = cli("leaderboard", "--db", db).out
    assert "arch:net \\#" in md and "Weights" in md


def test_random_init_through_another_arch_py_is_its_own_row(cli, tmp_path, two_checkpoints):
    """The issue's case: a second file also named arch.py, no weights (random init), evaluated with other
    attacks, must not lend its numbers to the pretrained model's row."""
    arch, _, ep100 = two_checkpoints
    other = tmp_path / "other"
    other.mkdir()
    (other / "arch.py").write_text(ARCH)
    db = tmp_path / "r.db"
    common = ["--dataset", "digits", "--n-examples", "60", "--eps", "0.1", "--device", "cpu", "--quiet",
              "--db", db]
    assert cli("run", "--model", f"{arch}:net", "--weights", ep100, "--attack", "fgsm", *common).code == 0
    torch.manual_seed(0)
    assert cli("run", "--model", f"{other / 'arch.py'}:net", "--attack", "pgd", "--steps", "3", *common).code == 0
    doc = json.loads(cli("leaderboard", "--db", db, "--format", "json").out)
    assert len(doc["rows"]) == 2
    assert sorted(sorted(r["threats"]) for r in doc["rows"]) == [["fgsm@0.1"], ["pgd@0.1"]]
    assert not any(r["complete"] for r in doc["rows"])


def test_frame_marks_the_newest_per_weights(tmp_path):
    import leaderboards
    with ResultStore(tmp_path / "s.db") as s:
        add_run(s, "run-ep50", "2026-01-01T00:00:00+0000",
                {"arch:net": {"clean": 15, "attacks": {"pgd": [9, 5]}, "info": _info("a" * 64)}})
        add_run(s, "run-ep100", "2026-01-02T00:00:00+0000",
                {"arch:net": {"clean": 19, "attacks": {"pgd": [17, 16]}, "info": _info("b" * 64)}})
    df = leaderboards.load(tmp_path / "s.db")
    assert len(df) == 4 and df.newest.all()          # each weights' own numbers are the newest of that model
    assert sorted(set(df.weights_sha256)) == ["a" * 64, "b" * 64]


def test_row_names_do_not_depend_on_the_filters(tmp_path):
    from leaderboards.board import Filters
    with ResultStore(tmp_path / "s.db") as s:
        add_run(s, "run-ep50", "2026-01-01T00:00:00+0000",
                {"arch:net": {"clean": 15, "attacks": {"fgsm": [10, 8]}, "info": _info("a" * 64)}})
        add_run(s, "run-ep100", "2026-01-02T00:00:00+0000",
                {"arch:net": {"clean": 19, "attacks": {"pgd": [17, 16]}, "info": _info("b" * 64)}})
        only_pgd = build_board(s, Filters(attacks=("pgd",)))
    assert [r.model for r in only_pgd.rows] == ["arch:net #bbbbbbbb"]


def test_radius_curves_read_each_rows_own_certificates(tmp_path):
    """Two smoothed models under one label: each curve comes from its own run's certificates."""
    from leaderboards.curves import CERTIFIED, radius_curves
    from leaderboards.records import summarize
    from leaderboards.store import Certified
    with ResultStore(tmp_path / "s.db") as s:
        for i, (sha, radius) in enumerate((("a" * 64, 0.25), ("b" * 64, 0.75))):
            run = s.create_run(f"k{i}", {"models": ["smooth"]}, {}, None)
            s.register_model(run, "smooth", "digits", {"model": _info(sha)}, [0, 1])
            s.write_batch(run, "smooth", 0, [], [], certificates=[Certified(j, 1, 1, radius, 0.9, 90, 100)
                                                                  for j in range(2)])
            s.finish_run(run, [summarize(run_id=run, model="smooth", dataset="digits", attack=CERTIFIED,
                                         norm="l2", eps=radius, index=[0, 1], clean_correct=np.ones(2, bool),
                                         correct=np.ones(2, bool))])
        curves = radius_curves(s)
    assert {name: max(xs) for (name, _), (xs, _) in curves.items()} == {"smooth #aaaaaaaa": 0.25,
                                                                         "smooth #bbbbbbbb": 0.75}
