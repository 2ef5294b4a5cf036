"""FAB: the fast adaptive boundary attack, and its targeted version FAB-T.

Paper: Croce, Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020. https://arxiv.org/abs/1907.02044 (Algorithm 1, section 3). Used as FAB-T in AutoAttack
(Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690).
Norm: L-inf or L2.

The algorithm (written from the paper): at the current iterate x_i, linearize the classifier; the
decision hyperplane is {z : f(x_i) + grad f(x_i) . (z - x_i) = 0} with f = z_s - z_y for the class s
whose linearized boundary is closest (untargeted) or the target class (FAB-T). Project both x_i and
the original x onto that hyperplane intersected with the pixel box [0, 1] (minimal-norm projections,
`hyperplane_box_projection`), giving d_i and d_orig, and step to
    x_{i+1} = clip((1 - a)(x_i + eta d_i) + a (x + eta d_orig)),  a = min(|d_i| / (|d_i| + |d_orig|), a_max)
with overshoot eta = 1.05 and a_max = 0.1. When x_{i+1} is adversarial it is recorded (if smaller than
the best so far) and pulled back towards x: x_{i+1} = x + beta (x_{i+1} - x), beta = 0.9.
FAB minimizes the perturbation; the restarts after the first start from a random point at eps / 2.

What we do differently (same per-example outcome at a given eps, fewer passes):
- robust accuracy at eps needs one adversarial point within eps, so an example leaves the batch once
  one is found (`early_stop`); the paper's attack keeps shrinking it;
- the forward pass that checks whether x_{i+1} is adversarial is the one that linearizes the model
  there (a separate check pass is not needed);
- the box-constrained projections are exact, computed by sorting the coordinates' break points.
Arguments:
    norm: "linf" or "l2".
    steps: iterations per run (100).
    restarts: runs per target (untargeted: 1; the paper's plus version uses 5).
    targeted: FAB-T: one run against each of the n_target_classes most likely other classes (False).
    n_target_classes: 9 (at most classes - 1).
    alpha_max, eta, beta: 0.1, 1.05, 0.9 (the paper's values).
    max_batch: FAB-T attacks several target classes at once, as many as keep examples x targets <=
        max_batch (256); see APGDT. The outcome per example does not depend on it.
Example:
    >>> out = FAB(targeted=True)(model, x, y, eps=8/255)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._core import AttackOutput, canonical_norm, check_eps, frozen, random_start, require_counts
from .errors import AttackConfigError
from .apgd import derive_seeds, target_group


def hyperplane_box_projection(p: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """Per row: the smallest d (in the norm) with w . (p + d) = b and 0 <= p + d <= 1.

    p, w: (n, D); b: (n,). Where the box makes the hyperplane unreachable, the d that gets closest
    (every coordinate moved to its bound in the useful direction). Exact: with the useful direction
    of each coordinate fixed, the reachable w . d grows piecewise linearly in the radius t (L-inf:
    d_i = sign(w_i) min(t, m_i); L2: d_i = sign(w_i) min(t |w_i|, m_i), m_i the room to the box), so
    sorting the break points and a cumulative sum give the radius where it reaches the target."""
    dt = torch.float64
    p64, w64 = p.to(dt), w.to(dt)
    c = b.to(dt) - (w64 * p64).sum(1)                    # w . d must equal c
    s = torch.where(c < 0, -1.0, 1.0).to(dt)
    w2 = w64 * s[:, None]                                 # now w2 . d = |c| >= 0
    need = c.abs()
    sign = torch.sign(w2)
    room = torch.where(w2 > 0, 1 - p64, p64).clamp(min=0)   # how far coordinate i can move usefully
    aw = w2.abs()
    inf = torch.tensor(float("inf"), dtype=dt, device=p.device)
    if norm == "linf":
        rate, brk = aw, torch.where(aw > 0, room, inf)
    elif norm == "l2":
        rate, brk = aw * aw, torch.where(aw > 0, room / aw.clamp(min=1e-300), inf)
    else:
        raise AttackConfigError(f"unknown norm {norm!r}")
    sat = aw * room                                       # contribution of a saturated coordinate
    order = brk.argsort(dim=1)
    brk_s, rate_s, sat_s = brk.gather(1, order), rate.gather(1, order), sat.gather(1, order)
    sat_before = torch.cumsum(sat_s, 1) - sat_s           # sum of saturated contributions before k
    rate_from = rate_s.flip(1).cumsum(1).flip(1)          # sum of rates from k on
    finite_brk = torch.where(torch.isinf(brk_s), torch.zeros_like(brk_s), brk_s)
    reach = sat_before + finite_brk * rate_from           # w . d at radius brk_k
    reach = torch.where(torch.isinf(brk_s), inf, reach)
    ok = reach >= need[:, None]
    has = ok.any(1)
    k = torch.where(has, ok.float().argmax(1), torch.full_like(need, brk.shape[1] - 1, dtype=torch.long))
    base = sat_before.gather(1, k[:, None]).squeeze(1)
    r = rate_from.gather(1, k[:, None]).squeeze(1)
    t = torch.where(r > 0, (need - base) / r.clamp(min=1e-300), torch.zeros_like(need))
    t = torch.where(has, t.clamp(min=0), inf)             # unreachable: everything to its bound
    t = torch.where(need == 0, torch.zeros_like(t), t)
    if norm == "linf":
        mag = torch.minimum(t[:, None].expand_as(room), room)
    else:
        mag = torch.minimum(t[:, None] * aw, room)
    return (sign * mag).to(p.dtype)


def _pnorm(d: torch.Tensor, norm: str) -> torch.Tensor:
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def fab_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str, steps: int,
            target: torch.Tensor | None = None, start: torch.Tensor | None = None, alpha_max: float = 0.1,
            eta: float = 1.05, beta: float = 0.9, early_stop: bool = True,
            groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """One FAB run on all of x. Returns (x_best, best_norm, forward, backward): x_best is the smallest
    adversarial point found (x itself where none), best_norm its distance (inf where none).
    `groups` (one id per row): rows attacking the same example share an id; with early stop, a row
    that finds a point within eps also stops the other rows of its group."""
    n, shape = x.shape[0], x.shape[1:]
    x_best = x.clone()
    best = torch.full((n,), float("inf"), device=x.device)
    fwd = bwd = 0
    if n == 0:
        return x_best, best, 0, 0

    def linearize(xa: torch.Tensor, yy: torch.Tensor, tt: torch.Tensor | None, need_grad: bool):
        """Logits, f (n, S) = z_s - z_y and its gradients (n, S, D); S = 1 (target) or classes."""
        nonlocal fwd, bwd
        if not need_grad:
            with torch.no_grad():
                fwd += xa.shape[0]
                return model(xa), None, None
        xr = xa.detach().requires_grad_(True)
        logits = model(xr)
        fwd += xa.shape[0]
        rows = torch.arange(xa.shape[0], device=xa.device)
        if tt is not None:
            f = logits[rows, tt] - logits[rows, yy]
            g, = torch.autograd.grad(f.sum(), xr)
            bwd += xa.shape[0]
            return logits.detach(), f.detach()[:, None], g.flatten(1)[:, None, :]
        k = logits.shape[1]
        grads = []
        for j in range(k):
            g, = torch.autograd.grad(logits[:, j].sum(), xr, retain_graph=j < k - 1)
            bwd += xa.shape[0]
            grads.append(g.flatten(1))
        gz = torch.stack(grads, 1)                                   # (n, K, D)
        f = logits.detach() - logits.detach()[rows, yy][:, None]
        gf = gz - gz[rows, yy][:, None, :]
        f[rows, yy] = float("inf")                                   # never pick the true class
        return logits.detach(), f, gf

    x1 = x.clone() if start is None else (x + start).clamp(0, 1)
    idx = torch.arange(n, device=x.device)
    x0, yy, tt, gg = x, y, target, groups
    logits, f, gf = linearize(x1, yy, tt, True)
    # Whether x_{i+1} is adversarial can be read off the pass that linearizes the model there, but an
    # adversarial x_{i+1} is pulled back, and the pulled-back point needs its own linearization. With a
    # fraction q of the batch adversarial per step, that costs (1 + q) linearizations (F + S*B, S the
    # gradients per example), against F + (F + S*B) for a separate check pass first: the cheaper is
    # taken per step from the last step's q, taking B = F (input gradients only, no weight gradients).
    # Both compute exactly the same iterates.
    s_grads = 1 if target is not None else None
    check_first = False
    for it in range(steps):
        if idx.numel() == 0:
            break
        last = it == steps - 1
        # the closest linearized boundary
        gn = gf.abs().sum(2) if norm == "linf" else gf.norm(dim=2)  # dual norm of each gradient
        dist = f.abs() / (gn + 1e-12)
        s = dist.argmin(1)
        rows = torch.arange(idx.numel(), device=x.device)
        w = gf[rows, s]                                               # (m, D)
        fs = f[rows, s]
        b = (w * x1.flatten(1)).sum(1) - fs                           # hyperplane w . z = b
        m = idx.numel()
        d = hyperplane_box_projection(torch.cat([x1.flatten(1), x0.flatten(1)]), torch.cat([w, w]),
                                      torch.cat([b, b]), norm)
        d1, d2 = d[:m], d[m:]
        a1 = _pnorm(d1, norm).clamp(min=1e-8)
        a2 = _pnorm(d2, norm).clamp(min=1e-8)
        a = (a1 / (a1 + a2)).clamp(0, alpha_max).view(-1, *([1] * len(shape)))
        x1 = ((x1 + eta * d1.view_as(x1)) * (1 - a) + (x0 + eta * d2.view_as(x0)) * a).clamp(0, 1)
        if check_first:
            with torch.no_grad():
                logits = model(x1)
            fwd += m
            f = gf = None
        else:
            logits, f, gf = linearize(x1, yy, tt, not last)
        adv = logits.argmax(1) != yy
        back = torch.zeros_like(adv)
        if adv.any():
            size = _pnorm(x1 - x0, norm)
            better = adv & (size < best[idx])
            if better.any():
                best[idx[better]] = size[better]
                x_best[idx[better]] = x1[better]
            done = adv & (best[idx] <= eps) if early_stop else torch.zeros_like(adv)
            back = adv & ~done
            if gg is not None and done.any():
                done = torch.isin(gg, gg[done])                         # siblings stop too
            if back.any():                                            # pull back towards x
                x1 = torch.where(back.view(-1, *([1] * len(shape))), x0 + beta * (x1 - x0), x1)
            keep = ~done
            if not keep.all():
                idx, x0, x1, yy = idx[keep], x0[keep], x1[keep], yy[keep]
                tt = None if tt is None else tt[keep]
                gg = None if gg is None else gg[keep]
                back = back[keep]
                if f is not None:
                    f, gf = f[keep], gf[keep]
        if last or idx.numel() == 0:
            break
        if check_first:
            _, f, gf = linearize(x1, yy, tt, True)
        elif back.any():
            _, fb, gb = linearize(x1[back], yy[back], None if tt is None else tt[back], True)
            f, gf = f.clone(), gf.clone()
            f[back], gf[back] = fb, gb
        if s_grads is None:
            s_grads = gf.shape[1]
        q = float(adv.float().mean())
        check_first = q > 1.0 / (1.0 + s_grads)
    return x_best, best, fwd, bwd


@dataclass(frozen=True)
class FAB:
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    targeted: bool = False
    n_target_classes: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    early_stop: bool = True
    max_batch: int = 256

    name = "fab"
    chooses_targets = True   # FAB-T targets the most likely other classes; it needs no `target`

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        require_counts(self, 'steps', 'restarts', 'n_target_classes', 'max_batch')

    def _run(self, model, x, y, eps, x_adv, fooled, order, chunk, r, seeds, generator) -> tuple[int, int]:
        """Restart r against the target classes in `chunk` (untargeted: order None), all at once, on the
        examples not yet fooled; updates x_adv and fooled in place."""
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            return 0, 0
        m = todo.numel()
        rows = todo.repeat(len(chunk))
        tgt = None if order is None else torch.cat([order[todo, -(t + 2)] for t in chunk])
        xs = x[rows]
        start = None
        if r > 0:
            rs = None if seeds is None else torch.cat([derive_seeds(seeds[todo.cpu()], 3, t, r) for t in chunk])
            start = random_start(xs, eps / 2, self.norm, rs, generator)
        xb, size, f_, b_ = fab_run(model, xs, y[rows], eps, norm=self.norm, steps=self.steps, target=tgt,
                                   start=start, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
                                   early_stop=self.early_stop, groups=rows if len(chunk) > 1 else None)
        hit = (size <= eps).view(len(chunk), m)
        any_hit = hit.any(0)
        pick = hit.float().argmax(0) * m + torch.arange(m, device=x.device)
        x_adv[todo[any_hit]] = xb[pick[any_hit]]
        fooled[todo[any_hit]] = True
        return f_, b_

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True) -> AttackOutput:
        check_eps(eps, self.norm)
        n = x.shape[0]
        x_adv, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        if eps == 0 or n == 0:
            return AttackOutput(x_adv, fooled, 0, 0)
        fwd = bwd = 0
        with frozen(model):
            with torch.no_grad():
                clean = model(x)
            fwd += n
            k = clean.shape[1]
            order = clean.argsort(dim=1)
            fooled |= order[:, -1] != y
            if self.targeted:
                n_t = min(self.n_target_classes, k - 1)
                t0 = 0
                while t0 < n_t and bool((~fooled).any()):
                    g = target_group(n_t - t0, int((~fooled).sum()), self.max_batch)
                    chunk = list(range(t0, t0 + g))
                    t0 += g
                    for r in range(self.restarts):
                        f_, b_ = self._run(model, x, y, eps, x_adv, fooled, order, chunk, r, seeds, generator)
                        fwd, bwd = fwd + f_, bwd + b_
            else:
                for r in range(self.restarts):
                    f_, b_ = self._run(model, x, y, eps, x_adv, fooled, None, [0], r, seeds, generator)
                    fwd, bwd = fwd + f_, bwd + b_
            if verify:
                with torch.no_grad():
                    fooled = model(x_adv).argmax(1) != y
                fwd += n
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd)


__all__ = ["FAB", "fab_run", "hyperplane_box_projection"]
