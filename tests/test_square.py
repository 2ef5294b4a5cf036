"""Our Square attack (attacks/square.py): the paper's schedule and window pattern against expectations
written here from the paper, the threat-model contract, pass counts against an independent counter,
per-example seeding (batch composition changes nothing) and the structure of L-inf iterates.

The comparison with the reference package's Square on the same examples is in
tests/test_reference_attacks.py."""
from __future__ import annotations

import math

import pytest
import torch

from attacks import PassCounter
from attacks.square import Square, eta, eta_rect, p_schedule, window_side


def _correct(digits, n: int):
    model, x, y = digits
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().squeeze(1)[:n]
    return model, x[ok], y[ok]


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    d = delta.flatten(1).double()
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


EPS = {"linf": 0.1, "l2": 0.5}


# ---- the paper's schedule and pattern ----

def test_p_schedule_halves_at_the_papers_iterations():
    # the paper halves p after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000
    marks = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for k, t in enumerate(marks):
        assert p_schedule(t, 0.8, 10_000, True) == pytest.approx(0.8 / 2 ** k)
        assert p_schedule(t + 1, 0.8, 10_000, True) == pytest.approx(0.8 / 2 ** (k + 1))
    assert p_schedule(0, 0.8, 10_000, True) == 0.8
    assert p_schedule(9999, 0.8, 10_000, True) == pytest.approx(0.8 / 512)
    # rescaled to a 1,000-query budget the marks come ten times sooner; unscaled (AutoAttack) they do not
    assert p_schedule(2, 0.8, 1000, True) == pytest.approx(0.4)
    assert p_schedule(2, 0.8, 1000, False) == 0.8
    assert p_schedule(4001, 0.8, 5000, False) == pytest.approx(0.8 / 128)


@pytest.mark.parametrize("side", [8, 28, 32, 224])
def test_window_covers_a_fraction_p_of_the_image(side):
    for p in (0.8, 0.4, 0.1, 0.05, 0.8 / 64):
        h = window_side(p, side, side, "linf")
        assert 1 <= h <= side
        # h = round(sqrt(p) * side): the window's area is p of the image up to the rounding of its side
        assert abs(h - math.sqrt(p) * side) <= 0.5 + 1e-9 or h == 1
        h2 = window_side(p, side, side, "l2")
        assert h2 >= min(3, side) and (h2 % 2 == 1 or h2 == side)


