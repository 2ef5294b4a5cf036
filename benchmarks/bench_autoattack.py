"""Benchmark (not a test): our PGD and AutoAttack against torchattacks' PGD and pyautoattack's AutoAttack,
same model, same examples, one process, in two settings side by side:

- "as a user runs it": each tool called the way its README shows. torchattacks: `PGD(model, eps, alpha,
  steps)(x, y)` on every example (the misclassified ones too, every step for every example);
  pyautoattack: `AutoAttack(model, norm, eps, version='standard').run_standard_evaluation(x, y,
  batch_size=--batch-size)`. Ours: as `robust-bench run` calls them: only the clean-correct examples,
  `verify=False`, then the engine's re-check forward (counted in our time);
- "like for like": both sides on the clean-correct examples only, in one batch, same memory format
  (`--channels-last` switches both), both re-checking their output with one forward pass.

Both sides are warmed up first (a small run on --warmup examples: lazy imports, allocator, kernels), and
each PGD time is the median of --repeat interleaved runs (the machine is shared). Robust accuracy is over
all N examples (a misclassified example counts as not robust) in both settings. For AutoAttack the time
of each sub-attack is shown (the package's sub-attacks are timed by wrapping each sub-attack object's
`perturb` on the instance; its behaviour is unchanged).

Models: `resnet20` (the shared CIFAR-10 ResNet-20 on the first N CIFAR-10 test images, official order;
$ROBUST_BENCH_SHARED, default <project>/../shared/data), `digits` (the built-in digits-cnn), `mnist-at`
(tests/data/mnist-small-cnn-pgd-at.pt on the first N MNIST test images: a robust model, where every
AutoAttack sub-attack has work to do).

    python benchmarks/bench_autoattack.py --model mnist-at --n 200 --eps 0.3 --threads 1
    python benchmarks/bench_autoattack.py --n 100 --eps 8/255,1/255 --skip-autoattack --repeat 3
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attacks import PGD, AutoAttack  # noqa: E402
from attacks._compat import import_autoattack  # noqa: E402
from attacks.autoattack_package import AutoAttackPackage  # noqa: E402

SETTINGS = ("as-run", "like-for-like")


def shared_dir() -> Path:
    return Path(os.environ.get("ROBUST_BENCH_SHARED", ROOT.parent / "shared" / "data"))


def load_cifar_resnet20(n: int, offset: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    from PIL import Image
    import numpy as np
    from robustness.archs import resnet20
    from robustness.models import Normalized
    root = shared_dir()
    ckpt = root / "models" / "resnet20-12fca82f.th"
    if not ckpt.is_file():
        raise SystemExit(f"shared ResNet-20 not found at {ckpt} (set ROBUST_BENCH_SHARED or use --model digits)")
    net = resnet20()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model = Normalized(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    test = root / "cifar10" / "test"
    classes = sorted(p.name for p in test.iterdir() if p.is_dir())
    files = sorted(((int(f.stem), ci, f) for ci, c in enumerate(classes) for f in (test / c).glob("*.png")))
    files = files[offset:offset + n]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0)
                     .permute(2, 0, 1) for _, _, f in files])
    y = torch.tensor([ci for _, ci, _ in files])
    return model, x, y, (f"CIFAR-10 ResNet-20 (shared, akamaster), test images {offset}..{offset + len(y) - 1} "
                         "(official order)")


def load_digits(n: int, offset: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    from robustness.data import load_dataset
    from robustness.models import create_model
    model = create_model("digits-cnn").module.eval()
    ds = load_dataset("digits").dataset
    idx = range(offset, min(offset + n, len(ds)))
    x = torch.stack([ds[i][0] for i in idx])
    y = torch.tensor([ds[i][1] for i in idx])
    return model, x, y, f"digits-cnn, digits test images {offset}..{idx[-1]}"


def load_mnist_at(n: int, offset: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    import numpy as np
    from robustness.models import create_model
    raw = shared_dir() / "MNIST" / "raw"
    if not (raw / "t10k-images-idx3-ubyte").is_file():
        raise SystemExit(f"shared MNIST not found at {raw} (set ROBUST_BENCH_SHARED)")
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    x = torch.from_numpy(images[offset:offset + n].astype(np.float32) / 255.0)
    y = torch.from_numpy(labels[offset:offset + n].astype(np.int64))
    model = create_model(str(ROOT / "tests" / "data" / "mnist-small-cnn-pgd-at.pt")).module.eval()
    return model, x, y, (f"small-cnn PGD-AT at 0.3 (tests/data), MNIST test images {offset}..{offset + len(y) - 1}")


LOADERS = {"resnet20": load_cifar_resnet20, "digits": load_digits, "mnist-at": load_mnist_at}


def parse_eps(text: str) -> list[float]:
    return [float(Fraction(s.strip())) for s in text.split(",") if s.strip()]


def eps_label(e: float) -> str:
    k = e * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and e < 0.1 else f"{e:g}"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def robust(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def check_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
    d = (x_adv - x).abs().flatten(1).max(1).values.max().item()
    assert d <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1, (d, eps)


class Case:
    """The examples in both settings. as-run: all N examples, contiguous NCHW (what a user has);
    like-for-like: the clean-correct ones, in --channels-last if asked (model and inputs, both sides)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, channels_last: bool) -> None:
        self.model, self.x, self.y = model, x.contiguous(), y
        with torch.no_grad():
            self.clean = model(self.x).argmax(1) == y
        self.ok = self.clean.nonzero().squeeze(1)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.ll_model = copy.deepcopy(model).to(memory_format=fmt) if channels_last else model
        self.xc = self.x[self.ok].contiguous(memory_format=fmt)
        self.yc = y[self.ok]
        self.n = len(y)

    def accuracy_all(self, robust_c: torch.Tensor) -> float:
        """Robust accuracy over all N from flags over the clean-correct examples."""
        return float(robust_c.sum()) / max(self.n, 1)


