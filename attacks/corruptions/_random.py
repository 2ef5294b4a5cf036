"""Per-example random numbers for `corrupt(..., seeds=...)`.

Every value a corruption draws for image *i* is a pure function of (seed *i*, the corruption,
the position of the draw in the corruption's sequence of draws, the element's index inside the
image): a counter-based generator, so image *i*'s corruption is the same whatever batch it is
in, in whatever order, on whatever device.

Bits: ``h = mix(j * k1 + k2)`` for element index *j*: a keyed Weyl sequence (``k1`` odd)
through ``lowbias32`` (C. Wellons' 32-bit integer mixer, a bijection), with the 32-bit keys
``k1, k2`` of (seed, corruption, draw) from SplitMix64.  Everything is int32 arithmetic with
wrap-around, which torch has on every device, and which is exact: the bits are identical on
CPU and GPU.

Values: uniforms take the top 24 bits; normals are Box-Muller pairs (tails to 5.6 standard
deviations, a 24-bit uniform's smallest value).  Elementwise float kernels give the same value
for an element wherever it sits in the tensor (torch's vectorised loops and their scalar tails
agree; tests/test_corruption_seeds.py checks it for every corruption), so image i's values do
not depend on the batch.  Another device computes ``log``/``sin``/``cos`` with its own rounding:
the same draws up to float rounding there.

Poisson draws (shot noise) use one `torch.Generator` per image, seeded from the same keys:
exact per image, but not the same numbers on another device.
"""
from __future__ import annotations

import math
import zlib
from typing import Optional, Sequence

import numpy as np
import torch

from ._ops import f64

Tensor = torch.Tensor

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed int32
_CHUNK = 1 << 18  # hashes per chunk


def _mix32_(x: Tensor) -> Tensor:
    """lowbias32 in place on an int32 tensor (shifts made logical by masking)."""
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
    x.mul_(_M1)
    x.bitwise_xor_((x >> 15).bitwise_and_(0x1FFFF))
    x.mul_(_M2)
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
    return x


_U64 = np.uint64


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _as_int32(u: np.ndarray) -> np.ndarray:
    return (u & _U64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)


def check_seeds(seeds, n: int) -> np.ndarray:
    """`seeds` as a uint64 array of n per-image seeds (any int64 values), or a ValueError."""
    if isinstance(seeds, torch.Tensor):
        if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool:
            raise ValueError(f"seeds must be integers, got dtype {seeds.dtype}")
        arr = seeds.detach().to("cpu", torch.int64).numpy()
    else:
        arr = np.asarray(seeds)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"seeds must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"seeds must be a 1-D tensor with one seed per image ({n}), got shape {tuple(arr.shape)}")
    return arr.astype(np.int64).view(np.uint64)


def _top24(h: Tensor) -> Tensor:
    """The top 24 bits of int32 hashes as exact float32 integers 0 .. 2^24 - 1."""
    return (h >> 8).bitwise_and_(0xFFFFFF).to(torch.float32)


def _normal_from_bits(h: Tensor, out: Tensor, std: float) -> None:
    """Box-Muller: `out` (b, n) gets std * (r cos t, r sin t) of the pairs (h[:, j], h[:, half + j])."""
    n, half = out.shape[1], h.shape[1] // 2
    r = _top24(h[:, :half]).add_(0.5).mul_(2.0 ** -24).log_().mul_(-2.0).sqrt_()   # u1 in (0, 1)
    if std != 1.0:
        r.mul_(std)
    theta = _top24(h[:, half:]).mul_(2.0 * math.pi * 2.0 ** -24)
    torch.mul(torch.cos(theta), r, out=out[:, :half])
    torch.mul(theta.sin_()[:, :n - half], r[:, :n - half], out=out[:, half:])


