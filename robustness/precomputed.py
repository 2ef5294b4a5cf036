"""Published precomputed corruption sets, read in their official layouts.

- CIFAR-10-C / CIFAR-100-C: `<root>/<corruption>.npy`, uint8 (5 x N, 32, 32, 3): severity s holds rows
  (s-1)*N .. s*N-1, where row i is clean test image i; `<root>/labels.npy` holds the labels.
- ImageNet-C: `<root>/<corruption>/<severity>/<wnid>/<file>`, the validation images in class folders.

The clean images are not part of these sets: they come from the clean test set (`--clean-dataset`,
default cifar10 / cifar100 / imagenet from `--clean-data-dir` or `--data-dir`), whose example i is
corrupted example i of every (corruption, severity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .models.base import Preprocess

PRECOMPUTED = {"cifar10-c": "cifar10", "cifar100-c": "cifar100", "imagenet-c": "imagenet"}


@dataclass
class PrecomputedCorruptions:
    kind: str
    root: Path
    n: int
    preprocess: Preprocess | None = None
    _arrays: dict[str, Any] = field(default_factory=dict)
    _folders: dict[tuple[str, int], Any] = field(default_factory=dict)

    def available(self) -> list[str]:
        if self.kind == "imagenet-c":
            return sorted(p.name for p in self.root.iterdir() if p.is_dir())
        return sorted(p.stem for p in self.root.glob("*.npy") if p.stem != "labels")

    def check(self, names: tuple[str, ...], severities: tuple[int, ...], labels: np.ndarray | None) -> None:
        """Fail before any work when a file is missing or has the wrong shape."""
        for name in names:
            if self.kind == "imagenet-c":
                for s in severities:
                    folder = self.root / name / str(s)
                    if not folder.is_dir():
                        raise UserError(f"{self.kind}: folder {folder} is missing")
                    if len(self._folder(name, s)) != self.n:
                        raise UserError(f"{self.kind}: {folder} holds {len(self._folder(name, s))} images, "
                                        f"the clean set {self.n}")
            else:
                arr = self._array(name)
                if arr.ndim != 4 or arr.shape[0] != 5 * self.n or arr.shape[-1] not in (1, 3):
                    raise UserError(f"{self.kind}: {self.root / (name + '.npy')} has shape {arr.shape}; expected "
                                    f"(5 x {self.n}, H, W, 3) uint8 for a clean set of {self.n} images")
        if self.kind != "imagenet-c":
            lab = self.root / "labels.npy"
            if not lab.is_file():
                raise UserError(f"{self.kind}: {lab} is missing")
            stored = np.load(lab, mmap_mode="r")
            if labels is not None and len(stored) >= self.n and not np.array_equal(
                    np.asarray(stored[:self.n]).astype(np.int64), labels.astype(np.int64)):
                raise UserError(f"{self.kind}: labels.npy does not match the clean set's labels: "
                                f"the clean set is not the one these files were made from")

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            path = self.root / f"{name}.npy"
            if not path.is_file():
                raise UserError(f"{self.kind}: {path} is missing (have: {', '.join(self.available()) or 'none'})")
            try:
                self._arrays[name] = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as e:
                raise UserError(f"{self.kind}: cannot read {path}: {e}") from None
        return self._arrays[name]

    def _folder(self, name: str, severity: int):
        key = (name, severity)
        if key not in self._folders:
            from torchvision.datasets import ImageFolder

            from .data import image_transform
            self._folders[key] = ImageFolder(str(self.root / name / str(severity)),
                                             transform=image_transform(self.preprocess))
        return self._folders[key]

    def batch(self, name: str, severity: int, indices: np.ndarray) -> torch.Tensor:
        """The corrupted versions of clean examples `indices`, float NCHW in [0, 1]."""
        if self.kind == "imagenet-c":
            ds = self._folder(name, severity)
            return torch.stack([ds[int(i)][0] for i in indices])
        rows = (severity - 1) * self.n + np.asarray(indices, dtype=np.int64)
        arr = np.ascontiguousarray(self._array(name)[rows])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        if self.preprocess is not None and (self.preprocess.resize or self.preprocess.crop):
            from .data import image_transform
            tf = image_transform(self.preprocess)
            x = torch.stack([tf(img) for img in x])
        return x


def open_precomputed(kind: str, root: str | None, n: int, preprocess: Preprocess | None) -> PrecomputedCorruptions:
    if root is None:
        raise UserError(f"{kind} needs --data-dir pointing to the folder of its files")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"{kind}: folder not found: {path}")
    return PrecomputedCorruptions(kind, path, n, preprocess)
