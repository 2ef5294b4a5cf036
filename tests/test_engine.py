"""The engine: per-example cascade over eps, determinism, resume after a kill, concurrent writers, JSON."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from leaderboards import ResultStore
from robustness import AttackSpec, Evaluator, RunSpec

from .conftest import ROOT, python_cmd

EPS = (0.05, 0.1, 0.2)


def _spec(**kw) -> RunSpec:
    base = dict(models=("digits-cnn",), attacks=(AttackSpec("fgsm"), AttackSpec("pgd")), eps=EPS,
                n_examples=120, batch_size=50, device="cpu")
    base.update(kw)
    return RunSpec(**base)


def _per_example(store: ResultStore, run_id: str) -> dict:
    out = {}
    for r in store.results(run_id, with_examples=True):
        out[(r.model, r.attack, r.eps)] = (r.per_example.index, r.per_example.clean_correct, r.per_example.correct)
    return out


def test_accuracy_never_rises_with_eps_and_is_per_example(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        outcome = Evaluator(_spec(), store).run()
        res = {(r.attack, r.eps): r for r in store.results(outcome.run_id, with_examples=True)}
        for attack in ("fgsm", "pgd", "worst-case"):
            accs = [res[(attack, e)].accuracy for e in EPS]
            assert accs == sorted(accs, reverse=True)
            ex = [np.array(res[(attack, e)].per_example.correct) for e in EPS]
            for a, b in zip(ex, ex[1:]):
                assert not (b & ~a).any(), "an example robust at a larger eps must be robust at the smaller"
            r = res[(attack, EPS[0])]
            assert r.accuracy <= r.clean_accuracy
            assert r.n == 120 and len(r.per_example.index) == 120
            lo, hi = r.ci95
            assert lo <= r.accuracy <= hi
        # PGD is at least as strong as FGSM here (a normal model)
        assert res[("pgd", 0.1)].accuracy <= res[("fgsm", 0.1)].accuracy
        assert res[("pgd", 0.1)].backward > 0 and res[("pgd", 0.1)].forward > res[("pgd", 0.1)].backward


def test_same_seed_same_results_and_batch_size_does_not_matter(tmp_path):
    a = ResultStore(tmp_path / "a.db")
    b = ResultStore(tmp_path / "b.db")
    ra = Evaluator(_spec(), a).run()
    rb = Evaluator(_spec(batch_size=17), b).run()
    assert _per_example(a, ra.run_id) == _per_example(b, rb.run_id)
    rc = Evaluator(_spec(seed=1), a).run()
    assert rc.run_id != ra.run_id
    # a different seed draws a different random sample of examples
    assert [r.per_example.index for r in a.results(rc.run_id, with_examples=True)][0] != \
        [r.per_example.index for r in a.results(ra.run_id, with_examples=True)][0]


def test_rerunning_a_complete_run_reuses_it(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        first = Evaluator(_spec(), store).run()
        again = Evaluator(_spec(), store).run()
        assert again.reused and again.run_id == first.run_id
        assert [r.accuracy for r in again.results] == [r.accuracy for r in first.results]
        assert len(store.runs()) == 1


def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch):
    full = ResultStore(tmp_path / "full.db")
    ref = Evaluator(_spec(), full).run()
    store = ResultStore(tmp_path / "part.db")
    calls = {"n": 0}
    real = ResultStore.write_batch

    def crash_after_one(self, *a, **k):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(ResultStore, "write_batch", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        Evaluator(_spec(), store).run()
    monkeypatch.setattr(ResultStore, "write_batch", real)
    run = store.runs()[0]
    assert run.status == "running" and store.done_batches(run.run_id, "digits-cnn") == {0}
    resumed = Evaluator(_spec(), store).run()
    assert resumed.resumed and resumed.run_id == run.run_id
    assert _per_example(store, run.run_id) == _per_example(full, ref.run_id)
    # nothing duplicated: one outcome row per (attack, example), worst case included
    db = sqlite3.connect(tmp_path / "part.db")
    assert db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 3 * 120


def _cmd(db: Path, *extra: str) -> list[str]:
    return python_cmd() + ["run", "--model", "digits-cnn", "--attack", "pgd", "--steps", "200", "--eps",
                           "0.05,0.1", "--batch-size", "20", "--n-examples", "200", "--db", str(db), "--quiet",
                           *extra]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_kill_midway_and_rerun_gives_the_uninterrupted_result(tmp_path):
    """A real SIGKILL between batches (the process dies, no cleanup), then the same command again."""
    db = tmp_path / "killed.db"
    proc = subprocess.Popen(_cmd(db), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.exists():
            try:
                done = sqlite3.connect(db, timeout=1).execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 2:
                break
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= done < 10
    again = subprocess.run(_cmd(db), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    ref_db = tmp_path / "ref.db"
    ref = subprocess.run(_cmd(ref_db), env=_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    a, b = ResultStore(db), ResultStore(ref_db)
    (ra,), (rb,) = a.runs(), b.runs()
    assert ra.status == rb.status == "complete"
    assert _per_example(a, ra.run_id) == _per_example(b, rb.run_id)
    n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM outcomes").fetchone()[0]
    assert n == 200


def test_two_processes_writing_one_database_both_complete(tmp_path):
    db = tmp_path / "shared.db"
    procs = [subprocess.Popen(python_cmd() + ["run", "--model", m, "--attack", "fgsm,pgd", "--batch-size", "30",
                                              "--db", str(db), "--quiet"], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for m in ("digits-cnn", "digits-cnn-at")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    store = ResultStore(db)
    runs = store.runs()
    assert len(runs) == 2 and all(r.status == "complete" for r in runs)
    models = {r.model for r in store.results()}
    assert models == {"digits-cnn", "digits-cnn-at"}


def test_json_export(tmp_path, cli):
    path = tmp_path / "out.json"
    res = cli("run", "--model", "digits-cnn", "--eps", "0.1", "--n-examples", "50", "--db", tmp_path / "r.db",
              "--json", path, "--tag", "v1.2")
    assert res.code == 0, res
    doc = json.loads(path.read_text())
    run = doc["run"]
    for key in ("run_id", "versions", "git_commit", "device", "seed", "date", "models", "tag"):
        assert key in run
    assert run["tag"] == "v1.2"
    m = run["models"]["digits-cnn"]
    assert len(m["weights_sha256"]) == 64 and len(m["indices_sha256"]) == 64
    assert {r["attack"] for r in doc["results"]} == {"fgsm", "pgd", "worst-case"}
    for r in doc["results"]:
        assert 0 <= r["accuracy"] <= r["clean_accuracy"] <= 1
        lo, hi = r["ci95"]
        assert 0 <= lo <= r["accuracy"] <= hi <= 1
        pe = r["per_example"]
        assert len(pe["index"]) == len(pe["clean_correct"]) == len(pe["correct"]) == r["n"] == 50
        assert sum(pe["correct"]) == round(r["accuracy"] * 50)
        assert not any(c and not k for c, k in zip(pe["correct"], pe["clean_correct"]))
        # the smallest tested eps that broke each example agrees with its outcome at this eps
        for ok, clean, b in zip(pe["correct"], pe["clean_correct"], pe["broken_eps"]):
            assert ok == (clean and (b is None or b > r["eps"]))
            assert clean or b == 0


def test_worst_case_is_per_example_and_at_most_each_attack(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        outcome = Evaluator(_spec(), store).run()
        by = {(r.attack, r.eps): r for r in store.results(outcome.run_id, with_examples=True)}
        for eps in EPS:
            worst = np.array(by[("worst-case", eps)].per_example.correct)
            fgsm = np.array(by[("fgsm", eps)].per_example.correct)
            pgd = np.array(by[("pgd", eps)].per_example.correct)
            assert np.array_equal(worst, fgsm & pgd)
            assert by[("worst-case", eps)].accuracy <= min(by[("fgsm", eps)].accuracy, by[("pgd", eps)].accuracy)
            assert by[("worst-case", eps)].forward == by[("fgsm", eps)].forward + by[("pgd", eps)].forward


def test_gpu_paths_run_on_the_cpu(tmp_path):
    """bf16 autocast and channels_last (the GPU configuration) give a valid run on the CPU too."""
    with ResultStore(tmp_path / "r.db") as store:
        fp32 = Evaluator(_spec(n_examples=40), store).run()
        bf16 = Evaluator(_spec(n_examples=40, precision="bf16", channels_last=True), store).run()
        assert bf16.run_id != fp32.run_id
        for a, b in zip(fp32.results, bf16.results):
            assert (a.attack, a.eps) == (b.attack, b.eps)
            assert abs(a.clean_accuracy - b.clean_accuracy) <= 0.05
            assert abs(a.accuracy - b.accuracy) <= 0.15