def engine_style(attack: Callable[..., Any], case: Case, eps: float, **kw: Any) -> float:
    """Ours as `robust-bench run` calls it: clean-correct only, verify=False, then the engine's re-check
    forward. Returns the robust accuracy over all N."""
    xs, ys = case.x[case.ok], case.y[case.ok]
    out = attack(case.model, xs, ys, eps, seeds=case.ok.clone(), verify=False, **kw)
    check_ball(xs, out.x_adv, eps)
    return case.accuracy_all(robust(case.model, out.x_adv, ys))


def bench_pgd(case: Case, eps: float, steps: int, rows: list[dict], repeat: int, warmup: int) -> None:
    import torchattacks
    alpha = 2.5 * eps / steps
    ours = PGD(norm="linf", steps=steps, step_size=alpha)
    ours_ne = PGD(norm="linf", steps=steps, step_size=alpha, early_stop=False)

    def ta_run(model, x, y):
        torch.manual_seed(0)
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)

    def ta_as_run() -> float:
        x_adv = ta_run(case.model, case.x, case.y)
        check_ball(case.x, x_adv, eps)
        return float(robust(case.model, x_adv, case.y).float().mean())

    def ta_ll() -> float:
        x_adv = ta_run(case.ll_model, case.xc, case.yc)
        check_ball(case.xc, x_adv, eps)
        return case.accuracy_all(robust(case.ll_model, x_adv, case.yc))

    def ours_ll(attack) -> Callable[[], float]:
        def run() -> float:
            out = attack(case.ll_model, case.xc, case.yc, eps, seeds=case.ok.clone(), verify=True)
            check_ball(case.xc, out.x_adv, eps)
            return case.accuracy_all(~out.fooled)
        return run

    impls = {
        "as-run": (("torchattacks PGD", ta_as_run), ("our PGD", lambda: engine_style(ours, case, eps))),
        "like-for-like": (("torchattacks PGD", ta_ll), ("our PGD", ours_ll(ours)),
                          ("our PGD, early_stop=False", ours_ll(ours_ne))),
    }
    # warm-up, both sides, both settings
    w = min(warmup, len(case.yc))
    if w:
        with torch.random.fork_rng(devices=[]):
            ta_run(case.model, case.xc[:w], case.yc[:w])
            ours(case.ll_model, case.xc[:w], case.yc[:w], eps, seeds=case.ok[:w].clone())
    for setting, lst in impls.items():
        times: dict[str, list[float]] = {label: [] for label, _ in lst}
        accs: dict[str, float] = {}
        for _ in range(repeat):
            for label, fn in lst:
                with torch.random.fork_rng(devices=[]):
                    acc, sec = timed(fn)
                accs[label] = acc
                times[label].append(sec)
        base = statistics.median(times["torchattacks PGD"])
        for label, _ in lst:
            sec = statistics.median(times[label])
            rows.append({"part": "pgd", "setting": setting, "eps": eps, "impl": label, "robust_acc": accs[label],
                         "seconds": sec, "ratio": sec / base, "steps": steps, "all_seconds": times[label]})


class _Counter:
    """Stand-in for PassCounter when timing the package called directly (passes are not counted)."""

    def counts(self) -> tuple[int, int]:
        return 0, 0


