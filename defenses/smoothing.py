"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019, https://arxiv.org/abs/1902.02918): the
smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c) of a base classifier f, its PREDICT and
CERTIFY procedures, the Gaussian noise augmentation that trains f for it, and an L2 attack on g (PGD on
the soft smoothed classifier with fresh noise every step, Salman et al., NeurIPS 2019,
https://arxiv.org/abs/1906.04584), which checks the certificates from the other side.

  certify(model, x, ...)     CERTIFY: class and certified L2 radius sigma * Phi^-1(pA_lower), or abstain
  predict(model, x, ...)     PREDICT: class, or abstain when the top two counts are not significantly apart
  smoothed_pgd(model, x, y)  adversarial inputs for g within an L2 radius
  GaussianAugmentation       the training recipe (`train --defense gaussian --sigma S`)

Noise is drawn per example from its own seed, in fixed blocks of NOISE_BLOCK samples each seeded by
(example seed, phase, block): an example's certificate does not depend on the other examples, the batch
size of the forward passes (up to floating-point reassociation in the model), resume or how examples are
spread over processes. Pixels are in [0, 1] and the noise is added there, unclipped, as in the paper.
The statistics (Clopper-Pearson bound, binomial test) come from scipy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from attacks import ascent_direction, clip_to_box, frozen, project

from ._random import BatchRandom, derive_seed
from .recipes import Recipe

NOISE_BLOCK = 128   # samples per seeded block of the noise stream (fixed: results must not depend on it)

SELECTION, ESTIMATION, PREDICTION = "selection", "estimation", "prediction"


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for one input. `prediction` None: abstained (pA_lower <= 1/2), `radius` then None.
    `selected` is the class the n0 selection samples chose (certified or not), `count` its votes among
    the n estimation samples."""
    prediction: int | None
    radius: float | None
    p_lower: float
    selected: int
    count: int
    n: int
    passes: int                     # forward example-passes spent (n0 + n)

    @property
    def abstained(self) -> bool:
        return self.prediction is None


@dataclass(frozen=True)
class Prediction:
    """PREDICT's answer for one input. `prediction` None: abstained (two-sided binomial p-value of the
    top two counts > alpha)."""
    prediction: int | None
    top: int
    count_top: int
    second: int
    count_second: int
    p_value: float
    n: int

    @property
    def abstained(self) -> bool:
        return self.prediction is None


def _check(sigma: float, alpha: float | None = None, **counts: int) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")


def noise_samples(shape: Sequence[int], start: int, stop: int, seed: int, phase: str,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Samples start..stop-1 of the standard normal stream of (seed, phase), shape (stop - start, *shape).
    Block j of the stream is drawn from a generator seeded by (seed, phase, j), so any slice of it is the
    same numbers whatever slices were asked for before."""
    device = torch.device(device)
    g = torch.Generator(device=device)
    first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
    blocks = []
    for j in range(first, last + 1):
        g.manual_seed(derive_seed(seed, phase, j))
        blocks.append(torch.randn((NOISE_BLOCK, *shape), generator=g, device=device))
    out = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    off = start - first * NOISE_BLOCK
    return out[off:off + (stop - start)]


