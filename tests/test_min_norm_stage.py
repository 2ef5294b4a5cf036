"""The minimum-norm stage of the cascade (`--min-norm fmn`): per example, broken by today's cascade =>
broken with the stage, at every eps; wherever an attack still runs, exactly today's outcome; every point the
stage is credited with is a re-checked adversarial example inside the eps-ball (a lying stage is caught).
On digits-cnn-at (adversarially trained) and on the shared CIFAR-10 ResNet-20 (real images)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from attacks import FGSM, PGD
from attacks.errors import ThreatModelViolation
from attacks.fmn import FMN, MinNorm
from robustness.cascade import cascade, min_norm_stage
from robustness.errors import UserError

from .conftest import CIFAR_TEST, RESNET20, need


def _series(res) -> dict[str, dict[int, tuple[bool, float | None, str | None]]]:
    out: dict[str, dict] = {}
    for o in res.outcomes:
        out.setdefault(o.attack, {})[o.idx] = (o.clean_correct, o.broken_eps, o.broken_by)
    return out


def _check_never_weaker_and_same_where_run(today, fast, eps, stage_name="fmn"):
    """The two promises, example by example and eps by eps."""
    n_stage = n_ran = 0
    for attack, rows in today.items():
        for i, (clean, b_today, _) in rows.items():
            clean_f, b_fast, by_fast = fast[attack][i]
            assert clean == clean_f
            for e in eps:
                broken_today = b_today is not None and b_today <= e
                broken_fast = b_fast is not None and b_fast <= e
                assert not broken_today or broken_fast, (attack, i, e, b_today, b_fast)
            if attack == "worst-case" or not clean:
                continue
            # where the attack ran with the stage (alive at e, the stage's point did not fool), it decided
            # exactly as today: broken at e by it <=> broken at e today
            for e in eps:
                alive = b_fast is None or b_fast >= e
                stage_broke_here = b_fast == e and by_fast == stage_name
                if alive and not stage_broke_here:
                    n_ran += 1
                    assert (b_fast == e) == (b_today == e), (attack, i, e, b_today, b_fast, by_fast)
            n_stage += by_fast == stage_name
    return n_stage, n_ran


@pytest.fixture(scope="module")
def digits_at():
    from robustness.data import load_dataset
    from robustness.models import create_model
    model = create_model("digits-cnn-at").module.eval()
    data = load_dataset("digits").dataset
    return model, data.x, data.y


def test_never_weaker_and_identical_where_the_attack_runs_on_digits_at(digits_at):
    model, x, y = digits_at
    eps = (0.05, 0.1, 0.2, 0.3)
    attacks = [("fgsm", FGSM()), ("pgd", PGD(steps=10))]
    idx = np.arange(len(y))
    today = _series(cascade(model, x, y, idx, attacks, eps, seed=3, norm="linf"))
    res = cascade(model, x, y, idx, attacks, eps, seed=3, norm="linf", min_norm=FMN(steps=20))
    fast = _series(res)
    n_stage, n_ran = _check_never_weaker_and_same_where_run(today, fast, eps)
    assert n_stage > 50 and n_ran > 300          # both paths are exercised
    # the stage's cost is paid once, with the first point of the first attack
    first = [c for c in res.costs if c.attack == "fgsm" and c.eps == eps[0]][0]
    assert first.details["min_norm_stage"]["attacked"] == int(sum(v[0] for v in fast["pgd"].values()))
    assert first.backward >= 20 * first.details["min_norm_stage"]["attacked"]


def test_never_weaker_and_identical_where_the_attack_runs_on_resnet20():
    need(RESNET20), need(CIFAR_TEST)
    from robustness.archs import resnet20
    from robustness.data import load_dataset
    from robustness.models import Normalized, extract_state_dict, load_file
    from robustness.models.checkpoints import load_into
    net = resnet20()
    load_into(net, extract_state_dict(load_file(RESNET20), str(RESNET20)), str(RESNET20))
    model = Normalized(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    data = load_dataset(str(CIFAR_TEST)).dataset
    xs, ys = zip(*(data[i] for i in range(40)))
    x, y = torch.stack(xs), torch.tensor(ys)
    eps = (0.25 / 255, 0.5 / 255, 1 / 255)
    attacks = [("pgd", PGD(steps=5))]
    idx = np.arange(len(y))
    today = _series(cascade(model, x, y, idx, attacks, eps, seed=0, norm="linf"))
    fast = _series(cascade(model, x, y, idx, attacks, eps, seed=0, norm="linf", min_norm=FMN(steps=10)))
    n_stage, n_ran = _check_never_weaker_and_same_where_run(today, fast, eps)
    assert n_stage > 0 and n_ran > 20


@dataclass(frozen=True)
class Liar:
    """A stage that claims a tiny norm for a point far outside the ball: another example's image."""
    name: str = "liar"
    poison: str = "far"

    def minimize(self, model, x, y):
        far = x.flip(0)
        if self.poison == "nan":
            far = far.clone()
            far[0, 0, 0, 0] = float("nan")
        if self.poison == "shape":
            far = far[:, :, :-1]
        return MinNorm(far, torch.zeros(len(x)), len(x), 0)


