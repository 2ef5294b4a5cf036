"""What a loaded model is: a module that takes [0, 1] pixels, plus the metadata that travels with it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
import torch.nn as nn


class Normalized(nn.Module):
    """Folds per-channel normalization into the model, so attacks work in [0, 1] pixel space and the
    normalization is stateless (no mutable global setting, applied exactly once)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError("mean and std must have one value per channel")
        if any(s <= 0 for s in std):
            raise ValueError("std values must be > 0")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model inputs before the model: resize (shorter side), center crop."""
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"

    def to_json(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation}


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a loaded model. `num_classes`/`in_channels` may be None until probed."""
    name: str
    source: str
    arch: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    dataset: str | None = None
    preprocess: Preprocess | None = None
    weights_sha256: str | None = None
    weights_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> "ModelInfo":
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "arch": self.arch, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "input_size": list(self.input_size) if self.input_size else None,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
                "classes": list(self.classes) if self.classes else None, "dataset": self.dataset,
                "preprocess": self.preprocess.to_json() if self.preprocess else None,
                "weights_sha256": self.weights_sha256, "weights_path": self.weights_path, "extra": self.extra}


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    info: ModelInfo


def state_dict_sha256(module_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """A digest of the weights themselves (names, dtypes, shapes, values), independent of the file
    layout they came in: the same weights hash the same from any checkpoint format."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
