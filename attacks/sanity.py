"""Warnings for when a robustness number cannot be trusted: pure functions over a model and examples
(`model_checks`) or over result rows (`result_checks`, `details_checks`). Each returns `Finding`s; the
engine stores and prints them. docs/CHECKS.md explains each warning, why it fires and what to do.

Thresholds (the exact rules; constants below):
- probability_outputs: every output in [-1e-5, 1 + 1e-5] and every row sums to 1 within 1e-4.
- randomized_forward: two forward passes on the same inputs, in eval mode, differ: a prediction changes,
  or max |a - b| > 1e-4 * (1 + max |a|).
- gradient_masking: on the clean-correct examples (at most 256), input gradients of the margin loss
  (best other logit minus the true one) and of the cross-entropy (computed in float64) are NaN/inf, or
  the margin gradient is exactly zero, or its L1 norm is below 1e-6 (moving every pixel across the
  whole range changes the margin by < 1e-6 to first order). Fires when >= 5% of those examples (and at
  least one) are affected. CE alone is not used for "vanishing": it saturates legitimately on
  confidently classified examples (its gradient scales with exp(-margin)).
- "beyond noise" (for comparisons of two accuracies a > b measured on n_a and n_b examples):
  a - b > 1.5 percentage points and (a - b) * min(n_a, n_b) > 2 examples.
- non_monotone_eps: for one (model, attack, norm, steps), accuracy at a larger eps beyond noise above
  the accuracy at a smaller eps.
- weaker_attack_stronger: at one (model, eps, norm), a stronger attack's accuracy beyond noise above a
  weaker one's. Stronger: the same attack with more steps; PGD/APGD/APGD-T (>= 5 steps or unknown) over
  FGSM; AutoAttack (ours or the package) over every attack it contains or subsumes (FGSM, PGD, APGD,
  APGD-T, FAB, Square).
- not_zero_at_large_eps: an L-inf eps >= 0.5 (or an L2 eps >= 0.5 * sqrt(input_dim) when input_dim is
  known), where every image can be moved to the same mid-grey image, so at most about one class's share
  of the examples can stay correct; fires when accuracy > max(10%, 1/n_classes) (n_classes if known)
  and more than 2 examples above that bound.
- black_box_beats_white_box: at one (model, eps, norm), the best black-box attack's accuracy beyond
  noise below the best white-box attack's (gradients are hiding adversarial examples the black box
  finds). `details_checks` applies the same rule inside a composite attack (AutoAttack's Square
  breaking examples its gradient attacks missed).
Rows of kind "worst_case" (the engine's combination of attacks) take part only in the eps check.

Plausibility (per model, from the rows' clean accuracy, the data's class count and what the checkpoint
itself records; docs/CHECKS.md):
- clean_near_chance: with k >= 2 classes, chance c = 1/k and t = min(1.5 c, c + 0.1), the clean accuracy
  is not beyond noise above t (10 classes: at most 16.5% on many examples).
- robust_equals_clean: every attack row (not the worst case) at every eps > 0 of one norm keeps exactly
  the clean-correct examples, and there are at least ROBUST_EQUALS_MIN_CLEAN of them.
- clean_below_recorded: the clean accuracy is more than FAR_BELOW_POINTS below the accuracy the checkpoint
  records (e.g. `best_prec1`), and that gap is beyond RECORDED_Z standard errors of the two measurements
  (the recorded one's counted only when its number of examples is known).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ._core import frozen, margin_loss

PROB_TOL = 1e-5
PROB_SUM_TOL = 1e-4
RANDOM_REL_TOL = 1e-4
GRAD_L1_MIN = 1e-6
GRAD_FRACTION = 0.05
GRAD_MAX_EXAMPLES = 256
NOISE_POINTS = 0.015
NOISE_EXAMPLES = 2
LARGE_LINF_EPS = 0.5
LARGE_EPS_MAX_ACC = 0.10
STRONG_MIN_STEPS = 5
CHANCE_FACTOR, CHANCE_MARGIN = 1.5, 0.10
ROBUST_EQUALS_MIN_CLEAN = 10
FAR_BELOW_POINTS = 0.10
RECORDED_Z = 2.576   # one-sided, p < 0.005
COMBINED = "worst_case"   # ResultRow.kind of a combination of attacks (the engine's worst case)

CODES = ("probability_outputs", "randomized_forward", "gradient_masking", "non_monotone_eps",
         "weaker_attack_stronger", "not_zero_at_large_eps", "black_box_beats_white_box",
         "sub_attack_skipped", "package_warning", "adaptive_attack_stronger")


# the plausibility checks of a model's numbers (`result_checks`, rows with clean_accuracy / recorded)
PLAUSIBILITY_CODES = ("clean_near_chance", "robust_equals_clean", "clean_below_recorded")
# found by `robust-bench certify` (robustness/certify.py), listed here so every stored code is in one list
CERTIFY_CODES = ("empirical_below_certified",)
# read from the model's own record (robustness/preparation.py): a checkpoint `train` marked as failed
RECORD_CODES = ("training_failed",)
CODES = CODES + PLAUSIBILITY_CODES + CERTIFY_CODES + RECORD_CODES


@dataclass(frozen=True)
class Recorded:
    """An accuracy the model's own file records (a fraction), on `n` examples if known, and where it was read."""
    accuracy: float
    n: int | None = None
    source: str = "the checkpoint"


