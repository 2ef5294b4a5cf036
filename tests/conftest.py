"""Shared fixtures: the shared real data (skipped with a reason when absent), tiny models, and an
in-process CLI runner that returns (exit code, stdout, stderr)."""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUST_BENCH_SHARED", ROOT.parent / "shared" / "data"))
RESNET20 = SHARED / "models" / "resnet20-12fca82f.th"
CIFAR_TEST = SHARED / "cifar10" / "test"
CIFAR_TRAIN = SHARED / "cifar10" / "train"
CIFAR_MEAN = "0.485,0.456,0.406"
CIFAR_STD = "0.229,0.224,0.225"

# one thread: tiny models gain nothing from more, and tests that start subprocesses would oversubscribe
torch.set_num_threads(1)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set ROBUST_BENCH_SHARED to the shared/data folder)")
    return path


@pytest.fixture
def shared_resnet20() -> Path:
    return need(RESNET20)


@pytest.fixture
def cifar_test() -> Path:
    return need(CIFAR_TEST)


@pytest.fixture
def shared_root() -> Path:
    return need(SHARED)


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def cli():
    """Run `robust-bench ARGS` in this process."""
    from robustness.cli import main

    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse errors
                code = int(e.code or 0)
        return CliResult(code, out.getvalue(), err.getvalue())
    return run


@pytest.fixture(scope="session")
def digits():
    """(model, x, y) for the built-in standard digits model on the 360 test digits."""
    from robustness.data import load_dataset
    from robustness.models import create_model
    model = create_model("digits-cnn").module.eval()
    data = load_dataset("digits").dataset
    return model, data.x, data.y


@pytest.fixture(scope="session")
def digits_at():
    from robustness.models import create_model
    return create_model("digits-cnn-at").module.eval()


def python_cmd() -> list[str]:
    return [sys.executable, "-m", "robustness"]
