"""Pieces every gradient attack shares: projection onto the threat model, the ascent step,
per-example random starts, losses, and running a model frozen for attacking.

Everything works on float NCHW pixels in [0, 1]; normalization lives inside the model.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .errors import AttackConfigError

NORMS = ("linf", "l2", "l1", "l0")   # l0: eps counts pixels (all channels of a position), see attacks/sparse.py

_NORM_ALIASES = {"linf": "linf", "l-inf": "linf", "inf": "linf", "li": "linf",
                 "l2": "l2", "2": "l2", "l1": "l1", "1": "l1", "l0": "l0", "0": "l0"}


def canonical_norm(norm: str) -> str:
    key = str(norm).strip().lower().replace("_", "-")
    if key not in _NORM_ALIASES:
        raise AttackConfigError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
    return _NORM_ALIASES[key]


def check_eps(eps: float, norm: str) -> None:
    """Refuse a budget that makes no sense: negative, not finite, or an L-inf ball larger than the pixel range."""
    if not (eps == eps) or eps in (float("inf"), float("-inf")):
        raise AttackConfigError(f"eps must be a finite number, got {eps}")
    if eps < 0:
        raise AttackConfigError(f"eps must be >= 0, got {eps}")
    if canonical_norm(norm) == "linf" and eps > 1:
        raise AttackConfigError(f"an L-inf eps of {eps} exceeds the [0, 1] pixel range; did you mean {eps}/255?")
    if canonical_norm(norm) == "l0" and eps != int(eps):
        raise AttackConfigError(f"an L0 eps counts pixels, a whole number; got {eps}")


def require_counts(attack: object, *names: str) -> None:
    """Each named integer field of an attack's settings is >= 1 (steps, restarts, ...)."""
    for name in names:
        value = getattr(attack, name)
        if value < 1:
            raise AttackConfigError(f"{name} must be >= 1, got {value}")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Nearest point of the eps-ball (per example) to `delta`."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        scale = (eps / (_flat_norm(delta) + 1e-12)).clamp(max=1.0)
        return delta * scale
    if norm == "l1":
        return project_l1(delta, eps)
    if norm == "l0":
        return project_l0(delta, eps)
    raise AttackConfigError(f"unknown norm {norm!r}")