@dataclass(frozen=True)
class Finding:
    """One warning. `code` is a stable snake_case name (see CODES and docs/CHECKS.md)."""
    code: str
    message: str
    model: str | None = None
    attack: str | None = None
    eps: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ResultRow:
    """What the result checks need to know about one number: robust `accuracy` (a fraction) of `model`
    under `attack` at `eps`, over `n` examples."""
    model: str
    attack: str
    eps: float
    accuracy: float
    n: int
    norm: str = "linf"
    white_box: bool = True
    steps: int | None = None
    n_classes: int | None = None
    input_dim: int | None = None
    kind: str = "adversarial"   # or "worst_case": the engine's combination of the other rows
    clean_accuracy: float | None = None   # of the model on the same examples (the plausibility checks)
    recorded: Recorded | None = None      # the accuracy the model's file records


# ---- model checks ----

def model_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, model_name: str | None = None,
                 attacks: Sequence[str] | None = None) -> list[Finding]:
    """Checks of the model itself on examples (x, y) (a batch is enough; [0, 1] pixels).

    `attacks`: the gradient (white-box) attacks the numbers come from; a gradient_masking finding is
    then reported once for each of them (each one's numbers are suspect), else once with attack=None.
    Runs in eval mode without weight gradients and leaves torch's global RNG state as it was."""
    out: list[Finding] = []
    if x.shape[0] == 0:
        return out
    with frozen(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        with torch.no_grad():
            a = model(x)
            b = model(x)
        out += _probability_outputs(a, model_name)
        out += _randomized(a, b, model_name)
        correct = (a.argmax(1) == y).nonzero().squeeze(1)[:GRAD_MAX_EXAMPLES]
        if correct.numel():
            out += _gradients(model, x[correct], y[correct], model_name, attacks)
    return out


def _probability_outputs(z: torch.Tensor, model_name: str | None) -> list[Finding]:
    z = z.float()
    in_range = bool((z.min() >= -PROB_TOL) & (z.max() <= 1 + PROB_TOL))
    sums = z.sum(1)
    if in_range and bool(((sums - 1).abs() <= PROB_SUM_TOL).all()):
        return [Finding("probability_outputs",
                        "the model's outputs look like probabilities (all in [0, 1], rows sum to 1), not logits: "
                        "cross-entropy on probabilities saturates and its gradients vanish, so gradient attacks "
                        "underestimate the model's weakness; remove the final softmax", model=model_name)]
    return []


def _randomized(a: torch.Tensor, b: torch.Tensor, model_name: str | None) -> list[Finding]:
    a, b = a.float(), b.float()
    flips = int((a.argmax(1) != b.argmax(1)).sum())
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    if flips or diff > RANDOM_REL_TOL * (1 + float(a.abs().max())):
        return [Finding("randomized_forward",
                        f"two forward passes on the same inputs in eval mode differ (max difference {diff:.3g}, "
                        f"{flips} of {a.shape[0]} predictions changed): the model is randomized, so one attack run "
                        "is one sample; evaluate with expectation over transformation (autoattack version=rand, "
                        "apgd eot_iter=20) and report accuracy averaged over several passes", model=model_name)]
    return []


def _gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, model_name: str | None,
               attacks: Sequence[str] | None) -> list[Finding]:
    # one forward pass per loss, not retain_graph: a compiled model's backward may free its buffers
    xr = x.detach().clone().requires_grad_(True)
    g_ce, = torch.autograd.grad(F.cross_entropy(model(xr).double(), y, reduction="sum"), xr)
    xr = x.detach().clone().requires_grad_(True)
    g_m, = torch.autograd.grad(margin_loss(model(xr), y).sum(), xr)
    g_ce, g_m = g_ce.flatten(1), g_m.flatten(1)
    nan = ~torch.isfinite(g_ce).all(1) | ~torch.isfinite(g_m).all(1)
    l1 = g_m.abs().sum(1)
    zero = ~nan & (l1 == 0)
    tiny = ~nan & ~zero & (l1 < GRAD_L1_MIN)
    bad = nan | zero | tiny
    n, k = x.shape[0], int(bad.sum())
    if k == 0 or k < GRAD_FRACTION * n:
        return []
    msg = (f"input gradients are unusable for {k} of {n} clean-correct examples ({100 * k / n:.0f}%): "
           f"{int(zero.sum())} zero, {int(nan.sum())} NaN/inf, {int(tiny.sum())} vanishing (L1 norm < {GRAD_L1_MIN:g}). "
           "Gradient attacks cannot make progress on these, so their robust accuracy is an overestimate "
           "(gradient masking: quantization, thresholds, non-differentiable preprocessing); check with a "
           "black-box attack (square) and adaptive attacks (BPDA)")
    names = list(attacks) if attacks else [None]
    return [Finding("gradient_masking", msg, model=model_name, attack=a) for a in names]


