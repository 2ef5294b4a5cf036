"""JPEG compression (Hendrycks & Dietterich 2019) as a batched torch baseline-JPEG round trip.

Reference: imagecorruptions' ``jpeg_compression`` / make_cifar_c.py, i.e. ``PIL.Image.save(...,
'JPEG', quality=q)`` then decode -- libjpeg(-turbo) with its defaults.  This module follows
that codec step by step, in its own integer arithmetic (int32 tensors):

1. RGB -> YCbCr with libjpeg's 16-bit fixed-point tables (jccolor.c);
2. chroma subsampled 2x2 (4:2:0, PIL's default), libjpeg's ``h2v2_downsample`` rounding
   (alternating +1/+2 bias); edges replicated to whole 16 x 16 MCUs;
3. the "islow" forward DCT (jfdctint.c: 13-bit constants, two passes, PASS1_BITS = 2),
   quantisation by the Annex K tables scaled by libjpeg's ``jpeg_quality_scaling``
   (force_baseline: entries clamped to 1..255), with libjpeg-turbo's reciprocal arithmetic
   for the divisors ``8 q`` (round half away from zero but for its 16-bit reciprocal's errors);
4. dequantisation and the "islow" inverse DCT (jidctint.c), range-limited to 0..255;
5. libjpeg's "fancy" (triangular, 9/16-3/16-3/16-1/16) chroma upsampling with its +8/+7
   rounding biases;
6. YCbCr -> RGB with libjpeg's fixed-point tables (jdcolor.c), clamped; output = integers / 255.

So it reproduces PIL's output exactly (tests/test_corruptions.py compares); image sides that
are not multiples of 16 are padded by edge replication where libjpeg pads them (full-resolution
columns, 2-row groups, then downsampled rows out to the block).  Each islow pass is an integer
8 x 8 matrix followed by a rounding shift, so it runs as one exact float64 matrix product over
the whole batch.
"""
from __future__ import annotations


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


# jfdctint.c / jidctint.c: FIX(x) = round(x * 2^13)
_CONST_BITS, _PASS1_BITS = 13, 2
_F = {k: int(k * (1 << _CONST_BITS) + 0.5) for k in (
    0.298631336, 0.390180644, 0.541196100, 0.765366865, 0.899976223, 1.175875602, 1.501321110,
    1.847759065, 1.961570560, 2.053119869, 2.562915447, 3.072711026)}


def _fdct_1d(d, last: bool):
    """One pass of jfdctint.c's forward DCT on 8 samples d[0..7] (any numbers: used on Python
    ints to build `_pass_matrix`): the values before DESCALE and the DESCALE shift of each
    output.  Within a pass everything is integer adds and products with the FIX constants, so
    the pass is an integer matrix followed by one rounding shift per output."""
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    out = [None] * 8
    n = _CONST_BITS + _PASS1_BITS if last else _CONST_BITS - _PASS1_BITS
    shifts = [n] * 8
    if last:
        out[0], out[4] = tmp10 + tmp11, tmp10 - tmp11
        shifts[0] = shifts[4] = _PASS1_BITS
    else:
        out[0], out[4] = (tmp10 + tmp11) * (1 << _PASS1_BITS), (tmp10 - tmp11) * (1 << _PASS1_BITS)
        shifts[0] = shifts[4] = 0
    z1 = (tmp12 + tmp13) * _F[0.541196100]
    out[2] = z1 + tmp13 * _F[0.765366865]
    out[6] = z1 - tmp12 * _F[1.847759065]
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F[1.175875602]
    tmp4, tmp5 = tmp4 * _F[0.298631336], tmp5 * _F[2.053119869]
    tmp6, tmp7 = tmp6 * _F[3.072711026], tmp7 * _F[1.501321110]
    z1, z2 = z1 * -_F[0.899976223], z2 * -_F[2.562915447]
    z3, z4 = z3 * -_F[1.961570560] + z5, z4 * -_F[0.390180644] + z5
    out[7] = tmp4 + z1 + z3
    out[5] = tmp5 + z2 + z4
    out[3] = tmp6 + z2 + z3
    out[1] = tmp7 + z1 + z4
    return out, shifts


