"""Our PGD-10 against torchattacks' PGD-10: same model (shared CIFAR-10 ResNet-20), same examples,
same eps, steps and step size, one process. Prints both times, both robust accuracies and the ratio.

    python benchmarks/bench_pgd.py [--n 1000] [--device cpu|cuda] [--precision fp32|bf16] [--channels-last]

Ours runs as the engine does: a clean pass, PGD only on clean-correct examples with per-example early
stop and no parameter gradients, then the engine's re-check of every adversarial example.
torchattacks attacks every example for all steps and we then evaluate its output.
"""
from __future__ import annotations

import argparse
import time

import torch

from attacks import PGD
from robustness.engine import prepare_module

from common import cifar_test, resnet20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(model, x, y, eps, alpha, bs, channels_last, device) -> tuple[float, float, int]:
    sync(device)
    t = time.perf_counter()
    robust = 0
    passes = 0
    attack = PGD(steps=10, step_size=alpha)
    for i in range(0, len(y), bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            clean = model(xb).argmax(1) == yb
        idx = clean.nonzero().squeeze(1)
        out = attack(model, xb[idx], yb[idx], eps, seeds=torch.arange(i, i + bs)[idx.cpu()], verify=False)
        with torch.no_grad():
            robust += int((model(out.x_adv).argmax(1) == yb[idx]).sum())
        passes += len(yb) + out.forward + out.backward + len(idx)
    sync(device)
    return time.perf_counter() - t, robust / len(y), passes


def theirs(model, x, y, eps, alpha, bs, device) -> tuple[float, float, int]:
    import torchattacks
    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10, random_start=True)
    sync(device)
    t = time.perf_counter()
    robust = 0
    for i in range(0, len(y), bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        adv = atk(xb, yb)
        with torch.no_grad():
            robust += int((model(adv).argmax(1) == yb).sum())
    sync(device)
    return time.perf_counter() - t, robust / len(y), len(y) * (10 + 10 + 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = resnet20(args.device)
    x, y = cifar_test(args.n, args.device)
    ref = base  # torchattacks gets the plain fp32 model, as its users run it
    model = prepare_module(resnet20(args.device), torch.device(args.device), args.precision, args.channels_last)
    with torch.no_grad():
        clean = (base(x).argmax(1) == y).float().mean().item()
    print(f"# {args.n} CIFAR-10 test images, ResNet-20 (clean {100 * clean:.2f}%), device {args.device}, "
          f"precision {args.precision}, channels_last {args.channels_last}, torch threads {torch.get_num_threads()}")
    print("| eps | torchattacks s | ours s | ratio | torchattacks robust % | ours robust % | passes ours/theirs |")
    print("|---|---|---|---|---|---|---|")
    for k in (1, 8):
        eps = k / 255
        alpha = 2.5 * eps / 10
        theirs(ref, x[:50], y[:50], eps, alpha, args.batch_size, args.device)  # warm-up
        tt, at, pt = theirs(ref, x, y, eps, alpha, args.batch_size, args.device)
        to, ao, po = ours(model, x, y, eps, alpha, args.batch_size, args.channels_last, args.device)
        print(f"| {k}/255 | {tt:.2f} | {to:.2f} | {to / tt:.2f}x | {100 * at:.2f} | {100 * ao:.2f} | "
              f"{po / pt:.2f} |", flush=True)


if __name__ == "__main__":
    main()
