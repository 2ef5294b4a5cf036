"""The Python API (issue 11): the README's example runs as written, `rb.evaluate` and `robust-bench run`
make the same stored run from the same arguments, modules and tensors evaluate like the names they come
from, and protocols keep numbers as numbers."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

import robustness as rb
from leaderboards import ResultStore

from .conftest import ROOT


def test_the_readme_python_block_runs_as_written(capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "robust accuracy %" in out and "pgd(steps=20)" in out


def _outcomes(db: Path) -> tuple[str, dict]:
    with ResultStore(db) as s:
        (run,) = s.runs()
        per = {(r.model, r.attack, r.eps): (r.per_example.index, r.per_example.correct, r.per_example.broken_eps)
               for r in s.results(run.run_id, with_examples=True)}
        return run.key, per


def test_cli_and_api_make_the_same_stored_run(cli, tmp_path):
    args = dict(attacks=["fgsm", "pgd"], eps=[0.05, 0.1], n_examples=60, seed=3, batch_size=32)
    res = cli("run", "--model", "digits-cnn-at", "--attack", "fgsm,pgd", "--eps", "0.05,0.1", "--n-examples", "60",
              "--seed", "3", "--batch-size", "32", "--db", tmp_path / "cli.db")
    assert res.code == 0, res
    ev = rb.evaluate("digits-cnn-at", **args, store=tmp_path / "api.db")
    key_cli, per_cli = _outcomes(tmp_path / "cli.db")
    key_api, per_api = _outcomes(tmp_path / "api.db")
    assert key_cli == key_api and per_cli == per_api
    # in one store the API finds the CLI's complete run and reuses it
    again = rb.evaluate("digits-cnn-at", **args, store=tmp_path / "cli.db")
    assert again.reused and not ev.reused
    assert [r.accuracy for r in again.results] == [r.accuracy for r in ev.results]


def test_a_module_and_tensors_evaluate_like_the_names_they_come_from():
    named = rb.evaluate("digits-cnn", "digits", attacks=["pgd"], eps=[0.1], n_examples=80)
    module = rb.load_model("digits-cnn").module
    data = rb.load_dataset("digits").dataset
    ev = rb.evaluate(module, (data.x, data.y), attacks=["pgd"], eps=[0.1], n_examples=80, name="my-cnn")
    a, b = named.result("digits-cnn", "pgd", 0.1), ev.result("my-cnn", "pgd", 0.1)
    assert a.per_example.index == b.per_example.index
    assert a.per_example.correct == b.per_example.correct
    assert ev.results[0].dataset.startswith("tensors-")
    (po,) = [p for p in ev.per_example if p.attack == "pgd"]
    assert po.model == "my-cnn" and len(po.index) == 80
    # per example: never broken <=> still correct at the only eps
    assert all((be is None) == ok for be, ok, c in zip(po.broken_eps, b.per_example.correct, po.clean_correct) if c)


def test_results_are_frozen_and_the_in_memory_store_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ev = rb.evaluate("digits-cnn", attacks=["fgsm"], eps=[0.1], n_examples=20)
    with pytest.raises(Exception):
        ev.run_id = "x"  # type: ignore[misc]
    assert list(tmp_path.iterdir()) == []
    assert ev.metadata["argv"] is None           # a library call records no command line
    assert ev.to_json()["results"][0]["per_example"]["index"]


def test_bad_input_is_a_user_error():
    with pytest.raises(rb.UserError, match="listed twice"):
        rb.evaluate("digits-cnn", attacks=["pgd", rb.attacks.PGD()], eps=[0.1], n_examples=10)
    with pytest.raises(rb.UserError, match="set up for l2"):
        rb.evaluate("digits-cnn", attacks=[rb.attacks.PGD(norm="l2")], eps=[0.1], n_examples=10)
    with pytest.raises(rb.UserError, match="labels"):
        rb.load_dataset((torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2.5, 3])))
    with pytest.raises(rb.UserError, match="batch-size"):
        rb.evaluate("digits-cnn", attacks=["fgsm"], eps=[0.1], batch_size=0)


def test_protocols_keep_numbers_as_numbers():
    spec = rb.RunSpec.from_protocol("digits-linf", models=("digits-cnn",))
    assert spec.eps == (0.1,) and isinstance(spec.eps[0], float)
    assert spec.n_examples == 360 and spec.subset == "first"
    pgd = dict(next(a for a in spec.attacks if a.name == "pgd").params)
    assert pgd["steps"] == 20 and pgd["random_start"] is True
    with pytest.raises(rb.UserError, match="fixes eps"):
        rb.RunSpec.from_protocol("digits-linf", eps=(0.2,))
    c = rb.RunSpec.from_protocol("cifar10-corruptions", models=("m",))
    assert len(c.corruptions) == 15 and c.severities == (1, 2, 3, 4, 5) and c.attacks == ()


def test_no_module_outside_the_cli_parses_arguments():
    offenders = []
    for path in (ROOT / "robustness").rglob("*.py"):
        rel = path.relative_to(ROOT / "robustness")
        if rel.parts[0] == "cli":
            continue
        text = path.read_text()
        if "argparse" in text or re.search(r"from \.+cli\b|import robustness\.cli|from robustness\.cli", text):
            if rel.as_posix() != "__main__.py":
                offenders.append(rel.as_posix())
    assert offenders == []


def test_adaptive_through_the_api_adds_the_rows_the_cli_adds(tmp_path):
    model = tmp_path / "q.py"
    model.write_text("import torch\nfrom robustness.models import create_model\n"
                     "class Q(torch.nn.Module):\n    def __init__(self):\n        super().__init__(); "
                     "self.net = create_model('digits-cnn').module\n"
                     "    def forward(self, x):\n        return self.net(torch.round(x * 16) / 16)\n"
                     "def make():\n    return Q()\n")
    ev = rb.evaluate(f"{model}:make", "digits", attacks=["pgd"], eps=[0.125], n_examples=60, adaptive=True)
    attacks = {r.attack for r in ev.results}
    assert any(a.startswith("bpda:") for a in attacks) and any(a.startswith("transfer:") for a in attacks)
    pgd = ev.result(f"q:make", "pgd", 0.125)
    worst = ev.result(f"q:make", "worst-case", 0.125)
    assert worst.accuracy < pgd.accuracy   # the adaptive rows break what masked-gradient PGD cannot


def test_fold_bn_is_its_own_run_with_the_same_outcomes_up_to_rounding(cli, tmp_path):
    db = tmp_path / "r.db"
    for extra in ((), ("--fold-bn",)):
        res = cli("run", "--model", "digits-cnn-at", "--attack", "pgd", "--eps", "0.1", "--n-examples", "120",
                  "--db", db, *extra)
        assert res.code == 0, res
    with ResultStore(db) as s:
        runs = s.runs()
        assert len(runs) == 2 and runs[0].key != runs[1].key
        a, b = (s.results(r.run_id, with_examples=True)[0].per_example.correct for r in runs)
    # folding changes logits only by float rounding (tests/test_fold.py bounds it): at most 1 flip in 120
    assert sum(x != y for x, y in zip(a, b)) <= 1
