"""The results store under conditions a user's machine produces: a read-only copy (a shared folder, an
archive), and two identical commands started at the same moment."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from leaderboards import ResultStore
from leaderboards.synthetic import add_synthetic_run
from tests.conftest import ROOT, python_cmd


def _store(path: Path) -> Path:
    with ResultStore(path) as s:
        add_synthetic_run(s, models={"m": 0.6, "n": 0.3}, attacks=["pgd"], eps=[0.1], n=30, seed=2, run_key="k")
    return path


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _make_unwritable(paths):
    """chmod for a normal user; for root, which writes through any mode, the immutable attribute."""
    if os.geteuid() != 0:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return lambda: [p.chmod(0o755 if p.is_dir() else 0o644) for p in paths]
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file unwritable")
    done = []
    for p in paths:
        if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0:
            for q in done:
                subprocess.run(["chattr", "-i", str(q)])
            pytest.skip("chattr +i is not permitted here")
        done.append(p)
    return lambda: [subprocess.run(["chattr", "-i", str(p)]) for p in reversed(done)]


def test_a_read_only_store_is_readable(tmp_path, cli):
    """leaderboard, plot, site and compare only read: a store in a folder the user cannot write (a shared
    or archived copy) works, and no byte of it changes."""
    d = tmp_path / "ro"
    d.mkdir()
    db = _store(d / "results.db")
    with ResultStore(db, create=False) as s:
        add_synthetic_run(s, models={"m": 0.2, "n": 0.3}, attacks=["pgd"], eps=[0.1], n=30, seed=2, run_key="k2",
                          indices=range(30))
        a, b = (r.run_id for r in s.runs())
    before = _sha(db)
    restore = _make_unwritable([db, d])
    try:
        res = cli("leaderboard", "--db", db, "--format", "csv")
        assert res.code == 0 and "m," in res.out, res
        res = cli("compare", a, b, "--db", db)
        assert res.code in (0, 1) and "pgd" in res.out, res
        res = cli("plot", "--db", db, "--kind", "eps", "--out", tmp_path / "eps.png")
        assert res.code == 0, res
        res = cli("site", "--db", db, "--out", tmp_path / "site", "--no-plots")
        assert res.code == 0, res
    finally:
        restore()
    assert _sha(db) == before
    assert sorted(p.name for p in d.iterdir()) == ["results.db"]


def test_opening_read_only_never_writes(tmp_path):
    db = _store(tmp_path / "r.db")
    before = _sha(db)
    with ResultStore(db, create=False, read_only=True) as s:
        assert len(s.runs()) == 1 and s.results()
        with pytest.raises(Exception):
            s.create_run("x", {}, {})
    assert _sha(db) == before


def test_an_empty_file_is_not_a_store_and_stays_empty(tmp_path):
    from leaderboards import StoreError
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for read_only in (False, True):
        with pytest.raises(StoreError, match="empty"):
            ResultStore(empty, create=False, read_only=read_only)
    assert empty.stat().st_size == 0
    ResultStore(empty).close()   # `run` may still start a store in an empty file it was pointed at


def test_run_id_prefixes_are_not_patterns(tmp_path):
    from leaderboards import StoreError
    db = _store(tmp_path / "r.db")
    with ResultStore(db) as s:
        run_id = s.runs()[0].run_id
        assert s.get_run(run_id[:4]).run_id == run_id
        for pattern in ("%", "_" + run_id[1:], run_id[:3] + "%", "_"):
            with pytest.raises(StoreError, match="no run"):
                s.get_run(pattern)


def test_identical_runs_started_together_share_one_run(tmp_path):
    """Both see no run with the key, then both create one: the second must get the first's run."""
    db = tmp_path / "r.db"
    first, second = ResultStore(db), ResultStore(db)
    try:
        assert first.find_run("same-key") is None and second.find_run("same-key") is None
        a = first.create_run("same-key", {"s": 1}, {})
        b = second.create_run("same-key", {"s": 1}, {})
        assert a == b
        assert [r.run_id for r in first.runs()] == [a]
        # a finished run does not absorb a new one: reruns of complete commands are the engine's choice
        first.finish_run(a, [])
        c = second.create_run("same-key", {"s": 1}, {})
        assert c != a
    finally:
        first.close()
        second.close()


def test_two_identical_commands_started_together_store_one_run(tmp_path):
    db = tmp_path / "r.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [*python_cmd(), "run", "--model", "digits-cnn", "--attack", "fgsm", "--eps", "0.1", "--n-examples", "64",
           "--batch-size", "8", "--db", str(db), "--quiet"]
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    with ResultStore(db, create=False) as s:
        runs = s.runs()
        assert len(runs) == 1, [(r.run_id, r.status) for r in runs]
        assert runs[0].status == "complete"
        (res,) = s.results(runs[0].run_id)
        assert res.n == 64
