"""A robustness curve with and without the minimum-norm stage (`--min-norm fmn`), against its points run alone.

Model: the built-in adversarially trained digits-cnn-at (or any `--model` robust-bench can load) on its data
set; the engine's cascade itself (`robustness.cascade.cascade`, batches of 256 as the engine's default), one
process, the configurations interleaved (the order rotates every repeat), each warmed up, medians of the
process's CPU seconds (one torch thread).

    python benchmarks/bench_curve.py [--model digits-cnn-at] [--eps 0.05,0.1,0.2,0.3] [--attack pgd]
                                     [--stage fmn:10,fmn:20] [--repeats 5] [--threads 1]

Rows: each eps alone (every clean-correct example attacked at that eps), today's curve (eps ascending, only
the survivors attacked further), and the curve with each minimum-norm stage. Per row: median seconds, the
ratio to the most expensive point alone (the target: <= 1.5x), example-passes, robust accuracy at each eps,
and for the staged curves the check that no example broken by today's curve survives them, with how many
examples the stage broke that the attack did not (stronger) and how many attack calls it saved.
"""
from __future__ import annotations

import argparse
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

from attacks import create_attack  # noqa: E402
from robustness.cascade import cascade, min_norm_stage  # noqa: E402


def load(name: str):
    from robustness.data import load_dataset
    from robustness.models import create_model
    m = create_model(name)
    data = load_dataset(m.info.dataset).dataset
    xs, ys = zip(*(data[i] for i in range(len(data))))
    return m.module.eval(), torch.stack(xs).float(), torch.as_tensor(ys)


def curve(model, x, y, attack, eps, stage, bs=256):
    """Per example the smallest eps that broke it (nan: never), clean flags, who broke it, passes."""
    broken, clean, by, passes = [], [], [], 0
    for i in range(0, len(y), bs):
        j = min(len(y), i + bs)
        res = cascade(model, x[i:j], y[i:j], np.arange(i, j), [("attack", attack)], eps, seed=0, norm="linf",
                      min_norm=stage)
        for o in res.outcomes:
            broken.append(np.nan if o.broken_eps is None else o.broken_eps)
            clean.append(o.clean_correct)
            by.append(o.broken_by)
        passes += sum(c.forward + c.backward for c in res.costs)
    return np.array(broken), np.array(clean), np.array(by, dtype=object), passes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits-cnn-at")
    ap.add_argument("--eps", default="0.05,0.1,0.2,0.3")
    ap.add_argument("--attack", default="pgd", help="a registered attack name (default settings)")
    ap.add_argument("--stage", default="fmn:10,fmn:20", help="minimum-norm stages to measure")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eps = tuple(sorted(float(Fraction(e)) for e in args.eps.split(",")))
    model, x, y = load(args.model)
    attack = create_attack(args.attack, norm="linf")
    configs = {f"eps {e:g} alone": (tuple([e]), None) for e in eps}
    configs["curve, today's cascade"] = (eps, None)
    for s in filter(None, args.stage.split(",")):
        configs[f"curve, --min-norm {s}"] = (eps, min_norm_stage(s, "linf"))
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {platform.machine()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.model}, {len(y)} examples; attack {args.attack}; "
          f"eps {', '.join(f'{e:g}' for e in eps)}; {args.repeats} interleaved repeats, medians")
    print(f"# load at start: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    for e_, s_ in configs.values():   # warm-up
        curve(model, x[:64], y[:64], attack, e_, s_)
    times = {k: [] for k in configs}
    out = {}
    names = list(configs)
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = time.process_time()   # CPU seconds, one torch thread: not the waits for a shared core
            out[k] = curve(model, x, y, attack, *configs[k])
            times[k].append(time.process_time() - t)
    print(f"# load at end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    worst_alone = max(statistics.median(times[f"eps {e:g} alone"]) for e in eps)
    worst_passes = max(out[f"eps {e:g} alone"][3] for e in eps)
    today_broken, clean, _, _ = out["curve, today's cascade"]
    print("| run | median CPU s | runs CPU s | x most expensive point alone | passes/example | passes x most expensive alone | robust % at "
          + ", ".join(f"{e:g}" for e in eps) + " | broken today, robust here | broken by the stage only |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|")
    for k in names:
        e_, s_ = configs[k]
        b, c, by, passes = out[k]
        med = statistics.median(times[k])
        rob = [100 * float(np.mean(c & ~(b <= e))) for e in e_]
        cells = ", ".join(f"{v:.2f}" for v in rob)
        weaker = extra = ""
        if s_ is not None:
            weaker = str(int(sum(((today_broken <= e) & ~(b <= e)).sum() for e in eps)))
            extra = str(int(sum(((b <= e) & ~(today_broken <= e)).sum() for e in eps)))
        print(f"| {k} | {med:.2f} | {', '.join(f'{v:.2f}' for v in times[k])} | {med / worst_alone:.2f} | "
              f"{passes / len(y):.1f} | {passes / worst_passes:.2f} | {cells} | {weaker} | {extra} |", flush=True)
    for k in names:
        if configs[k][1] is not None:
            b, c, by, _ = out[k]
            stage_name = configs[k][1].name
            n_stage = int(sum(1 for v in by if v == stage_name))
            print(f"  {k}: the stage broke {n_stage} examples first (of {int(c.sum())} clean-correct)")


if __name__ == "__main__":
    main()
