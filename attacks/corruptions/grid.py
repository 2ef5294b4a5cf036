"""A picture of every corruption at every severity, for eyeballing the implementations.

`corruption_grid` returns the grid as an image tensor (torch only); `save_grid` writes it as a
PNG, with the corruption names in a left margin when PIL is available (it is whenever
torchvision is installed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import CORRUPTIONS, SEVERITIES, check_name, corrupt

Tensor = torch.Tensor


def corruption_grid(image: Tensor, names: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                    generator: Optional[torch.Generator] = None, *, preset: Optional[str] = None,
                    include_clean: bool = True, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """(3, rows*(H+p)+p, cols*(W+p)+p) grid: one row per corruption, one column per severity,
    preceded by the clean image when `include_clean`.  `image` is (3, H, W) or (1, H, W) in [0, 1]."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected one image (3, H, W) or (1, H, W), got shape {tuple(image.shape)}")
    names = [check_name(n) for n in names]
    img = image.detach().float().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    C, H, W = img.shape
    batch = img.unsqueeze(0)
    rows = []
    for name in names:
        cells = [img] if include_clean else []
        for s in severities:
            cells.append(corrupt(batch, name, int(s), generator=generator, preset=preset)[0])
        rows.append(cells)
    ncol = len(rows[0]) if rows else 0
    p = padding
    grid = torch.full((3, len(rows) * (H + p) + p, ncol * (W + p) + p), float(pad_value))
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells):
            y, x = p + r * (H + p), p + c * (W + p)
            grid[:, y:y + H, x:x + W] = cell.cpu()
    return grid


def save_grid(image: Tensor, path, names: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
              generator: Optional[torch.Generator] = None, *, preset: Optional[str] = None,
              min_cell: int = 96, labels: bool = True) -> Path:
    """Write the grid of `corruption_grid` to `path` (PNG).  Small images are enlarged
    (nearest neighbour) to at least `min_cell` pixels per cell; rows are labelled with the
    corruption names and columns with the severities when `labels` and PIL is importable."""
    names = [check_name(n) for n in names]
    path = Path(path)
    H, W = image.shape[-2:]
    scale = max(1, -(-int(min_cell) // max(min(H, W), 1)))
    grid = corruption_grid(image, names, severities, generator, preset=preset)
    if scale > 1:
        # corrupt first, enlarge after: enlarge the finished grid cell by cell (padding scales too)
        grid = F.interpolate(grid.unsqueeze(0), scale_factor=scale, mode="nearest")[0]
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover - PIL comes with torchvision
        try:
            from torchvision.utils import save_image
        except ImportError as e:
            raise RuntimeError("saving a grid needs PIL or torchvision") from e
        save_image(grid, str(path))
        return path
    body = Image.fromarray(pixels)
    if not labels:
        body.save(path, format="PNG")
        return path
    left, top = 130, 18
    canvas = Image.new("RGB", (body.width + left, body.height + top), "white")
    canvas.paste(body, (left, top))
    draw = ImageDraw.Draw(canvas)
    pad = 2 * scale
    cell_h, cell_w = H * scale + pad, W * scale + pad
    col_titles = ["clean"] + [f"severity {s}" for s in severities]
    for c, t in enumerate(col_titles):
        draw.text((left + pad + c * cell_w + 2, 3), t, fill="black")
    for r, n in enumerate(names):
        draw.text((4, top + pad + r * cell_h + cell_h // 2 - 6), n, fill="black")
    canvas.save(path, format="PNG")
    return path
