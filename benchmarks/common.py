"""Shared set-up for benchmarks: the shared ResNet-20 and CIFAR-10 test images, loaded once."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUST_BENCH_SHARED", ROOT.parent / "shared" / "data"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resnet20(device: str = "cpu") -> torch.nn.Module:
    from robustness.archs import resnet20 as build
    from robustness.models import Normalized, extract_state_dict, load_file
    from robustness.models.checkpoints import load_into
    path = SHARED / "models" / "resnet20-12fca82f.th"
    if not path.is_file():
        sys.exit(f"shared model not found at {path} (set ROBUST_BENCH_SHARED)")
    net = build()
    load_into(net, extract_state_dict(load_file(path), str(path)), str(path))
    return Normalized(net, MEAN, STD).to(device).eval()


def cifar_test(n: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first n official CIFAR-10 test images as a float tensor in [0, 1]."""
    from robustness.data import load_dataset
    data = load_dataset(str(SHARED / "cifar10" / "test")).dataset
    xs, ys = zip(*(data[i] for i in range(n)))
    return torch.stack(xs).to(device), torch.tensor(ys).to(device)
