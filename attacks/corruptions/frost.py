"""Frost (Hendrycks & Dietterich 2019): ``c0 * x + c1 * frost_layer``.

The reference overlays a random crop of one of five photographs of frosted glass
(``frost1.png`` ... ``frost5.jpg``, shipped inside the ``imagecorruptions`` package; its
``randint(5)`` never picks the sixth).  ImageNet-C (imagecorruptions) scales the photograph to
cover the image, times 1.1 (bicubic); CIFAR-10-C (make_cifar_c.py) shrinks it by 0.2
(bilinear).  The crop position is uniform.

Two sources for the layer:

* ``"assets"`` -- those photographs, found in the installed ``imagecorruptions`` package (its
  files are read, the package is not imported) or in the folder named by the environment
  variable ``ROBUST_BENCH_FROST_DIR``; decoded with PIL.  Same distribution as the reference.
* ``"procedural"`` -- no files needed.  A seeded synthetic frost: a rough plasma fractal plus
  three families of feather-like crystals (sparse seeds smeared by the motion-blur line kernel
  at three angles 60 degrees apart, then smeared sideways into barbs), normalised, then coloured with one of five palettes chosen
  uniformly -- the per-channel mean, crop-to-crop spread and within-crop spread *measured on
  the five reference photographs* at the crop scale in use (interpolated in log crop size
  between crops of 29 and 204 source pixels).  It reproduces the first and second moments of
  the reference layer, not its exact texture.

Selection: ``set_frost_source("auto" | "assets" | "procedural")`` or the environment variable
``ROBUST_BENCH_FROST`` (same values).  The default "auto" uses the photographs when they can be
found and PIL is importable, else the procedural layer; ``frost_source()`` says which one is in
effect -- record it next to any frost number, since the two are not interchangeable.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ._ops import RNG, line_blur, plasma_fractal

Tensor = torch.Tensor

ASSET_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_SOURCES = ("auto", "assets", "procedural")
_source_override: Optional[str] = None

# Measured on the reference photographs (RGB, 0..255) with 400 random square crops each, at
# crop sides 29 and 204 source pixels: per-channel mean, std of crop means ("between"), mean
# within-crop std ("within").  frost2.png and frost3.png are the same picture.
_PALETTES = {
    # name: (mean, between@29, within@29, between@204, within@204)
    "frost1": ((78.1, 149.5, 166.1), (20.8, 12.5, 11.5), (16.3, 9.9, 9.3), (16.3, 8.7, 6.7), (23.2, 14.0, 13.3)),
    "frost2": ((199.9, 204.6, 213.8), (14.1, 15.0, 15.6), (14.5, 14.6, 14.7), (6.5, 7.2, 7.5), (18.8, 19.4, 20.0)),
    "frost3": ((199.9, 204.6, 213.8), (14.1, 15.0, 15.6), (14.5, 14.6, 14.7), (6.5, 7.2, 7.5), (18.8, 19.4, 20.0)),
    "frost4": ((139.6, 154.7, 167.2), (17.3, 17.3, 18.5), (21.6, 21.6, 22.4), (7.7, 7.6, 8.2), (26.0, 26.1, 27.4)),
    "frost5": ((108.5, 119.6, 131.3), (28.3, 27.1, 25.6), (30.1, 29.8, 29.2), (13.1, 12.6, 11.8), (35.5, 35.1, 34.4)),
}
# source-photo sizes (H, W): they set the reference's scale factor
_ASSET_SHAPES = {"frost1": (600, 900), "frost2": (315, 560), "frost3": (315, 560), "frost4": (350, 527),
                 "frost5": (495, 660)}


def set_frost_source(source: Optional[str]) -> None:
    """Force "assets" or "procedural" (or "auto"); None returns to the environment/default."""
    global _source_override
    if source is not None and source not in _SOURCES:
        raise ValueError(f"frost source must be one of {_SOURCES}, got {source!r}")
    _source_override = source


def _requested_source() -> str:
    s = _source_override or os.environ.get("ROBUST_BENCH_FROST", "auto").strip().lower() or "auto"
    if s not in _SOURCES:
        raise ValueError(f"ROBUST_BENCH_FROST must be one of {_SOURCES}, got {s!r}")
    return s


@lru_cache(maxsize=4)
def _find_asset_dir(env_dir: Optional[str]) -> Optional[Path]:
    candidates = []
    if env_dir:
        candidates.append(Path(env_dir))
    try:
        spec = importlib.util.find_spec("imagecorruptions")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "frost")
    for d in candidates:
        if all((d / f).is_file() for f in ASSET_FILES):
            return d
    return None


def asset_dir() -> Optional[Path]:
    """Folder holding the reference frost photographs, or None."""
    d = _find_asset_dir(os.environ.get("ROBUST_BENCH_FROST_DIR"))
    if d is None:
        return None
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return None
    return d


def frost_source() -> str:
    """The frost layer `corrupt` uses now: "assets" or "procedural"."""
    s = _requested_source()
    if s == "auto":
        return "assets" if asset_dir() is not None else "procedural"
    if s == "assets" and asset_dir() is None:
        raise RuntimeError("frost source 'assets' requested but the frost photographs were not found: install "
                           "imagecorruptions or set ROBUST_BENCH_FROST_DIR (and have PIL)")
    return s


PROCEDURAL_VERSION = "1"  # bump when the procedural layer's algorithm or palettes change


@lru_cache(maxsize=4)
def _assets_digest(folder: str) -> str:
    h = hashlib.sha256()
    for f in ASSET_FILES:
        h.update(f.encode() + b"\0" + (Path(folder) / f).read_bytes())
    return h.hexdigest()[:16]


def frost_provenance() -> dict:
    """What a frost result was made with, to store next to it: ``{"frost_source": "assets",
    "frost_assets_sha256": <first 16 hex digits over the five photographs>}`` or
    ``{"frost_source": "procedural", "frost_procedural_version": ...}``.  The two layers give
    different numbers (docs/CORRUPTIONS.md), so a frost number without this is not comparable."""
    source = frost_source()
    if source == "assets":
        return {"frost_source": "assets", "frost_assets_sha256": _assets_digest(str(asset_dir()))}
    return {"frost_source": "procedural", "frost_procedural_version": PROCEDURAL_VERSION}


# --------------------------------------------------------------------------------------------
# photographs
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _load_asset(path: str) -> Tensor:
    from PIL import Image
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()  # (3, h, w), 0..255


def _scaled_size(fh: int, fw: int, H: int, W: int, scale_rule) -> tuple[int, int]:
    if scale_rule == "fit":  # imagecorruptions
        sf = max(1.0, H / fh, W / fw) * 1.1
        return int(math.ceil(fh * sf)), int(math.ceil(fw * sf))
    sf = float(scale_rule)  # make_cifar_c.py: cv2.resize(frost, (0, 0), fx=sf, fy=sf)
    h, w = int(round(fh * sf)), int(round(fw * sf))
    if h <= H or w <= W:  # image larger than the shrunken photograph: cover it instead
        sf = max(H / fh, W / fw) * 1.1
        h, w = int(math.ceil(fh * sf)), int(math.ceil(fw * sf))
    return h, w


@lru_cache(maxsize=64)
def _scaled_asset(path: str, H: int, W: int, scale_rule) -> Tensor:
    a = _load_asset(path)
    fh, fw = a.shape[-2:]
    h, w = _scaled_size(fh, fw, H, W, scale_rule)
    if (h, w) == (fh, fw):
        return a
    mode = "bicubic" if scale_rule == "fit" else "bilinear"  # cv2 INTER_CUBIC / INTER_LINEAR
    out = F.interpolate(a[None], size=(h, w), mode=mode, align_corners=False)[0]
    return torch.round(out).clamp(0, 255)  # cv2 keeps uint8


def _asset_layer(B: int, H: int, W: int, scale_rule, rng: RNG) -> Tensor:
    d = asset_dir()
    idx = rng.randint(0, len(ASSET_FILES), B).cpu().tolist()
    u = rng.rand(B, 2, dtype=torch.float64).cpu()
    out = []
    for b in range(B):  # one crop per image
        a = _scaled_asset(str(d / ASSET_FILES[idx[b]]), H, W, scale_rule)
        fh, fw = a.shape[-2:]
        # numpy's randint(0, n) with n = fh - H (the reference requires n >= 1)
        y0 = int(u[b, 0] * max(fh - H, 1))
        x0 = int(u[b, 1] * max(fw - W, 1))
        out.append(a[:, y0:y0 + H, x0:x0 + W])
    return torch.stack(out) / 255.0


# --------------------------------------------------------------------------------------------
# procedural
# --------------------------------------------------------------------------------------------
def _palette_at(name: str, crop: float):
    mean, b29, w29, b204, w204 = (np.array(v, dtype=np.float64) for v in _PALETTES[name])
    t = float(np.clip((math.log(max(crop, 1.0)) - math.log(29.0)) / (math.log(204.0) - math.log(29.0)), 0.0, 1.0))
    return mean, b29 + t * (b204 - b29), w29 + t * (w204 - w29)


def _crop_in_source_pixels(name: str, H: int, W: int, scale_rule) -> float:
    fh, fw = _ASSET_SHAPES[name]
    h, _ = _scaled_size(fh, fw, H, W, scale_rule)
    return math.sqrt(H * W) * fh / h


def _normalise(t: Tensor) -> Tensor:
    t = t - t.mean(dim=(-2, -1), keepdim=True)
    return t / t.std(dim=(-2, -1), keepdim=True).clamp_min(1e-8)


def procedural_layer(B: int, H: int, W: int, scale_rule, rng: RNG) -> Tensor:
    """(B, 3, H, W) synthetic frost in [0, 1] (see the module docstring)."""
    dev = rng.device
    S = max(H, W)
    size = 1 << max(int(S - 1).bit_length(), 1)
    clouds = plasma_fractal(B, size, 1.5, rng)[:, :H, :W].to(torch.float32).unsqueeze(1)
    # crystals: sparse seeds smeared into needles along three directions 60 degrees apart, each
    # needle then smeared sideways (at +-60 degrees) into short barbs -- feather-like ice
    seeds = (rng.rand(B, 1, H, W) < 0.02).to(torch.float32) * rng.rand(B, 1, H, W)
    base = rng.uniform(0.0, 180.0, B, dtype=torch.float64)
    needle, barb = max(2.0, 0.06 * S), max(1.0, 0.02 * S)
    crystals = torch.zeros(B, 1, H, W, device=dev)
    for k in range(3):
        theta = base + 60.0 * k
        stem = line_blur(seeds, needle, needle / 2, theta, border_break=False)
        crystals = crystals + stem + line_blur(stem, barb, barb, theta + 60.0, border_break=False)
    tex = _normalise(0.6 * _normalise(clouds) + _normalise(torch.sqrt(crystals.clamp_min(0))))

    names = list(_PALETTES)
    pick = rng.randint(0, len(names), B).cpu().tolist()
    z = rng.normal(0.0, 1.0, B, 1, 1, 1)
    mean = torch.empty(B, 3, 1, 1, device=dev)
    between = torch.empty(B, 3, 1, 1, device=dev)
    within = torch.empty(B, 3, 1, 1, device=dev)
    for b, i in enumerate(pick):  # per-image palette lookup (scalars)
        m, bt, wi = _palette_at(names[i], _crop_in_source_pixels(names[i], H, W, scale_rule))
        mean[b, :, 0, 0] = torch.as_tensor(m, dtype=torch.float32)
        between[b, :, 0, 0] = torch.as_tensor(bt, dtype=torch.float32)
        within[b, :, 0, 0] = torch.as_tensor(wi, dtype=torch.float32)
    layer = mean + between * z + within * tex
    return (layer.clamp(0, 255) / 255.0)


# --------------------------------------------------------------------------------------------
def frost(x: Tensor, c, rng: RNG, preset) -> Tensor:
    img_w, frost_w = c
    B, C, H, W = x.shape
    rule = preset.variants["frost_scale"]
    if frost_source() == "assets":
        layer = _asset_layer(B, H, W, rule, rng)
    else:
        layer = procedural_layer(B, H, W, rule, rng)
    return img_w * x + frost_w * layer.to(device=x.device, dtype=x.dtype)
