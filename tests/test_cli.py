"""The command line: the default demo, listings, and every bad input -> one line on stderr, exit 2,
no traceback, the database untouched."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_default_run_is_the_offline_demo(cli, tmp_path):
    res = cli("run", "--db", tmp_path / "r.db")
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert any(l.startswith("digits-cnn ") and "fgsm" in l for l in lines)
    assert any(l.startswith("digits-cnn-at") and "pgd" in l for l in lines)
    assert "eps=0.1" in res.out and "95%" in res.out


def test_help_and_listings(cli):
    res = cli("run", "--help")
    assert res.code == 0 and "--eps" in res.out and "examples:" in res.out
    models = cli("list", "models")
    assert models.code == 0 and "digits-cnn-at" in models.out and "resnet50" in models.out
    assert "robustbench:" in models.out
    data = cli("list", "datasets")
    assert data.code == 0 and all(n in data.out for n in ("cifar10", "mnist", "imagenet", "digits", "svhn"))
    att = cli("list", "attacks")
    assert att.code == 0 and "pgd" in att.out and "fgsm" in att.out


def _nan_model_file(tmp_path: Path) -> Path:
    f = tmp_path / "nanmodel.py"
    f.write_text("import torch\nclass M(torch.nn.Module):\n"
                 "    def __init__(self):\n        super().__init__(); self.l = torch.nn.Linear(64, 10)\n"
                 "    def forward(self, x):\n        return self.l(x.flatten(1)) * float('nan')\n"
                 "def make():\n    return M()\n")
    return f


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 8, 8, 1), np.uint8), y=np.zeros((0,), np.int64))
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4) % 10)
    three = tmp_path / "three.npz"
    np.savez(three, x=np.zeros((4, 8, 8, 1), np.uint8), y=np.arange(4) % 3)
    nan = _nan_model_file(tmp_path)
    return [
        (["--model", "digits-cnnn"], "did you mean digits-cnn"),
        (["--model", "resnet5"], "unknown model"),
        (["--dataset", "cifar11"], "did you mean cifar10"),
        (["--attack", "pgdd"], "did you mean pgd"),
        (["--eps", "8/25x"], "bad eps"),
        (["--eps", "-0.1"], "must be >= 0"),
        (["--eps", "8"], "exceeds the [0, 1] pixel range"),
        (["--eps", "1/0"], "bad eps"),
        (["--model", str(tmp_path / "missing.pt")], "not found"),
        (["--model", str(corrupt)], "corrupt"),
        (["--model", f"{nan}:make", "--dataset", "digits"], "NaN"),
        (["--model", "digits-cnn", "--dataset", str(empty)], "empty"),
        (["--model", "digits-cnn", "--dataset", str(rgb)], "channel"),
        (["--model", "digits-cnn", "--dataset", str(three)], "3"),
        (["--model", "digits-cnn", "--dataset", str(tmp_path / "nope")], "not found"),
        (["--model", "digits-cnn", "--n-examples", "100000"], "exceeds"),
        (["--n-examples", "0"], "expected a number >= 1"),
        (["--model", "digits-cnn,digits-cnn"], "listed twice"),
        (["--mean", "0.5"], "--std"),
        (["--model", f"{nan}:nope"], "unknown factory"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    ]


def test_every_bad_input_is_one_line_and_exit_2(cli, tmp_path):
    db = tmp_path / "r.db"
    ok = cli("run", "--model", "digits-cnn", "--n-examples", "20", "--db", db)
    assert ok.code == 0, ok
    before = _digest(db)
    for args, needle in _bad_inputs(tmp_path):
        res = cli("run", "--db", db, *args)
        assert res.code == 2, (args, res)
        lines = res.err.strip().splitlines()
        assert len(lines) == 1, (args, res.err)
        assert "Traceback" not in res.err
        assert needle.lower() in res.err.lower(), (args, res.err)
        assert _digest(db) == before, f"{args} touched the database"


def test_bad_input_does_not_create_a_database(cli, tmp_path):
    db = tmp_path / "new.db"
    res = cli("run", "--db", db, "--model", "nonexistent-model")
    assert res.code == 2 and not db.exists()


def test_unwritable_database_is_one_line(cli, tmp_path):
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"garbage" * 100)
    res = cli("run", "--db", bad, "--model", "digits-cnn", "--n-examples", "10")
    assert res.code == 2 and "not a usable results database" in res.err
    assert bad.read_bytes() == b"garbage" * 100


def test_comma_list_of_models_and_attacks_with_fraction_eps(cli, tmp_path):
    res = cli("run", "--model", "digits-cnn,digits-cnn-at", "--attack", "pgd", "--eps", "13/255,0.1",
              "--n-examples", "60", "--steps", "5", "--restarts", "2", "--no-random-start", "--db", tmp_path / "r.db")
    assert res.code == 0, res
    assert "eps=13/255" in res.out and "eps=0.1" in res.out
    assert res.out.count("pgd") == 2