# ---- result checks ----

def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def as_row(obj: Any) -> ResultRow:
    """A ResultRow from a ResultRow, a mapping or an object with the same attributes (a ThreatResult:
    steps then come from its params). white_box, when missing, from the attack registry (else True)."""
    if isinstance(obj, ResultRow):
        return obj
    params = _get(obj, "params") or {}
    steps = _get(obj, "steps", params.get("steps") if isinstance(params, Mapping) else None)
    white = _get(obj, "white_box")
    attack = str(_get(obj, "attack"))
    kind = str(_get(obj, "kind", "adversarial"))
    if white is None:
        white = True if kind == COMBINED else _registry_white_box(attack)
    clean = _get(obj, "clean_accuracy")
    return ResultRow(model=str(_get(obj, "model")), attack=attack, eps=float(_get(obj, "eps")),
                     accuracy=float(_get(obj, "accuracy")), n=int(_get(obj, "n")), norm=str(_get(obj, "norm", "linf")),
                     white_box=bool(white), steps=None if steps is None else int(steps),
                     n_classes=_get(obj, "n_classes"), input_dim=_get(obj, "input_dim"), kind=kind,
                     clean_accuracy=None if clean is None else float(clean), recorded=_recorded(_get(obj, "recorded")))


def _recorded(v: Any) -> Recorded | None:
    """A Recorded from a Recorded or a mapping {accuracy, n, source} (a model's extra["recorded_accuracy"])."""
    if v is None or isinstance(v, Recorded):
        return v
    acc = _get(v, "accuracy")
    if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not 0 <= float(acc) <= 1:
        return None
    n = _get(v, "n")
    return Recorded(float(acc), int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None,
                    str(_get(v, "source") or "the checkpoint"))


def _registry_white_box(attack: str) -> bool:
    try:
        from .registry import get_attack_entry
        return bool(get_attack_entry(attack).white_box)
    except Exception:       # unknown or unresolvable (e.g. torchattacks missing): assume white box
        return True


def beyond_noise(higher: float, lower: float, n_higher: int, n_lower: int) -> bool:
    """Is `higher` above `lower` by more than sampling noise (the rule in the module docstring)?"""
    d = higher - lower
    return d > NOISE_POINTS and d * min(n_higher, n_lower) > NOISE_EXAMPLES


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def family(attack: str) -> str:
    """The attack family used to order attacks by strength: our registry names, torchattacks names."""
    a = attack.lower().split("(", 1)[0]   # "pgd(steps=50)": a labelled second PGD of one run
    if a.startswith("torchattacks:"):
        a = a.split(":", 1)[1]
        return {"pgdl2": "pgd", "bim": "pgd", "apgdt": "apgd-t"}.get(a, a)
    return {"autoattack-package": "autoattack"}.get(a, a)


_WEAKER: dict[str, tuple[str, ...]] = {
    "pgd": ("fgsm",), "apgd": ("fgsm",), "apgd-t": ("fgsm",),
    "autoattack": ("fgsm", "pgd", "apgd", "apgd-t", "fab", "square"),
}


def result_checks(rows: Iterable[Any]) -> list[Finding]:
    """Checks across result rows (ResultRow, mappings or ThreatResult-like objects)."""
    rs = [as_row(r) for r in rows]
    out: list[Finding] = []
    out += _non_monotone(rs)
    out += _weaker_stronger(rs)
    out += _large_eps(rs)
    out += _black_box(rs)
    out += plausibility_checks(rs)
    return out


