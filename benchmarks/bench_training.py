"""Training throughput: seconds per epoch and images per second of standard, FGSM (fast adversarial
training) and PGD-7 adversarial training, through the same trainer `robust-bench train` uses.

    python benchmarks/bench_training.py [--n-mnist 4000] [--n-cifar 512] [--epochs 2] [--device cpu|cuda]
        [--threads N] [--only small-cnn|resnet20]

Workloads: small-cnn on a subset of the shared MNIST (eps 0.3), resnet20 from scratch on a subset of the
shared CIFAR-10 training images (eps 8/255, crop-flip augmentation). No validation (it would be timed
separately by the trainer anyway); the last epoch is reported so the first epoch's warm-up is excluded.
An adversarial epoch costs about (1 + attack steps) standard epochs of forward+backward passes: FGSM
about 2x, PGD-7 about 8x (the attack's backward passes skip parameter gradients, so a little less).
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from common import SHARED


def load(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader, Subset

    from robustness.data import load_dataset
    if kind == "mnist":
        data = load_dataset("mnist", data_dir=str(SHARED), split="train").dataset
    else:
        data = load_dataset(str(SHARED / "cifar10" / "train")).dataset
    idx = np.sort(np.random.default_rng(0).permutation(len(data))[:n])
    xs, ys = zip(*DataLoader(Subset(data, idx.tolist()), batch_size=256))
    return torch.cat(xs).float(), torch.cat([torch.as_tensor(y) for y in ys]).long()


def bench(arch: str, x: torch.Tensor, y: torch.Tensor, eps: float, augment: str, epochs: int, batch: int,
          device: str) -> dict[str, dict[str, float]]:
    from defenses import TensorData, TrainConfig, Trainer, make_recipe
    from defenses.distributed import DistInfo
    from robustness.archs import build_arch
    out = {}
    for defense, kw in (("standard", {}), ("fgsm", {"eps": eps}), ("pgd-7", {"eps": eps, "steps": 7})):
        torch.manual_seed(0)
        net = build_arch(arch, num_classes=10, in_channels=x.shape[1])
        recipe = make_recipe(defense.split("-")[0], **kw)
        cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=0.01, augment=augment)
        res = Trainer(net, recipe, cfg, TensorData(x, y), None, dist=DistInfo(device=torch.device(device))).fit()
        last = res.history[-1]
        out[defense] = {"seconds": last["train_seconds"], "images_per_s": last["images_per_s"]}
        print(f"  {arch:<10} {defense:<9} {last['train_seconds']:8.2f} s/epoch  {last['images_per_s']:9.1f} img/s",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-mnist", type=int, default=4000)
    ap.add_argument("--n-cifar", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--only", choices=("small-cnn", "resnet20"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{time.strftime('%a %b %d %H:%M:%S %Z %Y')}  {platform.processor() or platform.machine()}  "
          f"torch {torch.__version__}  {torch.get_num_threads()} threads  device {args.device}")
    results = {}
    if args.only in (None, "small-cnn"):
        x, y = load("mnist", args.n_mnist)
        results["small-cnn / MNIST"] = bench("small-cnn", x, y, 0.3, "none", args.epochs, args.batch_size, args.device)
    if args.only in (None, "resnet20"):
        x, y = load("cifar", args.n_cifar)
        results["resnet20 / CIFAR-10"] = bench("resnet20", x, y, 8 / 255, "crop-flip", args.epochs, args.batch_size,
                                               args.device)
    print("\n| workload | defense | s/epoch | images/s | x standard time |")
    print("|---|---|---:|---:|---:|")
    for name, rows in results.items():
        base = rows["standard"]["seconds"]
        for defense, r in rows.items():
            print(f"| {name} | {defense} | {r['seconds']:.2f} | {r['images_per_s']:.0f} | {r['seconds'] / base:.2f} |")
    for name, rows in results.items():
        print(f"{name}: FGSM/standard time ratio {rows['fgsm']['seconds'] / rows['standard']['seconds']:.2f}, "
              f"PGD-7/standard {rows['pgd-7']['seconds'] / rows['standard']['seconds']:.2f}")


if __name__ == "__main__":
    main()
