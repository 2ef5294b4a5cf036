"""Batched building blocks shared by the corruptions: random draws, border handling, Gaussian /
box / arbitrary 2-D filters, grey conversion, PIL resampling weights, zoom, line (motion) blur
and the plasma fractal.

Border modes use scipy.ndimage's names (the reference calls scipy, skimage and OpenCV):

=========  ==================================  ===========================
name       rule (``abcd`` is the row)          also known as
=========  ==================================  ===========================
nearest    ``aaaa|abcd|dddd``                  torch/cv2 replicate
reflect    ``dcba|abcd|dcba`` (half-sample)    cv2 BORDER_REFLECT
mirror     ``dcb|abcd|cba``   (whole-sample)   cv2 BORDER_REFLECT_101, torch reflect
wrap       ``abcd|abcd|abcd``                  circular
=========  ==================================  ===========================

Padding uses torch's kernels where they apply and index selection otherwise, so any pad width
works on any image size.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def f64(device) -> torch.dtype:
    """float64 where the device has it (not on Apple's MPS), else float32."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


# --------------------------------------------------------------------------------------------
# random numbers
# --------------------------------------------------------------------------------------------
class RNG:
    """Random draws for one `corrupt` call.

    With a `torch.Generator` every draw is made on the generator's device and then moved to the
    images' device, so a seeded generator gives the same corruption whatever device the images
    live on.  Without one, draws come from torch's global RNG of the images' device.
    """

    def __init__(self, generator: Optional[torch.Generator], device: torch.device, dtype: torch.dtype):
        self.generator = generator
        self.device = device
        self.dtype = dtype
        self._draw_device = generator.device if generator is not None else device

    def _out(self, t: Tensor) -> Tensor:
        if t.dtype == torch.float64 and f64(self.device) != torch.float64:
            t = t.float()
        return t.to(self.device)

    def _dt(self, dtype: Optional[torch.dtype]) -> torch.dtype:
        dtype = dtype or self.dtype
        return torch.float32 if dtype == torch.float64 and f64(self._draw_device) != dtype else dtype

    def rand(self, *shape: int, dtype: Optional[torch.dtype] = None) -> Tensor:
        return self._out(torch.rand(shape, generator=self.generator, device=self._draw_device,
                                    dtype=self._dt(dtype)))

    def uniform(self, low: float, high: float, *shape: int, dtype: Optional[torch.dtype] = None) -> Tensor:
        return self.rand(*shape, dtype=dtype) * (high - low) + low

    def normal(self, mean: float, std: float, *shape: int, dtype: Optional[torch.dtype] = None) -> Tensor:
        return self._out(torch.randn(shape, generator=self.generator, device=self._draw_device,
                                     dtype=self._dt(dtype))) * std + mean

    def randint(self, low: int, high: int, *shape: int) -> Tensor:
        """Integers in [low, high) (numpy's convention)."""
        return self._out(torch.randint(low, high, shape, generator=self.generator, device=self._draw_device))

    def poisson(self, rates: Tensor) -> Tensor:
        r = rates.to(self._draw_device)
        return self._out(torch.poisson(r, generator=self.generator))


# --------------------------------------------------------------------------------------------
# borders and filters
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=512)
def _pad_index_np(n: int, before: int, after: int, mode: str) -> np.ndarray:
    i = np.arange(-before, n + after)
    if mode == "nearest":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    if mode == "reflect":
        m = np.mod(i, 2 * n)
        return np.where(m >= n, 2 * n - 1 - m, m)
    if mode == "mirror":
        if n == 1:
            return np.zeros_like(i)
        m = np.mod(i, 2 * n - 2)
        return np.where(m >= n, 2 * n - 2 - m, m)
    raise ValueError(f"unknown border mode {mode!r}")


def pad_index(n: int, before: int, after: int, mode: str, device) -> Tensor:
    return torch.as_tensor(_pad_index_np(n, before, after, mode), device=device)


