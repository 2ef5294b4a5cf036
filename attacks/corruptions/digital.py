"""Digital corruptions (Hendrycks & Dietterich 2019): brightness, contrast, elastic transform,
pixelate, and the extra saturate.  (JPEG is in jpeg.py.)

References: imagecorruptions (ImageNet-C table) and make_cifar_c.py (CIFAR-10-C table).

* brightness / saturate -- add to the HSV value / scale-and-shift the HSV saturation, in closed
  form (no explicit HSV round trip; identical to skimage's rgb2hsv/hsv2rgb up to float
  rounding, including its conventions for grey and black pixels).  Exact.
* contrast -- ``(x - mean) * c + mean`` with per-channel means.  Exact.
* pixelate -- PIL ``resize(BOX)`` down by the factor, then back up with NEAREST (ImageNet-C) or
  BOX (CIFAR-10-C), as separable resampling matrices with PIL's weights.  Deviation: PIL works
  on 8-bit images and rounds after each pass; here values stay float.
* elastic_transform -- ImageNet-C (imagecorruptions' version): displacement fields drawn
  U(-0.005 H, 0.005 H), smoothed by a Gaussian of sigma 0.01 x side (reflect border, truncate 3),
  scaled by alpha, applied with bilinear sampling and reflect border (``grid_sample`` with
  align_corners=False and 'reflection' is exactly scipy's map_coordinates(order=1,
  mode='reflect')).  CIFAR-10-C: first a random affine warp (three points jittered by
  U(-c, c), cv2.warpAffine, bilinear, reflect-101 border), then the field U(-1, 1) smoothed by
  sigma and scaled by alpha.  make_cifar_c.py's sizes are fractions of IMSIZE = 32; here they
  are fractions of the image's shorter side (identical at 32 px).  OpenCV's 5-bit fixed-point
  interpolation weights are not emulated.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._ops import RNG, gaussian_kernel1d, pil_resample_matrix, resample_separable, sep_filter

Tensor = torch.Tensor


def brightness(x: Tensor, c: float, rng: RNG, preset) -> Tensor:
    """HSV value + c.  With hue and saturation held, every channel scales with the value, so
    ``rgb * V'/V`` is skimage's rgb2hsv -> V += c -> hsv2rgb exactly (black maps to grey V')."""
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * (v_new / torch.where(v > 0, v, torch.ones_like(v))), v_new.expand_as(x))


def saturate(x: Tensor, c, rng: RNG, preset) -> Tensor:
    """HSV saturation * a + b.  Each channel is ``V * (1 - S * g(hue))``, so with hue and value
    held it becomes ``V - (V - rgb) * S'/S``; grey pixels (S = 0) get skimage's hue 0, i.e.
    ``(V, V(1 - S'), V(1 - S'))``.  Exactly skimage's HSV round trip."""
    scale, shift = c
    v = x.amax(1, keepdim=True)
    delta = v - x.amin(1, keepdim=True)
    grey = delta <= 0
    s = torch.where(grey, torch.zeros_like(v), delta / torch.where(v > 0, v, torch.ones_like(v)))
    s_new = (s * scale + shift).clamp(0, 1)
    coloured = v - (v - x) * (s_new / torch.where(grey, torch.ones_like(s), s))
    red_hue = torch.cat((v, v * (1 - s_new), v * (1 - s_new)), 1) if x.shape[1] == 3 else v * (1 - s_new)
    return torch.where(grey, red_hue, coloured)


def contrast(x: Tensor, c: float, rng: RNG, preset) -> Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def pixelate(x: Tensor, c: float, rng: RNG, preset) -> Tensor:
    H, W = x.shape[-2:]
    h, w = max(int(H * c), 1), max(int(W * c), 1)
    small = resample_separable(x, pil_resample_matrix(H, h, "box"), pil_resample_matrix(W, w, "box"))
    up = preset.variants["pixelate_up"]  # "nearest" (PIL's, floor((i + 0.5) * in / out)) or "box"
    return resample_separable(small, pil_resample_matrix(h, H, up), pil_resample_matrix(w, W, up))