# --------------------------------------------------------------------------------------------
class SeededRNG:
    """Drop-in for `_ops.RNG` with one seed per image: every draw has the batch as its first
    dimension, and image i's values depend on (seed i, salt, draw number, element) only."""

    def __init__(self, seeds: np.ndarray, device: torch.device, dtype: torch.dtype, salt: str = ""):
        self.seeds = seeds
        self.device = device
        self.dtype = dtype
        self._salt = _U64(zlib.crc32(salt.encode()))
        self._draws = 0

    # ---- keys ------------------------------------------------------------------------------
    def _keys(self) -> np.ndarray:
        """One 64-bit key per image for the next draw: SplitMix64 of the draw number added to a
        SplitMix64 of (seed, salt) -- so (seed s, draw d) and (seed s', draw d') never share a key
        by construction, as ``s ^ d == s' ^ d'`` would."""
        self._draws += 1
        with np.errstate(over="ignore"):
            base = _splitmix64(self.seeds ^ (self._salt * _U64(0xD1B54A32D192ED03)))
            return _splitmix64(base + _U64(self._draws) * _U64(0x9E3779B97F4A7C15))

    def _fill(self, shape: Sequence[int], values, dtype: torch.dtype, hashes: Optional[int] = None) -> Tensor:
        """A tensor of `shape` = (B, ...), n = prod(...) values per image, computed in chunks of
        images that stay in cache: ``values(h, out)`` writes the (b, n) values of a chunk from
        its (b, `hashes`) int32 hashes (`hashes` defaults to n)."""
        shape = tuple(int(s) for s in shape)
        B = shape[0]
        if B != len(self.seeds):
            raise RuntimeError(f"per-example draw of shape {shape} for a batch of {len(self.seeds)}")
        n = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        z = self._keys()
        k1 = torch.as_tensor(_as_int32(z | _U64(1)), device=self.device).view(B, 1)   # odd: j * k1 is a bijection
        k2 = torch.as_tensor(_as_int32(z >> _U64(32)), device=self.device).view(B, 1)
        hashes = n if hashes is None else int(hashes)
        j = torch.arange(hashes, dtype=torch.int32, device=self.device)
        out = torch.empty(B, n, dtype=dtype, device=self.device)
        step = max(1, _CHUNK // max(hashes, 1))
        for b0 in range(0, B, step):  # chunks of whole images: results do not depend on the chunking
            b1 = min(B, b0 + step)
            values(_mix32_((j * k1[b0:b1]).add_(k2[b0:b1])), out[b0:b1])
        return out.view(shape)

    def _cast(self, t: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
        dtype = dtype or self.dtype
        if dtype == torch.float64 and f64(self.device) != torch.float64:
            dtype = torch.float32
        return t.to(dtype)

    # ---- the RNG interface -------------------------------------------------------------------
    def rand(self, *shape: int, dtype: Optional[torch.dtype] = None) -> Tensor:
        def values(h, out):
            torch.mul(_top24(h), 2.0 ** -24, out=out)   # [0, 1), 24 bits
        return self._cast(self._fill(shape, values, torch.float32), dtype)

    def uniform(self, low: float, high: float, *shape: int, dtype: Optional[torch.dtype] = None) -> Tensor:
        return self.rand(*shape, dtype=dtype) * (high - low) + low

    def normal(self, mean: float, std: float, *shape: int, dtype: Optional[torch.dtype] = None) -> Tensor:
        n = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        half = (n + 1) // 2

        z = self._fill((shape[0], n), lambda h, out: _normal_from_bits(h, out, float(std)), torch.float32,
                       hashes=2 * half)
        z = self._cast(z, dtype).reshape(shape)
        return z + mean if mean else z

    def randint(self, low: int, high: int, *shape: int) -> Tensor:
        """Integers in [low, high) by multiply-shift of the hash's top bits (bias below
        range / 2^24 for ranges up to 128, range / 2^16 up to 2^15)."""
        r = int(high) - int(low)
        if r <= 0:
            raise ValueError(f"empty range [{low}, {high})")
        if r <= 128:
            def values(h, out):
                out.copy_((h >> 8).bitwise_and_(0xFFFFFF).mul_(r) >> 24)
        elif r <= 1 << 15:
            def values(h, out):
                out.copy_((h >> 16).bitwise_and_(0xFFFF).mul_(r) >> 16)
        else:
            def values(h, out):
                out.copy_(((h.to(torch.int64) & 0xFFFFFFFF) * r) >> 32)
        return self._fill(shape, values, torch.int64) + int(low)

    def poisson(self, rates: Tensor) -> Tensor:
        """torch.poisson per image, each with its own generator seeded from the image's key."""
        z = self._keys()
        seeds = (z >> _U64(1)).astype(np.int64).tolist()
        out = torch.empty_like(rates)
        dev = rates.device
        for i, s in enumerate(seeds):  # one generator per image: no shared stream
            g = torch.Generator(device=dev).manual_seed(int(s))
            out[i] = torch.poisson(rates[i], generator=g)
        return out