_TORCH_PAD = {"nearest": "replicate", "mirror": "reflect", "wrap": "circular"}


def pad2d(x: Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> Tensor:
    """Pad the last two dims of `x` with one of the border modes above (or 'constant' zeros)."""
    if top == bottom == left == right == 0:
        return x
    if mode == "constant":
        return F.pad(x, (left, right, top, bottom))
    H, W = x.shape[-2:]
    tmode = _TORCH_PAD.get(mode)
    if tmode is not None and x.dim() == 4 and max(top, bottom) < H and max(left, right) < W:
        return F.pad(x, (left, right, top, bottom), mode=tmode)  # torch's kernels are faster
    if tmode == "replicate" and x.dim() == 4:
        return F.pad(x, (left, right, top, bottom), mode=tmode)  # replicate has no size limit
    if top or bottom:
        x = x.index_select(-2, pad_index(H, top, bottom, mode, x.device))
    if left or right:
        x = x.index_select(-1, pad_index(W, left, right, mode, x.device))
    return x


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, radius: Optional[int] = None) -> np.ndarray:
    """scipy.ndimage's sampled Gaussian: radius ``int(truncate * sigma + 0.5)``, sums to 1."""
    if sigma <= 0:
        return np.ones(1)
    r = int(truncate * float(sigma) + 0.5) if radius is None else radius
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / float(sigma)) ** 2)
    return k / k.sum()


@lru_cache(maxsize=256)
def _filter_matrix_np(n: int, kernel: tuple, mode: str) -> np.ndarray:
    """(n, n) matrix M with ``M @ v`` = the 1-D correlation of v with `kernel` (odd length,
    centred) under border `mode`; the border is folded into the matrix."""
    k = np.asarray(kernel, dtype=np.float64)
    r = (k.size - 1) // 2
    src = _pad_index_np(n, r, k.size - 1 - r, mode)  # padded position -> source index
    M = np.zeros((n, n))
    rows = np.repeat(np.arange(n), k.size)
    cols = src[np.arange(n)[:, None] + np.arange(k.size)[None, :]].ravel()
    np.add.at(M, (rows, cols), np.tile(k, n))
    return M


def _filter_1d(x: Tensor, k: Tensor, dim: int, mode: str) -> Tensor:
    """Correlate along dim -2 (rows) or -1 (columns).  Short kernels: a sum of shifted slices;
    long ones (or small images): one matrix product with the border folded in."""
    n = x.shape[dim]
    ksize = k.numel()
    if ksize == 1:
        return x * k[0]
    if ksize * 8 >= n or n <= 64:
        M = torch.as_tensor(_filter_matrix_np(n, tuple(k.tolist()), mode), dtype=x.dtype, device=x.device)
        return torch.matmul(M, x) if dim == -2 else torch.matmul(x, M.t())
    r = (ksize - 1) // 2
    xp = pad2d(x, r, ksize - 1 - r, 0, 0, mode) if dim == -2 else pad2d(x, 0, 0, r, ksize - 1 - r, mode)
    out = None
    for j, w in enumerate(k.tolist()):  # <= n/8 taps
        sl = xp.narrow(dim, j, n)
        out = sl * w if out is None else out.add_(sl, alpha=w)
    return out


def sep_filter(x: Tensor, kh: Sequence[float], kw: Sequence[float], mode: str) -> Tensor:
    """Correlate every channel of `x` (..., H, W) with the separable kernel ``kh (rows) x kw (cols)``."""
    kh_t = torch.as_tensor(np.asarray(kh, dtype=np.float64))
    kw_t = torch.as_tensor(np.asarray(kw, dtype=np.float64))
    return _filter_1d(_filter_1d(x, kh_t, -2, mode), kw_t, -1, mode)