def bench_autoattack(case: Case, eps: float, batch_size: int, rows: list[dict], order: str, warmup: int,
                     square_queries: int | None) -> None:
    pkg = import_autoattack()
    sq = 5000 if square_queries is None else square_queries

    def package(model, x, y, bs, queries=sq) -> tuple[torch.Tensor, dict]:
        aa = pkg.AutoAttack(model, norm="Linf", eps=eps, version="standard", device=x.device, seed=0)
        aa.square.n_queries = queries
        details: dict[str, Any] = {"sub_attacks": []}
        AutoAttackPackage._instrument(aa, _Counter(), details)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=bs)
        return x_adv, details

    def pkg_as_run():
        x_adv, det = package(case.model, case.x, case.y, batch_size)
        check_ball(case.x, x_adv, eps)
        return float(robust(case.model, x_adv, case.y).float().mean()), det

    def pkg_ll():
        x_adv, det = package(case.ll_model, case.xc, case.yc, max(len(case.yc), 1))
        check_ball(case.xc, x_adv, eps)
        return case.accuracy_all(robust(case.ll_model, x_adv, case.yc)), det

    ours = AutoAttack(norm="linf", version="standard", square_queries=sq)

    def ours_as_run():
        xs, ys = case.x[case.ok], case.y[case.ok]
        out = ours(case.model, xs, ys, eps, seeds=case.ok.clone(), verify=False)
        check_ball(xs, out.x_adv, eps)
        return case.accuracy_all(robust(case.model, out.x_adv, ys)), out.details

    def ours_ll():
        out = ours(case.ll_model, case.xc, case.yc, eps, seeds=case.ok.clone(), verify=True)
        check_ball(case.xc, out.x_adv, eps)
        return case.accuracy_all(~out.fooled), out.details

    w = min(warmup, len(case.yc))
    if w:
        with torch.random.fork_rng(devices=[]):
            package(case.ll_model, case.xc[:w], case.yc[:w], w, queries=20)
            AutoAttack(square_queries=20)(case.ll_model, case.xc[:w], case.yc[:w], eps, seeds=case.ok[:w].clone())
    for setting, runs in (("as-run", [("package", pkg_as_run), ("ours", ours_as_run)]),
                          ("like-for-like", [("package", pkg_ll), ("ours", ours_ll)])):
        if order == "ours-first":
            runs.reverse()
        results = {}
        for label, fn in runs:
            with torch.random.fork_rng(devices=[]):
                (acc, det), sec = timed(fn)
            results[label] = (acc, sec, det)
        sp = results["package"][1]
        for label, (acc, sec, det) in results.items():
            rows.append({"part": "autoattack", "setting": setting, "eps": eps, "impl": label, "robust_acc": acc,
                         "seconds": sec, "ratio": sec / sp, "square_queries": sq,
                         "sub_attacks": [{k: v for k, v in s.items() if k in ("name", "seconds", "attacked", "fooled")}
                                         for s in det["sub_attacks"]]})


def print_table(rows: list[dict]) -> None:
    """One line per (part, eps, implementation), the two settings side by side."""
    keys: list[tuple] = []
    cell: dict[tuple, dict] = {}
    for r in rows:
        k = (r["part"], r["eps"], r["impl"])
        if k not in keys:
            keys.append(k)
        cell[k + (r["setting"],)] = r
    print(f"\n{'':34} | {'as a user runs it':^30} | {'like for like':^30}")
    for k in keys:
        part, eps, impl = k
        title = f"{'PGD' if part == 'pgd' else 'AutoAttack'} {eps_label(eps)} {impl}"
        out = []
        for s in SETTINGS:
            r = cell.get(k + (s,))
            out.append(f"{100 * r['robust_acc']:5.1f}% {r['seconds']:8.2f} s  x{r['ratio']:.2f}" if r else "-")
        print(f"{title:34} | {out[0]:^30} | {out[1]:^30}")
    for r in rows:
        if r["part"] == "autoattack":
            split = ", ".join(f"{s['name']} {s['seconds']:.1f} s on {s['attacked']}" for s in r["sub_attacks"])
            print(f"  {r['setting']:<13} {r['impl']:<8} {split}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(LOADERS), default="resnet20")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--offset", type=int, default=0, help="skip this many examples (official order)")
    p.add_argument("--eps", default="8/255,1/255")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="PGD timings: runs per implementation (median)")
    p.add_argument("--warmup", type=int, default=4, help="examples of the warm-up run on each side (0: none)")
    p.add_argument("--batch-size", type=int, default=250, help="the package's batch size as a user runs it")
    p.add_argument("--square-queries", type=int, default=None,
                   help="Square's budget on both sides (default: AutoAttack's 5000); for quick checks")
    p.add_argument("--channels-last", action="store_true", help="like for like in channels_last (both sides)")
    p.add_argument("--skip-pgd", action="store_true")
    p.add_argument("--skip-autoattack", action="store_true")
    p.add_argument("--order", choices=("package-first", "ours-first"), default="package-first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y, what = LOADERS[args.model](args.n, args.offset)
    case = Case(model, x, y, args.channels_last)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{what}; clean accuracy {100 * float(case.clean.float().mean()):.1f}%; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, load {load:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rows: list[dict] = []
    eps_list = parse_eps(args.eps)
    if not args.skip_pgd:
        for eps in eps_list:
            bench_pgd(case, eps, args.pgd_steps, rows, args.repeat, args.warmup)
    if not args.skip_autoattack:
        for eps in eps_list:
            bench_autoattack(case, eps, args.batch_size, rows, args.order, args.warmup, args.square_queries)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"what": what, "clean": float(case.clean.float().mean()),
                                               "argv": sys.argv[1:], "threads": torch.get_num_threads(),
                                               "load": load, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
