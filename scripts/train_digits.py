"""Train the built-in `digits-cnn` (standard) and `digits-cnn-at` (PGD adversarial training) models.

Command that made the shipped files (CPU, deterministic with the seed):
    python scripts/train_digits.py --out robustness/weights
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from attacks import PGD
from robustness.archs import build_arch
from robustness.data import load_dataset
from robustness.models.checkpoints import save_checkpoint


def train(adversarial: bool, *, epochs: int, eps: float, seed: int) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    data = load_dataset("digits", split="train").dataset
    x, y = data.x, data.y
    model = build_arch("digits-cnn", num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * ((len(x) + 63) // 64))
    attack = PGD(norm="linf", steps=7, step_size=2.5 * eps / 7, early_stop=False)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            xb, yb = x[perm[i:i + 64]], y[perm[i:i + 64]]
            if adversarial:
                xb = attack(model, xb, yb, eps, generator=g).x_adv
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model, {"epochs": epochs, "optimizer": "adam", "batch_size": 64, "seed": seed,
                   "defense": "pgd" if adversarial else "standard", "eps": eps if adversarial else None,
                   "attack": "pgd-7 linf" if adversarial else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="robustness/weights")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_dataset("digits", split="test").dataset
    for name, adv in (("digits-cnn", False), ("digits-cnn-at", True)):
        model, recipe = train(adv, epochs=args.epochs, eps=args.eps, seed=args.seed)
        with torch.no_grad():
            acc = (model(test.x).argmax(1) == test.y).float().mean().item()
        robust = (~PGD(steps=20)(model, test.x, test.y, args.eps, generator=torch.Generator().manual_seed(1)).fooled
                  & (model(test.x).argmax(1) == test.y)).float().mean().item()
        meta = {"num_classes": 10, "classes": [str(i) for i in range(10)], "mean": None, "std": None,
                "input_size": [1, 8, 8], "dataset": "digits", "recipe": recipe,
                "metrics": {"clean_accuracy": acc, f"pgd20_accuracy_eps{args.eps:g}": robust},
                "trained_with": "python scripts/train_digits.py --out robustness/weights"}
        save_checkpoint(out / f"{name}.pt", arch="digits-cnn", arch_kwargs={"num_classes": 10, "in_channels": 1},
                        state_dict=model.state_dict(), meta=meta)
        print(f"{name}: clean {acc:.3f}, PGD-20 eps {args.eps:g} {robust:.3f}")


if __name__ == "__main__":
    main()