def gaussian_filter(x: Tensor, sigma, mode: str = "nearest", truncate: float = 4.0) -> Tensor:
    """scipy.ndimage.gaussian_filter over the two spatial dims (skimage.filters.gaussian's engine).

    `sigma` is a number or a (rows, cols) pair.
    """
    sh, sw = (sigma, sigma) if np.isscalar(sigma) else sigma
    return sep_filter(x, gaussian_kernel1d(sh, truncate), gaussian_kernel1d(sw, truncate), mode)


def box_filter3(x: Tensor, mode: str = "mirror") -> Tensor:
    """cv2.blur(x, (3, 3)) (default border BORDER_REFLECT_101 = 'mirror')."""
    k = np.full(3, 1.0 / 3.0)
    return sep_filter(x, k, k, mode)


def filter2d(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate every channel with one odd-sized 2-D `kernel` (cv2.filter2D semantics).

    Large kernels go through the FFT (as OpenCV does past 11x11)."""
    kernel = kernel.to(dtype=x.dtype, device=x.device)
    kh, kw = kernel.shape
    B, C, H, W = x.shape
    xp = pad2d(x, kh // 2, kh // 2, kw // 2, kw // 2, mode)
    if kh * kw <= 121:
        y = F.conv2d(xp.reshape(B * C, 1, *xp.shape[-2:]), kernel.view(1, 1, kh, kw))
        return y.reshape(B, C, H, W)
    return _fft_correlate_valid(xp, kernel.expand(B, kh, kw))


@lru_cache(maxsize=256)
def fft_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (sizes the FFT handles fastest)."""
    best = 1 << max(int(n - 1).bit_length(), 0)
    p5 = 1
    while p5 < 2 * n:
        p35 = p5
        while p35 < 2 * n:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


_SIMD_BLOCK = 64  # a multiple of every CPU's vector loop stride for complex64/128 (AVX-512: 2 x 8)


def _complex_mul_exact(a: Tensor, b: Tensor) -> Tensor:
    """a * b in real arithmetic (broadcasting): the same value for an element wherever it sits."""
    ar, ai = torch.view_as_real(a).unbind(-1)
    br, bi = torch.view_as_real(b).unbind(-1)
    return torch.complex(ar * br - ai * bi, ar * bi + ai * br)


def _fft_correlate_valid(xp: Tensor, kernels: Tensor) -> Tensor:
    """Valid correlation of padded images ``xp`` (B, C, Hp, Wp) with per-image kernels (B, kh, kw).

    Circular convolution at any length >= Hp reproduces the valid part of the linear one.

    Exactness per image: torch's complex multiply rounds differently in its vectorised loop
    and its scalar tail, so an image's spectrum must not straddle the two.  With one intra-op
    thread (as `corrupt` runs) that holds when each image plane's length is a multiple of the
    vector stride: the FFT height is rounded up to make it so where that costs little, and
    otherwise the product is done in real arithmetic."""
    B, C, Hp, Wp = xp.shape
    kh, kw = kernels.shape[-2:]
    Lh, Lw = fft_length(Hp), fft_length(Wp)
    Lf = Lw // 2 + 1
    if (Lh * Lf) % _SIMD_BLOCK:
        aligned = -(-Hp // _SIMD_BLOCK) * _SIMD_BLOCK
        if aligned <= 1.25 * Lh:
            Lh = aligned
    ctype = torch.float64 if xp.dtype == torch.float64 else torch.float32
    kf = torch.flip(kernels, dims=(-2, -1)).to(ctype)
    Xf = torch.fft.rfft2(xp.to(ctype), s=(Lh, Lw))
    Kf = torch.fft.rfft2(kf, s=(Lh, Lw)).unsqueeze(1)
    prod = Xf * Kf if (Lh * Lf) % _SIMD_BLOCK == 0 else _complex_mul_exact(Xf, Kf)
    y = torch.fft.irfft(torch.fft.ifft(prod, dim=-2), n=Lw, dim=-1)
    return y[..., kh - 1:Hp, kw - 1:Wp].to(xp.dtype)


def per_image_filter2d(x: Tensor, kernels: Tensor, mode: str) -> Tensor:
    """Correlate image b (all channels) with its own odd-sized kernel ``kernels[b]``."""
    kh, kw = kernels.shape[-2:]
    xp = pad2d(x, kh // 2, kh // 2, kw // 2, kw // 2, mode)
    return _fft_correlate_valid(xp, kernels.to(x.dtype))


def cv2_gaussian_kernel1d(ksize: int, sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel for sigma > 0."""
    t = np.arange(ksize) - (ksize - 1) / 2.0
    k = np.exp(-(t ** 2) / (2.0 * sigma * sigma))
    return k / k.sum()


# --------------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------------
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as cv2.COLOR_RGB2GRAY and JPEG


def rgb_to_gray(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) BT.601 luma."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


# --------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def pil_resample_matrix(in_size: int, out_size: int, kind: str) -> np.ndarray:
    """(out, in) matrix of PIL's 1-D resampling weights for ``Image.resize``.

    kind 'box': Pillow's Resample.c with the box filter (support 0.5, scaled by the reduction
    factor; an input pixel counts fully if its centre lies in the output pixel's box).
    kind 'nearest': Pillow's nearest neighbour, source ``floor((i + 0.5) * in / out)``.
    """
    m = np.zeros((out_size, in_size))
    scale = in_size / out_size
    if kind == "nearest":
        src = np.minimum(np.floor((np.arange(out_size) + 0.5) * scale).astype(int), in_size - 1)
        m[np.arange(out_size), src] = 1.0
        return m
    if kind != "box":
        raise ValueError(kind)
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    for xx in range(out_size):  # builds a small matrix once per size pair (cached), not per pixel of an image
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        t = (np.arange(xmin, xmax) - center + 0.5) / filterscale
        w = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        if w.sum() == 0:  # degenerate rounding; fall back to the nearest pixel
            w[np.argmin(np.abs(t))] = 1.0
        m[xx, xmin:xmax] = w / w.sum()
    return m


@lru_cache(maxsize=256)
def _spans(m_bytes: bytes, shape: tuple) -> Optional[tuple]:
    """If every row of a resampling matrix averages one contiguous run of inputs with equal
    weights (PIL's BOX and NEAREST always do), return the runs' (starts, ends)."""
    m = np.frombuffer(m_bytes, dtype=np.float64).reshape(shape)
    starts, ends = [], []
    for row in m:  # once per (size pair), cached
        nz = np.flatnonzero(row)
        if nz.size == 0 or nz[-1] - nz[0] + 1 != nz.size or not np.allclose(row[nz], row[nz[0]]):
            return None
        starts.append(int(nz[0]))
        ends.append(int(nz[-1]) + 1)
    return np.array(starts), np.array(ends)


def _resample_dim(x: Tensor, m: np.ndarray, dim: int) -> Tensor:
    spans = _spans(np.ascontiguousarray(m, dtype=np.float64).tobytes(), m.shape)
    if spans is None:
        M = torch.as_tensor(m, dtype=x.dtype, device=x.device)
        return torch.matmul(M, x) if dim == -2 else torch.matmul(x, M.t())
    starts, ends = spans
    lengths = ends - starts
    H, W = x.shape[-2:]
    # rows: select whole rows of a (N, H, W) view; columns: select along the last axis of an
    # (N, W) view -- both are plain gathers of contiguous memory, far faster than a cumsum
    v = x.reshape(-1, H, W) if dim == -2 else x.reshape(-1, W)
    n_in = H if dim == -2 else W
    out = None
    for t in range(int(lengths.max())):  # <= the reduction factor rounded up (a few)
        part = v.index_select(1, torch.as_tensor(np.minimum(starts + t, n_in - 1), device=x.device))
        if (lengths <= t).any():  # runs shorter than t + 1 get nothing from this step
            keep = torch.as_tensor((lengths > t).astype(np.float64), dtype=x.dtype, device=x.device)
            part = part * (keep.view(-1, 1) if dim == -2 else keep)
        out = part if out is None else out.add_(part)
    if (lengths > 1).any():  # the mean of each run
        n = torch.as_tensor(lengths, dtype=x.dtype, device=x.device)
        out = out.div_(n.view(-1, 1) if dim == -2 else n)
    shape = x.shape[:-2] + ((len(starts), W) if dim == -2 else (H, len(starts)))
    return out.view(shape)


def resample_separable(x: Tensor, mh: np.ndarray, mw: np.ndarray) -> Tensor:
    """Apply (out_h, in_h) and (out_w, in_w) resampling matrices to `x` (..., H, W); box and
    nearest matrices go through index selection and sums of runs instead of products."""
    return _resample_dim(_resample_dim(x, mh, -2), mw, -1)


def scipy_zoom_linear(x: Tensor, out_h: int, out_w: int) -> Tensor:
    """scipy.ndimage.zoom(order=1) of the spatial dims to the given size (corner-aligned grid)."""
    if x.shape[-2:] == (out_h, out_w):
        return x
    return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=True)


def clipped_zoom(x: Tensor, factor: float, trim: str) -> Tensor:
    """Zoom into the centre of every image by `factor` (> = 1).

    The central ``ceil(H / factor)`` x ``ceil(W / factor)`` crop is zoomed (bilinear, corners
    aligned, output side ``round(side * factor)`` as scipy.ndimage.zoom) and cut back to H x W:
    trim='top-left' keeps the first H rows / W columns (imagecorruptions), 'center' the middle
    ones (make_cifar_c.py), 'none' returns the zoomed crop untrimmed.
    """
    H, W = x.shape[-2:]
    ch, cw = int(math.ceil(H / float(factor))), int(math.ceil(W / float(factor)))
    top, left = (H - ch) // 2, (W - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    zh, zw = int(round(ch * factor)), int(round(cw * factor))
    z = scipy_zoom_linear(crop, zh, zw)
    if trim == "none":
        return z
    if trim == "top-left":
        return z[..., :H, :W]
    if trim == "center":
        th, tw = (zh - H) // 2, (zw - W) // 2
        return z[..., th:th + H, tw:tw + W]
    raise ValueError(trim)


# --------------------------------------------------------------------------------------------
# motion (line) blur
# --------------------------------------------------------------------------------------------
def line_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor, border_break: bool) -> Tensor:
    """ImageMagick's MotionBlurImage, as re-implemented by imagecorruptions, batched.

    Output pixel = sum_i k_i * x(y + oy_i, x + ox_i) over ``i = 0 .. 2*radius`` with one-sided
    Gaussian weights ``k_i ~ exp(-i^2 / 2 sigma^2)`` (normalised), offsets
    ``o_i = ceil(i * (sin a, cos a) - 0.5)`` along each image's angle `a`, and edge pixels
    replicated beyond the border.  With `border_break` (imagecorruptions), the sum stops at the
    first offset that reaches past the image, without renormalising -- as the reference's
    ``break`` does.  Each image gets its own sparse kernel: applied by one batched FFT for
    small images, as a sum of shifted views for large ones.
    """
    B, C, H, W = x.shape
    width = int(2 * math.ceil(radius) + 1) if radius > 0 else 3
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i ** 2) / (2.0 * sigma * sigma))
    k = k / k.sum()
    a = torch.deg2rad(angles_deg.detach().to("cpu", torch.float64)).view(B, 1)
    oy = torch.ceil(i.view(1, -1) * torch.sin(a) - 0.5).long()  # (B, width)
    ox = torch.ceil(i.view(1, -1) * torch.cos(a) - 0.5).long()
    w = k.view(1, -1).expand(B, -1).clone()
    if border_break:
        bad = (oy.abs() >= H) | (ox.abs() >= W)
        w[bad.cumsum(1) > 0] = 0.0
    used = w > 0
    oy, ox = oy * used, ox * used  # dropped taps (weight 0) point at the centre
    if H * W < 4096:
        # small images: batched FFTs, each image with its own sparse kernel.  The kernel size (and
        # so the FFT length and its rounding) follows the image's own reach, rounded up to a
        # multiple of 4, never the batch's: an image's result does not depend on its batch.
        reach = torch.maximum(oy.abs().amax(1), ox.abs().amax(1)).clamp_min(1)
        bucket = (reach + 3) // 4 * 4
        out = torch.empty_like(x)
        for R in bucket.unique().tolist():  # a few sizes
            sel = (bucket == R).nonzero().flatten()
            n = sel.numel()
            ker = torch.zeros(n, 2 * R + 1, 2 * R + 1, dtype=torch.float64)
            bidx = torch.arange(n).view(n, 1).expand(n, width)
            ker.index_put_((bidx.reshape(-1), (oy[sel] + R).reshape(-1), (ox[sel] + R).reshape(-1)),
                           w[sel].reshape(-1), accumulate=True)
            idx = sel.to(x.device)
            out[idx] = per_image_filter2d(x[idx], ker.to(device=x.device, dtype=x.dtype), "nearest")
        return out
    R = max(int(max(oy.abs().max().item(), ox.abs().max().item())), 1)
    # large images: shifted views added in place (a loop over images x taps, <= 2*radius+1 taps)
    xp = pad2d(x, R, R, R, R, "nearest")
    out = torch.zeros_like(x)
    oy_l, ox_l, w_l, n_l = oy.tolist(), ox.tolist(), w.tolist(), used.sum(1).tolist()
    for b in range(B):
        ob, xb = out[b], xp[b]
        for t in range(int(n_l[b])):
            y0, x0 = R + oy_l[b][t], R + ox_l[b][t]
            ob.add_(xb[:, y0:y0 + H, x0:x0 + W], alpha=w_l[b][t])
    return out


# --------------------------------------------------------------------------------------------
# plasma fractal (fog, procedural frost)
# --------------------------------------------------------------------------------------------
def plasma_fractal(batch: int, mapsize: int, wibble_decay: float, rng: RNG) -> Tensor:
    """Diamond-square height maps on a torus, one per image, each rescaled to [0, 1].

    The construction of the reference's ``plasma_fractal`` (itself after FLHerne/mapgen): the
    first level perturbs by ``wibble * U(-wibble, wibble)`` with ``wibble = 100``, and every
    level divides wibble by `wibble_decay`.  Runs in float64 like the reference; returns
    (batch, mapsize, mapsize) on the RNG's device.  The loop is over the log2(mapsize) levels.
    """
    if mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    dev = rng.device
    dt = f64(dev)
    m = torch.zeros(batch, mapsize, mapsize, dtype=dt, device=dev)
    step, wibble = mapsize, 100.0

    def jitter(t: Tensor) -> Tensor:
        return t / 4 + wibble * rng.uniform(-wibble, wibble, *t.shape, dtype=dt)

    while step >= 2:
        half = step // 2
        # squares: centre of each square = mean of its four corners + jitter
        corners = m[:, 0::step, 0::step]
        s = corners + corners.roll(-1, 1)
        s = s + s.roll(-1, 2)
        m[:, half::step, half::step] = jitter(s)
        # diamonds: edge midpoints = mean of the two adjacent corners and the two adjacent centres
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        top = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        m[:, 0::step, half::step] = jitter(top)
        left = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        m[:, half::step, 0::step] = jitter(left)
        step //= 2
        wibble /= wibble_decay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-300)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 2 ** (int(n) - 1).bit_length()