def _idct_1d(c, last: bool):
    """One pass of jidctint.c's inverse DCT on 8 dequantised coefficients c[0..7], as
    `_fdct_1d`: values before DESCALE and the shifts."""
    z1 = (c[2] + c[6]) * _F[0.541196100]
    tmp2 = z1 - c[6] * _F[1.847759065]
    tmp3 = z1 + c[2] * _F[0.765366865]
    tmp0 = (c[0] + c[4]) * (1 << _CONST_BITS)
    tmp1 = (c[0] - c[4]) * (1 << _CONST_BITS)
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    t0, t1, t2, t3 = c[7], c[5], c[3], c[1]
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _F[1.175875602]
    t0, t1 = t0 * _F[0.298631336], t1 * _F[2.053119869]
    t2, t3 = t2 * _F[3.072711026], t3 * _F[1.501321110]
    z1, z2 = z1 * -_F[0.899976223], z2 * -_F[2.562915447]
    z3, z4 = z3 * -_F[1.961570560] + z5, z4 * -_F[0.390180644] + z5
    t0, t1, t2, t3 = t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4
    n = _CONST_BITS + _PASS1_BITS + 3 if last else _CONST_BITS - _PASS1_BITS
    return [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0, tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3], [n] * 8


@lru_cache(maxsize=4)
def _pass_matrix(kind: str, last: bool):
    """(A, shifts): the pass as ``out_k = DESCALE(sum_j A[k, j] d_j, shifts[k])``, A from the
    butterflies applied to unit vectors (exact integers)."""
    fn = _fdct_1d if kind == "fdct" else _idct_1d
    cols = [fn([int(i == j) for i in range(8)], last) for j in range(8)]
    A = np.array([[cols[j][0][k] for j in range(8)] for k in range(8)], dtype=np.float64)
    return A, np.array(cols[0][1], dtype=np.int64)


@lru_cache(maxsize=16)
def _pass_tensors(kind: str, last: bool, dtype: torch.dtype, device: torch.device):
    """The pass's matrix with each output row pre-multiplied by 2^-shift (exact: a power of two)
    and the rounding offsets, so that DESCALE is ``floor(d @ M + offset)``."""
    A, shifts = _pass_matrix(kind, last)
    M = torch.as_tensor(A * np.exp2(-shifts)[:, None], dtype=dtype, device=device)
    off = torch.as_tensor(np.where(shifts > 0, 0.5, 0.0), dtype=dtype, device=device)
    return M, off


def _apply_pass(t: Tensor, kind: str, last: bool) -> Tensor:
    """One DCT pass over axis -2 (which holds the 8 samples) of a float tensor of integers.
    Every partial sum is an integer multiple of 2^-shift below 2^53 (float64) -- or below 2^24
    for the forward DCT's first pass on samples -128..127, which therefore runs in float32 --
    so the products are exact, and so is the DESCALE."""
    M, off = _pass_tensors(kind, last, t.dtype, t.device)
    return torch.matmul(M, t).add_(off.view(8, 1)).floor_()


def _reciprocals(qtable: np.ndarray):
    """libjpeg-turbo's quantisation by reciprocal (jcdctmgr.c compute_reciprocal, 16-bit DCTELEM):
    for divisor d = 8 q, ``|c| -> ((|c| + corr) * fq) >> shift``, which is round-half-up of
    |c| / d except where the 16-bit reciprocal is inexact -- and then libjpeg-turbo's result is
    what PIL writes, so that is what is reproduced."""
    fqs, corrs, shifts = [], [], []
    for qv in np.asarray(qtable).ravel().tolist():
        d = 8 * int(qv)
        b = d.bit_length() - 1
        r = 16 + b
        fq, fr = divmod(1 << r, d)
        c = d // 2
        if fr == 0:          # a power of two
            fq >>= 1
            r -= 1
        elif fr <= d // 2:
            c += 1
        else:
            fq += 1
        fqs.append(fq)
        corrs.append(c)
        shifts.append(r)
    return (np.array(fqs, dtype=np.int64), np.array(corrs, dtype=np.int32), np.array(shifts, dtype=np.int64))


