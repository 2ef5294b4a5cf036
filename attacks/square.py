"""Square attack: score-based black-box random search, L-inf and L2, our implementation.

Paper: Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020. https://arxiv.org/abs/1912.00049
Norm: L-inf or L2. Needs only the model's outputs (no gradients).

The algorithm (written from the paper; Algorithm 1 with the samplers of Algorithms 2 and 3):
- minimise the margin loss L = z_y - max_{k != y} z_k of the logits z; an example is done (and leaves the
  batch) once it is misclassified;
- start (L-inf) from vertical stripes of width one, each stripe's colour drawn per channel from
  {-eps, +eps}; (L2) from a grid of windows, each holding the pattern eta below with a random sign per
  channel, rescaled to norm eps;
- each iteration proposes one random change of a window of side h and keeps it if it lowers the loss:
  (L-inf, Algorithm 2) the window, drawn uniformly among the positions that fit, is set to x + rho eps
  with one rho in {-1, +1} per channel (the projection of the current point + 2 rho eps onto the ball);
  (L2, Algorithm 3) two windows W1 and W2 are drawn, per channel the perturbation's mass in W1 u W2 and
  the unused budget eps^2 - ||nu||^2 (shared evenly across channels) are moved into W1 along
  rho eta* + nu_W1 / ||nu_W1||, and W2 is zeroed, so the perturbation keeps norm eps;
- eta (L2) is eq. (2) of the paper: eta^(h1,h2)_{r,s} = sum_{k=0}^{M(r,s)} 1 / (n + 1 - k)^2 with
  M(r,s) = n - max(|r - floor(h1/2) - 1|, |s - floor(h2/2) - 1|) (1-based r, s): concentric rectangles,
  weights growing towards the centre; stacked as (eta^(k,h), -eta^(h-k,h)) with k = floor(h / 2),
  normalised, and transposed with probability 1/2. We take n = floor(max(h1, h2) / 2), so the rings fill
  the whole h1 x h2 half-window, as the authors' code does (with n = floor(h1 / 2) read literally, the
  rings of the flat half-windows would stop at a central square);
- the window side follows p, the fraction of the image's pixels a window covers: h = round(sqrt(p H W))
  (at least 1; at least 3 and odd for L2, so eta has a centre), p = p_init halved after the iterations
  10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10,000-query run (`rescale_schedule`: those
  iterations are scaled to the query budget, as the paper does for other budgets; AutoAttack keeps them
  unscaled with its 5,000 queries).

Engineering on top of the paper (the outcome per example is the same, only cheaper or reproducible):
- per-example randomness: each example draws every random number from its own generators, seeded by its
  own seed (`seeds`) and the restart and block of iterations, so its outcome does not depend on which
  other examples share its batch (batch size, resume and sharding leave results unchanged). The draws
  of `_BLOCK` iterations are taken at once per example (small tensors, stacked) and the search itself runs
  on the whole batch at once;
- a proposal that leaves an example's point unchanged (L-inf: the window already had that colour) is
  not sent to the model (its loss is known and it cannot be accepted), so it costs an iteration of the
  budget but no forward pass;
- `forward` counts the example-forwards actually run (`backward` is 0).
Every returned point was evaluated in the loop, so `fooled` is exact for a deterministic model; for a
randomized one, verify=True re-checks the returned points with one more forward pass.

Arguments:
    norm: "linf" or "l2".
    n_queries: queries per example and restart, the starting point's included (5000).
    p_init: initial fraction of the image a window covers (0.8, AutoAttack's; the paper uses 0.05 (L-inf)
        and 0.1 (L2) on ImageNet).
    restarts: each runs only on examples no earlier one fooled, with fresh draws (1).
    rescale_schedule: scale the halving iterations of p to n_queries (True).
Example:
    >>> out = Square(norm="linf", n_queries=1000)(model, x, y, eps=8/255, seeds=torch.arange(len(y)))
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from ._core import (AttackOutput, PassCounter, _per_example, canonical_norm, check_eps, clip_to_box, frozen,
                    margin_loss, project, require_counts)
from .apgd import derive_seeds
from .errors import AttackConfigError

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_BLOCK = 64           # iterations whose random numbers an example draws at once (changing it changes the draws)
_PACKAGE_NORM = {"linf": "Linf", "l2": "L2"}


def _square_norm(norm: str) -> str:
    norm = canonical_norm(norm)
    if norm not in _PACKAGE_NORM:
        raise AttackConfigError(f"square is an L-inf or L2 attack, not {norm}")
    return norm


def p_schedule(i: int, p_init: float, n_queries: int, rescale: bool) -> float:
    """p at iteration i (0-based): p_init halved once for every threshold of _HALVINGS that i (scaled to
    a 10,000-query run when `rescale`) has passed."""
    it = int(i / n_queries * 10000) if rescale else i
    return p_init / 2 ** sum(it > t for t in _HALVINGS)


def window_side(p: float, height: int, width: int, norm: str) -> int:
    """Side of the square window covering a fraction p of the image's pixels."""
    s = int(round(math.sqrt(p * height * width)))
    if norm == "l2":
        s = max(s, 3)
        s += 1 - s % 2
    return max(1, min(s, height, width))