def project_l1(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the L1 ball: soft-thresholding at the lam where the L1 norm is eps, lam by
    bisection in float64 (the upper end, so the result is inside the ball). With the box as well, see
    attacks/l1.py `project_l1_box` (projecting here and clipping after stays feasible, not nearest)."""
    v = delta.detach().flatten(1).double()
    a = v.abs()
    over = a.sum(1) > eps
    if over.any():
        ao = a[over]
        lo = torch.zeros(ao.shape[0], 1, dtype=torch.float64, device=delta.device)
        hi = ao.max(1, keepdim=True).values
        for _ in range(64):
            mid = (lo + hi) / 2
            big = (ao - mid).clamp(min=0).sum(1, keepdim=True) > eps
            lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
        a = a.clone()
        a[over] = (ao - hi).clamp(min=0)
    return (torch.sign(v) * a).to(delta.dtype).view_as(delta)


def project_l0(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point with at most eps changed pixel positions (NCHW: all channels of a position count
    once; other shapes: coordinates): the eps positions of largest squared change kept, the rest zeroed."""
    k = int(eps)
    mag = delta.detach().double() ** 2
    if delta.dim() == 4:
        mag = mag.sum(1)
    mag = mag.flatten(1)
    if k >= mag.shape[1]:
        return delta
    keep = torch.zeros_like(mag, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, mag.topk(k, dim=1).indices, True)
    keep &= mag > 0
    mask = keep.view(delta.shape[0], *delta.shape[2:])[:, None] if delta.dim() == 4 else keep.view_as(delta)
    return delta * mask.to(delta.dtype)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size under the norm."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / (_flat_norm(grad) + 1e-12)
    raise AttackConfigError(f"unknown norm {norm!r}")


def clip_to_box(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Shrink delta so x + delta stays in [0, 1]; never leaves the eps-ball (it only moves toward x)."""
    return (x + delta).clamp(0.0, 1.0) - x


def _per_example(n: int, seeds: torch.Tensor | None, generator: torch.Generator | None,
                 draw: Callable[[torch.Generator | None], torch.Tensor]) -> torch.Tensor:
    """Stack `draw(g)` over examples, each from a generator seeded by its own seed, so an example's
    random start does not depend on which others share its batch (batch size, resume and sharding
    leave results unchanged). Without seeds, one shared generator (or torch's global one) is used."""
    if seeds is None:
        return torch.stack([draw(generator) for _ in range(n)]) if n else torch.empty(0)
    g = torch.Generator()
    out = []
    for s in seeds.tolist():
        g.manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF)
        out.append(draw(g))
    return torch.stack(out)


def random_start(x: torch.Tensor, eps: float, norm: str, seeds: torch.Tensor | None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform draw from the eps-ball (L-inf: the cube; L2: uniform in the ball), clipped to the box."""
    shape, n, d = x.shape[1:], x.shape[0], x[0].numel()
    if n == 0:
        return torch.zeros_like(x)
    if norm == "linf":
        u = _per_example(n, seeds, generator, lambda g: torch.rand(shape, generator=g))
        delta = (2 * u - 1) * eps
    else:
        def draw(g):
            direction = torch.randn(shape, generator=g)
            direction = direction / (direction.norm() + 1e-12)
            radius = torch.rand((), generator=g) ** (1.0 / d)   # uniform in volume
            return direction * radius
        delta = _per_example(n, seeds, generator, draw) * eps
    return clip_to_box(x, delta.to(device=x.device, dtype=x.dtype))


# ---- losses: each returns one value per example; attacks ascend on it ----

def require_classes(k: int, needed: int, what: str, instead: str = "use loss ce or margin") -> None:
    """DLR divides by z_pi1 - z_pi3 (targeted: z_pi1 - (z_pi3 + z_pi4) / 2): with fewer classes the
    sorted logits have no such entry, and the attack would die on an IndexError mid-run."""
    if k < needed:
        raise AttackConfigError(f"{what} needs at least {needed} classes but the model has {k}; {instead}")


def refuse_missing_target(attack: str) -> AttackConfigError:
    """The error for targeted=True without a target per example (the engine passes none)."""
    return AttackConfigError(
        f"{attack} with targeted=True needs a target class per example (target=...), and an evaluation run "
        f"passes none; for a targeted evaluation run apgd-t or autoattack, which choose targets from the "
        f"model's logits")


def check_applicable(attack: Any, n_classes: int, *, target_given: bool = False) -> None:
    """Refuse, before any example is attacked, an attack that cannot run on this model as configured:
    targeted=True without targets (unless the attack chooses its own, like FAB-T), the DLR loss on
    fewer than 3 classes, or an attack that needs more classes (APGD-T: 4). For the engine, which knows
    the class count from its first batch, so a bad setting is refused before a run is stored."""
    name = getattr(attack, "name", type(attack).__name__)
    if getattr(attack, "targeted", False) and not getattr(attack, "chooses_targets", False) and not target_given:
        raise refuse_missing_target(name)
    if str(getattr(attack, "loss", "")).lower() == "dlr":
        require_classes(n_classes, 3, f"{name} with the DLR loss")
    need = getattr(attack, "min_classes", 2)
    require_classes(n_classes, need, name, "use apgd or pgd instead")


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: best other logit minus the true one (positive once misclassified)."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(dim=1).values - true


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): the margin scaled by z_pi1 - z_pi3, invariant to
    the logits' scale, so a model cannot hide behind large or tiny logits."""
    require_classes(logits.shape[1], 3, "the DLR loss")
    z = logits.float()
    zs, _ = z.sort(dim=1)
    true = z.gather(1, y[:, None]).squeeze(1)
    top_is_true = (zs[:, -1] == true).float()
    best_other = zs[:, -2] * top_is_true + zs[:, -1] * (1 - top_is_true)
    return (best_other - true) / (zs[:, -1] - zs[:, -3] + 1e-12)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce_loss, "margin": margin_loss, "cw": margin_loss, "dlr": dlr_loss,
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return LOSSES[name.lower()]
    except KeyError:
        raise AttackConfigError(f"unknown loss {name!r}; expected one of {', '.join(sorted(LOSSES))}") from None


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no parameter gradients for the duration of an attack; both restored afterwards.

    Why: an attack must see the deterministic eval-mode model (dropout off, batch-norm statistics not
    updated) and must not leave gradients on, or accumulate them into, the weights. Not for speed: an
    attack that takes `autograd.grad` with respect to the input alone, as ours, torchattacks' and
    pyautoattack's do, computes no weight gradients anyway (measured: 0.427 s unfrozen vs 0.441 s frozen
    on 64 images), so freezing buys no time over them."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, rg in flags:
            p.requires_grad_(rg)
        model.train(was_training)


@dataclass(frozen=True)
class AttackOutput:
    """What an attack returns: the adversarial inputs, which it believes fooled the model, and its cost
    in example-passes (one forward of a batch of n counts n).

    `details` (optional) carries whatever an attack wants to report beyond that, e.g. a composite
    attack's per-sub-attack breakdown: {"sub_attacks": [{"name", "seconds", "forward", "backward",
    "attacked", "fooled"}, ...]}. Plain data only (str/int/float/bool/list/dict), so it can go to JSON."""
    x_adv: torch.Tensor
    fooled: torch.Tensor
    forward: int
    backward: int
    details: dict[str, Any] | None = field(default=None, compare=False)


class PassCounter(torch.nn.Module):
    """Wraps a model and counts example-passes through it: `forward` grows by the batch size of every
    call; `backward` by the batch size of every backward pass that reaches the model's output.

    Backward passes are counted with a tensor hook on the output (registered only when autograd records
    the call): it fires once per `backward()`/`autograd.grad` that flows through the output, so an attack
    that back-propagates K different output gradients through one forward (FAB's per-class Jacobian)
    is charged K backward passes, as it pays for them. A backward that reaches only some rows of the
    output is still charged the whole batch (the kernels run on it). This is how third-party attacks,
    which do not report their cost, are measured; our own attacks count their passes directly."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        # a new Module says training=True; third-party attacks read the flag to restore "the model's" mode
        # afterwards (torchattacks calls .train() on it), which would put the wrapped model in train mode
        self.train(model.training)
        self.forward_count = 0
        self.backward_count = 0

    def _count_backward(self, n: int) -> Callable[[torch.Tensor], None]:
        def hook(_grad: torch.Tensor) -> None:
            self.backward_count += n
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        n = int(x.shape[0]) if x.dim() else 1
        self.forward_count += n
        if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._count_backward(n))
        return out

    def counts(self) -> tuple[int, int]:
        return self.forward_count, self.backward_count
