"""Our PGD-10 against torchattacks' PGD-10, and the levers of our speed measured one at a time.

Same model (the shared CIFAR-10 ResNet-20), the first N official CIFAR-10 test images read through
robust-bench's own loader, same eps, 10 steps, step 2.5 eps / 10, a uniform random start; one process,
the sides interleaved (the order rotates every repeat), each warmed up first, medians reported; times are the
process's CPU seconds with one torch thread (on a shared machine wall time measures the other jobs).

    python benchmarks/bench_pgd.py [--n 1000] [--eps 1/255,8/255] [--repeats 3] [--threads 1] [--compile]

Sides:
- torchattacks as its users run it: every example, the model as given (fp32, contiguous), then one
  forward pass on its output to score it;
- torchattacks like for like: the engine's clean pass, torchattacks on the clean-correct examples only,
  in the same memory format and on the same prepared module as the ours-row it is paired with, then the
  engine's re-check pass;
- ours: `robustness.cascade.cascade` itself (the engine's clean pass, PGD on the clean-correct examples
  with per-example early stop, the threat-model check and the re-check pass), on the module prepared
  with each lever alone and then combined: channels_last, batch norm folded into the convolutions
  (`robustness.fold`), torch.compile (`--compile`), and the loop before this change ("previous loop":
  several host syncs and a batch copy every step) against the current one (one sync per step, copies
  only in steps where an example was fooled);
- the pass floor: exactly 10 x (forward + input-backward) + 1 forward per example on every example,
  no attack logic, on the plain module and on the fold + channels_last one.

Per-example outcomes are compared: every ours-row with the engine default (plain module, current loop).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks.pgd as pgd_module  # noqa: E402
from attacks import PGD  # noqa: E402
from attacks._core import (AttackOutput, ascent_direction, clip_to_box, get_loss, project,  # noqa: E402
                           refuse_missing_target)
from attacks.pgd import step_schedule  # noqa: E402
from robustness.cascade import cascade  # noqa: E402
from robustness.fold import fold_batchnorm  # noqa: E402

from common import cifar_test, resnet20  # noqa: E402


def _iterate_before(model, x, y, eps, *, norm, steps, step_size, loss="ce", targeted=False, target=None,
                    start=None, early_stop=True, verify=True, schedule="constant"):
    """attacks.pgd.iterate as it was before the bookkeeping change (commit c1bf335), kept to measure it:
    boolean-mask indexing (a host sync each) and a copy of the batch every step."""
    loss_fn = get_loss(loss)
    goal = target if targeted else y
    if targeted and target is None:
        raise refuse_missing_target("the attack")
    n = x.shape[0]
    x_adv = x.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    active = torch.arange(n, device=x.device)
    x0, g0 = x, goal
    delta = torch.zeros_like(x) if start is None else start.clone()
    fwd = bwd = 0
    sizes = step_schedule(step_size, steps, schedule)

    def hit(logits, labels):
        pred = logits.argmax(1)
        return pred == labels if targeted else pred != labels

    for t in range(steps):
        xa = (x0 + delta).detach().requires_grad_(True)
        logits = model(xa)
        fwd += xa.shape[0]
        done = hit(logits.detach(), g0)
        if done.any():
            x_adv[active[done]] = xa.detach()[done]
            fooled[active[done]] = True
        if early_stop:
            keep = ~done
            if not keep.any():
                active = active[:0]
                break
        else:
            keep = torch.ones_like(done)
        value = loss_fn(logits, g0)
        if targeted:
            value = -value
        grad, = torch.autograd.grad(value.sum(), xa)
        bwd += xa.shape[0]
        delta = delta + sizes[t] * ascent_direction(grad, norm)
        delta = clip_to_box(x0, project(delta, eps, norm)).detach()
        if early_stop:
            active, x0, g0, delta = active[keep], x0[keep], g0[keep], delta[keep]
    if active.numel() and not verify:
        x_adv[active] = torch.where((~fooled[active]).view(-1, *([1] * (x.dim() - 1))), x0 + delta, x_adv[active])
    elif active.numel():
        with torch.no_grad():
            xa = x0 + delta
            logits = model(xa)
        fwd += xa.shape[0]
        done = hit(logits, g0)
        take = (done | ~fooled[active]).view(-1, *([1] * (x.dim() - 1)))
        x_adv[active] = torch.where(take, xa, x_adv[active])
        fooled[active[done]] = True
    return AttackOutput(x_adv=x_adv.detach(), fooled=fooled, forward=fwd, backward=bwd)


@contextlib.contextmanager
def previous_loop():
    current = pgd_module.iterate
    pgd_module.iterate = _iterate_before
    try:
        yield
    finally:
        pgd_module.iterate = current


def _fmt(cl: bool):
    return torch.channels_last if cl else torch.contiguous_format


def _batches(n: int, bs: int):
    return [(i, min(n, i + bs)) for i in range(0, n, bs)]


def ours(module, x, y, eps, alpha, bs, cl, loop="current"):
    """The engine's cascade, batch by batch: per-example robust flags and example-passes."""
    robust, passes = [], 0
    attack = PGD(steps=10, step_size=alpha)
    ctx = previous_loop() if loop == "previous" else contextlib.nullcontext()
    with ctx:
        for i, j in _batches(len(y), bs):
            xb = x[i:j].contiguous(memory_format=_fmt(cl))
            res = cascade(module, xb, y[i:j], np.arange(i, j), [("pgd", attack)], [eps], seed=0, norm="linf")
            robust += [o.clean_correct and o.broken_eps is None for o in res.outcomes]
            passes += sum(c.forward + c.backward for c in res.costs) + (j - i)   # + the clean pass
    return np.array(robust), passes