def sample_counts(model: torch.nn.Module, x: torch.Tensor, num: int, *, sigma: float, num_classes: int,
                  batch_size: int, seed: int, phase: str) -> torch.Tensor:
    """SAMPLEUNDERNOISE: how often f(x + N(0, sigma^2 I)) says each class among `num` draws, in forward
    passes of up to `batch_size` noisy copies of x (one image, C x H x W). ValueError on non-finite logits:
    an argmax over NaN would count as a vote."""
    _check(sigma, num=num, batch_size=batch_size, num_classes=num_classes)
    counts = torch.zeros(num_classes, dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for a in range(0, num, batch_size):
            b = min(num, a + batch_size)
            eps = noise_samples(x.shape, a, b, seed, phase, x.device).to(x.dtype)
            logits = model(x.unsqueeze(0) + sigma * eps)
            if logits.dim() != 2 or logits.shape[1] != num_classes:
                raise ValueError(f"the model returned {tuple(logits.shape)} for {b - a} inputs, not "
                                 f"({b - a}, {num_classes}) logits")
            if not torch.isfinite(logits).all():
                raise ValueError("the model produced NaN or infinite logits on noisy inputs")
            counts += torch.bincount(logits.argmax(1), minlength=num_classes)
    return counts.cpu()


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion after k successes in n:
    the p at which P(Binomial(n, p) >= k) = alpha, the alpha quantile of Beta(k, n - k + 1); 0 for k = 0."""
    if k <= 0:
        return 0.0
    from scipy.stats import beta
    return float(beta.ppf(alpha, k, n - k + 1))


def binomial_p_value(k: int, n: int) -> float:
    """Two-sided p-value of k successes in n under p = 1/2 (BINOMPVALUE). The null is symmetric, so it is
    twice the tail beyond the farther of k and n - k, at most 1."""
    if n <= 0:
        return 1.0
    from scipy.stats import binom
    hi = max(k, n - k)
    if 2 * hi == n:
        return 1.0
    return float(min(1.0, 2.0 * binom.sf(hi - 1, n, 0.5)))


def certify(model: torch.nn.Module, x: torch.Tensor, *, sigma: float, n0: int, n: int, alpha: float,
            batch_size: int, seed: int, num_classes: int) -> Certificate:
    """CERTIFY (the paper's Algorithm 1): the class that most of n0 noisy samples vote for, and, if the
    (1 - alpha) lower bound on its probability from n fresh samples exceeds 1/2, the radius
    sigma * Phi^-1(pA_lower) in which g provably keeps it (with probability >= 1 - alpha); else abstain."""
    _check(sigma, alpha, n0=n0, n=n)
    counts0 = sample_counts(model, x, n0, sigma=sigma, num_classes=num_classes, batch_size=batch_size,
                            seed=seed, phase=SELECTION)
    selected = int(counts0.argmax())
    counts = sample_counts(model, x, n, sigma=sigma, num_classes=num_classes, batch_size=batch_size,
                           seed=seed, phase=ESTIMATION)
    count = int(counts[selected])
    p_lower = lower_confidence_bound(count, n, alpha)
    if p_lower > 0.5:
        from scipy.stats import norm
        return Certificate(selected, float(sigma * norm.ppf(p_lower)), p_lower, selected, count, n, n0 + n)
    return Certificate(None, None, p_lower, selected, count, n, n0 + n)


def predict(model: torch.nn.Module, x: torch.Tensor, *, sigma: float, n: int, alpha: float, batch_size: int,
            seed: int, num_classes: int, phase: str = PREDICTION) -> Prediction:
    """PREDICT (the paper's Algorithm 1): the top class of n noisy samples if a two-sided binomial test
    says it beats the runner-up at level alpha, else abstain; g(x) is then wrong with probability <= alpha."""
    _check(sigma, alpha, n=n)
    counts = sample_counts(model, x, n, sigma=sigma, num_classes=num_classes, batch_size=batch_size,
                           seed=seed, phase=phase)
    order = sorted(range(num_classes), key=lambda c: (-int(counts[c]), c))
    top, second = order[0], order[1] if num_classes > 1 else order[0]
    n_a, n_b = int(counts[top]), int(counts[second]) if num_classes > 1 else 0
    p = binomial_p_value(n_a, n_a + n_b)
    return Prediction(top if p <= alpha else None, top, n_a, second, n_b, p, n)


def smoothed_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: Sequence[int], *,
                 sigma: float, radius: float, steps: int = 20, samples: int = 16,
                 step_size: float | None = None) -> torch.Tensor:
    """L2 PGD on the soft smoothed classifier: ascend -log((1/m) sum_i softmax(f(x' + sigma e_i))_y) with m
    = `samples` fresh noise draws per step (an expectation over the noise, as SmoothAdv's attack; the
    gradient of one draw would be noise), normalized steps of `step_size` (default 2.5 * radius / steps),
    each followed by projection onto the L2 ball of `radius` and the [0, 1] box. Returns x' (detached).
    Noise comes from each example's seed (`seeds`, one per row of x), so x' does not depend on the batch."""
    _check(sigma, steps=steps, samples=samples)
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {x.shape[0]} examples")
    if radius == 0 or x.shape[0] == 0:
        return x.detach().clone()
    step = 2.5 * radius / steps if step_size is None else float(step_size)
    b, shape = x.shape[0], tuple(x.shape[1:])
    delta = torch.zeros_like(x)
    with frozen(model):
        for t in range(steps):
            eps = torch.stack([noise_samples(shape, 0, samples, int(s), f"attack|{radius!r}|{t}", x.device)
                               for s in seeds]).to(x.dtype)                      # b, m, *shape
            xa = (x + delta).detach().requires_grad_(True)
            noisy = (xa.unsqueeze(1) + sigma * eps).reshape(b * samples, *shape)
            probs = F.softmax(model(noisy).float(), dim=1).reshape(b, samples, -1).mean(1)
            loss = -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-12)).sum()
            grad, = torch.autograd.grad(loss, xa)
            delta = delta + step * ascent_direction(grad.to(x.dtype), "l2")
            delta = clip_to_box(x, project(delta, radius, "l2")).detach()
    return (x + delta).detach()


@dataclass(frozen=True)
class GaussianAugmentation(Recipe):
    """Cross-entropy on x + N(0, sigma^2 I) (pixels in [0, 1], unclipped): the base classifier randomized
    smoothing needs (Cohen et al. 2019, section 4; certify with the same sigma)."""
    name: ClassVar[str] = "gaussian"
    sigma: float = 0.25

    def __post_init__(self) -> None:
        _check(self.sigma)

    @property
    def validation_noise(self) -> float:
        """Validation measures accuracy under this noise (the trainer's hook): a model trained for noisy
        inputs may fail on clean ones (its batch-norm statistics are the noisy images'), and it is only
        ever used under noise."""
        return self.sigma

    def inputs(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               rnd: BatchRandom) -> tuple[torch.Tensor, ...]:
        return (x + self.sigma * rnd.normal(*x.shape[1:]).to(device=x.device, dtype=x.dtype),)