# --------------------------------------------------------------------------------------------
# elastic
# --------------------------------------------------------------------------------------------
def _base_grid(B: int, H: int, W: int, x: Tensor):
    yy = torch.arange(H, dtype=x.dtype, device=x.device).view(1, H, 1).expand(B, H, W)
    xx = torch.arange(W, dtype=x.dtype, device=x.device).view(1, 1, W).expand(B, H, W)
    return yy, xx


def sample_reflect(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """scipy.ndimage.map_coordinates(order=1, mode='reflect') at pixel coordinates (B, H, W)."""
    H, W = x.shape[-2:]
    grid = torch.stack(((2 * cols + 1) / W - 1, (2 * rows + 1) / H - 1), -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _smoothed_field(B: int, H: int, W: int, low: float, high: float, sigma, truncate: float,
                    rng: RNG, x: Tensor) -> Tensor:
    u = rng.uniform(low, high, B, 1, H, W, dtype=torch.float64).to(x.device)
    sh, sw = sigma
    return sep_filter(u, gaussian_kernel1d(sh, truncate), gaussian_kernel1d(sw, truncate), "reflect")[:, 0]


def _affine_cifar(x: Tensor, jitter: float, rng: RNG) -> Tensor:
    """make_cifar_c.py's random affine: cv2.getAffineTransform(pts1, pts1 + U(-j, j)) and
    cv2.warpAffine(..., BORDER_REFLECT_101), bilinear."""
    B, C, H, W = x.shape
    centre = np.array([H // 2, W // 2], dtype=np.float64)
    sq = min(H, W) // 3
    pts1 = np.array([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])  # (x, y) as cv2 reads them
    pts1_t = torch.as_tensor(pts1, dtype=torch.float64)
    pts2 = pts1_t.unsqueeze(0) + rng.uniform(-jitter, jitter, B, 3, 2, dtype=torch.float64).cpu()
    # M maps pts1 -> pts2 (source -> destination); warpAffine samples the source at M^-1(dst)
    A = torch.cat((pts1_t, torch.ones(3, 1, dtype=torch.float64)), 1).expand(B, 3, 3)
    M = torch.linalg.solve(A, pts2).transpose(1, 2)  # (B, 2, 3): [x', y'] = M @ [x, y, 1]
    full = torch.cat((M, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(B, 1, 3)), 1)
    inv = torch.linalg.inv(full)[:, :2].to(device=x.device, dtype=x.dtype)  # dst -> src
    yy, xx = _base_grid(B, H, W, x)
    sx = inv[:, 0, 0, None, None] * xx + inv[:, 0, 1, None, None] * yy + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * xx + inv[:, 1, 1, None, None] * yy + inv[:, 1, 2, None, None]
    # reflect-101 about pixel centres == grid_sample reflection with align_corners=True
    grid = torch.stack((2 * sx / max(W - 1, 1) - 1, 2 * sy / max(H - 1, 1) - 1), -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def elastic_transform(x: Tensor, c, rng: RNG, preset) -> Tensor:
    B, C, H, W = x.shape
    if preset.variants["elastic"] == "cifar":
        side = min(H, W)
        alpha, sigma, jitter = (v * side for v in c)
        x = _affine_cifar(x, jitter, rng)
        low, high, sig = -1.0, 1.0, (sigma, sigma)
    else:
        alpha = float(c)
        low, high = -H * 0.005, H * 0.005
        sig = (H * 0.01, W * 0.01)
    dx = _smoothed_field(B, H, W, low, high, sig, 3.0, rng, x) * alpha
    dy = _smoothed_field(B, H, W, low, high, sig, 3.0, rng, x) * alpha
    yy, xx = _base_grid(B, H, W, x)
    return sample_reflect(x, yy + dy.to(x.dtype), xx + dx.to(x.dtype))
