"""The attack suite on the digits CNN: pass counting, our AutoAttack against the reference package on
the same examples, the package adapter's class handling, torchattacks:NAME, registry and engine."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import attacks
from attacks import AttackOutput, AutoAttack, AutoAttackPackage, PassCounter, create_attack, get_attack_entry

from .conftest import ROOT


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    d = delta.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def _correct(digits, n: int, start: int = 0):
    model, x, y = digits
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().squeeze(1)[start:start + n]
    return model, x[ok], y[ok]


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _check(model, x, y, out, eps, norm, exact=True):
    assert out.x_adv.shape == x.shape
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert (_size(out.x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    if exact:
        assert torch.equal(out.fooled, _pred(model, out.x_adv) != y)


class FirstClasses(torch.nn.Module):
    """The digits model restricted to its first k logits (a k-class model)."""

    def __init__(self, model, k):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x)[:, :self.k]


# ---- pass counting and the output record ----

def test_pass_counter_counts_forward_and_every_backward(digits):
    model, x, _ = digits
    pc = PassCounter(model)
    with torch.no_grad():
        pc(x[:7])
    assert pc.counts() == (7, 0)
    xr = x[:5].clone().requires_grad_(True)
    out = pc(xr)
    torch.autograd.grad(out[:, 0].sum(), xr, retain_graph=True)
    torch.autograd.grad(out[:, 1].sum(), xr)
    assert pc.counts() == (12, 10)          # two backward passes through one forward of 5


def test_attack_output_details_is_optional():
    out = AttackOutput(torch.zeros(1), torch.zeros(1, dtype=torch.bool), 1, 2)
    assert out.details is None
    assert AttackOutput(torch.zeros(1), torch.zeros(1, dtype=torch.bool), 1, 2, {"a": 1}).details == {"a": 1}


# ---- registry ----

def test_registry_names_and_arguments():
    names = attacks.attack_names()
    for n in ("apgd", "apgd-t", "fab", "square", "square-package", "autoattack", "autoattack-package", "fgsm", "pgd"):
        assert n in names
    assert get_attack_entry("square").white_box is False and get_attack_entry("square-package").white_box is False
    # ours seed every example; the package's draw once per batch
    assert not get_attack_entry("square").batch_dependent and not get_attack_entry("autoattack").batch_dependent
    assert get_attack_entry("square-package").batch_dependent and get_attack_entry("autoattack-package").batch_dependent
    from attacks.square import Square
    assert isinstance(create_attack("square", n_queries=10), Square)
    assert isinstance(AutoAttack().sub_attack("square"), Square)
    a = create_attack("autoattack", norm="l2", steps=7, loss="ce", restarts=3)   # loss/restarts not taken
    assert isinstance(a, AutoAttack) and a.norm == "l2" and a.steps == 7
    assert create_attack("autoattack", attacks="apgd-ce+apgd-t").lineup() == ("apgd-ce", "apgd-t")
    with pytest.raises(ValueError):
        AutoAttack(attacks="apgd-ce+nope")
    with pytest.raises(ValueError):
        AutoAttack(version="fast")


def test_import_attacks_stays_light():
    code = ("import sys, attacks; bad = [m for m in ('torchattacks', 'pyautoattack', 'autoattack', 'robustbench', "
            "'robustness') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ---- AutoAttack: ours against the package, same examples ----

def test_autoattack_ours_matches_package_linf(digits):
    model, x, y = _correct(digits, 40)
    seeds = torch.arange(40)
    # the standard suite at an eps where APGD-CE leaves a few examples for APGD-T
    eps = 0.2
    ours = AutoAttack(square_queries=100)(model, x, y, eps, seeds=seeds, verify=False)
    pkg = AutoAttackPackage(square_queries=100)(model, x, y, eps, seeds=seeds, verify=True)
    _check(model, x, y, ours, eps, "linf")
    _check(model, x, y, pkg, eps, "linf")
    assert abs(int(ours.fooled.sum()) - int(pkg.fooled.sum())) <= 1
    names = [s["name"] for s in ours.details["sub_attacks"]]
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [s["name"] for s in pkg.details["sub_attacks"]][:2] == ["apgd-ce", "apgd-t"]
    for s in ours.details["sub_attacks"] + pkg.details["sub_attacks"]:
        assert s["seconds"] >= 0 and s["forward"] >= 0 and s["backward"] >= 0
    assert ours.forward == sum(s["forward"] for s in ours.details["sub_attacks"]) + 40
    assert ours.details["n_classes"] == pkg.details["n_classes"] == 10
    subs = ours.details["sub_attacks"]          # each ran only on the examples the earlier ones left
    for a, b in zip(subs, subs[1:]):
        assert b["attacked"] == a["attacked"] - a["fooled"]
    # APGD-CE then APGD-T at an eps where some examples survive both: the same robust accuracy
    eps = 0.17
    ours = AutoAttack(attacks="apgd-ce+apgd-t")(model, x, y, eps, seeds=seeds, verify=False)
    pkg = AutoAttackPackage(attacks="apgd-ce+apgd-t")(model, x, y, eps, seeds=seeds)
    assert pkg.details["version"] == "custom" and [s["name"] for s in pkg.details["sub_attacks"]] == \
        ["apgd-ce", "apgd-t"]
    acc_ours, acc_pkg = 1 - ours.fooled.float().mean(), 1 - pkg.fooled.float().mean()
    assert 0 < float(acc_pkg) < 0.5
    assert abs(float(acc_ours - acc_pkg)) <= 1 / 40 + 1e-9   # within one example


def test_autoattack_l2_ours_and_package(digits):
    model, x, y = _correct(digits, 24)
    eps = 1.5
    ours = AutoAttack(norm="l2", square_queries=100)(model, x, y, eps, seeds=torch.arange(24))
    pkg = AutoAttackPackage(norm="l2", square_queries=100)(model, x, y, eps, seeds=torch.arange(24))
    _check(model, x, y, ours, eps, "l2")
    _check(model, x, y, pkg, eps, "l2")
    assert int(ours.fooled.sum()) == int(pkg.fooled.sum())


def test_merge_details_sums_per_sub_attack():
    from attacks.autoattack import merge_details
    a = {"version": "standard", "n_classes": 10, "skipped": [], "sub_attacks": [
        {"name": "apgd-ce", "seconds": 1.0, "forward": 10, "backward": 9, "attacked": 5, "fooled": 3}]}
    b = {"version": "standard", "n_classes": 10, "skipped": [{"name": "apgd-t", "reason": "r"}], "sub_attacks": [
        {"name": "apgd-ce", "seconds": 2.0, "forward": 20, "backward": 19, "attacked": 6, "fooled": 1},
        {"name": "square", "seconds": 3.0, "forward": 30, "backward": 0, "attacked": 2, "fooled": 0}]}
    total = merge_details(merge_details(None, a), b)
    ce, sq = total["sub_attacks"]
    assert (ce["seconds"], ce["forward"], ce["backward"], ce["attacked"], ce["fooled"]) == (3.0, 30, 28, 11, 4)
    assert sq["name"] == "square" and sq["forward"] == 30
    assert total["skipped"] == [{"name": "apgd-t", "reason": "r"}] and total["n_classes"] == 10
    assert merge_details(total, None) is total


def test_merge_details_concatenates_broken_by_with_the_indices():
    from attacks.autoattack import merge_details
    a = {"sub_attacks": [{"name": "apgd-ce", "attacked": 3, "fooled": 1}], "broken_by": ["apgd-ce", None, None]}
    b = {"sub_attacks": [{"name": "apgd-ce", "attacked": 2, "fooled": 0}, {"name": "square", "attacked": 2,
                                                                          "fooled": 1}],
         "broken_by": [None, "square"]}
    total = merge_details(merge_details(None, a, index=[7, 3, 9]), b, index=[4, 1])
    assert total["broken_by"] == ["apgd-ce", None, None, None, "square"]
    assert total["index"] == [7, 3, 9, 4, 1]
    assert [(r["name"], r["attacked"], r["fooled"]) for r in total["sub_attacks"]] == [("apgd-ce", 5, 1),
                                                                                       ("square", 2, 1)]
    # without indices the names still concatenate; a part without names drops them (they would not line up)
    assert "index" not in merge_details(merge_details(None, a), b)
    assert "broken_by" not in merge_details(merge_details(None, a), {"sub_attacks": []})
    with pytest.raises(ValueError):
        merge_details(None, a, index=[1, 2])


def test_autoattack_broken_by_names_the_sub_attack_of_each_row(digits):
    model, x, y = digits
    with torch.no_grad():
        pred = model(x).argmax(1)
    wrong = (pred != y).nonzero().squeeze(1)[:2]
    right = (pred == y).nonzero().squeeze(1)[:30]
    rows = torch.cat([right[:15], wrong, right[15:]])
    xs, ys = x[rows], y[rows]
    for verify in (True, False):
        out = AutoAttack(square_queries=200, steps=20)(model, xs, ys, 0.1, seeds=torch.arange(len(ys)), verify=verify)
        by = out.details["broken_by"]
        assert len(by) == len(ys)
        assert [by[15], by[16]] == ["clean", "clean"]
        # a name exactly where the row is broken (checked here, not by the attack's flags)
        broken = _pred(model, out.x_adv) != ys
        assert [b is not None for b in by] == broken.tolist()
        for sub in out.details["sub_attacks"]:
            assert sub["fooled"] == sum(b == sub["name"] for b in by)
        assert {b for b in by} - {None, "clean"} <= {"apgd-ce", "apgd-t", "fab-t", "square"}
        assert "apgd-ce" in by and None in by


class Quantized(torch.nn.Module):
    """A model built to mask its gradients: the digits CNN behind round(16 x) / 16. The digits take the
    17 values k/16, which pass unchanged (the clean predictions are the model's own), but the input
    gradient is exactly zero everywhere, so gradient attacks cannot move while Square can."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 16) / 16)


def test_square_beating_the_gradient_attacks_fires_on_merged_details(digits):
    """docs/CHECKS.md, black_box_beats_white_box inside AutoAttack: on the quantized model the gradient
    attacks break nothing and Square breaks beyond noise, so the check fires on the details merged over
    two batches as the engine merges them; on the plain digits CNN the gradient attacks do the work and
    it stays silent."""
    from attacks.autoattack import merge_details
    from attacks.sanity import details_checks
    model, x, y = _correct(digits, 40)
    masked = Quantized(model).eval()
    assert torch.equal(_pred(masked, x), _pred(model, x))
    for m, fires in ((masked, True), (model, False)):
        total = None
        for part in (slice(0, 25), slice(25, 40)):
            out = AutoAttack(square_queries=300, steps=20)(m, x[part], y[part], 0.1, seeds=torch.arange(40)[part])
            total = merge_details(total, out.details, index=list(range(40))[part])
        rows = {r["name"]: r for r in total["sub_attacks"]}
        assert rows["apgd-ce"]["attacked"] == 40 and len(total["broken_by"]) == 40
        found = details_checks(total, 40, model="m", attack="autoattack", eps=0.1)
        if fires:
            assert sum(rows[k]["fooled"] for k in ("apgd-ce", "apgd-t", "fab-t")) == 0
            assert rows["square"]["fooled"] == total["broken_by"].count("square") >= 5
            assert [f.code for f in found] == ["black_box_beats_white_box"]
        else:
            assert rows["apgd-ce"]["fooled"] >= 5
            assert found == []


def test_autoattack_counts_clean_errors_and_handles_empty(digits):
    model, x, y = digits
    wrong = (_pred(model, x) != y).nonzero().squeeze(1)[:2]
    out = AutoAttack(attacks="apgd-ce", steps=3)(model, x[wrong], y[wrong], 0.01)
    assert out.fooled.all()
    empty = AutoAttack()(model, x[:0], y[:0], 0.1)
    assert empty.x_adv.shape[0] == 0 and empty.forward == 0


def test_autoattack_class_count_comes_from_the_logits(digits):
    model, x, y = _correct(digits, 30)
    keep = y < 3
    x3, y3 = x[keep][:8], y[keep][:8]
    three = FirstClasses(model, 3)
    ours = AutoAttack(attacks="apgd-ce+apgd-t+fab-t", steps=5)(three, x3, y3, 0.05, seeds=torch.arange(len(y3)))
    assert ours.details["n_classes"] == 3
    assert [s["name"] for s in ours.details["skipped"]] == ["apgd-t"]
    # the package with 5 classes: target counts follow the logits (the package's 9 would index past them)
    from attacks._compat import import_autoattack
    five = FirstClasses(model, 5)
    details: dict = {}
    aa = AutoAttackPackage()._build(import_autoattack(), five, 0.1, 0, torch.device("cpu"), 5, details)
    assert aa.apgd_targeted.n_target_classes == 4 and aa.fab.n_target_classes == 4
    keep = y < 5
    out = AutoAttackPackage(square_queries=50)(five, x[keep][:6], y[keep][:6], 0.3, seeds=torch.arange(6))
    assert out.details["n_classes"] == 5
    _check(five, x[keep][:6], y[keep][:6], out, 0.3, "linf")


def test_package_adapter_restores_rng_and_model_state(digits):
    model, x, y = _correct(digits, 8)
    m = copy.deepcopy(model).train()
    state = torch.get_rng_state()
    AutoAttackPackage(square_queries=20)(m, x, y, 0.3, seeds=torch.arange(8))
    assert torch.equal(state, torch.get_rng_state())
    assert m.training and all(p.requires_grad for p in m.parameters())


# ---- torchattacks:NAME ----

ta = pytest.importorskip("torchattacks")


class RangeRecorder(torch.nn.Module):
    """Records the range of every input it is called with (normalization applied twice would show)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.lo, self.hi = model, float("inf"), float("-inf")

    def forward(self, x):
        self.lo, self.hi = min(self.lo, float(x.detach().min())), max(self.hi, float(x.detach().max()))
        return self.model(x)


@pytest.mark.parametrize("name,norm,eps,args", [
    ("CW", "l2", 1.0, {"steps": 30, "c": 10.0, "lr": 0.1}),
    ("Square", "linf", 0.15, {"n_queries": 200}),
    ("MIFGSM", "linf", 0.1, {"steps": 5, "step_size": 0.03}),
    ("PGD", "linf", 0.1, {"steps": 5, "step_size": 0.03}),
    ("PGDL2", "l2", 1.0, {"steps": 5}),
    ("DeepFool", "l2", 1.0, {"steps": 10}),
    ("APGD", "linf", 0.1, {"steps": 10}),
    ("APGDT", "linf", 0.1, {"steps": 5}),
    ("FAB", "l2", 1.0, {"steps": 5}),
])
def test_torchattacks_attacks_run_at_our_threat_model(digits, name, norm, eps, args):
    model, x, y = _correct(digits, 24)
    m = RangeRecorder(copy.deepcopy(model)).train()
    attack = create_attack(f"torchattacks:{name}", norm=norm, **args)
    assert norm in get_attack_entry(f"torchattacks:{name}").norms
    state = torch.get_rng_state()
    out = attack(m, x, y, eps, seeds=torch.arange(24), verify=True)
    _check(model, x, y, out, eps, norm)
    assert out.fooled.any(), f"{name} should fool a standard model somewhere"
    assert out.forward > 0
    assert 0 <= m.lo and m.hi <= 1                      # the model only ever saw [0, 1] pixels
    assert m.training and all(p.requires_grad for p in m.parameters())   # mode and flags restored
    assert torch.equal(state, torch.get_rng_state())    # global RNG untouched


def test_torchattacks_reproducible_and_arguments(digits):
    model, x, y = _correct(digits, 16)
    a = create_attack("torchattacks:PGD", norm="linf", steps=3, step_size=0.02)
    assert dict(a.kwargs) == {"alpha": 0.02, "steps": 3}
    o1 = a(model, x, y, 0.1, seeds=torch.arange(16))
    o2 = a(model, x, y, 0.1, seeds=torch.arange(16))
    assert torch.equal(o1.x_adv, o2.x_adv)
    unverified = a(model, x, y, 0.1, seeds=torch.arange(16), verify=False)
    assert not unverified.fooled.any()                  # no flags without the check (the engine decides)
    with pytest.raises(TypeError):
        get_attack_entry("torchattacks:PGD").builder(norm="linf", nonsense=1)


def test_torchattacks_n_classes_from_the_logits(digits):
    model, x, y = _correct(digits, 30)
    keep = y < 5
    five = FirstClasses(model, 5)
    out = create_attack("torchattacks:APGDT", norm="linf", steps=3)(five, x[keep][:8], y[keep][:8], 0.2)
    assert out.x_adv.shape == x[keep][:8].shape


def test_torchattacks_targeted_mode(digits):
    model, x, y = _correct(digits, 24)
    target = (y + 1) % 10
    out = create_attack("torchattacks:PGD", norm="linf", steps=30, step_size=0.02)(
        model, x, y, 0.3, target=target, seeds=torch.arange(24))
    assert torch.equal(out.fooled, _pred(model, out.x_adv) == target)
    assert out.fooled.float().mean() > 0.7


def test_torchattacks_norms_and_refusals():
    assert get_attack_entry("torchattacks:cw").name == "torchattacks:CW"          # case-insensitive
    assert get_attack_entry("torchattacks:JSMA").norms == ("l0",)
    assert get_attack_entry("torchattacks:EADL1").norms == ("l1",)
    assert get_attack_entry("torchattacks:Square").white_box is False
    assert set(get_attack_entry("torchattacks:APGD").norms) == {"linf", "l2"}
    with pytest.raises(ValueError, match="l0"):
        create_attack("torchattacks:OnePixel", norm="linf")
    with pytest.raises(KeyError, match="wrapper"):
        get_attack_entry("torchattacks:MultiAttack")
    with pytest.raises(KeyError, match="did you mean"):
        get_attack_entry("torchattacks:PDG")
    from attacks.torchattacks_adapter import list_torchattacks
    listing = {r["name"]: r for r in list_torchattacks()}
    assert listing["torchattacks:CW"]["norms"] == ("l2",) and listing["torchattacks:CW"]["bounded"] is False
    assert "eps" not in listing["torchattacks:PGD"]["args"] and "steps" in listing["torchattacks:PGD"]["args"]
    assert len(listing) >= 30


# ---- through the engine (its contract checks: ball, box, re-check) ----

def test_engine_runs_the_new_attacks(tmp_path):
    from leaderboards import ResultStore
    from robustness import AttackSpec, Evaluator, RunSpec
    spec = RunSpec(models=("digits-cnn",), attacks=(
        AttackSpec("apgd", (("steps", 10),)), AttackSpec("apgd-t", (("steps", 5), ("n_target_classes", 3))),
        AttackSpec("fab", (("steps", 5), ("targeted", True), ("n_target_classes", 2))),
        AttackSpec("autoattack", (("attacks", "apgd-ce+apgd-t"), ("steps", 5))),
        AttackSpec("torchattacks:MIFGSM", (("steps", 5),))),
        eps=(0.05, 0.1), n_examples=40, batch_size=40, device="cpu")
    with ResultStore(tmp_path / "r.db") as store:
        outcome = Evaluator(spec, store).run()
    acc = {(r.attack, r.eps): r.accuracy for r in outcome.results}
    for name in ("apgd", "apgd-t", "fab", "autoattack", "torchattacks:MIFGSM"):
        assert acc[(name, 0.1)] <= acc[(name, 0.05)]
    assert acc[("autoattack", 0.1)] <= acc[("apgd", 0.1)] + 0.05
