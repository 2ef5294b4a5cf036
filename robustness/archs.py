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


# ---- small-cnn: the MNIST-scale network of the fast adversarial training paper's MNIST experiments ----

class SmallCNN(nn.Module):
    """Two stride-2 4x4 convolutions (16, 32 channels) and a 100-unit hidden layer: the small MNIST model
    used for fast adversarial training (Wong et al. 2020), about 166k parameters for 28x28 inputs.
    `input_size` is the side of the square input (28 for MNIST; any multiple of 4 works)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 hidden: int = 100) -> None:
        super().__init__()
        if input_size % 4:
            raise ValueError(f"small-cnn needs an input side divisible by 4, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, 16, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(32 * (input_size // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


register_arch("small-cnn")(SmallCNN)


class MadryCNN(nn.Module):
    """The MNIST network of Madry et al. 2018 (MadryLab/mnist_challenge, from the TensorFlow tutorial):
    5x5 convolutions of 32 and 64 channels with 'same' padding, each followed by ReLU and 2x2 max-pooling,
    a 1024-unit hidden layer; about 3.27M parameters for 28x28 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        if input_size % 4:
            raise ValueError(f"madry-cnn needs an input side divisible by 4, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * (input_size // 4) ** 2, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


register_arch("madry-cnn")(MadryCNN)


# ---- PreAct ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks") ----

class _PreActBlock(nn.Module):
    """BN-ReLU-conv twice; a 1x1 conv shortcut (applied to the pre-activated input) where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """CIFAR-style PreAct ResNet (3x3 stem, no max-pool): the standard model of fast adversarial training
    and robust overfitting studies (Wong et al. 2020, Rice et al. 2020). Keys: conv1, layer1..4, bn, linear."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        in_planes, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layer = []
            for b in range(n):
                layer.append(_PreActBlock(in_planes, planes, 2 if (i > 0 and b == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


@register_arch("preact-resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """PreAct ResNet-18 for 32x32 inputs, about 11.2M parameters."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)


# ---- Wide ResNets (Zagoruyko & Komodakis 2016): WRN-28-10 (Madry et al., Rice et al.), WRN-34-10 (TRADES) ----

class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.equal = in_planes == planes and stride == 1
        self.convShortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal else self.convShortcut(act))


class _WideGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[_WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1,
                                                dropout) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width with pre-activation blocks for 32x32 inputs. Keys follow the layout common in the
    adversarial-training literature (conv1, block1..3.layer.N.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc)."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet's depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = _WideGroup(n, widths[0], widths[1], 1, dropout)
        self.block2 = _WideGroup(n, widths[1], widths[2], 2, dropout)
        self.block3 = _WideGroup(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1).flatten(1)
        return self.fc(out)


@register_arch("wrn-28-10")
def wrn_28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10, about 36.5M parameters."""
    return WideResNet(28, 10, num_classes, in_channels, dropout)


@register_arch("wrn-34-10")
def wrn_34_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-34-10 (the TRADES model), about 46.2M parameters."""
    return WideResNet(34, 10, num_classes, in_channels, dropout)
