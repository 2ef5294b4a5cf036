"""Benchmark (not a test): our attacks against the third-party implementations, same model, same
examples, one process.

1. our PGD against torchattacks' PGD (same steps, eps, step size, random start);
2. our `autoattack` (standard) against pyautoattack's AutoAttack(version='standard') called directly,
   with the time split across sub-attacks for both (the package's sub-attacks are timed by wrapping
   each sub-attack object's `perturb` on the instance; its behaviour is unchanged).

Model: the shared CIFAR-10 ResNet-20 ($ROBUST_BENCH_SHARED, default <project>/../shared/data:
models/resnet20-12fca82f.th) on the first N CIFAR-10 test images (cifar10/test/<class>/NNNNN.png,
NNNNN the official index); `--model digits` uses the built-in digits-cnn and the digits test set.

    python benchmarks/bench_autoattack.py --n 100 --eps 8/255,1/255
    python benchmarks/bench_autoattack.py --model digits --n 100 --eps 0.1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attacks import PGD, AutoAttack  # noqa: E402
from attacks._compat import import_autoattack  # noqa: E402
from attacks.autoattack_package import AutoAttackPackage  # noqa: E402


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


def parse_eps(text: str) -> list[float]:
    return [float(Fraction(s.strip())) for s in text.split(",") if s.strip()]


def eps_label(e: float) -> str:
    k = e * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and e < 0.1 else f"{e:g}"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def robust(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def check_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
    d = (x_adv - x).abs().flatten(1).max(1).values.max().item()
    assert d <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1, (d, eps)


def bench_pgd(model, x, y, eps: float, steps: int, rows: list[dict], repeat: int = 1) -> None:
    """Each implementation `repeat` times, interleaved; the median time is reported (the machine is shared).
    Ours runs with verify=False, as the engine calls it (the engine re-checks every output; torchattacks
    does not check its last iterate either)."""
    import statistics
    import torchattacks
    alpha = 2.5 * eps / steps
    seeds = torch.arange(len(y))
    ours = PGD(norm="linf", steps=steps, step_size=alpha)
    ours_ne = PGD(norm="linf", steps=steps, step_size=alpha, early_stop=False)
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)

    def run_ta():
        torch.manual_seed(0)
        return ta(x, y)
    impls = (("torchattacks PGD", run_ta),
             ("our PGD", lambda: ours(model, x, y, eps, seeds=seeds, verify=False).x_adv),
             ("our PGD, early_stop=False", lambda: ours_ne(model, x, y, eps, seeds=seeds, verify=False).x_adv))
    times: dict[str, list[float]] = {label: [] for label, _ in impls}
    accs: dict[str, float] = {}
    for _ in range(repeat):
        for label, fn in impls:
            with torch.random.fork_rng(devices=[]):
                x_adv, sec = timed(fn)
            check_ball(x, x_adv, eps)
            accs[label] = float(robust(model, x_adv, y).float().mean())
            times[label].append(sec)
    base = statistics.median(times["torchattacks PGD"])
    for label, _ in impls:
        sec = statistics.median(times[label])
        rows.append({"part": "pgd", "eps": eps, "impl": label, "robust_acc": accs[label], "seconds": sec,
                     "ratio": sec / base, "steps": steps, "all_seconds": times[label]})
        print(f"  PGD-{steps} eps={eps_label(eps)}  {label:<28} robust {100 * accs[label]:5.1f}%  {sec:8.2f} s  "
              f"x{sec / base:.2f}  (median of {repeat}: {', '.join(f'{t:.1f}' for t in times[label])})", flush=True)


def bench_autoattack(model, x, y, eps: float, batch_size: int, rows: list[dict], order: str) -> None:
    pkg = import_autoattack()
    seeds = torch.arange(len(y))
    results = {}

    def run_package():
        aa = pkg.AutoAttack(model, norm="Linf", eps=eps, version="standard", device=x.device, seed=0)
        details = {"sub_attacks": []}
        AutoAttackPackage._instrument(aa, _Counter(), details)
        (x_adv, _y_adv), sec = timed(lambda: aa.run_standard_evaluation(x, y, batch_size=batch_size))
        return x_adv, sec, details

    def run_ours():
        out, sec = timed(lambda: AutoAttack(norm="linf", version="standard")(model, x, y, eps, seeds=seeds,
                                                                             verify=False))
        return out.x_adv, sec, out.details

    runs = [("package", run_package), ("ours", run_ours)]
    if order == "ours-first":
        runs.reverse()
    for label, fn in runs:
        with torch.random.fork_rng(devices=[]):
            x_adv, sec, details = fn()
        check_ball(x, x_adv, eps)
        results[label] = (robust(model, x_adv, y), sec, details)
    (rp, sp, dp), (ro, so, do) = results["package"], results["ours"]
    n = len(y)
    agree = int((rp == ro).sum())
    print(f"  AutoAttack standard eps={eps_label(eps)}: package robust {100 * rp.float().mean():5.1f}% in "
          f"{sp:8.1f} s | ours {100 * ro.float().mean():5.1f}% in {so:8.1f} s | time ratio x{so / sp:.2f} | "
          f"same outcome on {agree}/{n} examples", flush=True)
    for label, (r, sec, det) in results.items():
        for sub in det["sub_attacks"]:
            print(f"      {label:<8} {sub['name']:<8} {sub['seconds']:8.1f} s  on {sub['attacked']:4d} examples"
                  + (f"  broke {sub['fooled']}" if "fooled" in sub else ""), flush=True)
        rows.append({"part": "autoattack", "eps": eps, "impl": label, "robust_acc": float(r.float().mean()),
                     "seconds": sec, "ratio": sec / sp, "agree": agree, "n": n,
                     "sub_attacks": [{k: v for k, v in s.items() if k != "implementation"} for s in det["sub_attacks"]]})


class _Counter:
    """Stand-in for PassCounter when timing the package called directly (passes are not counted)."""

    def counts(self) -> tuple[int, int]:
        return 0, 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("resnet20", "digits"), default="resnet20")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--offset", type=int, default=0, help="skip this many examples (official order)")
    p.add_argument("--eps", default="8/255,1/255")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="PGD timings: runs per implementation (median)")
    p.add_argument("--skip-pgd", action="store_true")
    p.add_argument("--skip-autoattack", action="store_true")
    p.add_argument("--order", choices=("package-first", "ours-first"), default="package-first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y, what = (load_cifar_resnet20 if args.model == "resnet20" else load_digits)(args.n, args.offset)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"{what}; clean accuracy {100 * clean:.1f}%; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {platform.processor() or platform.machine()}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rows: list[dict] = []
    eps_list = parse_eps(args.eps)
    if not args.skip_pgd:
        for eps in eps_list:
            bench_pgd(model, x, y, eps, args.pgd_steps, rows, args.repeat)
    if not args.skip_autoattack:
        for eps in eps_list:
            bench_autoattack(model, x, y, eps, max(len(y), 1), rows, args.order)
    if args.json:
        Path(args.json).write_text(json.dumps({"what": what, "clean": clean, "argv": sys.argv[1:],
                                               "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
