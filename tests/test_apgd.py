"""APGD, APGD-T and FAB (ours), and PGD's schedules, targeted mode and restarts, on the digits CNN."""
from __future__ import annotations

import pytest
import torch

from attacks import APGD, APGDT, FAB, FGSM, PGD, AttackConfigError
from attacks.apgd import checkpoints, derive_seeds, target_group, targeted_dlr_loss
from attacks.fab import hyperplane_box_projection
from attacks.pgd import step_schedule


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    d = delta.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def _eps(norm: str) -> float:
    return 0.1 if norm == "linf" else 0.5


def _correct(digits, n: int):
    model, x, y = digits
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().squeeze(1)[:n]
    return model, x[ok], y[ok]


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _check(model, x, y, out, eps, norm):
    assert out.x_adv.shape == x.shape
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert (_size(out.x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    # every flag is true: the returned point is misclassified
    assert (_pred(model, out.x_adv)[out.fooled] != y[out.fooled]).all()


def test_checkpoints_follow_the_paper():
    # Croce & Hein 2020, section 3.2: w_j = ceil(p_j N), p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    # (p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), worked out by hand). At N = 100 the reference
    # package's integer schedule (22, then steps of 19, 16, 13, 10, 7, 6, 6) gives the same iterations.
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # N = 10: ceil(2.2, 4.1, 5.7, 7.0, 8.0, 8.7, 9.3, 9.9) = 3, 5, 6, 7, 8, 9, 10, 10
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    # N = 5: ceil(1.1, 2.05, 2.85, 3.5, 4.0, 4.35, 4.65, 4.95) = 2, 3, 3, 4, 4, 5, 5, 5
    assert checkpoints(5) == [2, 3, 4, 5]


def test_targeted_dlr_loss_sign():
    z = torch.tensor([[5.0, 1.0, 0.0, -1.0], [1.0, 5.0, 0.0, -1.0]])
    y = torch.tensor([0, 0])
    t = torch.tensor([1, 1])
    v = targeted_dlr_loss(z, y, t)
    # by hand: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(5 - 1) / (5 + 0.5) and -(1 - 5) / 5.5
    assert torch.allclose(v, torch.tensor([-4 / 5.5, 4 / 5.5]))
    assert v[0] < 0 < v[1]            # positive once the target beats the label
    assert torch.allclose(targeted_dlr_loss(3 * z, y, t), v)   # scale invariant


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_contract_and_exact_flags(digits, norm, loss):
    model, x, y = _correct(digits, 48)
    eps = _eps(norm)
    out = APGD(norm=norm, steps=20, loss=loss)(model, x, y, eps, seeds=torch.arange(48), verify=False)
    _check(model, x, y, out, eps, norm)
    # without the verification pass, the flags are still exact: every iterate was evaluated
    assert torch.equal(out.fooled, _pred(model, out.x_adv) != y)
    assert out.fooled.any() and out.forward > 0 and out.backward > 0
    assert out.forward >= out.backward


def test_apgd_at_least_as_strong_as_pgd_and_fgsm(digits):
    model, x, y = _correct(digits, 64)
    seeds = torch.arange(64)
    apgd = APGD(steps=30)(model, x, y, 0.1, seeds=seeds)
    pgd = PGD(steps=10)(model, x, y, 0.1, seeds=seeds)
    fgsm = FGSM()(model, x, y, 0.1)
    assert int(apgd.fooled.sum()) >= int(pgd.fooled.sum()) - 1
    assert int(apgd.fooled.sum()) >= int(fgsm.fooled.sum())


def test_apgd_per_example_seeds_make_results_independent_of_the_batch(digits):
    model, x, y = _correct(digits, 40)
    seeds = torch.arange(1000, 1040)
    att = APGD(steps=10)
    full = att(model, x, y, 0.06, seeds=seeds)
    half = att(model, x[::2], y[::2], 0.06, seeds=seeds[::2])
    assert torch.equal(full.fooled[::2], half.fooled)


def test_apgd_restarts_never_lower_success(digits):
    model, x, y = _correct(digits, 48)
    seeds = torch.arange(48)
    one = APGD(steps=5, restarts=1)(model, x, y, 0.05, seeds=seeds)
    three = APGD(steps=5, restarts=3)(model, x, y, 0.05, seeds=seeds)
    assert (three.fooled | ~one.fooled).all()       # one.fooled implies three.fooled
    assert int(three.fooled.sum()) >= int(one.fooled.sum())


def test_apgd_early_stop_changes_cost_not_outcome(digits):
    model, x, y = _correct(digits, 32)
    seeds = torch.arange(32)
    fast = APGD(steps=15)(model, x, y, 0.1, seeds=seeds)
    slow = APGD(steps=15, early_stop=False)(model, x, y, 0.1, seeds=seeds)
    assert torch.equal(fast.fooled, slow.fooled)
    assert fast.forward < slow.forward


def test_apgdt_targets_and_batching(digits):
    model, x, y = _correct(digits, 24)
    seeds = torch.arange(24)
    eps = 0.06
    batched = APGDT(steps=8, n_target_classes=3)(model, x, y, eps, seeds=seeds, verify=False)
    sequential = APGDT(steps=8, n_target_classes=3, max_batch=1)(model, x, y, eps, seeds=seeds, verify=False)
    _check(model, x, y, batched, eps, "linf")
    # attacking target classes together or one at a time: the same examples broken
    assert torch.equal(batched.fooled, sequential.fooled)
    assert target_group(9, 20, 256) == 9 and target_group(9, 100, 256) == 2 and target_group(9, 300, 256) == 1


def test_targeted_losses_need_enough_classes(digits):
    model, x, y = _correct(digits, 4)

    class Few(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, inp):
            return model(inp)[:, :self.k]
    with pytest.raises(AttackConfigError, match="4 classes"):
        APGDT(steps=2)(Few(3), x, y % 3, 0.1)
    with pytest.raises(AttackConfigError, match="3 classes"):
        APGD(steps=2, loss="dlr")(Few(2), x, y % 2, 0.1)
    # with 5 classes, APGD-T attacks the 4 other classes (the target count follows the logits)
    out = APGDT(steps=2)(Few(5), x, y % 5, 0.1)
    assert out.x_adv.shape == x.shape


def test_derive_seeds_differ_per_salt_and_are_stable():
    s = torch.tensor([1, 2, 3])
    a, b = derive_seeds(s, 2, 0, 0), derive_seeds(s, 2, 1, 0)
    assert torch.equal(a, derive_seeds(s, 2, 0, 0))
    assert not torch.equal(a, b)
    assert (a >= 0).all() and derive_seeds(None, 1) is None


# ---- FAB ----

def _lp_linf(p, w, b):
    from scipy.optimize import linprog
    import numpy as np
    d = len(p)
    c = np.zeros(d + 1)
    c[-1] = 1
    a_ub, b_ub = [], []
    for i in range(d):
        for s in (1, -1):
            r = np.zeros(d + 1)
            r[i], r[-1] = s, -1
            a_ub.append(r)
            b_ub.append(0)
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=[np.r_[w, 0]], b_eq=[b - w @ p],
                  bounds=list(zip(-p, 1 - p)) + [(0, None)])
    return res.fun if res.status == 0 else None


def _qp_l2(p, w, b):
    """min |d|_2 s.t. w . (p + d) = b, 0 <= p + d <= 1, by scipy's SLSQP (a general solver, not ours)."""
    from scipy.optimize import minimize
    import numpy as np
    res = minimize(lambda d: d @ d, np.zeros_like(p), jac=lambda d: 2 * d, method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda d: w @ (p + d) - b, "jac": lambda d: w}],
                   bounds=list(zip(-p, 1 - p)), options={"ftol": 1e-14, "maxiter": 500})
    assert res.success, res.message
    return float(np.sqrt(res.fun))