def test_a_lying_stage_is_credited_only_with_what_its_projection_breaks(digits_at):
    model, x, y = digits_at
    x, y = x[:120], y[:120]
    eps = (0.1, 0.25, 0.4)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).numpy()
    res = _series(cascade(model, x, y, np.arange(len(y)), [("pgd", PGD(steps=3))], eps, seed=1, norm="linf",
                          min_norm=Liar()))
    # written again here: the clean-correct examples, the liar's points (reversed order among them)
    ok = np.flatnonzero(clean)
    far = x[torch.as_tensor(ok)].flip(0)
    stage_hit_at = {}
    for e in eps:
        xp = (x[torch.as_tensor(ok)] + (far - x[torch.as_tensor(ok)]).clamp(-e, e)).clamp(0, 1)
        with torch.no_grad():
            fooled = (model(xp).argmax(1) != y[torch.as_tensor(ok)]).numpy()
        for i, f in zip(ok, fooled):
            if f and i not in stage_hit_at:
                stage_hit_at[int(i)] = e
    credited = {i: b for i, (_, b, by) in res["pgd"].items() if by == "liar"}
    # credited exactly where its projected point fools, at the first eps it does (unless pgd got there first)
    for i, b in credited.items():
        assert stage_hit_at.get(i) == b
    for i, e in stage_hit_at.items():
        b = res["pgd"][i][1]
        assert b is not None and b <= e
    assert 0 < len(credited) < len(ok) and len(stage_hit_at) < len(ok)


@pytest.mark.parametrize("poison", ["nan", "shape"])
def test_a_stage_returning_no_point_of_the_threat_model_is_refused(digits_at, poison):
    model, x, y = digits_at
    with pytest.raises(ThreatModelViolation):
        cascade(model, x[:40], y[:40], np.arange(40), [("pgd", PGD(steps=2))], (0.1,), seed=0, norm="linf",
                min_norm=Liar(poison=poison))


def test_stage_names_and_norms_are_checked():
    assert min_norm_stage(None, "linf") is None
    assert min_norm_stage("fmn", "linf").steps == 20 and min_norm_stage("FMN:7", "l2").steps == 7
    for bad in ("fab", "fmn:x", "fmn:0"):
        with pytest.raises(UserError):
            min_norm_stage(bad, "linf")
    with pytest.raises(UserError):
        min_norm_stage("fmn", "l1")


def test_through_the_engine_and_the_cli(cli, tmp_path):
    from leaderboards import ResultStore
    from robustness import AttackSpec, Evaluator, RunSpec
    spec = RunSpec(models=("digits-cnn-at",), attacks=(AttackSpec("pgd"),), eps=(0.05, 0.2), device="cpu")
    assert "min_norm" not in spec.to_json()            # runs stored before the option keep their keys
    with ResultStore(tmp_path / "r.db") as store:
        plain = Evaluator(spec, store).run()
        staged = Evaluator(RunSpec(**{**spec.__dict__, "min_norm": "fmn:10"}), store).run()
        assert staged.run_id != plain.run_id
        a = {(r.eps): r.accuracy for r in plain.results}
        b = {(r.eps): r.accuracy for r in staged.results}
        assert all(b[e] <= a[e] for e in a)
        split = [r.breakdown.get("broken_by") for r in staged.results if r.eps == 0.2][0]
        assert dict(split).get("fmn", 0) > 0
    r = cli("run", "--model", "digits-cnn-at", "--attack", "pgd", "--eps", "0.2", "--min-norm", "fmn:5",
            "--db", tmp_path / "c.db", "--quiet")
    assert r.code == 0, r
    assert "fmn" in r.out
    r = cli("run", "--model", "digits-cnn-at", "--attack", "pgd", "--min-norm", "fab", "--db", tmp_path / "d.db")
    assert r.code == 2 and r.err.count("\n") == 1 and "minimum-norm stage" in r.err, r
