"""The engine's own guarantees (issue 10 and issue 16 items 4-5): the threat-model re-check catches
attacks written to cheat, a composite attack's per-example breakdown is stored, options that would be
ignored are errors, non-finite logits are never counted, and a failure mid-run is one line with the
completed batches kept for a resume.

The cheating attacks and the NaN model below are written here for the purpose; the expected numbers are
independent of the engine (the exact size of the perturbation each cheater adds)."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from attacks import AttackOutput, registry
from leaderboards import ResultStore


# ---- attacks that cheat: each registered for one test, then removed ----

def _cheater(how: str):
    @dataclass(frozen=True)
    class Cheat:
        norm: str = "linf"

        def __call__(self, model, x, y, eps, *, seeds=None, verify=True, **_):
            x_adv = x.clone()
            first = x_adv.view(x.shape[0], -1)[:, 0]
            if how == "outside":     # 1.5 eps on one pixel, inside the box: outside the ball by eps / 2
                first.copy_(torch.where(x.view(x.shape[0], -1)[:, 0] < 0.5, first + 1.5 * eps, first - 1.5 * eps))
            elif how == "box":       # leaves [0, 1] by eps / 2
                first.fill_(1.0 + eps / 2)
            elif how == "shape":
                x_adv = x[:, :, :-1]
            elif how == "nan":
                first.fill_(float("nan"))
            return AttackOutput(x_adv, torch.ones(x.shape[0], dtype=torch.bool), x.shape[0], 0)
    return Cheat


@pytest.fixture
def cheat_attacks():
    names = []
    for how in ("outside", "box", "shape", "nan"):
        name = f"test-cheat-{how}"
        registry.register_attack(name, _cheater(how), norms=("linf", "l2"), description="cheats (test only)")
        names.append(name)
    yield names
    for name in names:
        registry._REGISTRY.pop(name, None)


def _runs(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute("SELECT run_id, status FROM runs").fetchall()


@pytest.mark.parametrize("eps", ["1e-6", "0.1"])
@pytest.mark.parametrize("how,needle", [("outside", "eps"), ("box", "[0, 1]"), ("shape", "shape"),
                                        ("nan", "finite")])
def test_an_attack_that_cheats_is_one_line_and_leaves_no_run(cli, tmp_path, cheat_attacks, how, needle, eps):
    db = tmp_path / "r.db"
    res = cli("run", "--model", "digits-cnn", "--attack", f"test-cheat-{how}", "--eps", eps,
              "--n-examples", "30", "--db", db)
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    assert f"test-cheat-{how}" in res.err and needle in res.err, res.err
    assert all(status == "complete" for _, status in _runs(db)), "a run that cannot be trusted stays behind"
    assert _runs(db) == []


def test_the_excess_is_named(cli, tmp_path, cheat_attacks):
    res = cli("run", "--model", "digits-cnn", "--attack", "test-cheat-outside", "--eps", "1e-6",
              "--n-examples", "10", "--db", tmp_path / "r.db")
    assert res.code == 2
    # the cheater adds exactly 1.5e-6 where 1e-6 is allowed
    assert "1.5e-06" in res.err, res.err


def test_the_check_is_exact_up_to_float32_rounding():
    """A projection computed in float32 passes; anything measurably larger than eps does not, at any eps."""
    from robustness.engine import threat_model_excess
    g = torch.Generator().manual_seed(0)
    for eps in (1e-6, 1e-4, 1 / 255, 8 / 255, 0.3):
        x = torch.rand(64, 3, 8, 8, generator=g)
        delta = (torch.rand(x.shape, generator=g) * 2 - 1) * 2 * eps
        x_adv = (x + delta.clamp(-eps, eps)).clamp(0, 1)  # a legitimate float32 L-inf projection
        assert threat_model_excess(x, x_adv, eps, "linf") is None, eps
        # pixels near 0.5 are float32 multiples of 6e-8: below eps ~1e-3 a 1% excess is not even
        # representable, so the cheat there is the 1.5 eps (0.5e-6 over at eps 1e-6)
        factor = 1.01 if eps >= 1e-3 else 1.5
        bad = x_adv.clone()
        v = x[0, 0, 0, 0]
        bad[0, 0, 0, 0] = v + eps * factor if v < 0.5 else v - eps * factor
        assert threat_model_excess(x, bad, eps, "linf") is not None, eps
        if eps < 1e-3:
            continue   # an L2 ball of radius < 1e-3 over 192 pixels is below float32 pixel resolution
        # L2: scale a random direction onto the sphere in float32
        d = torch.randn(x.shape, generator=g)
        d = d * (eps / d.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
        x2 = x.clamp(0.2, 0.8)   # away from the box so clipping does not shrink the step
        assert threat_model_excess(x2, x2 + d, eps, "l2") is None, eps
        assert threat_model_excess(x2, x2 + d * 1.01, eps, "l2") is not None, eps


# ---- AutoAttack's breakdown reaches the store, the table, the JSON and the warnings ----

def test_autoattack_breakdown_is_stored_per_example(cli, tmp_path):
    out = tmp_path / "aa.json"
    res = cli("run", "--model", "digits-cnn-at", "--attack", "autoattack", "--eps", "0.1,0.2",
              "--attack-args", "steps=10,square_queries=50", "--n-examples", "60", "--db", tmp_path / "r.db",
              "--json", out)
    assert res.code == 0, res
    doc = json.loads(out.read_text())
    aa = [r for r in doc["results"] if r["attack"] == "autoattack"]
    assert aa
    names = {"apgd-ce", "apgd-t", "fab-t", "square"}
    for r in aa:
        pe = r["per_example"]
        by = pe["broken_by"]
        assert len(by) == r["n"]
        for clean, b, who in zip(pe["clean_correct"], pe["broken_eps"], by):
            if not clean:
                assert who is None or who == "clean"
            elif b is None:
                assert who is None      # never broken: no sub-attack credited
            else:
                assert who in names
        split = r["breakdown"]
        # the split counts exactly the examples broken at or below this eps, by sub-attack
        broken_here = [w for c, b, w in zip(pe["clean_correct"], pe["broken_eps"], by)
                       if c and b is not None and b <= r["eps"]]
        assert sum(split["broken_by"].values()) == len(broken_here)
        for name, k in split["broken_by"].items():
            assert k == broken_here.count(name)
        assert {s["name"] for s in split["sub_attacks"]} <= names
    assert "apgd-ce" in res.out and "split" in res.out   # the table shows the split


THREE_CLASS = '''
import torch
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l = torch.nn.Linear(64, 3)
    def forward(self, x):
        return self.l(x.flatten(1))
def make():
    return M()
'''


def _three_class_data(tmp_path: Path) -> tuple[Path, Path]:
    from robustness.data import load_dataset
    ds = load_dataset("digits").dataset
    keep = (ds.y < 3).nonzero().squeeze(1)[:60]
    f = tmp_path / "three.npz"
    np.savez(f, x=ds.x[keep].numpy(), y=ds.y[keep].numpy())
    model = tmp_path / "three.py"
    model.write_text(THREE_CLASS)
    return f, model


def test_skipped_sub_attacks_are_stored_warnings(cli, tmp_path):
    data, model = _three_class_data(tmp_path)
    out = tmp_path / "w.json"
    res = cli("run", "--model", f"{model}:make", "--dataset", data, "--attack", "autoattack", "--eps", "0.05",
              "--attack-args", "steps=5,square_queries=20", "--db", tmp_path / "r.db", "--json", out)
    assert res.code == 0, res
    doc = json.loads(out.read_text())
    skipped = [w for w in doc["warnings"] if w["code"] == "sub_attack_skipped"]
    assert skipped and "apgd-t" in skipped[0]["message"], doc["warnings"]
    assert "sub_attack_skipped" in res.out


def test_dlr_on_two_classes_is_one_line(cli, tmp_path):
    from robustness.data import load_dataset
    ds = load_dataset("digits").dataset
    keep = (ds.y < 2).nonzero().squeeze(1)[:40]
    f = tmp_path / "two.npz"
    np.savez(f, x=ds.x[keep].numpy(), y=ds.y[keep].numpy())
    model = tmp_path / "two.py"
    model.write_text(THREE_CLASS.replace("Linear(64, 3)", "Linear(64, 2)"))
    res = cli("run", "--model", f"{model}:make", "--dataset", f, "--attack", "pgd", "--loss", "dlr",
              "--eps", "0.1", "--db", tmp_path / "r.db")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err, res
    assert "dlr" in res.err.lower() and "3 classes" in res.err, res.err


# ---- options that would be accepted and ignored are errors ----

@pytest.mark.parametrize("args,needle", [
    (["--corruptions", "fog"], "--corruptions"),
    (["--severity", "3"], "--severity"),
    (["--corruption-preset", "cifar10-c"], "--corruption-preset"),
    (["--baseline", "alexnet"], "--baseline"),
    (["--attack", "pgd", "--attack-args", "targeted=true"], "target"),
])
def test_ignored_options_are_errors(cli, tmp_path, args, needle):
    db = tmp_path / "r.db"
    res = cli("run", "--model", "digits-cnn", "--n-examples", "10", "--eps", "0.1", "--db", db, *args)
    assert res.code == 2, res
    assert len(res.err.strip().splitlines()) == 1 and needle in res.err, res.err
    assert not db.exists()


# ---- non-finite logits are never counted (issue 16 item 4) ----

NAN_OFF_GRID = '''
import torch
from robustness.models import create_model
class M(torch.nn.Module):
    """digits-cnn, but NaN logits for any input that is not on the clean 1/16 pixel grid of the digits."""
    def __init__(self):
        super().__init__(); self.net = create_model("digits-cnn").module
    def forward(self, x):
        out = self.net(x)
        off = ((x * 16 - torch.round(x * 16)).abs() > 1e-4).flatten(1).any(1)
        return torch.where(off[:, None], torch.full_like(out, float("nan")), out)
def make():
    return M()
'''


def test_nan_logits_on_adversarial_inputs_are_refused(cli, tmp_path):
    model = tmp_path / "nanoff.py"
    model.write_text(NAN_OFF_GRID)
    db = tmp_path / "r.db"
    res = cli("run", "--model", f"{model}:make", "--dataset", "digits", "--attack", "pgd", "--eps", "0.1",
              "--n-examples", "40", "--db", db)
    assert res.code == 2, res
    assert len(res.err.strip().splitlines()) == 1 and "NaN" in res.err and "pgd" in res.err, res.err
    assert all(status == "complete" for _, status in _runs(db))


# ---- a failure mid-run (issue 16 item 5): one line, the completed batches kept, the rerun resumes ----

FLAKY = '''
import os, torch
from robustness.models import create_model
class M(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.net = create_model("digits-cnn").module; self.calls = 0
    def forward(self, x):
        # fails on examples of the second batch once a flag file exists (a model that raises later on)
        if os.path.exists(FLAG) and x.shape[0] == 10 and float(x.sum()) == SECOND:
            raise RuntimeError("device lost")
        return self.net(x)
def make():
    return M()
'''


def test_a_model_that_raises_mid_run_is_one_line_and_the_rerun_resumes(cli, tmp_path):
    from robustness.data import load_dataset, select_indices
    ds = load_dataset("digits").dataset
    idx = select_indices(len(ds), 30, "random", 0)
    second = float(ds.x[idx[10:20]].sum())
    flag = tmp_path / "flag"
    flag.write_text("x")
    model = tmp_path / "flaky.py"
    model.write_text(FLAKY.replace("FLAG", repr(str(flag))).replace("SECOND", repr(second)))
    db = tmp_path / "r.db"
    args = ("run", "--model", f"{model}:make", "--dataset", "digits", "--attack", "fgsm", "--eps", "0.1",
            "--n-examples", "30", "--batch-size", "10", "--db", db)
    res = cli(*args)
    assert res.code == 2, res
    assert len(res.err.strip().splitlines()) == 1 and "device lost" in res.err and "rerun" in res.err, res.err
    (run_id, status), = _runs(db)
    assert status == "running"
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 1   # batch 0 kept
    flag.unlink()
    again = cli(*args)
    assert again.code == 0, again
    assert _runs(db) == [(run_id, "complete")]
    ref = cli("run", "--model", "digits-cnn", "--dataset", "digits", "--attack", "fgsm", "--eps", "0.1",
              "--n-examples", "30", "--batch-size", "10", "--db", tmp_path / "ref.db")
    assert ref.code == 0
    with ResultStore(db) as a, ResultStore(tmp_path / "ref.db") as b:
        ra = {r.attack: r.per_example.correct for r in a.results(run_id, with_examples=True)}
        rb = {r.attack: r.per_example.correct for r in b.results(with_examples=True)}
        assert ra == rb


# ---- our stochastic attacks and corruptions: per-example results independent of the batch size ----

def test_stochastic_attacks_do_not_depend_on_the_batch_size(tmp_path):
    from robustness import AttackSpec, Evaluator, RunSpec
    attacks = (AttackSpec("pgd", (("restarts", 2), ("steps", 3))), AttackSpec("apgd", (("steps", 5),)),
               AttackSpec("square", (("n_queries", 30),)),
               AttackSpec("autoattack", (("square_queries", 30), ("steps", 5))))
    per = []
    for bs in (360, 23):
        with ResultStore(tmp_path / f"{bs}.db") as store:
            spec = RunSpec(models=("digits-cnn-at",), attacks=attacks, eps=(0.1, 0.2), n_examples=80,
                           batch_size=bs, device="cpu")
            out = Evaluator(spec, store).run()
            per.append({(r.attack, r.eps): r.per_example.correct
                        for r in store.results(out.run_id, with_examples=True)})
    assert per[0] == per[1]


def test_frost_results_say_which_frost_was_used(cli, tmp_path):
    from attacks.corruptions import frost_source
    out = tmp_path / "f.json"
    res = cli("run", "--model", "digits-cnn", "--attack", "corruptions", "--corruptions", "frost", "--severity", "2",
              "--n-examples", "20", "--db", tmp_path / "r.db", "--json", out)
    assert res.code == 0, res
    (r,) = [r for r in json.loads(out.read_text())["results"] if r["attack"] == "corruption:frost"]
    assert r["params"]["frost_source"] == frost_source() in ("assets", "procedural")
    # and which photographs (their digest) or which version of the procedural layer
    assert ("frost_assets_sha256" in r["params"]) == (frost_source() == "assets")