def plausibility_checks(rows: Iterable[Any]) -> list[Finding]:
    """Numbers no working evaluation gives: a clean accuracy near chance or far below the one the checkpoint
    records, robust accuracy equal to clean at every eps (the rules in the module docstring)."""
    rs = [as_row(r) for r in rows]
    out: list[Finding] = []
    by_model: dict[str, list[ResultRow]] = defaultdict(list)
    for r in rs:
        if r.clean_accuracy is not None:
            by_model[r.model].append(r)
    for model, g in by_model.items():
        first = g[0]
        clean, n = first.clean_accuracy, first.n
        assert clean is not None
        k = first.n_classes
        if k and k >= 2 and n > 0:
            chance = 1.0 / k
            bound = min(CHANCE_FACTOR * chance, chance + CHANCE_MARGIN)
            if not beyond_noise(clean, bound, n, n):
                out.append(Finding(
                    "clean_near_chance",
                    f"clean accuracy {_pct(clean)} on {n} examples is close to chance ({_pct(chance)} for {k} classes): "
                    "the model is not doing its task on these images, so its robust accuracy means nothing; check the "
                    "weights were loaded (a random initialization), the normalization (--mean/--std), the input scale "
                    "([0, 1] pixels), the class order and that the data set is the one the model was trained for",
                    model=model))
        rec = first.recorded
        if rec is not None and n > 0 and rec.accuracy - clean > FAR_BELOW_POINTS:
            var = clean * (1 - clean) / n + (rec.accuracy * (1 - rec.accuracy) / rec.n if rec.n else 0.0)
            z = (rec.accuracy - clean) / math.sqrt(var) if var > 0 else math.inf
            if z > RECORDED_Z:
                out.append(Finding(
                    "clean_below_recorded",
                    f"clean accuracy {_pct(clean)} on {n} examples is far below the {_pct(rec.accuracy)} that "
                    f"{rec.source} records: the model is not seeing its inputs as in training; check the normalization "
                    "(--mean/--std), the input scale ([0, 1] pixels), channel and class order, the resize/crop, and "
                    "that these are the images it was evaluated on", model=model))
        for norm in sorted({r.norm for r in g}):
            attacked = [r for r in g if r.norm == norm and r.kind != COMBINED and r.eps > 0]
            k_clean = round(clean * n)
            if attacked and k_clean >= ROBUST_EQUALS_MIN_CLEAN and \
                    all(round(r.accuracy * r.n) == k_clean and r.n == n for r in attacked):
                names = ", ".join(sorted({r.attack for r in attacked}))
                eps = ", ".join(f"{e:g}" for e in sorted({r.eps for r in attacked}))
                out.append(Finding(
                    "robust_equals_clean",
                    f"no attack ({names}) changed a single prediction at any eps ({eps}; {norm}): all {k_clean} "
                    "clean-correct examples survived everything. Real models lose examples as eps grows; suspect the "
                    "attacks never reached the model's decision (eps far too small for the input scale, inputs "
                    "clamped or quantized inside the model, a forward that ignores its input's perturbation) before "
                    "calling it robust; check with a much larger eps, where accuracy must fall", model=model))
    return out


def _non_monotone(rs: list[ResultRow]) -> list[Finding]:
    out = []
    groups: dict[tuple, list[ResultRow]] = defaultdict(list)
    for r in rs:
        groups[(r.model, r.attack, r.norm, r.steps)].append(r)
    for (model, attack, norm, _), g in groups.items():
        g = sorted(g, key=lambda r: r.eps)
        for i, lo in enumerate(g):
            for hi in g[i + 1:]:
                if hi.eps > lo.eps and beyond_noise(hi.accuracy, lo.accuracy, hi.n, lo.n):
                    out.append(Finding(
                        "non_monotone_eps",
                        f"{attack} gives {_pct(hi.accuracy)} at eps={hi.eps:g} but {_pct(lo.accuracy)} at the smaller "
                        f"eps={lo.eps:g} ({norm}): robust accuracy cannot rise with eps (every perturbation of the "
                        "smaller ball lies in the larger); the attack fails at the larger eps (step size, "
                        "too few steps) or the rows come from different examples",
                        model=model, attack=attack, eps=hi.eps))
    return out


