"""Weather corruptions (Hendrycks & Dietterich 2019): snow and fog, and the extra spatter.
(Frost is in frost.py.)

References: imagecorruptions (ImageNet-C table) and make_cifar_c.py (CIFAR-10-C table).

* snow -- a N(loc, scale) layer, zoomed into, thresholded, motion-blurred along an angle
  U(-135, -45) (the line kernel of ``_ops.line_blur``), rounded to 8 bits and added twice (as is
  and rotated by 180 degrees) to the image, which is first blended towards ``1.5 * grey + 0.5``.
  ImageNet-C: the zoomed layer is blurred untrimmed and its top-left H x W kept
  (imagecorruptions).  CIFAR-10-C: the zoomed layer is trimmed centrally first and its 8-bit
  quantisation (PNG hand-off to ImageMagick) is truncation before the blur, rounding after.
* fog -- ``(x + c * plasma) * max(x) / (max(x) + c)`` with a diamond-square plasma fractal
  (``_ops.plasma_fractal``) per image, on a map of the next power of two of the image side
  (ImageNet-C) or 32 (CIFAR-10-C; larger if the image is larger).
* spatter -- mode 0 (water): a smoothed, thresholded N(loc, scale) "liquid" layer; its Canny
  edges (OpenCV's L1-gradient Canny: 3x3 Sobel, non-maximum suppression in four directions,
  hysteresis 50/150), the chamfer (5x5 mask: 1, 1.4, 2.1969 as cv2.DIST_L2 with mask 5)
  distance to them truncated at 20, box blur, histogram equalisation (cv2.equalizeHist), the
  reference's 3x3 emboss kernel, box blur; the product with the liquid layer, normalised, tints
  the image pale turquoise.  Mode 1 (mud): the thresholded layer, Gaussian-smoothed, mixes in
  mud brown where it exceeds 0.8.  Every OpenCV step is re-implemented in torch on integer
  values as OpenCV computes them; known deviations: the hysteresis is a connected-component
  propagation (OpenCV's stack-based tracing can differ at a handful of pixels next to
  tie-broken maxima), and a liquid value above 1 (which numpy's uint8 cast would wrap around)
  is clamped to 255.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._ops import (RNG, box_filter3, clipped_zoom, f64, filter2d, gaussian_filter, line_blur, next_power_of_2, pad2d,
                   plasma_fractal, rgb_to_gray)

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# snow
# --------------------------------------------------------------------------------------------
def snow(x: Tensor, c, rng: RNG, preset) -> Tensor:
    loc, scale, zoom, threshold, radius, sigma, blend = c
    B, C, H, W = x.shape
    layer = rng.normal(loc, scale, B, 1, H, W).to(x.dtype)
    cifar = preset.variants["zoom_trim"] == "center"
    layer = clipped_zoom(layer, float(zoom), "center" if cifar else "none")
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    if cifar:
        layer = torch.floor(layer * 255) / 255  # PIL 'L' image from (... * 255).astype(uint8)
    angles = rng.uniform(-135.0, -45.0, B, dtype=torch.float64)
    layer = line_blur(layer, radius, sigma, angles, bool(preset.variants["motion_border_break"]))
    layer = torch.round(layer * 255) / 255
    layer = layer[..., :H, :W]
    grey = rgb_to_gray(x) if C == 3 else x
    x = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


# --------------------------------------------------------------------------------------------
# fog
# --------------------------------------------------------------------------------------------
def fog(x: Tensor, c, rng: RNG, preset) -> Tensor:
    strength, decay = c
    B, C, H, W = x.shape
    size = next_power_of_2(max(H, W))
    fixed = preset.variants["fog_mapsize"]
    if fixed != "auto":
        size = max(int(fixed), size)
    plasma = plasma_fractal(B, size, float(decay), rng)[:, :H, :W].to(device=x.device, dtype=x.dtype)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * plasma.unsqueeze(1)) * max_val / (max_val + strength)


# --------------------------------------------------------------------------------------------
# spatter
# --------------------------------------------------------------------------------------------
_TG22 = 0.4142135623730950488016887242097
_TG67 = _TG22 + 2.0


def _shift(t: Tensor, dy: int, dx: int, fill: float) -> Tensor:
    """t'(y, x) = t(y + dy, x + dx), `fill` outside."""
    H, W = t.shape[-2:]
    p = F.pad(t, (2, 2, 2, 2), value=fill)
    return p[..., 2 + dy:2 + dy + H, 2 + dx:2 + dx + W]