def test_hyperplane_box_projection_is_the_minimal_norm_point():
    scipy = pytest.importorskip("scipy")  # noqa: F841
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        p = torch.rand(1, 10, generator=g, dtype=torch.float64)
        w = torch.randn(1, 10, generator=g, dtype=torch.float64)
        w[0, trial % 10] = 0
        b = (w * torch.rand(1, 10, generator=g, dtype=torch.float64)).sum(1)   # reachable within the box
        for norm in ("linf", "l2"):
            d = hyperplane_box_projection(p, w, b, norm)
            assert float((w * (p + d)).sum() - b).__abs__() < 1e-8
            assert (p + d >= -1e-12).all() and (p + d <= 1 + 1e-12).all()
        d = hyperplane_box_projection(p, w, b, "linf")
        ref = _lp_linf(p[0].numpy(), w[0].numpy(), float(b))
        assert ref is not None and abs(ref - float(d.abs().max())) < 1e-6
        d = hyperplane_box_projection(p, w, b, "l2")
        ref = _qp_l2(p[0].numpy(), w[0].numpy(), float(b))
        assert abs(ref - float(d.norm())) < 1e-5       # SLSQP converges to about 1e-7 here
    # L2 without binding box constraints: the textbook projection
    p = torch.full((1, 4), 0.5, dtype=torch.float64)
    w = torch.tensor([[1.0, 2.0, 0.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([(w * p).sum() + 0.3], dtype=torch.float64)
    d = hyperplane_box_projection(p, w, b, "l2")
    assert torch.allclose(d, 0.3 * w / (w * w).sum())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_targeted_contract_and_batching(digits, norm):
    model, x, y = _correct(digits, 16)
    eps = _eps(norm)
    seeds = torch.arange(16)
    batched = FAB(norm=norm, steps=10, targeted=True, n_target_classes=3)(model, x, y, eps, seeds=seeds)
    sequential = FAB(norm=norm, steps=10, targeted=True, n_target_classes=3, max_batch=1)(model, x, y, eps,
                                                                                          seeds=seeds)
    _check(model, x, y, batched, eps, norm)
    assert batched.fooled.any()
    assert torch.equal(batched.fooled, sequential.fooled)


def test_fab_untargeted(digits):
    model, x, y = _correct(digits, 16)
    out = FAB(steps=10)(model, x, y, 0.1, seeds=torch.arange(16))
    _check(model, x, y, out, 0.1, "linf")
    assert out.fooled.any()


# ---- PGD grows up ----

def test_step_schedules():
    assert step_schedule(1.0, 4, "constant") == [1.0] * 4
    cos = step_schedule(1.0, 4, "cosine")
    assert cos[0] == 1.0 and all(a > b for a, b in zip(cos, cos[1:]))
    assert step_schedule(1.0, 4, "step") == [1.0, 1.0, 0.5, 0.25]
    with pytest.raises(ValueError):
        PGD(schedule="linear")
    assert PGD(steps=10).step_for(0.1) == pytest.approx(0.025)         # unchanged default
    assert PGD(steps=10, schedule="cosine").step_for(0.1) == pytest.approx(0.05)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_pgd_schedules_attack(digits, schedule):
    model, x, y = _correct(digits, 48)
    out = PGD(steps=10, schedule=schedule)(model, x, y, 0.1, seeds=torch.arange(48))
    _check(model, x, y, out, 0.1, "linf")
    assert out.fooled.float().mean() > 0.2


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_targeted_reaches_its_target(digits, norm):
    model, x, y = _correct(digits, 48)
    target = (y + 1) % 10
    eps = 0.3 if norm == "linf" else 2.0
    out = PGD(norm=norm, steps=40, targeted=True, loss="ce")(model, x, y, eps, seeds=torch.arange(48), target=target)
    pred = _pred(model, out.x_adv)
    assert torch.equal(out.fooled, pred == target)      # flags mean "reached the target"
    assert (pred == target).float().mean() > 0.8


def test_pgd_restarts_never_lower_success(digits):
    model, x, y = _correct(digits, 64)
    seeds = torch.arange(64)
    for eps in (0.05, 0.08):
        one = PGD(steps=2, restarts=1)(model, x, y, eps, seeds=seeds)
        four = PGD(steps=2, restarts=4)(model, x, y, eps, seeds=seeds)
        assert (four.fooled | ~one.fooled).all()            # every example the first restart broke stays broken
        assert int(four.fooled.sum()) >= int(one.fooled.sum())
