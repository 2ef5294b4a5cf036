"""L0 threat model: Sparse-RS, a score-based random search over which pixels to change.

Paper: Croce, Andriushchenko, Singh, Flammarion, Hein, "Sparse-RS: a versatile framework for
query-efficient sparse black-box adversarial attacks", AAAI 2022 (https://arxiv.org/abs/2006.12834),
section 3 (L0 attacks).
Norm: L0 over pixels: eps = k is the number of pixel positions that may change, each in all its channels
and by any amount inside [0, 1] (the paper's threat model; the engine's re-check counts positions where
any channel differs). On one-channel images pixels and coordinates coincide.

The algorithm (written from the paper):
- the perturbation is a set of k positions, each set to a corner of the colour cube ({0, 1} per channel);
  the loss is the margin z_y - max_{j != y} z_j, an example is done once it is misclassified;
- start: k positions drawn uniformly without replacement, colours uniformly from the corners;
- iteration i proposes to swap m_i = max(1, round(alpha_i k)) of the current positions for as many
  positions outside the set (uniformly), with fresh corner colours; the proposal is kept if it lowers
  the loss. alpha_i = alpha_init halved at the iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
  of a 10,000-query run (scaled to the query budget; the schedule of the Square attack);
- with k = every pixel, only colours are redrawn.

Engineering (outcome per example unchanged): every example draws its random numbers from its own
generators (its seed, the restart and a block of iterations), so its outcome does not depend on its
batch; the search runs on the whole batch at once. Two swaps in one proposal that draw the same new
position make one swap (a rare event that keeps the set at k positions). Every returned point was
evaluated in the loop, so `fooled` is exact for a deterministic model; verify=True re-checks.
Arguments:
    n_queries: per example and restart, the starting point's included (5000).
    alpha_init: 0.3. restarts: 1. rescale_schedule: scale the halving iterations to n_queries (True).
Example:
    >>> out = SparseRS(n_queries=1000)(model, x, y, eps=10, seeds=torch.arange(len(y)))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._core import AttackOutput, _per_example, check_eps, frozen, margin_loss, require_counts
from .apgd import derive_seeds
from .errors import AttackConfigError

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_BLOCK = 64


def alpha_schedule(i: int, alpha_init: float, n_queries: int, rescale: bool) -> float:
    it = int(i / n_queries * 10000) if rescale else i
    return alpha_init / 2 ** sum(it > t for t in _HALVINGS)


def _uniforms(seeds, generator, n: int, shape: tuple[int, ...], *salt: int) -> torch.Tensor:
    if n == 0:
        return torch.zeros((0, *shape))
    return _per_example(n, derive_seeds(seeds, *salt), generator, lambda g: torch.rand(shape, generator=g))


def l0_pixels(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per example: how many pixel positions differ in any channel (coordinates for non-image inputs)."""
    d = (x_adv != x)
    if d.dim() == 4:
        d = d.any(1)
    return d.flatten(1).sum(1)


