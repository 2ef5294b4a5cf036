"""Blur corruptions (Hendrycks & Dietterich 2019): defocus, glass, motion, zoom, and the extra
Gaussian blur.

References: imagecorruptions' functions of the same names (ImageNet-C table) and
make_cifar_c.py (CIFAR-10-C table).

* defocus_blur -- the reference's anti-aliased disk kernel (a disk of the given radius on a
  grid of at least 17 x 17, smoothed by a 3x3 (5x5 past radius 8) Gaussian as
  ``cv2.GaussianBlur``), applied as ``cv2.filter2D`` (reflect-101 border).  Exact.
* glass_blur -- Gaussian blur, 8-bit quantisation, the reference's *sequential* local pixel
  swaps, Gaussian blur again.  The swaps are reproduced exactly (same distribution of the final
  permutation, including the reference's asymmetric ``randint(-d, d)`` offsets) but computed on
  wavefronts: swap (h, w) can only interact with swaps less than 2d rows/columns away, so all
  positions with equal ``2d * row_index + column_index`` are independent and are done at once
  (about 2d*H + W vectorised steps, batched over images, instead of H*W Python iterations).
  Deviation: the reference truncates float64 values like 137.9999999 to 137 at the
  quantisation step; here values are floored after adding 1e-6, so flat areas are not
  darkened by one level at random.  make_cifar_c.py hard-codes the loop bounds to 32 px; here
  they follow the image size (same at 32 px).
* motion_blur -- the line kernel of ImageMagick's motion blur (see ``_ops.line_blur``), angle
  U(-45, 45) per image, edge replication; with the ImageNet-C table the reference's early stop
  at the image border is kept.  CIFAR-10-C ran ImageMagick itself (8-bit output); here the
  output is not quantised.
* zoom_blur -- mean of the image and its central zooms; the crop placement follows the preset
  (imagecorruptions: top-left of the zoomed crop; make_cifar_c.py: centre).  Exact.
* gaussian_blur -- skimage.filters.gaussian (scipy 'nearest' border, truncate 4).  Exact.
"""
from __future__ import annotations

import math
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
def _glass_schedule(H: int, W: int, d: int):
    """Scan positions of the reference loop sorted into independent wavefronts.

    The reference visits h = H-d .. d+1 (outer, descending) and w = W-d .. d+1 (inner,
    descending).  With a = H-d-h and b = W-d-w, position (a, b) gets wavefront 2d*a + b.
    Returns the flat pixel indices in wavefront order and the [start, end) slices of each front.
    """
    nh, nw = H - 2 * d, W - 2 * d
    if nh <= 0 or nw <= 0:
        return np.zeros(0, dtype=np.int64), []
    a, b = np.meshgrid(np.arange(nh), np.arange(nw), indexing="ij")
    t = (2 * d * a + b).ravel()
    order = np.argsort(t, kind="stable")
    h = (H - d - a).ravel()[order]
    w = (W - d - b).ravel()[order]
    ts = t[order]
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
    ends = np.r_[starts[1:], ts.size]
    return (h * W + w).astype(np.int64), list(zip(starts.tolist(), ends.tolist()))


def glass_permutation(B: int, H: int, W: int, d: int, iterations: int, rng: RNG) -> np.ndarray:
    """(B, H*W) source index of every pixel after the reference's sequential swaps."""
    perm = np.tile(np.arange(H * W, dtype=np.int64), (B, 1))
    P, fronts = _glass_schedule(H, W, d)
    if not fronts:
        return perm
    N = P.size
    # the reference draws (dx, dy) = randint(-d, d, size=2) per visited pixel; draws are iid, so
    # drawing them in wavefront order instead of scan order leaves the distribution unchanged
    offs = rng.randint(-d, d, B, iterations, N, 2).cpu().numpy()
    rows = np.arange(B)[:, None]
    for it in range(iterations):
        Q = P[None, :] + offs[:, it, :, 1] * W + offs[:, it, :, 0]
        for s, e in fronts:  # ~2d*H + W fronts; every front is one vectorised swap over all images
            p = P[s:e]
            q = Q[:, s:e]
            vp = perm[:, p]
            vq = perm[rows, q]
            perm[:, p] = vq
            perm[rows, q] = vp
    return perm


def glass_blur(x: Tensor, c, rng: RNG, preset) -> Tensor:
    sigma, d, iterations = c
    B, C, H, W = x.shape
    y = gaussian_filter(x, sigma)
    y = torch.floor(y.clamp(0, 1) * 255 + 1e-6) / 255  # the reference's np.uint8(... * 255)
    perm = torch.from_numpy(glass_permutation(B, H, W, int(d), int(iterations), rng)).to(x.device)
    y = y.reshape(B, C, H * W).gather(2, perm.unsqueeze(1).expand(B, C, H * W)).reshape(B, C, H, W)
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
