"""Warnings for numbers that cannot be trusted: each fires on a model (or rows) built to trigger it and
stays silent on the normal digits CNN."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attacks import FGSM, PGD, create_attack
from attacks.sanity import (CODES, Finding, ResultRow, as_row, beyond_noise, details_checks, model_checks,
                            result_checks)

GRADIENT_ATTACKS = ("fgsm", "pgd", "apgd", "apgd-t", "fab", "autoattack", "autoattack-package")


class Quantized(torch.nn.Module):
    """Masks its gradients: inputs rounded to 5 grey levels inside the forward (zero derivative)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class Softmaxed(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return F.softmax(self.net(x), dim=1)


class Noisy(torch.nn.Module):
    """A randomized defense: Gaussian noise on the input at every call, also in eval mode."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.3 * torch.randn_like(x))


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("nan"))


class NanGradient(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(_NanGrad.apply(x))


def _batch(digits, n=128):
    model, x, y = digits
    return model, x[:n], y[:n]


def _codes(findings):
    return sorted({f.code for f in findings})


# ---- model checks ----

def test_normal_model_is_silent(digits):
    model, x, y = _batch(digits)
    assert model_checks(model, x, y, model_name="digits-cnn", attacks=list(GRADIENT_ATTACKS)) == []


def test_gradient_masking_fires_for_every_gradient_attack(digits):
    model, x, y = _batch(digits)
    masked = Quantized(model)
    found = model_checks(masked, x, y, model_name="quantized", attacks=list(GRADIENT_ATTACKS))
    masking = [f for f in found if f.code == "gradient_masking"]
    assert sorted(f.attack for f in masking) == sorted(GRADIENT_ATTACKS)
    assert all(f.model == "quantized" and "zero" in f.message for f in masking)
    assert _codes(found) == ["gradient_masking"]
    assert [f.attack for f in model_checks(masked, x, y)] == [None]


def test_nan_gradients_fire(digits):
    model, x, y = _batch(digits, 32)
    found = model_checks(NanGradient(model), x, y)
    assert _codes(found) == ["gradient_masking"] and "NaN" in found[0].message


def test_probability_outputs_fire(digits):
    model, x, y = _batch(digits)
    assert "probability_outputs" in _codes(model_checks(Softmaxed(model), x, y))


def test_randomized_forward_fires_and_rng_is_left_alone(digits):
    model, x, y = _batch(digits)
    state = torch.get_rng_state()
    found = model_checks(Noisy(model), x, y)
    assert "randomized_forward" in _codes(found)
    assert torch.equal(state, torch.get_rng_state())


def test_model_checks_restore_mode_and_flags(digits):
    model, x, y = _batch(digits, 16)
    m = copy.deepcopy(model).train()
    model_checks(m, x, y)
    assert m.training and all(p.requires_grad for p in m.parameters())


# ---- result checks on synthetic rows ----

def _row(attack, eps, acc, n=200, **kw):
    return ResultRow(model="m", attack=attack, eps=eps, accuracy=acc, n=n, **kw)


def test_noise_margin():
    assert beyond_noise(0.50, 0.47, 200, 200)           # 3 points, 6 examples
    assert not beyond_noise(0.50, 0.49, 200, 200)       # 1 point
    assert not beyond_noise(0.50, 0.45, 40, 40)         # 5 points but 2 examples


def test_non_monotone_eps():
    rows = [_row("pgd", 0.05, 0.60), _row("pgd", 0.1, 0.40), _row("pgd", 0.2, 0.45)]
    found = result_checks(rows)
    assert _codes(found) == ["non_monotone_eps"] and found[0].eps == 0.2 and found[0].attack == "pgd"
    assert result_checks([_row("pgd", 0.05, 0.60), _row("pgd", 0.1, 0.40), _row("pgd", 0.2, 0.405)]) == []


def test_weaker_attack_stronger():
    more_steps = [_row("pgd", 0.1, 0.50, steps=50), _row("pgd", 0.1, 0.40, steps=10)]
    found = result_checks(more_steps)
    assert _codes(found) == ["weaker_attack_stronger"]
    assert _codes(result_checks([_row("pgd", 0.1, 0.50, steps=10), _row("fgsm", 0.1, 0.40)])) == \
        ["weaker_attack_stronger"]
    assert _codes(result_checks([_row("autoattack", 0.1, 0.42), _row("torchattacks:PGD", 0.1, 0.30)])) == \
        ["weaker_attack_stronger"]
    # the expected order, or a difference within noise, is silent
    assert result_checks([_row("pgd", 0.1, 0.30, steps=10), _row("fgsm", 0.1, 0.40)]) == []
    assert result_checks([_row("pgd", 0.1, 0.405, steps=50), _row("pgd", 0.1, 0.40, steps=10)]) == []
    # a 1-step PGD is not held to beat FGSM
    assert result_checks([_row("pgd", 0.1, 0.50, steps=1), _row("fgsm", 0.1, 0.40)]) == []


def test_not_zero_at_large_eps():
    assert _codes(result_checks([_row("pgd", 0.5, 0.30)])) == ["not_zero_at_large_eps"]
    assert result_checks([_row("pgd", 0.5, 0.08)]) == []
    assert result_checks([_row("pgd", 0.3, 0.30)]) == []                   # not large by the rule
    assert result_checks([_row("pgd", 0.5, 0.45, n_classes=2)]) == []      # a class's share is 50%
    l2 = [_row("pgd", 5.0, 0.4, norm="l2", input_dim=64)]                  # 0.5 * sqrt(64) = 4
    assert _codes(result_checks(l2)) == ["not_zero_at_large_eps"]
    assert result_checks([_row("pgd", 5.0, 0.4, norm="l2")]) == []         # input size unknown


def test_black_box_beats_white_box():
    rows = [_row("pgd", 0.1, 0.50), _row("fgsm", 0.1, 0.60), _row("square", 0.1, 0.30, white_box=False)]
    found = result_checks(rows)
    assert _codes(found) == ["black_box_beats_white_box"] and found[0].attack == "pgd"
    fine = [_row("pgd", 0.1, 0.30), _row("square", 0.1, 0.31, white_box=False)]
    assert result_checks(fine) == []
    # white_box looked up in the registry when a row does not say
    assert as_row({"model": "m", "attack": "square", "eps": 0.1, "accuracy": 0.3, "n": 10}).white_box is False


def test_worst_case_rows_only_in_the_eps_check():
    rows = [_row("worst-case", 0.1, 0.50, kind="worst_case"), _row("fgsm", 0.1, 0.20),
            _row("square", 0.1, 0.1, white_box=False)]
    assert all(f.attack != "worst-case" for f in result_checks(rows))
    # the kind is what counts, not the name: a ThreatResult says it itself
    from leaderboards import ThreatResult
    r = ThreatResult("r", "m", "d", "worst-case", "linf", 0.1, 10, 1.0, 0.5, (0.2, 0.8), 0.0, 0, 0)
    assert r.kind == "worst_case" and as_row(r).kind == "worst_case"


def test_rows_from_threat_results():
    from leaderboards import ThreatResult
    rows = [ThreatResult(run_id="r", model="m", dataset="digits", attack="pgd", norm="linf", eps=e, n=200,
                         clean_accuracy=0.98, accuracy=a, ci95=(0, 1), seconds=0, forward=0, backward=0,
                         params={"steps": 10}) for e, a in ((0.1, 0.3), (0.2, 0.5))]
    found = result_checks(rows)
    assert _codes(found) == ["non_monotone_eps"]
    assert as_row(rows[0]).steps == 10


def test_details_checks():
    details = {"sub_attacks": [{"name": "apgd-ce", "fooled": 50}, {"name": "square", "fooled": 6}]}
    assert _codes(details_checks(details, 100, attack="autoattack")) == ["black_box_beats_white_box"]
    details["sub_attacks"][1]["fooled"] = 1
    assert details_checks(details, 100) == []
    assert details_checks(None, 100) == []


def test_finding_is_frozen_with_stable_codes():
    f = Finding("gradient_masking", "msg", model="m")
    with pytest.raises(Exception):
        f.code = "x"  # type: ignore[misc]
    assert f.to_json() == {"code": "gradient_masking", "message": "msg", "model": "m", "attack": None, "eps": None}
    assert {"probability_outputs", "randomized_forward", "gradient_masking", "non_monotone_eps",
            "weaker_attack_stronger", "not_zero_at_large_eps", "black_box_beats_white_box"} <= set(CODES)
    # every code a run can store is explained in docs/CHECKS.md, in the table and in a section of its own
    from .conftest import ROOT
    doc = (ROOT / "docs" / "CHECKS.md").read_text()
    for code in CODES:
        assert f"| `{code}` |" in doc and f"## {code}\n" in doc, code


# ---- result checks on real attack runs ----

def _rows(model, x, y, name, eps_list):
    """Rows as the engine would make them: per-example cascade over eps, for FGSM, PGD, APGD and Square."""
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    attacks = {"fgsm": (FGSM(), True, None), "pgd": (PGD(steps=10), True, 10),
               "apgd": (create_attack("apgd", steps=20), True, 20),
               "square": (create_attack("square", n_queries=100), False, None)}
    rows = []
    for label, (attack, white, steps) in attacks.items():
        alive = clean.clone()
        for eps in eps_list:
            idx = alive.nonzero().squeeze(1)
            if idx.numel():
                out = attack(model, x[idx], y[idx], eps, seeds=idx.long())
                with torch.no_grad():
                    still = model(out.x_adv).argmax(1) == y[idx]
                alive[idx[~still]] = False
            rows.append(ResultRow(name, label, eps, float(alive.float().mean()), len(y), "linf", white, steps,
                                  n_classes=10, input_dim=64))
    return rows


def test_result_checks_on_real_runs(digits):
    model, x, y = _batch(digits, 48)
    eps = (0.1, 0.2, 0.5)
    normal = _rows(model, x, y, "digits-cnn", eps)
    assert result_checks(normal) == [], result_checks(normal)
    masked = _rows(Quantized(model), x, y, "quantized", eps)
    codes = _codes(result_checks(masked))
    assert "black_box_beats_white_box" in codes
    assert "weaker_attack_stronger" in codes or "not_zero_at_large_eps" in codes, codes