def _place(x0: torch.Tensor, pos: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """x0 with the pixels at `pos` (n, k) set to the colours `col` (n, k, c)."""
    n, c = x0.shape[:2]
    flat = x0.reshape(n, c, -1).clone()
    flat.scatter_(2, pos[:, None, :].expand(n, c, pos.shape[1]), col.transpose(1, 2).to(x0.dtype))
    return flat.view_as(x0)


def sparse_rs_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, *, n_queries: int,
                  alpha_init: float, rescale: bool, seeds: torch.Tensor | None,
                  generator: torch.Generator | None, salt: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One run on all of x: (x_adv, fooled, forward passes); x_adv the first fooling point, else the
    lowest-loss one."""
    n, c = x.shape[:2]
    p = x[0, 0].numel()
    k = min(k, p)
    dev = x.device
    if n == 0 or k == 0:
        return x.clone(), torch.zeros(n, dtype=torch.bool, device=dev), 0
    u0 = _uniforms(seeds, generator, n, (p + c * k,), 51, salt).to(dev)
    pos = u0[:, :p].argsort(1)[:, :k]
    col = (u0[:, p:].view(n, k, c) < 0.5).to(x.dtype)
    with torch.no_grad():
        logits = model(_place(x, pos, col))
    fwd = n
    loss = -margin_loss(logits, y)
    hit = logits.argmax(1) != y
    x_adv, fooled = _place(x, pos, col), hit.clone()
    keep = ~hit
    idx, x0, yy, pos, col, loss = (torch.arange(n, device=dev)[keep], x[keep], y[keep], pos[keep], col[keep],
                                   loss[keep])
    live = None if seeds is None else seeds[keep.cpu()]
    width = 2 * k + c * k
    block = None
    for i in range(n_queries - 1):
        if idx.numel() == 0:
            break
        if i % _BLOCK == 0:
            block = _uniforms(live, generator, idx.numel(), (_BLOCK, width), 52, salt, i // _BLOCK).to(dev)
        u = block[:, i % _BLOCK]
        m = min(k, max(1, round(alpha_schedule(i, alpha_init, n_queries, rescale) * k)))
        rows = idx.numel()
        slots = u[:, :k].argsort(1)[:, :m]                            # which current positions to give up
        old = pos.gather(1, slots)
        if p > k:
            unused = torch.ones(rows, p, dtype=torch.bool, device=dev)
            unused.scatter_(1, pos, False)
            rank = (u[:, k:k + m] * (p - k)).long().clamp(max=p - k - 1)
            new = torch.searchsorted(unused.long().cumsum(1), rank + 1)
            for j in range(1, m):       # a position drawn twice: the later swap is dropped
                dup = (new[:, j:j + 1] == new[:, :j]).any(1)
                new[:, j] = torch.where(dup, old[:, j], new[:, j])
        else:
            new = old
        cand_pos = pos.scatter(1, slots, new)
        fresh = (u[:, 2 * k:].view(rows, k, c)[:, :m] < 0.5).to(x.dtype)
        keep_col = (new == old)[:, :, None] & (p > k)                  # a dropped swap keeps its colour
        cand_col = col.scatter(1, slots[:, :, None].expand(rows, m, c),
                               torch.where(keep_col, col.gather(1, slots[:, :, None].expand(rows, m, c)), fresh))
        xc = _place(x0, cand_pos, cand_col)
        with torch.no_grad():
            logits = model(xc)
        fwd += rows
        new_loss = -margin_loss(logits, yy)
        hit = logits.argmax(1) != yy
        take = hit | (new_loss < loss)
        pos = torch.where(take[:, None], cand_pos, pos)
        col = torch.where(take[:, None, None], cand_col, col)
        loss = torch.where(take, new_loss, loss)
        if hit.any():
            x_adv[idx[hit]] = xc[hit]
            fooled[idx[hit]] = True
            rest = ~hit
            idx, x0, yy, pos, col, loss = idx[rest], x0[rest], yy[rest], pos[rest], col[rest], loss[rest]
            block = block[rest]
            live = None if live is None else live[rest.cpu()]
    if idx.numel():
        x_adv[idx] = _place(x0, pos, col)
    return x_adv, fooled, fwd


@dataclass(frozen=True)
class SparseRS:
    norm: str = "l0"
    n_queries: int = 5000
    alpha_init: float = 0.3
    restarts: int = 1
    rescale_schedule: bool = True

    name = "sparse-rs"

    def __post_init__(self) -> None:
        if self.norm != "l0":
            raise AttackConfigError(f"sparse-rs is an L0 attack, not {self.norm}")
        require_counts(self, "n_queries", "restarts")
        if not 0 < self.alpha_init <= 1:
            raise AttackConfigError(f"alpha_init must lie in (0, 1], got {self.alpha_init}")

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True) -> AttackOutput:
        check_eps(eps, "l0")
        x_adv, fooled = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if eps == 0 or x.shape[0] == 0:
            return AttackOutput(x_adv, fooled, 0, 0)
        if x.dim() != 4:
            raise AttackConfigError(f"sparse-rs needs images (N, C, H, W), got shape {tuple(x.shape)}")
        fwd = 0
        with frozen(model):
            for r in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                xa, hit, f = sparse_rs_run(model, x[todo], y[todo], int(eps), n_queries=self.n_queries,
                                           alpha_init=self.alpha_init, rescale=self.rescale_schedule,
                                           seeds=None if seeds is None else seeds[todo.cpu()],
                                           generator=generator, salt=r)
                fwd += f
                x_adv[todo] = xa
                fooled[todo[hit]] = True
            if verify:
                with torch.no_grad():
                    fooled = model(x_adv).argmax(1) != y
                fwd += x.shape[0]
        return AttackOutput(x_adv.detach(), fooled, fwd, 0)


__all__ = ["SparseRS", "alpha_schedule", "l0_pixels", "sparse_rs_run"]
