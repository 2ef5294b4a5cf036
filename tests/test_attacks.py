"""Attack contracts for FGSM and PGD, and PGD against torchattacks' PGD on the same examples."""
from __future__ import annotations

import pytest
import torch

from attacks import FAB, FGSM, PGD, create_attack, project
from attacks._core import random_start

NORMS = ("linf", "l2")


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    d = delta.flatten(1)
    return d.abs().max(1).values if norm == "linf" else d.norm(dim=1)


def _eps(norm: str) -> float:
    return 0.1 if norm == "linf" else 0.5


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("make", [lambda n: FGSM(norm=n), lambda n: PGD(norm=n, steps=5),
                                  lambda n: PGD(norm=n, steps=3, restarts=2, loss="margin"),
                                  lambda n: PGD(norm=n, steps=3, loss="dlr", early_stop=False)])
def test_perturbation_within_eps_and_box(digits, norm, make):
    model, x, y = digits
    eps = _eps(norm)
    out = make(norm)(model, x[:64], y[:64], eps, seeds=torch.arange(64))
    assert out.x_adv.shape == x[:64].shape
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert (_size(out.x_adv - x[:64], norm) <= eps + 1e-5).all()
    assert out.fooled.any(), "a standard model must be fooled somewhere at this eps"
    # `fooled` is true: each flagged example is misclassified at its x_adv
    with torch.no_grad():
        pred = model(out.x_adv).argmax(1)
    assert (pred[out.fooled] != y[:64][out.fooled]).all()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attack", [FGSM, PGD])
def test_eps_zero_changes_nothing(digits, norm, attack):
    model, x, y = digits
    out = attack(norm=norm)(model, x[:32], y[:32], 0.0)
    assert torch.equal(out.x_adv, x[:32])
    assert not out.fooled.any() and out.forward == 0


@pytest.mark.parametrize("norm", NORMS)
def test_fgsm_and_one_pgd_step_are_the_textbook_step(digits, norm):
    """FGSM (Goodfellow et al. 2015) and its L2 form, the fast gradient method: x + eps * sign(g), or
    x + eps * g / |g|_2, clipped to [0, 1], written here by hand. PGD with one step of size eps and no
    random start is the same step (FGSM reuses PGD's loop, so each is checked against the hand step, not
    against the other)."""
    model, x, y = digits
    eps = _eps(norm)
    xs, ys = x[:100], y[:100]
    xr = xs.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xr), ys, reduction="sum")
    grad, = torch.autograd.grad(loss, xr)
    if norm == "linf":
        step = grad.sign()
    else:
        step = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, 1, 1, 1)
    manual = (xs + eps * step).clamp(0, 1)
    fgsm = FGSM(norm=norm)(model, xs, ys, eps).x_adv
    pgd = PGD(norm=norm, steps=1, step_size=eps, random_start=False, early_stop=False)(model, xs, ys, eps).x_adv
    # on examples the clean model gets right (the only ones the engine attacks) both are the hand step
    with torch.no_grad():
        right = model(xs).argmax(1) == ys
    assert right.sum() > 90
    assert torch.allclose(fgsm[right], manual[right], atol=1e-6)
    assert torch.allclose(pgd[right], manual[right], atol=1e-6)


@pytest.mark.parametrize("attack", [FGSM(), PGD(steps=2), PGD(steps=2, norm="l2")])
def test_train_mode_and_requires_grad_restored(digits, attack):
    model, x, y = digits
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    try:
        attack(model, x[:16], y[:16], 0.1)
        assert model.training
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters()), "attacks must not accumulate parameter gradients"
    finally:
        model.eval()


def test_restarts_never_lower_success(digits):
    model, x, y = digits
    seeds = torch.arange(len(y))
    one = PGD(steps=3, restarts=1)(model, x, y, 0.1, seeds=seeds).fooled
    three = PGD(steps=3, restarts=3)(model, x, y, 0.1, seeds=seeds).fooled
    assert (three | ~one).all(), "every example fooled with 1 restart is fooled with 3 (same first start)"
    assert three.sum() >= one.sum()


def test_targeted_reaches_target(digits):
    model, x, y = digits
    target = (y + 1) % 10
    out = PGD(steps=40, targeted=True)(model, x[:50], y[:50], 0.3, target=target[:50])
    with torch.no_grad():
        pred = model(out.x_adv).argmax(1)
    hit = pred == target[:50]
    assert torch.equal(hit, out.fooled)
    assert hit.float().mean() > 0.8


