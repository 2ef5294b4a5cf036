"""Architectures this project builds by name (for its own checkpoints, training and the CIFAR zoo).

A registry that refuses duplicate names; each builder takes `num_classes` (and `in_channels` where it
makes sense) and returns an un-normalized `nn.Module` (normalization is added by `models.Normalized`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ARCHS:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHS[name] = fn
        return fn
    return deco


def build_arch(name: str, **kwargs) -> nn.Module:
    if name not in ARCHS:
        from .errors import unknown
        raise unknown("architecture", name, ARCHS)
    return ARCHS[name](**kwargs)


# ---- the built-in digits CNN (8x8 grey inputs) ----

class DigitsCNN(nn.Module):
    """Two 3x3 conv layers and a linear head for 8x8 inputs: about 20k parameters, trains in seconds."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


register_arch("digits-cnn")(DigitsCNN)


# ---- CIFAR ResNet-20 (He et al. 2016, section 4.2), "option A" shortcuts ----

class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad channels (planes // 4 on each side)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(_BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_arch("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """The checkpoint-compatible CIFAR ResNet-20 (keys conv1, bn1, layer1..3, linear)."""
    return CifarResNet(3, num_classes, in_channels)
