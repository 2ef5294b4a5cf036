"""Noise corruptions (Hendrycks & Dietterich 2019): Gaussian, shot (Poisson), impulse
(salt-and-pepper) and, among the four extra ones, speckle.

Reference: imagecorruptions' ``gaussian_noise``, ``shot_noise``, ``impulse_noise``
(``skimage.util.random_noise(mode='s&p')``) and ``speckle_noise``.  Same distributions, drawn
independently per pixel and channel from torch's RNG instead of numpy's.  No deviation other
than the random stream.
"""
from __future__ import annotations

import torch

from ._ops import RNG

Tensor = torch.Tensor


def gaussian_noise(x: Tensor, c: float, rng: RNG, preset) -> Tensor:
    """x + N(0, c^2)."""
    return x + rng.normal(0.0, c, *x.shape)


def shot_noise(x: Tensor, c: float, rng: RNG, preset) -> Tensor:
    """Poisson(x * c) / c: photon noise with c photons per unit intensity."""
    return rng.poisson(x * c) / c


def impulse_noise(x: Tensor, c: float, rng: RNG, preset) -> Tensor:
    """Salt and pepper: each value independently flips with probability c, to 1 or 0 with equal odds."""
    flipped = rng.rand(*x.shape) <= c
    salted = rng.rand(*x.shape) <= 0.5
    out = torch.where(flipped & salted, torch.ones_like(x), x)
    return torch.where(flipped & ~salted, torch.zeros_like(x), out)


def speckle_noise(x: Tensor, c: float, rng: RNG, preset) -> Tensor:
    """x + x * N(0, c^2): multiplicative noise."""
    return x + x * rng.normal(0.0, c, *x.shape)