def eta_rect(h1: int, h2: int) -> torch.Tensor:
    """eta^(h1,h2) of eq. (2): concentric rectangles around the centre, weights 1/(n+1-k)^2 summed inwards."""
    if h1 == 0:
        return torch.zeros(0, h2)
    n = max(h1, h2) // 2
    r = torch.arange(1, h1 + 1).view(-1, 1)
    s = torch.arange(1, h2 + 1).view(1, -1)
    m = n - torch.maximum((r - h1 // 2 - 1).abs(), (s - h2 // 2 - 1).abs())      # M(r, s); < 0: empty sum
    # sum_{k=0}^{M} 1/(n+1-k)^2 = sum_{j=n+1-M}^{n+1} 1/j^2
    tail = torch.tensor([sum(1.0 / j ** 2 for j in range(a, n + 2)) for a in range(1, n + 2)] + [0.0])
    return tail[(n - m).clamp(0, n + 1)] * (m >= 0)


def eta(h: int) -> torch.Tensor:
    """The L2 window pattern: eta^(k,h) above -eta^(h-k,h), k = floor(h/2), of unit L2 norm."""
    k = h // 2
    e = torch.cat([eta_rect(k, h), -eta_rect(h - k, h)])
    return e / e.norm()


def _uniforms(seeds: torch.Tensor | None, generator: torch.Generator | None, n: int, shape: tuple[int, ...],
              *salt: int) -> torch.Tensor:
    """(n, *shape) uniforms in [0, 1): row j from a generator seeded by (seeds[j], salt); without seeds,
    from the shared `generator` (or torch's global one)."""
    if n == 0:
        return torch.zeros((0, *shape))
    return _per_example(n, derive_seeds(seeds, *salt), generator, lambda g: torch.rand(shape, generator=g))


def _sign(u: torch.Tensor) -> torch.Tensor:
    return torch.where(u < 0.5, -1.0, 1.0)


def _position(u: torch.Tensor, size: int, h: int) -> torch.Tensor:
    """Uniform in {0, ..., size - h}."""
    return (u * (size - h + 1)).long().clamp(0, size - h)


def _window(r: torch.Tensor, s: torch.Tensor, h: int, height: int, width: int) -> torch.Tensor:
    """(m, 1, H, W) mask of the h x h windows with top-left corners (r, s)."""
    rows = torch.arange(height, device=r.device)
    cols = torch.arange(width, device=r.device)
    in_r = (rows[None] >= r[:, None]) & (rows[None] < r[:, None] + h)
    in_c = (cols[None] >= s[:, None]) & (cols[None] < s[:, None] + h)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def _init_linf(x: torch.Tensor, eps: float, u: torch.Tensor) -> torch.Tensor:
    """Vertical stripes of width one, colour +-eps per stripe and channel. u: (m, C * W)."""
    m, c, _, w = x.shape
    return (eps * _sign(u).view(m, c, 1, w)).expand_as(x).to(x)


def _grid(height: int, width: int) -> tuple[int, list[int], list[int]]:
    """The L2 start's grid: side s = H // 5 (at least 1), as many windows as fit, centred."""
    s = max(height // 5, 1)
    nr, nc = height // s, width // s
    r0, c0 = (height - nr * s) // 2, (width - nc * s) // 2
    return s, [r0 + i * s for i in range(nr)], [c0 + j * s for j in range(nc)]


def _init_l2(x: torch.Tensor, eps: float, u: torch.Tensor) -> torch.Tensor:
    """A grid of windows, each eta (transposed or not) with a random sign per channel; norm eps.
    u: (m, cells * (C + 1))."""
    m, c, height, width = x.shape
    s, rows, cols = _grid(height, width)
    e = eta(s).to(x)
    u = u.view(m, len(rows) * len(cols), c + 1).to(x.device)
    delta = torch.zeros_like(x)
    for k, (r, q) in enumerate((r, q) for r in rows for q in cols):
        flip = (u[:, k, c] < 0.5).view(m, 1, 1, 1)
        pat = torch.where(flip, e.t(), e)                                   # (m, 1, s, s)
        delta[:, :, r:r + s, q:q + s] = pat * _sign(u[:, k, :c]).to(x)[:, :, None, None]
    return project(delta / (delta.flatten(1).norm(dim=1).view(m, 1, 1, 1) + 1e-12) * eps, eps, "l2")


def _propose_linf(x0: torch.Tensor, delta: torch.Tensor, eps: float, h: int, u: torch.Tensor) -> torch.Tensor:
    """Algorithm 2: the window at a uniform position set to rho eps, one rho per channel, clipped to the
    box. u: (m, 2 + C)."""
    m, c, height, width = x0.shape
    r, s = _position(u[:, 0], height, h), _position(u[:, 1], width, h)
    win = _window(r.to(x0.device), s.to(x0.device), h, height, width)
    colour = (eps * _sign(u[:, 2:2 + c])).to(x0)[:, :, None, None].expand_as(x0)
    # clipped inside the window only, so the rest stays bit-identical and an unchanged proposal is seen
    return torch.where(win, clip_to_box(x0, colour), delta)


def _propose_l2(x0: torch.Tensor, delta: torch.Tensor, eps: float, h: int, u: torch.Tensor) -> torch.Tensor:
    """Algorithm 3: move the mass of W1 u W2 and the unused budget into W1 along rho eta* + nu_W1/||nu_W1||,
    zero W2; then onto the ball (rounding) and the box. u: (m, 5 + C): positions of W1 and W2, eta's
    transposition, rho per channel."""
    m, c, height, width = x0.shape
    dev = x0.device
    r1, s1 = _position(u[:, 0], height, h).to(dev), _position(u[:, 1], width, h).to(dev)
    r2, s2 = _position(u[:, 2], height, h).to(dev), _position(u[:, 3], width, h).to(dev)
    e = eta(h).to(x0)
    pat = torch.where((u[:, 4] < 0.5).to(dev).view(m, 1, 1), e.t(), e)             # (m, h, h)
    rho = _sign(u[:, 5:5 + c]).to(x0)                                            # (m, C)
    ar = torch.arange(h, device=dev)
    ii = torch.arange(m, device=dev).view(m, 1, 1, 1)
    cc = torch.arange(c, device=dev).view(1, c, 1, 1)
    rr = (r1[:, None] + ar).view(m, 1, h, 1)
    ss = (s1[:, None] + ar).view(m, 1, 1, h)
    nu = delta
    w1 = nu[ii, cc, rr, ss]                                                      # (m, C, h, h)
    union = _window(r1, s1, h, height, width) | _window(r2, s2, h, height, width)
    mass = (nu.pow(2) * union).sum((2, 3))                                       # (m, C)
    unused = (eps ** 2 - nu.pow(2).flatten(1).sum(1)).clamp(min=0)               # (m,)
    avail = (mass + unused[:, None] / c).sqrt()
    w1_norm = w1.pow(2).sum((2, 3), keepdim=True).sqrt()
    tmp = rho[:, :, None, None] * pat[:, None] + w1 / (w1_norm + 1e-12)
    new = tmp / (tmp.pow(2).sum((2, 3), keepdim=True).sqrt() + 1e-12) * avail[:, :, None, None]
    out = nu.masked_fill(_window(r2, s2, h, height, width), 0.0)
    out[ii, cc, rr, ss] = new
    return clip_to_box(x0, project(out, eps, "l2"))


def square_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str,
               n_queries: int, p_init: float, rescale: bool, seeds: torch.Tensor | None,
               generator: torch.Generator | None, salt: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One run of Algorithm 1 on all of x: (x_adv, fooled, forward passes). x_adv: the first fooling point
    where found, else the lowest-loss point."""
    n, c, height, width = x.shape
    if n == 0:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device), 0
    if norm == "linf":
        delta = _init_linf(x, eps, _uniforms(seeds, generator, n, (c * width,), 11, salt))
    else:
        _, rows, cols = _grid(height, width)
        delta = _init_l2(x, eps, _uniforms(seeds, generator, n, (len(rows) * len(cols) * (c + 1),), 12, salt))
    delta = clip_to_box(x, delta)
    with torch.no_grad():
        logits = model(x + delta)
    fwd = n
    loss = -margin_loss(logits, y)
    hit = logits.argmax(1) != y
    x_adv, fooled = x + delta, hit.clone()
    keep = ~hit
    idx, x0, yy, delta, loss = torch.arange(n, device=x.device)[keep], x[keep], y[keep], delta[keep], loss[keep]
    live_seeds = None if seeds is None else seeds[keep.cpu()]
    propose = _propose_linf if norm == "linf" else _propose_l2
    k = 2 + c if norm == "linf" else 5 + c
    u_block = None
    for i in range(n_queries - 1):
        if idx.numel() == 0:
            break
        if i % _BLOCK == 0:
            u_block = _uniforms(live_seeds, generator, idx.numel(), (_BLOCK, k), 13, salt, i // _BLOCK)
        h = window_side(p_schedule(i, p_init, n_queries, rescale), height, width, norm)
        cand = propose(x0, delta, eps, h, u_block[:, i % _BLOCK])
        changed = (cand != delta).flatten(1).any(1)
        if not changed.any():
            continue
        ch = changed.nonzero().squeeze(1)
        with torch.no_grad():
            logits = model(x0 + cand if len(ch) == len(changed) else x0[ch] + cand[ch])
        fwd += int(ch.numel())
        new_loss = -margin_loss(logits, yy[ch])
        hit = logits.argmax(1) != yy[ch]
        take = hit | (new_loss < loss[ch])
        acc = ch[take]
        delta[acc] = cand[acc]
        loss[acc] = new_loss[take]
        if hit.any():
            done = ch[hit]
            x_adv[idx[done]] = x0[done] + delta[done]
            fooled[idx[done]] = True
            keep = torch.ones(idx.numel(), dtype=torch.bool, device=x.device)
            keep[done] = False
            idx, x0, yy, delta, loss = idx[keep], x0[keep], yy[keep], delta[keep], loss[keep]
            u_block = u_block[keep.cpu()]
            live_seeds = None if live_seeds is None else live_seeds[keep.cpu()]
    if idx.numel():
        x_adv[idx] = x0 + delta
    return x_adv, fooled, fwd


@dataclass(frozen=True)
class Square:
    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    rescale_schedule: bool = True

    name = "square"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _square_norm(self.norm))
        require_counts(self, "n_queries", "restarts")
        if not 0 < self.p_init <= 1:
            raise AttackConfigError(f"p_init must lie in (0, 1], got {self.p_init}")

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True, **_: Any) -> AttackOutput:
        check_eps(eps, self.norm)
        if x.dim() != 4:
            raise ValueError(f"square needs NCHW images, got a tensor of shape {tuple(x.shape)}")
        n = x.shape[0]
        x_adv, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        if eps == 0 or n == 0:
            return AttackOutput(x_adv, fooled, 0, 0)
        fwd = 0
        seeds = None if seeds is None else torch.as_tensor(seeds, dtype=torch.int64).cpu()
        with frozen(model):
            for r in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                xa, hit, f_ = square_run(model, x[todo], y[todo], eps, norm=self.norm, n_queries=self.n_queries,
                                         p_init=self.p_init, rescale=self.rescale_schedule,
                                         seeds=None if seeds is None else seeds[todo.cpu()], generator=generator,
                                         salt=r)
                fwd += f_
                if r == 0:
                    x_adv[todo] = xa
                else:
                    x_adv[todo[hit]] = xa[hit]
                fooled[todo[hit]] = True
            if verify:
                with torch.no_grad():
                    fooled = model(x_adv).argmax(1) != y
                fwd += n
        return AttackOutput(x_adv.detach(), fooled, fwd, 0)


@dataclass(frozen=True)
class SquareFromPackage:
    """The reference package's Square attack (pyautoattack or GitHub autoattack, `square.SquareAttack`)
    on our calling convention, registered as `square-package`: the reference our Square is tested
    against. It draws one window and colour per iteration for the whole batch, seeded once per call
    (from the first example's seed, inside a forked RNG so torch's global state is left as it was), so
    an example's outcome depends on its batch. Passes are counted through `PassCounter`."""
    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8
    rescale_schedule: bool = True

    name = "square-package"
    implementation = "package"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _square_norm(self.norm))
        require_counts(self, "n_queries")

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, verify: bool = True, **_: Any) -> AttackOutput:
        from ._compat import import_autoattack
        check_eps(eps, self.norm)
        n = x.shape[0]
        if eps == 0 or n == 0:
            return AttackOutput(x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device), 0, 0)
        pkg = import_autoattack()
        square = importlib.import_module(pkg.__name__ + ".square")
        counter = PassCounter(model)
        seed = int(seeds[0]) if seeds is not None and len(seeds) else 0
        sq = square.SquareAttack(counter, p_init=self.p_init, n_queries=self.n_queries, eps=eps,
                                 norm=_PACKAGE_NORM[self.norm], n_restarts=1, seed=seed,
                                 verbose=False, device=x.device, resc_schedule=self.rescale_schedule)
        devices = [x.device] if x.device.type == "cuda" else []
        with frozen(model), torch.random.fork_rng(devices=devices), torch.no_grad():
            x_adv = sq.perturb(x, y)
            fooled = counter(x_adv).argmax(1) != y   # Square returns points, not flags: one check pass
        fwd, bwd = counter.counts()
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd)


__all__ = ["Square", "SquareFromPackage", "eta", "eta_rect", "p_schedule", "square_run", "window_side"]
