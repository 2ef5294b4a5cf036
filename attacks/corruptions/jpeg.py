"""JPEG compression (Hendrycks & Dietterich 2019) as a batched torch baseline-JPEG round trip.

Reference: imagecorruptions' ``jpeg_compression`` / make_cifar_c.py, i.e. ``PIL.Image.save(...,
'JPEG', quality=q)`` then decode -- libjpeg(-turbo) with its defaults.  This module follows
that codec step by step:

1. 8-bit RGB -> YCbCr (JFIF/BT.601), rounded to integers;
2. chroma subsampled 2x2 (4:2:0, PIL's default), libjpeg's ``h2v2_downsample`` rounding
   (alternating +1/+2 bias); edges replicated to whole 16 x 16 MCUs;
3. 8x8 block DCT-II, quantisation by the standard JPEG (Annex K) luminance/chrominance tables
   scaled by libjpeg's ``jpeg_quality_scaling`` (force_baseline: entries clamped to 1..255),
   rounding half away from zero;
4. dequantisation, inverse DCT, rounding and clamping to 0..255;
5. libjpeg's "fancy" (triangular, 9/16-3/16-3/16-1/16) chroma upsampling with its +8/+7
   rounding biases;
6. YCbCr -> RGB with libjpeg's rounding, clamped; output = integers / 255.

Deviations: the DCTs are computed in floating point instead of libjpeg's 13-bit fixed point
("islow"), so a coefficient that falls within a rounding error of a quantisation boundary can
land in the neighbouring bin -- rare, and it shifts the affected block slightly; image sides
that are not multiples of 16 are padded by edge replication (libjpeg does the same for its
MCUs).  Output values are multiples of 1/255, as from any 8-bit codec.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ._ops import RNG

Tensor = torch.Tensor

# ITU-T T.81 Annex K, tables K.1 and K.2 (row-major, not zig-zag)
_LUMA_Q = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64).reshape(8, 8)
_CHROMA_Q = np.array([
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99], dtype=np.int64).reshape(8, 8)


def quant_tables(quality: int):
    """libjpeg's jpeg_set_quality(quality, force_baseline=TRUE): (luma, chroma) 8x8 int arrays."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    def scaled(base):
        return np.clip((base * scale + 50) // 100, 1, 255)
    return scaled(_LUMA_Q), scaled(_CHROMA_Q)


@lru_cache(maxsize=1)
def _dct2_matrix() -> np.ndarray:
    """(64, 64) orthonormal 2-D DCT-II of a row-major 8x8 block: kron(D, D)."""
    k = np.arange(8).reshape(8, 1)
    n = np.arange(8).reshape(1, 8)
    D = np.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    D[0] /= math.sqrt(2)
    return np.kron(D, D)


def _round_half_away(t: Tensor) -> Tensor:
    return torch.sign(t) * torch.floor(t.abs() + 0.5)


def _blocks(plane: Tensor) -> Tensor:
    """(B, H, W) -> (B * H/8 * W/8, 64) row-major blocks."""
    B, H, W = plane.shape
    return plane.reshape(B, H // 8, 8, W // 8, 8).permute(0, 1, 3, 2, 4).reshape(-1, 64)


def _unblocks(blocks: Tensor, B: int, H: int, W: int) -> Tensor:
    return blocks.reshape(B, H // 8, W // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(B, H, W)


def _code_plane(plane: Tensor, qtable: np.ndarray) -> Tensor:
    """Level shift, DCT, quantise, dequantise, IDCT, round and clamp one (B, H, W) plane of
    integer samples (H, W multiples of 8).  Every block is one row of a single matrix product."""
    B, H, W = plane.shape
    K = torch.as_tensor(_dct2_matrix(), dtype=plane.dtype, device=plane.device)
    Q = torch.as_tensor(qtable.reshape(64), dtype=plane.dtype, device=plane.device)
    coef = _blocks(plane - 128.0) @ K.t()
    coef = _round_half_away(coef / Q) * Q
    rec = coef @ K
    return (torch.floor(_unblocks(rec, B, H, W) + 0.5) + 128.0).clamp(0, 255)


def _downsample_h2v2(c: Tensor) -> Tensor:
    """libjpeg's h2v2_downsample: (sum of the 2x2 block + bias) >> 2, bias 1, 2, 1, 2, ... by column."""
    B, H, W = c.shape
    s = F.avg_pool2d(c.unsqueeze(1), 2).squeeze(1) * 4
    bias = torch.tensor([1.0, 2.0], dtype=c.dtype, device=c.device).repeat(W // 4 + 1)[: W // 2]
    return torch.floor((s + bias) / 4)


def _upsample_h2v2_fancy(c: Tensor, H: int, W: int) -> Tensor:
    """libjpeg(-turbo) h2v2_fancy_upsample: each output sample is 9/16 of its nearest chroma
    sample, 3/16 of the two next nearest and 1/16 of the diagonal one (edges replicated) --
    column sums ``3 c[i] + c[i -+ 1]``, then the same along rows -- rounded with libjpeg's
    (+8, +7) >> 4 for (even, odd) output columns."""
    B, h, w = c.shape
    p = F.pad(c.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)  # (B, h+2, w+2)
    mid = 3 * p[:, 1:-1]
    v = torch.empty(B, 2 * h, w + 2, dtype=c.dtype, device=c.device)
    v[:, 0::2] = mid + p[:, :-2]
    v[:, 1::2] = mid + p[:, 2:]
    mid = 3 * v[:, :, 1:-1]
    out = torch.empty(B, 2 * h, 2 * w, dtype=c.dtype, device=c.device)
    out[:, :, 0::2] = mid + v[:, :, :-2] + 8
    out[:, :, 1::2] = mid + v[:, :, 2:] + 7
    return torch.floor(out[:, :H, :W] / 16)


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Encode and decode RGB images (B, 3, H, W) in [0, 1] as baseline JPEG, 4:2:0."""
    B, C, H, W = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = torch.round(x.to(dtype).clamp(0, 1) * 255)
    r, g, b = v.unbind(1)
    y = torch.round(0.299 * r + 0.587 * g + 0.114 * b)
    cb = torch.round(-0.168735892 * r - 0.331264108 * g + 0.5 * b + 128).clamp(0, 255)
    cr = torch.round(0.5 * r - 0.418687589 * g - 0.081312411 * b + 128).clamp(0, 255)
    Hp, Wp = -(-H // 16) * 16, -(-W // 16) * 16
    def pad(p):  # replicate the last row / column out to whole MCUs
        return F.pad(p.unsqueeze(1), (0, Wp - W, 0, Hp - H), mode="replicate").squeeze(1) if (Hp, Wp) != (H, W) else p
    y, cb, cr = pad(y), pad(cb), pad(cr)
    lq, cq = quant_tables(quality)
    y = _code_plane(y, lq)[:, :H, :W]
    ch, cw = -(-H // 2), -(-W // 2)
    cb = _code_plane(_downsample_h2v2(cb), cq)[:, :ch, :cw]
    cr = _code_plane(_downsample_h2v2(cr), cq)[:, :ch, :cw]
    cb = _upsample_h2v2_fancy(cb, H, W) - 128
    cr = _upsample_h2v2_fancy(cr, H, W) - 128
    r = y + torch.floor(1.402 * cr + 0.5)
    g = y + torch.floor(-0.344136286 * cb - 0.714136286 * cr + 0.5)
    b = y + torch.floor(1.772 * cb + 0.5)
    out = torch.stack((r, g, b), 1).clamp(0, 255) / 255
    return out.to(x.dtype)


def jpeg_compression(x: Tensor, c: int, rng: RNG, preset) -> Tensor:
    return jpeg_roundtrip(x, int(c))