def _rings(h1: int, h2: int) -> torch.Tensor:
    """Eq. (2) built another way: rectangle c (c = 0, 1, ...) is the centre cell grown by c cells on each
    side (clipped to the h1 x h2 array); every cell of rectangle c gets 1 / (c + 1)^2, for as many
    rectangles as it takes to cover the longer side."""
    out = torch.zeros(h1, h2, dtype=torch.float64)
    cr, cc = h1 // 2, h2 // 2
    for c in range(max(h1, h2) // 2 + 1):
        out[max(cr - c, 0):cr + c + 1, max(cc - c, 0):cc + c + 1] += 1.0 / (c + 1) ** 2
    return out


@pytest.mark.parametrize("h1,h2", [(1, 3), (2, 5), (3, 3), (4, 9), (12, 25), (5, 2)])
def test_eta_rectangles_match_the_papers_sum(h1, h2):
    assert torch.allclose(eta_rect(h1, h2).double(), _rings(h1, h2), atol=1e-6)


@pytest.mark.parametrize("h", [1, 3, 5, 8, 25])
def test_eta_has_two_halves_of_opposite_sign_and_unit_norm(h):
    e = eta(h)
    assert e.shape == (h, h)
    assert float(e.norm()) == pytest.approx(1.0, abs=1e-6)
    k = h // 2
    assert (e[:k] >= 0).all() and (e[k:] <= 0).all()
    assert float(e[k:].abs().max()) > 0


# ---- the attack's contract ----

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_contract_and_exact_flags(digits, norm):
    model, x, y = _correct(digits, 40)
    eps = EPS[norm]
    seeds = torch.arange(40)
    for verify in (True, False):
        out = Square(norm, n_queries=150)(model, x, y, eps, seeds=seeds, verify=verify)
        assert out.x_adv.shape == x.shape and out.backward == 0
        assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
        assert (_size(out.x_adv - x, norm) <= eps * (1 + 2 ** -20) + 1e-6).all()
        # every returned point was evaluated in the loop: the flags are exact either way
        assert torch.equal(out.fooled, _pred(model, out.x_adv) != y)
    assert 0 < int(out.fooled.sum()) < 40
    zero = Square(norm, n_queries=50)(model, x, y, 0.0, seeds=seeds)
    assert torch.equal(zero.x_adv, x) and not zero.fooled.any() and zero.forward == 0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_counts_the_passes_it_runs(digits, norm):
    model, x, y = _correct(digits, 24)
    counter = PassCounter(model)
    out = Square(norm, n_queries=120)(counter, x, y, EPS[norm], seeds=torch.arange(24), verify=True)
    assert out.forward == counter.forward_count and counter.backward_count == 0
    # at most the budget (120 per example) and the re-check; early stop (and, for L-inf, proposals that
    # change nothing) make it less
    assert out.forward <= 24 * 120 + 24


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_outcome_per_example_does_not_depend_on_the_batch(digits, norm):
    model, x, y = _correct(digits, 30)
    seeds = torch.arange(500, 530)
    att = Square(norm, n_queries=200)
    full = att(model, x, y, EPS[norm], seeds=seeds)
    half = att(model, x[1::2], y[1::2], EPS[norm], seeds=seeds[1::2])
    back = att(model, x.flip(0), y.flip(0), EPS[norm], seeds=seeds.flip(0))
    assert torch.equal(full.fooled[1::2], half.fooled)
    assert torch.equal(full.fooled, back.fooled.flip(0))
    assert torch.allclose(full.x_adv[1::2], half.x_adv, atol=1e-6)
    again = att(model, x, y, EPS[norm], seeds=seeds)
    assert torch.equal(full.x_adv, again.x_adv)
    other = att(model, x, y, EPS[norm], seeds=seeds + 1)
    assert not torch.equal(full.x_adv, other.x_adv)


def test_square_without_seeds_uses_the_generator(digits):
    model, x, y = _correct(digits, 12)
    a = Square(n_queries=60)(model, x, y, 0.1, generator=torch.Generator().manual_seed(3))
    b = Square(n_queries=60)(model, x, y, 0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x_adv, b.x_adv)


def test_linf_iterates_are_vertices_of_the_cube(digits):
    """Algorithm 2 only ever sets pixels to x +- eps (then clips to [0, 1]): every coordinate of every
    returned perturbation is +-eps unless the box cut it."""
    model, x, y = _correct(digits, 30)
    eps = 0.05
    out = Square(n_queries=200)(model, x, y, eps, seeds=torch.arange(30))
    d = (out.x_adv - x).double()
    at_vertex = (d.abs() - eps).abs() <= 1e-6
    at_box = (out.x_adv == 0) | (out.x_adv == 1)
    assert (at_vertex | at_box).all()


def test_l2_uses_the_whole_budget_away_from_the_box(digits):
    """Algorithm 3 keeps ||nu|| = eps: with x in the middle of the box (no clipping), every returned
    perturbation has norm eps."""
    model, x, y = _correct(digits, 16)
    x = 0.25 + 0.5 * x                       # pixels in [0.25, 0.75]: eps 0.5 in L2 can never reach the box
    out = Square("l2", n_queries=100)(model, x, y, 0.5, seeds=torch.arange(16))
    assert torch.allclose(_size(out.x_adv - x, "l2"), torch.full((16,), 0.5, dtype=torch.float64), atol=1e-4)


def test_restarts_never_lower_success(digits):
    model, x, y = _correct(digits, 40)
    seeds = torch.arange(40)
    one = Square(n_queries=60)(model, x, y, 0.08, seeds=seeds)
    two = Square(n_queries=60, restarts=2)(model, x, y, 0.08, seeds=seeds)
    assert (two.fooled | ~one.fooled).all()


def test_square_refuses_bad_settings():
    from attacks import AttackConfigError
    from attacks.square import SquareFromPackage
    for bad in ({"n_queries": 0}, {"p_init": 0.0}, {"norm": "l1"}, {"norm": "l0"}):
        with pytest.raises(AttackConfigError):
            Square(**bad)
    with pytest.raises(AttackConfigError):
        SquareFromPackage(norm="l1")
