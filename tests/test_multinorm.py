"""`--norm linf,l2`: each norm its own stored run with its own eps, and the union of the norms (an example
counts only if it survived every norm; Maini et al. 2020) computed from the per-example outcomes."""
from __future__ import annotations

import re

import numpy as np

from leaderboards import ResultStore


def test_two_norms_make_two_runs_and_the_union(cli, tmp_path):
    db = tmp_path / "r.db"
    res = cli("run", "--model", "digits-cnn", "--norm", "linf,l2", "--eps", "linf=0.05,0.1", "--eps", "l2=0.3,0.6",
              "--n-examples", "80", "--db", db)
    assert res.code == 0, res
    with ResultStore(db) as s:
        runs = s.runs()
        assert len(runs) == 2
        by_norm = {}
        for run in runs:
            rows = s.results(run.run_id, with_examples=True)
            norm = {r.norm for r in rows}.pop()
            by_norm[norm] = {r.eps: r for r in rows if r.attack == "worst-case"}
    assert sorted(by_norm["linf"]) == [0.05, 0.1] and sorted(by_norm["l2"]) == [0.3, 0.6]
    printed = re.findall(r"digits-cnn  linf ([\d.]+) \+ l2 ([\d.]+): ([\d.]+)", res.out)
    assert len(printed) == 2
    for (le, l2e, acc), a, b in zip(printed, sorted(by_norm["linf"]), sorted(by_norm["l2"])):
        ra, rb = by_norm["linf"][a], by_norm["l2"][b]
        assert ra.per_example.index == rb.per_example.index
        union = np.array(ra.per_example.correct) & np.array(rb.per_example.correct)
        assert float(acc) == round(100 * union.mean(), 1)
        assert float(acc) <= min(100 * ra.accuracy, 100 * rb.accuracy) + 1e-9


def test_several_norms_need_an_eps_list_each(cli, tmp_path):
    res = cli("run", "--model", "digits-cnn", "--norm", "linf,l2", "--eps", "0.1", "--db", tmp_path / "r.db")
    assert res.code == 2 and "linf=" in res.err
    res = cli("run", "--model", "digits-cnn", "--norm", "linf", "--eps", "l2=0.5", "--db", tmp_path / "r.db")
    assert res.code == 2 and "not in --norm" in res.err
    res = cli("run", "--model", "digits-cnn", "--norm", "linf,l9", "--db", tmp_path / "r.db")
    assert res.code == 2 and "--norm" in res.err
    assert not (tmp_path / "r.db").exists()


def test_repeated_attack_flags_add_up(cli, tmp_path):
    res = cli("run", "--model", "digits-cnn", "--attack", "fgsm", "--attack", "pgd", "--eps", "0.1",
              "--n-examples", "20", "--db", tmp_path / "r.db")
    assert res.code == 0, res
    assert "fgsm" in res.out and "pgd" in res.out and "worst-case" in res.out