def test_random_starts_do_not_depend_on_batch_composition():
    x = torch.rand(6, 3, 4, 4)
    seeds = torch.arange(100, 106)
    whole = random_start(x, 0.1, "linf", seeds)
    part = random_start(x[2:5], 0.1, "linf", seeds[2:5])
    assert torch.equal(whole[2:5], part)
    l2 = random_start(x, 0.5, "l2", seeds)
    assert (l2.flatten(1).norm(dim=1) <= 0.5 + 1e-6).all()


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_projection_is_the_nearest_point_of_the_ball(norm, eps):
    """The defining property, checked without the formula: the projection lies in the ball, leaves
    points already inside unchanged, and no point of the ball (random ones, and the segment towards the
    point) is nearer to the original."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(4, 3, 5, 5, generator=g)
    p = project(d, eps, norm)
    assert (_size(p, norm) <= eps * (1 + 1e-6)).all()
    inside = d * (0.5 * eps / _size(d, norm)).view(-1, 1, 1, 1)
    assert torch.allclose(project(inside, eps, norm), inside, atol=1e-7)
    gap = (p - d).flatten(1).norm(dim=1)
    for _ in range(200):
        q = torch.randn(4, 3, 5, 5, generator=g)
        q = q * (eps * torch.rand(4, 1, 1, 1, generator=g) / _size(q, norm).view(-1, 1, 1, 1))
        q = q.clamp(-eps, eps) if norm == "linf" else q
        assert ((q - d).flatten(1).norm(dim=1) >= gap - 1e-6).all()
    for t in (0.9, 0.99):       # moving from the projection towards the ball's centre only gets farther
        assert ((t * p - d).flatten(1).norm(dim=1) >= gap - 1e-6).all()


def test_registry_refuses_duplicates_and_filters_args():
    from attacks import register_attack
    with pytest.raises(ValueError):
        register_attack("pgd", PGD, norms=("linf",), description="again")
    fgsm = create_attack("fgsm", norm="l2", steps=7, restarts=3)  # FGSM ignores iteration options
    assert isinstance(fgsm, FGSM) and fgsm.norm == "l2"
    assert create_attack("pgd", steps=7).steps == 7


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_pgd_matches_torchattacks_pgd(digits, eps):
    """Same model, examples, eps, steps and step size: robust accuracy within 1 point (ours may be lower:
    it keeps the first fooling point, torchattacks returns the last iterate)."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    steps, alpha = 10, 2.5 * eps / 10
    torch.manual_seed(0)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    ours = PGD(steps=steps, step_size=alpha)(model, x, y, eps, seeds=torch.arange(len(y))).x_adv
    with torch.no_grad():
        acc_t = (model(theirs).argmax(1) == y).float().mean().item()
        acc_o = (model(ours).argmax(1) == y).float().mean().item()
    assert acc_o <= acc_t + 0.01, (acc_o, acc_t)
    assert abs(acc_o - acc_t) <= 0.01, (acc_o, acc_t)


# ---- refusals instead of wrong numbers (issue 10) ----

class _FirstClasses(torch.nn.Module):
    """The digits model cut to its first k logits: a k-class model for the class-count refusals."""

    def __init__(self, model: torch.nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.model(inp)[:, :self.k]


@pytest.mark.parametrize("attack", [PGD(targeted=True, steps=2), FGSM(targeted=True)], ids=["pgd", "fgsm"])
def test_targeted_without_targets_is_refused(digits, attack):
    """The engine passes no `target`: a targeted PGD/FGSM would otherwise run towards nothing."""
    from attacks import AttackConfigError, check_applicable
    model, x, y = digits
    with pytest.raises(AttackConfigError, match="apgd-t or autoattack"):
        attack(model, x[:4], y[:4], 0.1)
    with pytest.raises(AttackConfigError, match="apgd-t or autoattack"):
        check_applicable(attack, 10)
    check_applicable(attack, 10, target_given=True)
    check_applicable(FAB(targeted=True), 10)          # FAB-T picks its own targets


def test_dlr_on_too_few_classes_is_one_clear_error(digits):
    from attacks import APGD, APGDT, AttackConfigError, check_applicable
    model, x, y = digits
    two, three = _FirstClasses(model, 2), _FirstClasses(model, 3)
    for attack in (PGD(loss="dlr", steps=2), FGSM(loss="dlr"), APGD(loss="dlr", steps=2)):
        with pytest.raises(AttackConfigError, match="at least 3 classes but the model has 2"):
            attack(two, x[:4], y[:4] % 2, 0.1)
        with pytest.raises(AttackConfigError, match="at least 3 classes"):
            check_applicable(attack, 2)
        check_applicable(attack, 3)
        attack(three, x[:4], y[:4] % 3, 0.1)       # 3 classes are enough for the untargeted DLR loss
    with pytest.raises(AttackConfigError, match="at least 4 classes but the model has 3"):
        APGDT(steps=2)(three, x[:4], y[:4] % 3, 0.1)
    with pytest.raises(AttackConfigError, match="at least 4 classes"):
        check_applicable(APGDT(), 3)
    check_applicable(APGDT(), 4)
    check_applicable(PGD(), 2)                     # CE and margin need only 2


def test_settings_and_missing_packages_raise_typed_errors(monkeypatch):
    import sys
    from attacks import APGD, AttackConfigError, AttackUnavailable, check_eps
    for bad in (lambda: PGD(steps=0), lambda: PGD(norm="l3"), lambda: PGD(loss="hinge"),
                lambda: PGD(schedule="linear"), lambda: PGD(step_size=-1.0), lambda: APGD(rho=2.0),
                lambda: check_eps(-0.1, "linf"), lambda: check_eps(2.0, "linf"), lambda: check_eps(float("nan"), "l2")):
        with pytest.raises(AttackConfigError):
            bad()
    assert issubclass(AttackConfigError, ValueError) and issubclass(AttackUnavailable, ImportError)
    # a missing package: None in sys.modules makes `import name` fail as it does when it is not installed
    from attacks import _compat, torchattacks_adapter
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(AttackUnavailable, match="pip install"):
        torchattacks_adapter.attack_classes()
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    monkeypatch.setitem(sys.modules, "autoattack", None)
    with pytest.raises(AttackUnavailable, match="pip install"):
        _compat.import_autoattack()