def canny(img: Tensor, low: float, high: float) -> Tensor:
    """OpenCV's Canny (aperture 3, L1 gradient) on (B, 1, H, W) 8-bit-valued images -> bool edges."""
    sob = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=img.dtype, device=img.device)
    p = pad2d(img, 1, 1, 1, 1, "nearest")
    dx = F.conv2d(p, sob.view(1, 1, 3, 3))
    dy = F.conv2d(p, sob.t().contiguous().view(1, 1, 3, 3))
    mag = dx.abs() + dy.abs()
    xs, ys = dx.abs(), dy.abs()
    horiz = ys < xs * _TG22
    vert = ~horiz & (ys > xs * _TG67)
    diag = ~horiz & ~vert
    s_neg = (dx * dy) < 0  # opposite signs: the edge runs along the other diagonal
    left, right = _shift(mag, 0, -1, 0.0), _shift(mag, 0, 1, 0.0)
    up, down = _shift(mag, -1, 0, 0.0), _shift(mag, 1, 0, 0.0)
    ul, ur = _shift(mag, -1, -1, 0.0), _shift(mag, -1, 1, 0.0)
    dl, dr = _shift(mag, 1, -1, 0.0), _shift(mag, 1, 1, 0.0)
    keep_h = (mag > left) & (mag >= right)
    keep_v = (mag > up) & (mag >= down)
    keep_d = torch.where(s_neg, (mag > ur) & (mag > dl), (mag > ul) & (mag > dr))
    nms = torch.where(horiz, keep_h, torch.where(vert, keep_v, keep_d))
    cand = nms & (mag > low)
    edges = cand & (mag > high)
    # hysteresis: grow the strong edges through 8-connected candidates until nothing changes
    for _ in range(img.shape[-2] * img.shape[-1]):
        grown = cand & (F.max_pool2d(edges.to(img.dtype), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges


_A, _B, _C = 1.0, 1.4, 2.1969  # OpenCV's DIST_L2 / DIST_MASK_5 weights


def _chamfer_pass(d: Tensor, reverse: bool) -> Tensor:
    """One raster pass of the two-pass 5x5 chamfer transform over (B, H, W) distances.

    Row by row (a loop over rows, vectorised over images and columns): first the mask entries
    in the two previous rows, then the horizontal neighbour, whose sequential left-to-right
    recursion ``d[x] = min(c[x], d[x-1] + a)`` is ``x*a + cummin(c - x*a)``."""
    B, H, W = d.shape
    big = 1e6
    rows = range(H - 1, -1, -1) if reverse else range(H)
    step = -1 if reverse else 1
    ramp = torch.arange(W, dtype=d.dtype, device=d.device) * _A
    if reverse:
        ramp = ramp.flip(0)
    out = F.pad(d, (2, 2), value=big)  # two columns of "far" on each side; rows are read as slices
    for y in rows:
        cand = out[:, y, 2:2 + W]
        y1, y2 = y - step, y - 2 * step
        if 0 <= y1 < H:
            r1 = out[:, y1]
            cand = torch.minimum(cand, r1[:, 2:2 + W] + _A)
            for dx, w in ((-1, _B), (1, _B), (-2, _C), (2, _C)):
                cand = torch.minimum(cand, r1[:, 2 + dx:2 + dx + W] + w)
        if 0 <= y2 < H:
            r2 = out[:, y2]
            cand = torch.minimum(cand, torch.minimum(r2[:, 1:1 + W], r2[:, 3:3 + W]) + _C)
        if reverse:
            cand = ramp + torch.cummin((cand - ramp).flip(-1), dim=-1).values.flip(-1)
        else:
            cand = ramp + torch.cummin(cand - ramp, dim=-1).values
        out[:, y, 2:2 + W] = cand
    return out[:, :, 2:2 + W]


def chamfer_distance(zero: Tensor, cap: float) -> Tensor:
    """cv2.distanceTransform(DIST_L2, DIST_MASK_5) -- distance to the nearest `zero` pixel with
    OpenCV's 5x5 chamfer weights (1, 1.4, 2.1969) -- by the classic forward and backward raster
    passes.  Values above `cap` are clipped to it (OpenCV's result is truncated at 20 anyway)."""
    B, C, H, W = zero.shape
    d = torch.where(zero, 0.0, 1e6).to(torch.float32).reshape(B * C, H, W)
    d = _chamfer_pass(_chamfer_pass(d, reverse=False), reverse=True)
    return d.clamp(max=cap).reshape(B, C, H, W)


def equalize_hist(img: Tensor) -> Tensor:
    """cv2.equalizeHist per image on (B, 1, H, W) integer-valued images."""
    B = img.shape[0]
    flat = img.reshape(B, -1).long().clamp(0, 255)
    total = flat.shape[1]
    dt = f64(img.device)
    hist = torch.zeros(B, 256, dtype=dt, device=img.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=dt))
    first = (hist > 0).to(torch.int64).argmax(1, keepdim=True)
    h_first = hist.gather(1, first)
    scale = 255.0 / (total - h_first).clamp_min(1)
    lut = torch.round((hist.cumsum(1) - h_first) * scale).clamp(0, 255)
    lut = torch.where(torch.arange(256, device=img.device).view(1, -1) < first, torch.zeros_like(lut), lut)
    out = lut.gather(1, flat).to(img.dtype)
    constant = (h_first == total)  # a single grey level: OpenCV returns it unchanged
    out = torch.where(constant, flat.to(img.dtype), out)
    return out.view_as(img)


_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


def spatter(x: Tensor, c, rng: RNG, preset) -> Tensor:
    loc, scale, sigma, threshold, intensity, mode = c
    B, C, H, W = x.shape
    liquid = rng.normal(loc, scale, B, 1, H, W, dtype=torch.float64).to(x.device)
    liquid = gaussian_filter(liquid, float(sigma))
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mode == 0:
        lq = torch.floor(liquid * 255).clamp(0, 255).float()
        edges = canny(lq, 50.0, 150.0)
        dist = chamfer_distance(edges, 20.0).clamp(max=20.0)
        dist = torch.floor(box_filter3(dist))
        dist = equalize_hist(dist)
        dist = torch.round(filter2d(dist, _EMBOSS, "mirror")).clamp(0, 255)
        dist = box_filter3(dist)
        m = lq * dist
        peak = m.amax(dim=(1, 2, 3), keepdim=True)
        m = torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m)) * intensity
        color = torch.tensor([175 / 255.0, 238 / 255.0, 238 / 255.0], device=x.device)
        return x + (m.to(x.dtype) * color.to(x.dtype).view(1, 3, 1, 1))[:, :C]
    m = (liquid > threshold).to(liquid.dtype)
    m = gaussian_filter(m, float(intensity))
    m = torch.where(m < 0.8, torch.zeros_like(m), m).to(x.dtype)
    color = torch.tensor([63 / 255.0, 42 / 255.0, 20 / 255.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * (1 - m) + color[:, :C] * m