def theirs_as_run(module, x, y, eps, alpha, bs):
    import torchattacks
    atk = torchattacks.PGD(module, eps=eps, alpha=alpha, steps=10, random_start=True)
    robust = []
    for i, j in _batches(len(y), bs):
        adv = atk(x[i:j], y[i:j])
        with torch.no_grad():
            robust.append((module(adv).argmax(1) == y[i:j]).numpy())
    return np.concatenate(robust), len(y) * 21


def theirs_like_for_like(module, x, y, eps, alpha, bs, cl):
    import torchattacks
    atk = torchattacks.PGD(module, eps=eps, alpha=alpha, steps=10, random_start=True)
    robust, passes = [], 0
    for i, j in _batches(len(y), bs):
        xb, yb = x[i:j].contiguous(memory_format=_fmt(cl)), y[i:j]
        with torch.no_grad():
            ok = module(xb).argmax(1) == yb
        sel = ok.nonzero().squeeze(1)
        r = np.zeros(j - i, dtype=bool)
        if len(sel):
            adv = atk(xb[sel], yb[sel])
            with torch.no_grad():
                r[sel.numpy()] = (module(adv).argmax(1) == yb[sel]).numpy()
        robust.append(r)
        passes += (j - i) + 21 * len(sel)
    return np.concatenate(robust), passes


def floor(module, x, y, bs, cl):
    """10 x (forward + input-backward) + 1 forward per example, nothing else."""
    for i, j in _batches(len(y), bs):
        xb, yb = x[i:j].contiguous(memory_format=_fmt(cl)), y[i:j]
        for _ in range(10):
            xa = xb.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(module(xa), yb, reduction="sum")
            torch.autograd.grad(loss, xa)
        with torch.no_grad():
            module(xb)
    return None, len(y) * 21


