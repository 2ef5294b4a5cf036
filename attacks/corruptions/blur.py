"""Blur corruptions (Hendrycks & Dietterich 2019): defocus, glass, motion, zoom, and the extra
Gaussian blur.

References: imagecorruptions' functions of the same names (ImageNet-C table) and
make_cifar_c.py (CIFAR-10-C table).

* defocus_blur -- the reference's anti-aliased disk kernel (a disk of the given radius on a
  grid of at least 17 x 17, smoothed by a 3x3 (5x5 past radius 8) Gaussian as
  ``cv2.GaussianBlur``), applied as ``cv2.filter2D`` (reflect-101 border).  Exact.
* glass_blur -- Gaussian blur, 8-bit quantisation, the reference's sequential local pixel
  "swaps", Gaussian blur again.  In the reference (imagecorruptions and make_cifar_c.py alike)
  ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views is in effect the copy
  ``x[h, w] = x[h', w']``; that is what produced ImageNet-C / CIFAR-10-C and what is reproduced
  here, exactly given the same offsets (including the asymmetric ``randint(-d, d)`` range),
  without a loop over pixels: see `glass_source_map`.  Deviation: the reference truncates
  float64 values like 137.9999999 to 137 at the quantisation step; here values are floored
  after adding 1e-6.  make_cifar_c.py hard-codes the loop bounds to 32 px; here they follow the
  image size (same at 32 px).
* motion_blur -- the line kernel of ImageMagick's motion blur (see ``_ops.line_blur``), angle
  U(-45, 45) per image, edge replication; with the ImageNet-C table the reference's early stop
  at the image border is kept.  CIFAR-10-C ran ImageMagick itself (8-bit output); here the
  output is not quantised.
* zoom_blur -- mean of the image and its central zooms; the crop placement follows the preset
  (imagecorruptions: top-left of the zoomed crop; make_cifar_c.py: centre).  Exact.
* gaussian_blur -- skimage.filters.gaussian (scipy 'nearest' border, truncate 4).  Exact.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ._ops import RNG, clipped_zoom, cv2_gaussian_kernel1d, filter2d, gaussian_filter, line_blur, pad2d

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# defocus
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased, normalised disk (float32 like the reference)."""
    if radius <= 8:
        r_grid, ksize = 8, 3
    else:
        r_grid, ksize = int(radius), 5
    L = np.arange(-r_grid, r_grid + 1)
    X, Y = np.meshgrid(L, L)
    d = (X ** 2 + Y ** 2 <= radius ** 2).astype(np.float64)
    d /= d.sum()
    g = cv2_gaussian_kernel1d(ksize, alias_blur)
    t = torch.from_numpy(d)[None, None]
    t = pad2d(t, ksize // 2, ksize // 2, ksize // 2, ksize // 2, "mirror")
    t = torch.nn.functional.conv2d(t, torch.from_numpy(np.outer(g, g))[None, None])
    return t[0, 0].numpy().astype(np.float32)


def defocus_blur(x: Tensor, c, rng: RNG, preset) -> Tensor:
    radius, alias = c
    return filter2d(x, torch.from_numpy(disk_kernel(float(radius), float(alias))), "mirror")


# --------------------------------------------------------------------------------------------
# glass
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _glass_scan(H: int, W: int, d: int):
    """The reference loop's visiting order: h = H-d .. d+1 (outer), w = W-d .. d+1 (inner), both
    descending.  Returns the flat index of every visited pixel in visiting order and, for every
    pixel of the image, its visit time (``H*W`` -- never -- outside the scanned region)."""
    hs = np.arange(H - d, d, -1)
    ws = np.arange(W - d, d, -1)
    P = (hs[:, None] * W + ws[None, :]).ravel().astype(np.int64)
    visit = np.full(H * W, H * W, dtype=np.int64)
    visit[P] = np.arange(P.size)
    return P, visit


def glass_source_map(offsets: Tensor, H: int, W: int, d: int) -> Tensor:
    """(B, H*W) index of the pixel each output pixel is copied from after the reference loop.

    `offsets` (B, iterations, n_visited, 2) holds the (dx, dy) the reference draws with
    ``np.random.randint(-d, d, size=(2,))`` at each visited pixel, in visiting order.

    The reference's ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` is, because numpy indexing
    returns views, a *copy* ``x[h, w] = x[h', w']`` (the second assignment writes back the value
    just copied).  So within one pass, pixel p receives the *final* value of p' = p + (dy, dx)
    if p' was visited before p, and otherwise p''s value from the previous pass.  Those pointers
    always lead to earlier visits, so they are resolved for all pixels at once by pointer
    jumping (log2 of the longest chain steps); passes compose by indexing.
    """
    B, iterations = offsets.shape[:2]
    device = offsets.device
    total = torch.arange(H * W, device=device).expand(B, H * W).clone()
    P_np, visit_np = _glass_scan(H, W, d)
    if P_np.size == 0:
        return total
    P = torch.as_tensor(P_np, device=device)
    visit = torch.as_tensor(visit_np, device=device)
    for it in range(iterations):
        dx, dy = offsets[:, it, :, 0], offsets[:, it, :, 1]
        Q = P.unsqueeze(0) + dy * W + dx                                      # (B, n)
        ptr = torch.arange(H * W, device=device).expand(B, H * W).clone()
        done = torch.ones(B, H * W, dtype=torch.bool, device=device)
        ptr[:, P] = Q
        done[:, P] = ~(visit[Q] < visit[P].unsqueeze(0))   # copies an already-final pixel: not yet resolved
        while not bool(done.all()):
            nxt = ptr.gather(1, ptr)
            nd = done.gather(1, ptr)
            ptr = torch.where(done, ptr, nxt)
            done = done | nd
        total = total.gather(1, ptr)
    return total


def glass_blur(x: Tensor, c, rng: RNG, preset) -> Tensor:
    sigma, d, iterations = c
    d, iterations = int(d), int(iterations)
    B, C, H, W = x.shape
    y = gaussian_filter(x, sigma)
    y = torch.floor(y.clamp(0, 1) * 255 + 1e-6) / 255  # the reference's np.uint8(... * 255)
    n = _glass_scan(H, W, d)[0].size
    offsets = rng.randint(-d, d, B, iterations, n, 2).to(x.device)
    src = glass_source_map(offsets, H, W, d)
    y = y.reshape(B, C, H * W).gather(2, src.unsqueeze(1).expand(B, C, H * W)).reshape(B, C, H, W)
    return gaussian_filter(y, sigma)


# --------------------------------------------------------------------------------------------
# motion
# --------------------------------------------------------------------------------------------
def motion_blur(x: Tensor, c, rng: RNG, preset) -> Tensor:
    radius, sigma = c
    angles = rng.uniform(-45.0, 45.0, x.shape[0], dtype=torch.float64)
    return line_blur(x, radius, sigma, angles, bool(preset.variants["motion_border_break"]))


# --------------------------------------------------------------------------------------------
# zoom
# --------------------------------------------------------------------------------------------
def zoom_factors(spec) -> np.ndarray:
    start, stop, step = spec
    return np.arange(start, stop, step)


def zoom_blur(x: Tensor, c, rng: RNG, preset) -> Tensor:
    factors = zoom_factors(c)
    trim = preset.variants["zoom_trim"]
    out = x.clone()
    for z in factors:  # 6 to 31 zoom levels, each one batched interpolation
        out += clipped_zoom(x, float(z), trim)
    return out / (len(factors) + 1)


# --------------------------------------------------------------------------------------------
# gaussian
# --------------------------------------------------------------------------------------------
def gaussian_blur(x: Tensor, c, rng: RNG, preset) -> Tensor:
    return gaussian_filter(x, float(c), mode="nearest", truncate=4.0)