def _weaker_stronger(rs: list[ResultRow]) -> list[Finding]:
    out = []
    groups: dict[tuple, list[ResultRow]] = defaultdict(list)
    for r in rs:
        if r.kind != COMBINED:
            groups[(r.model, r.eps, r.norm)].append(r)
    for (model, eps, norm), g in groups.items():
        for strong in g:
            for weak in g:
                if strong is weak:
                    continue
                why = None
                fs, fw = family(strong.attack), family(weak.attack)
                if fs == fw and strong.steps is not None and weak.steps is not None and strong.steps > weak.steps:
                    why = f"{strong.steps} steps against {weak.steps}"
                elif fw in _WEAKER.get(fs, ()) and (strong.steps is None or strong.steps >= STRONG_MIN_STEPS
                                                     or fs == "autoattack"):
                    why = f"{fs} is at least as strong as {fw}"
                if why and beyond_noise(strong.accuracy, weak.accuracy, strong.n, weak.n):
                    out.append(Finding(
                        "weaker_attack_stronger",
                        f"{strong.attack} ({_pct(strong.accuracy)}) leaves more examples correct than the weaker "
                        f"{weak.attack} ({_pct(weak.accuracy)}) at eps={eps:g} ({norm}; {why}): the stronger attack "
                        "is failing, typically gradient masking or a bad step size; trust the lower number only as "
                        "an upper bound and investigate",
                        model=model, attack=strong.attack, eps=eps))
    return out


def _large_eps(rs: list[ResultRow]) -> list[Finding]:
    out = []
    for r in rs:
        large = (r.norm == "linf" and r.eps >= LARGE_LINF_EPS) or \
            (r.norm == "l2" and r.input_dim is not None and r.eps >= LARGE_LINF_EPS * math.sqrt(r.input_dim))
        if not large:
            continue
        bound = max(LARGE_EPS_MAX_ACC, 1.0 / r.n_classes if r.n_classes else 0.0)
        if r.accuracy > bound and (r.accuracy - bound) * r.n > NOISE_EXAMPLES:
            out.append(Finding(
                "not_zero_at_large_eps",
                f"{r.attack} leaves {_pct(r.accuracy)} correct at eps={r.eps:g} ({r.norm}), where every image can be "
                f"turned into the same mid-grey image (at most ~{_pct(bound)} can stay correct): the attack is "
                "failing (gradient masking, too few steps), so its numbers at smaller eps are not trustworthy either",
                model=r.model, attack=r.attack, eps=r.eps))
    return out


def _black_box(rs: list[ResultRow]) -> list[Finding]:
    out = []
    groups: dict[tuple, list[ResultRow]] = defaultdict(list)
    for r in rs:
        if r.kind != COMBINED:
            groups[(r.model, r.eps, r.norm)].append(r)
    for (model, eps, norm), g in groups.items():
        white = [r for r in g if r.white_box]
        black = [r for r in g if not r.white_box]
        if not white or not black:
            continue
        w = min(white, key=lambda r: r.accuracy)
        b = min(black, key=lambda r: r.accuracy)
        if beyond_noise(w.accuracy, b.accuracy, w.n, b.n):
            out.append(Finding(
                "black_box_beats_white_box",
                f"the black-box {b.attack} ({_pct(b.accuracy)}) beats the best white-box attack {w.attack} "
                f"({_pct(w.accuracy)}) at eps={eps:g} ({norm}): with working gradients a white-box attack should "
                "do at least as well, so the gradients are likely masked; the white-box numbers overestimate "
                "robustness",
                model=model, attack=w.attack, eps=eps))
    return out


def details_checks(details: Mapping[str, Any] | None, n: int, *, model: str | None = None,
                   attack: str | None = None, eps: float | None = None) -> list[Finding]:
    """Checks inside a composite attack's `AttackOutput.details` (our AutoAttack and the package adapter):
    a black-box sub-attack (Square) breaking examples beyond noise after the gradient attacks had their
    turn (AutoAttack's own 'Square decreased robust accuracy' check). `n`: examples in the result row."""
    out: list[Finding] = []
    if not details:
        return out
    for row in details.get("sub_attacks", []):
        if row.get("name") == "square" and row.get("fooled") is not None and n > 0:
            k = int(row["fooled"])
            if beyond_noise(k / n, 0.0, n, n):
                out.append(Finding(
                    "black_box_beats_white_box",
                    f"inside {attack or 'AutoAttack'}, the black-box Square broke {k} of {n} examples "
                    f"({_pct(k / n)}) that the gradient attacks before it could not: the gradients are likely "
                    "masked; the gradient attacks' numbers overestimate robustness",
                    model=model, attack=attack, eps=eps))
    return out


__all__ = ["CODES", "Finding", "PLAUSIBILITY_CODES", "RECORD_CODES", "Recorded", "ResultRow", "as_row", "beyond_noise",
           "details_checks", "family", "model_checks", "plausibility_checks",
           "result_checks"]
