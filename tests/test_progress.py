"""Feedback inside long batches (issue 17): AutoAttack reports each sub-attack as it starts and ends, the
runner shows it (a log line per sub-attack without a terminal), and an interrupted batch keeps its
finished sub-attacks, so the resumed run does not redo them and ends with the uninterrupted result."""
from __future__ import annotations

import json

import pytest
import torch

from attacks import AutoAttack, progress

AA_ARGS = "steps=2,square_queries=20,n_target_classes=2"


class Recorder(progress.Listener):
    def __init__(self, stop_at: tuple[str, str] | None = None) -> None:
        self.events: list[progress.Event] = []
        self.kept: dict[str, dict] = {}
        self.stop_at = stop_at

    def event(self, e: progress.Event) -> None:
        self.events.append(e)
        if self.stop_at == (e.part, e.stage):
            raise KeyboardInterrupt

    def recall(self, key):
        return self.kept.get(key)

    def keep(self, key, state):
        self.kept[key] = state


@pytest.fixture(scope="module")
def batch(digits):
    model, x, y = digits
    return model, x[:24], y[:24], torch.arange(24, dtype=torch.int64) * 7919


def _aa() -> AutoAttack:
    return AutoAttack(steps=2, square_queries=20, n_target_classes=2)


def test_autoattack_reports_each_sub_attack(batch):
    model, x, y, seeds = batch
    rec = Recorder()
    with progress.listening(rec):
        out = _aa()(model, x, y, 0.1, seeds=seeds)
    lineup = [s["name"] for s in out.details["sub_attacks"]]
    assert lineup == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [(e.part, e.stage) for e in rec.events] == [(n, s) for n in lineup for s in ("start", "end")]
    for e, row in zip(rec.events[1::2], out.details["sub_attacks"]):
        assert (e.examples, e.fooled, e.index, e.total) == (row["attacked"], row["fooled"], lineup.index(e.part) + 1, 4)
        assert e.seconds == row["seconds"] and e.eps == 0.1
    # nobody listening: the same result (events and keeping change nothing)
    plain = _aa()(model, x, y, 0.1, seeds=seeds)
    assert torch.equal(plain.x_adv, out.x_adv) and torch.equal(plain.fooled, out.fooled)


def test_an_interrupted_call_keeps_its_finished_sub_attacks(batch):
    model, x, y, seeds = batch
    whole = _aa()(model, x, y, 0.1, seeds=seeds)
    rec = Recorder(stop_at=("fab-t", "start"))
    with progress.listening(rec), pytest.raises(KeyboardInterrupt):
        _aa()(model, x, y, 0.1, seeds=seeds)
    assert len(rec.kept) == 2                        # apgd-ce and apgd-t finished
    rec.stop_at, rec.events = None, []
    with progress.listening(rec):
        again = _aa()(model, x, y, 0.1, seeds=seeds)
    assert [e.stage for e in rec.events if e.stage != "start"] == ["kept", "kept", "end", "end"]
    assert torch.equal(again.x_adv, whole.x_adv) and torch.equal(again.fooled, whole.fooled)
    assert again.details["broken_by"] == whole.details["broken_by"]
    assert [(r["name"], r["attacked"], r["fooled"], r["forward"], r["backward"]) for r in again.details["sub_attacks"]] \
        == [(r["name"], r["attacked"], r["fooled"], r["forward"], r["backward"]) for r in whole.details["sub_attacks"]]
    # other inputs, other keys: nothing kept is used for them
    rec.events = []
    with progress.listening(rec):
        _aa()(model, x.flip(0), y.flip(0), 0.1, seeds=seeds)
    assert "kept" not in [e.stage for e in rec.events]
    # without per-example seeds nothing is kept (a rerun would draw other random starts)
    quiet = Recorder()
    with progress.listening(quiet):
        _aa()(model, x, y, 0.1)
    assert quiet.kept == {} and len(quiet.events) == 8


def _cli_args(db, out=None):
    args = ["run", "--model", "digits-cnn", "--attack", "autoattack", "--attack-args", AA_ARGS, "--eps", "0.1",
            "--n-examples", "40", "--batch-size", "20", "--device", "cpu", "--db", db]
    return args + (["--json", out] if out else [])


def _per_example(path) -> dict:
    doc = json.loads(path.read_text())
    return {(r["attack"], r["eps"]): (r["accuracy"], r["per_example"]) for r in doc["results"]}


def test_the_run_logs_sub_attacks_and_resumes_after_the_last_finished_one(cli, tmp_path, monkeypatch):
    from leaderboards import ResultStore
    from robustness import runner
    ref = cli(*_cli_args(tmp_path / "ref.db", tmp_path / "ref.json"))
    assert ref.code == 0, ref
    # no terminal: a line per finished sub-attack, per batch
    assert "digits-cnn batch 1/2: autoattack apgd-ce (1/4) at eps=0.1: " in ref.err
    assert "digits-cnn batch 2/2: autoattack square (4/4) at eps=0.1: " in ref.err

    original = runner._BatchProgress.event

    def interrupt(self, e):   # Ctrl-C in the second batch, as its third sub-attack starts
        original(self, e)
        if self.batch == 1 and e.part == "fab-t" and e.stage == "start":
            raise KeyboardInterrupt
    monkeypatch.setattr(runner._BatchProgress, "event", interrupt)
    db = tmp_path / "r.db"
    first = cli(*_cli_args(db))
    assert first.code == 130 and "rerun the same command to resume" in first.err, first
    with ResultStore(db) as s:
        run = s.runs()[0]
        assert run.status == "running" and s.done_batches(run.run_id, "digits-cnn") == {0}
        assert len(s.kept_steps(run.run_id, "digits-cnn", 1)) == 2
    monkeypatch.setattr(runner._BatchProgress, "event", original)
    again = cli(*_cli_args(db, tmp_path / "again.json"))
    assert again.code == 0, again
    assert "resuming run" in again.err and again.err.count("(kept from the interrupted run)") == 2
    assert "batch 1/2" not in again.err                  # the committed batch is not run again
    assert _per_example(tmp_path / "again.json") == _per_example(tmp_path / "ref.json")
    with ResultStore(db) as s:
        assert s.kept_steps(run.run_id, "digits-cnn", 1) == {}      # deleted with the batch's commit