def prepared(base, *, cl=False, fold=False, compile_=False):
    """A frozen eval copy of the model with the levers asked for; a compile that fails falls back to
    eager (returned note says so)."""
    m = copy.deepcopy(base).eval()
    note = ""
    if fold:
        f = fold_batchnorm(m)
        m, note = f.module, f"{len(f.folded)} batch norms folded" if f.folded else f"not folded: {f.reason}"
    if cl:
        m = m.to(memory_format=torch.channels_last)
    for p in m.parameters():
        p.requires_grad_(False)
    if compile_:
        try:
            c = torch.compile(m, dynamic=True)
            t = time.perf_counter()
            xa = torch.rand(8, 3, 32, 32).contiguous(memory_format=_fmt(cl)).requires_grad_(True)
            torch.autograd.grad(c(xa).sum(), xa)
            m, note = c, note + f" compiled ({time.perf_counter() - t:.1f} s first call)"
        except Exception as e:  # noqa: BLE001 - no compiler, unsupported op, ...: eager it is
            note += f" torch.compile failed, eager used: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return m, note.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", default="1/255,8/255")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: see docs/BENCHMARKS.md)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    ap.add_argument("--skip", default="", help="comma-separated side names to skip")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = resnet20()
    x, y = cifar_test(args.n)
    with torch.no_grad():
        clean = (base(x).argmax(1) == y).float().mean().item()
    plain, _ = prepared(base)
    m_cl, _ = prepared(base, cl=True)
    m_fold, note_fold = prepared(base, fold=True)
    m_both, _ = prepared(base, cl=True, fold=True)
    models = {"plain": plain, "cl": m_cl, "fold": m_fold, "fold+cl": m_both}
    notes = [note_fold]
    if args.compile:
        models["compile"], n1 = prepared(base, compile_=True)
        models["fold+cl+compile"], n2 = prepared(base, cl=True, fold=True, compile_=True)
        notes += [n1, n2]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {platform.processor() or platform.machine()}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; {args.n} CIFAR-10 test images, ResNet-20 "
          f"(clean {100 * clean:.2f}%); {args.repeats} interleaved repeats, medians; {'; '.join(notes)}")
    print(f"# load at start: {load}", flush=True)
    bs = args.batch_size
    for text in args.eps.split(","):
        eps = float(Fraction(text))
        alpha = 2.5 * eps / 10
        sides = {
            "torchattacks, as run (plain, every example)": lambda: theirs_as_run(plain, x, y, eps, alpha, bs),
            "torchattacks, like for like (plain)": lambda: theirs_like_for_like(plain, x, y, eps, alpha, bs, False),
            "torchattacks, like for like (fold+cl)":
                lambda: theirs_like_for_like(m_both, x, y, eps, alpha, bs, True),
            "ours, previous loop (plain)": lambda: ours(plain, x, y, eps, alpha, bs, False, "previous"),
            "ours, engine default (plain)": lambda: ours(plain, x, y, eps, alpha, bs, False),
            "ours + channels_last": lambda: ours(m_cl, x, y, eps, alpha, bs, True),
            "ours + fold": lambda: ours(m_fold, x, y, eps, alpha, bs, False),
            "ours + fold + channels_last": lambda: ours(m_both, x, y, eps, alpha, bs, True),
            "floor (plain)": lambda: floor(plain, x, y, bs, False),
            "floor (fold+cl)": lambda: floor(m_both, x, y, bs, True),
        }
        if args.compile:
            sides["ours + compile"] = lambda: ours(models["compile"], x, y, eps, alpha, bs, False)
            sides["ours + fold + channels_last + compile"] = \
                lambda: ours(models["fold+cl+compile"], x, y, eps, alpha, bs, True)
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        sides = {k: v for k, v in sides.items() if not any(s in k for s in skip)}
        # warm-up on both sides: every side once on the first batch
        xs_full, ys_full = x, y
        x, y = xs_full[:min(64, len(y))], ys_full[:min(64, len(y))]
        for fn in sides.values():
            fn()
        x, y = xs_full, ys_full
        # CPU seconds of this process are the measure (one torch thread: the time it computed, not the time
        # it waited for a core on a shared machine); wall seconds are shown beside them
        times: dict[str, list[float]] = {k: [] for k in sides}
        walls: dict[str, list[float]] = {k: [] for k in sides}
        results: dict[str, tuple] = {}
        names = list(sides)
        for r in range(args.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                t, c = time.perf_counter(), time.process_time()
                results[k] = sides[k]()
                times[k].append(time.process_time() - c)
                walls[k].append(time.perf_counter() - t)
            print(f"#   repeat {r + 1} done ({time.strftime('%H:%M:%S')})", flush=True)
        ref_t = statistics.median(times[names[0]])
        ref_default = results.get("ours, engine default (plain)", (None,))[0]
        print(f"\neps {text}: load {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        print("| side | median CPU s | runs CPU s | median wall s | vs torchattacks as run (CPU) | robust % | "
              "passes/example | outcomes differing from ours default |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        for k in names:
            rob, passes = results[k]
            med = statistics.median(times[k])
            acc = "" if rob is None else f"{100 * rob.mean():.2f}"
            diff = "" if rob is None or ref_default is None or not k.startswith("ours") else \
                str(int((rob != ref_default).sum()))
            print(f"| {k} | {med:.2f} | {', '.join(f'{v:.1f}' for v in times[k])} | "
                  f"{statistics.median(walls[k]):.1f} | {med / ref_t:.3f} | {acc} | {passes / len(y):.2f} | {diff} |",
                  flush=True)
        pairs = [("ours, engine default (plain)", "torchattacks, like for like (plain)"),
                 ("ours + fold + channels_last", "torchattacks, like for like (fold+cl)"),
                 ("ours, engine default (plain)", "floor (plain)"),
                 ("ours + fold + channels_last", "floor (fold+cl)"),
                 ("ours + fold + channels_last + compile", "floor (fold+cl)")]
        for a, b in pairs:
            if a in times and b in times:
                print(f"  {a} / {b} (CPU): {statistics.median(times[a]) / statistics.median(times[b]):.3f}")


if __name__ == "__main__":
    main()