def _code_plane(plane: Tensor, qtable: np.ndarray) -> Tensor:
    """Level shift, islow DCT, quantise, dequantise, islow IDCT, range-limit one (B, H, W) int32
    plane of samples 0..255 (H, W multiples of 8), as libjpeg encodes and decodes it.

    Layout: every pass multiplies an (8, 8) matrix into axis -2 of a plain view -- ``(B * H / 8,
    8, W)`` for the 8 rows of each block, ``(B * W / 8, 8, H)`` of the transposed plane for the
    8 columns -- with a transposing copy between the row and the column passes."""
    B, H, W = plane.shape

    def transpose(t: Tensor, rows: int, cols: int) -> Tensor:   # (B, rows, cols) -> (B * cols / 8, 8, rows)
        return t.view(B, rows, cols).transpose(1, 2).contiguous().view(B * cols // 8, 8, rows)
    t = transpose((plane - 128).to(torch.float32), H, W)         # partial sums < 2^23: exact in float32
    t = _apply_pass(t, "fdct", False).to(torch.float64)         # rows (along W)
    coef = _apply_pass(transpose(t, W, H), "fdct", True)        # columns: (B * H / 8, 8 v, W = 8 Wb u)
    q, fq, corr = _quant_tensors(qtable.tobytes(), W, plane.device)
    # libjpeg-turbo's quantize(): ((|c| + corr) * fq) >> shift, the sign put back (exact in float64)
    deq = (coef.abs() + corr).mul_(fq).floor_().copysign_(coef).mul_(q)
    t = _apply_pass(deq, "idct", False)                          # columns first when decoding
    pix = _apply_pass(transpose(t, H, W), "idct", True)          # rows: (B * W / 8, 8 x, H)
    return transpose(pix.add_(128).clamp_(0, 255).to(torch.int32), W, H).view(B, H, W)


@lru_cache(maxsize=32)
def _quant_tensors(table_bytes: bytes, W: int, device: torch.device):
    """q, fq * 2^-shift and corr of a quantisation table, tiled to (8, W) float64 rows
    (entry [v, 8 b + u] is the table's [v, u])."""
    qtable = np.frombuffer(table_bytes, dtype=np.int64).reshape(8, 8).copy()
    fq, corr, shift = _reciprocals(qtable)
    return tuple(torch.as_tensor(np.tile(np.asarray(v, dtype=np.float64).reshape(8, 8), (1, W // 8)), device=device)
                 for v in (qtable, fq * np.exp2(-shift.astype(np.float64)), corr))


def _downsample_h2v2(c: Tensor) -> Tensor:
    """libjpeg's h2v2_downsample: (sum of the 2x2 block + bias) >> 2, bias 1, 2, 1, 2, ... by column."""
    B, H, W = c.shape
    s = c[:, 0::2, 0::2] + c[:, 0::2, 1::2] + c[:, 1::2, 0::2] + c[:, 1::2, 1::2]
    bias = torch.tensor([1, 2], dtype=torch.int32, device=c.device).repeat(W // 4 + 1)[: W // 2]
    return (s + bias) >> 2


def _upsample_h2v2_fancy(c: Tensor, H: int, W: int) -> Tensor:
    """libjpeg(-turbo) h2v2_fancy_upsample: each output sample is 9/16 of its nearest chroma
    sample, 3/16 of the two next nearest and 1/16 of the diagonal one (edges replicated) --
    column sums ``3 c[i] + c[i -+ 1]``, then the same along rows -- rounded with libjpeg's
    (+8, +7) >> 4 for (even, odd) output columns."""
    B, h, w = c.shape
    p = F.pad(c.unsqueeze(1).float(), (1, 1, 1, 1), mode="replicate").squeeze(1).to(torch.int32)
    mid = 3 * p[:, 1:-1]
    v = torch.empty(B, 2 * h, w + 2, dtype=torch.int32, device=c.device)
    v[:, 0::2] = mid + p[:, :-2]
    v[:, 1::2] = mid + p[:, 2:]
    mid = 3 * v[:, :, 1:-1]
    out = torch.empty(B, 2 * h, 2 * w, dtype=torch.int32, device=c.device)
    out[:, :, 0::2] = mid + v[:, :, :-2] + 8
    out[:, :, 1::2] = mid + v[:, :, 2:] + 7
    return out[:, :H, :W] >> 4


def _pad(p: Tensor, H: int, W: int) -> Tensor:
    """Replicate the last row / column of (B, h, w) int planes out to H x W."""
    h, w = p.shape[-2:]
    if (h, w) == (H, W):
        return p
    return F.pad(p.unsqueeze(1).float(), (0, W - w, 0, H - h), mode="replicate").squeeze(1).to(torch.int32)


def _fix16(x: float) -> int:
    return int(x * 65536 + 0.5)


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Encode and decode RGB images (B, 3, H, W) in [0, 1] as baseline JPEG, 4:2:0."""
    B, C, H, W = x.shape
    v = torch.round(x.clamp(0, 1) * 255).to(torch.int32)
    r, g, b = v.unbind(1)
    half, offset = 1 << 15, (128 << 16) + (1 << 15) - 1   # jccolor.c: ONE_HALF, CBCR_OFFSET + ONE_HALF - 1
    y = (_fix16(0.299) * r + _fix16(0.587) * g + _fix16(0.114) * b + half) >> 16
    cb = (-_fix16(0.16874) * r - _fix16(0.33126) * g + _fix16(0.5) * b + offset) >> 16
    cr = (_fix16(0.5) * r - _fix16(0.41869) * g - _fix16(0.08131) * b + offset) >> 16
    Hp, Wp = -(-H // 16) * 16, -(-W // 16) * 16
    ch, cw = -(-H // 2), -(-W // 2)
    lq, cq = quant_tables(quality)
    y = _code_plane(_pad(y, Hp, Wp), lq)[:, :H, :W]
    # libjpeg pads the full-resolution rows only to the 2-row group before downsampling, then
    # the downsampled rows to the 8-row block by repeating the last one; columns at full resolution
    cb = _code_plane(_pad(_downsample_h2v2(_pad(cb, 2 * ch, Wp)), Hp // 2, Wp // 2), cq)[:, :ch, :cw]
    cr = _code_plane(_pad(_downsample_h2v2(_pad(cr, 2 * ch, Wp)), Hp // 2, Wp // 2), cq)[:, :ch, :cw]
    cb = _upsample_h2v2_fancy(cb, H, W) - 128
    cr = _upsample_h2v2_fancy(cr, H, W) - 128
    # jdcolor.c's tables: Cr_r, Cb_b rounded; Cr_g + Cb_g (+ ONE_HALF) shifted together
    r = y + ((_fix16(1.402) * cr + half) >> 16)
    g = y + ((-_fix16(0.34414) * cb - _fix16(0.71414) * cr + half) >> 16)
    b = y + ((_fix16(1.772) * cb + half) >> 16)
    out = torch.stack((r, g, b), 1).clamp_(0, 255)
    return out.to(x.dtype) / 255


def jpeg_compression(x: Tensor, c: int, rng: RNG, preset) -> Tensor:
    return jpeg_roundtrip(x, int(c))
