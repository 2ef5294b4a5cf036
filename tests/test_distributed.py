"""Scale-out under torchrun on the CPU (gloo, 2 processes): the same per-example outcomes as one
process, suites that skip what is complete, and a killed worker resumed by rerunning the command."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leaderboards import ResultStore

from .conftest import ROOT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on POSIX")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["ROBUST_BENCH_BACKEND"] = "gloo"
    return env


def _torchrun(n: int, *args: str, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(port),
            "-m", "robustness", "run", *args]


def _single(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustness", "run", *args]


ARGS = ("--model", "digits-cnn,digits-cnn-at", "--n-examples", "150", "--batch-size", "16", "--quiet")


def _per_example(path: Path) -> list:
    doc = json.loads(path.read_text())
    return [(r["model"], r["attack"], r["eps"], r["per_example"]) for r in doc["results"]]


def test_two_processes_equal_one_example_for_example(tmp_path):
    one = subprocess.run(_single(*ARGS, "--db", str(tmp_path / "1.db"), "--json", str(tmp_path / "1.json")),
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(_torchrun(2, *ARGS, "--db", str(tmp_path / "2.db"), "--json", str(tmp_path / "2.json"),
                                   port=29611), env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _per_example(tmp_path / "1.json") == _per_example(tmp_path / "2.json")
    assert two.stdout.count("digits-cnn-at ") == 3, "only rank 0 prints (fgsm, pgd, worst-case rows)"
    run, = ResultStore(tmp_path / "2.db").runs()
    assert run.metadata["world_size"] == 2


def test_suite_runs_end_to_end_and_skips_completed_entries(tmp_path, cli):
    suite = tmp_path / "suite.yaml"
    suite.write_text("models: [digits-cnn, digits-cnn-at]\n"
                     "attacks:\n  - {attack: fgsm, eps: [0.05, 0.1]}\n  - {attack: pgd, steps: 5, eps: [0.1]}\n"
                     "settings: {n_examples: 40, batch_size: 16}\n")
    db = tmp_path / "s.db"
    first = cli("run", "--config", suite, "--db", db)
    assert first.code == 0, first
    store = ResultStore(db)
    assert len(store.runs()) == 4 and all(r.status == "complete" for r in store.runs())
    again = cli("run", "--config", suite, "--db", db)
    assert again.code == 0 and again.err.count("already complete") == 4
    assert len(ResultStore(db).runs()) == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [digits-cnn]\nsettings: {n_exampels: 3}\n")
    res = cli("run", "--config", bad, "--db", db)
    assert res.code == 2 and "n_exampels" in res.err


def test_suite_spreads_over_ranks(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("models: [digits-cnn]\nattacks: [fgsm, pgd]\nsettings: {n_examples: 60, batch_size: 8}\n")
    res = subprocess.run(_torchrun(2, "--config", str(suite), "--db", str(tmp_path / "s.db"), "--quiet", port=29612),
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = ResultStore(tmp_path / "s.db").runs()
    assert len(runs) == 2 and all(r.status == "complete" for r in runs)


@pytest.mark.slow
def test_killed_worker_then_rerun_gives_the_uninterrupted_result(tmp_path):
    args = ("--model", "digits-cnn", "--attack", "pgd", "--steps", "150", "--eps", "0.05,0.1", "--n-examples", "240",
            "--batch-size", "12", "--quiet")
    db = tmp_path / "k.db"
    proc = subprocess.Popen(_torchrun(2, *args, "--db", str(db), port=29613), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline, done = time.time() + 300, 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if db.exists():
            try:
                done = sqlite3.connect(db, timeout=1).execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 4:
                break
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    # kill one worker (the non-zero rank): torchrun then tears the job down
    victims = [int(w) for w in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                              text=True).stdout.split()]
    assert victims, "no worker processes found"
    os.kill(max(victims), signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    partial = sqlite3.connect(db).execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    assert 4 <= partial < 20
    again = subprocess.run(_torchrun(2, *args, "--db", str(db), "--json", str(tmp_path / "k.json"), port=29614),
                           env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    ref = subprocess.run(_single(*args, "--db", str(tmp_path / "r.db"), "--json", str(tmp_path / "r.json")),
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    assert _per_example(tmp_path / "k.json") == _per_example(tmp_path / "r.json")
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 240
