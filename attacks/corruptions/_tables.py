"""Severity tables of the two common-corruption benchmarks (Hendrycks & Dietterich, ICLR 2019).

Two presets, each a mapping ``corruption name -> five per-severity parameters`` plus a few
*variant* switches for the places where the two reference scripts run a different algorithm,
not only different numbers.

Sources (numbers copied as facts; no code copied):

* ``"imagenet-c"`` -- the ``imagecorruptions`` package, version 1.1.2
  (github.com/bethgelab/imagecorruptions, ``imagecorruptions/corruptions.py``), which packages
  Hendrycks' ``ImageNet-C/create_c/make_imagenet_c.py`` for images of any size >= 32 px and
  re-implements ImageMagick's motion blur in numpy.  It is this project's reference
  implementation (a dev dependency) and the test suite compares against it.
* ``"cifar10-c"`` -- Hendrycks' ``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness
  (read at commit ca360085d57889288c4143fddd8a707bbcae01bd), the script that generated the
  published CIFAR-10-C (and CIFAR-100-C) arrays.

Parameter meanings are documented per corruption in the implementing modules and in
docs/CORRUPTIONS.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class Preset:
    """One parameter table: ``params[name][severity - 1]`` and algorithm ``variants``."""
    name: str
    source: str
    params: Mapping[str, tuple]
    variants: Mapping[str, Any] = field(default_factory=dict)

    def param(self, name: str, severity: int):
        return self.params[name][severity - 1]


_IMAGENET_C = {
    # --- noise -------------------------------------------------------------------------------
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),                 # std of additive N(0, c)
    "shot_noise": (60, 25, 12, 5, 3),                                 # photons per unit intensity
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),                  # salt&pepper amount
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),                    # std of multiplicative N(0, c)
    # --- blur --------------------------------------------------------------------------------
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # (disk radius, alias blur)
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),  # (sigma, max delta, iterations)
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),    # (radius, sigma)
    "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02),   # numpy.arange(start, stop, step)
                  (1, 1.26, 0.02), (1, 1.31, 0.03)),
    "gaussian_blur": (1, 2, 3, 4, 6),                                  # sigma
    # --- weather -----------------------------------------------------------------------------
    # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
    "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),  # (image weight, frost weight)
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),      # (fog strength, wibble decay)
    # (loc, scale, sigma, threshold, intensity, mode 0=water/1=mud)
    "spatter": ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0),
                (0.65, 0.3, 2, 0.68, 0.5, 0), (0.65, 0.3, 1, 0.65, 1.5, 1),
                (0.67, 0.4, 1, 0.65, 1.5, 1)),
    # --- digital -----------------------------------------------------------------------------
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),                           # added to HSV value
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),                            # factor around the channel mean
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),     # HSV saturation * a + b
    "elastic_transform": (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12),  # alpha
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),                            # downscale factor
    "jpeg_compression": (25, 18, 15, 10, 7),                           # JPEG quality
}

_CIFAR10_C = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    # (alpha, sigma, affine jitter) as fractions of the image side (make_cifar_c: IMSIZE * (...))
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}

IMAGENET_C = Preset(
    name="imagenet-c",
    source="imagecorruptions 1.1.2 (bethgelab), after hendrycks/robustness make_imagenet_c.py",
    params=MappingProxyType(_IMAGENET_C),
    variants=MappingProxyType({
        # imagecorruptions' clipped_zoom keeps the top-left H x W of the zoomed centre crop
        "zoom_trim": "top-left",
        # pixelate: PIL BOX down, NEAREST up
        "pixelate_up": "nearest",
        # elastic: imagecorruptions' version (smoothed uniform displacement field, no affine)
        "elastic": "imagecorruptions",
        # frost photograph scale: fit the image, then x1.1
        "frost_scale": "fit",
        # fog: fractal side = next power of two of the largest image side
        "fog_mapsize": "auto",
        # motion blur stops adding shifted copies once a shift exceeds the image (imagecorruptions)
        "motion_border_break": True,
    }),
)

CIFAR10_C = Preset(
    name="cifar10-c",
    source="hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py @ ca360085d57889288c4143fddd8a707bbcae01bd",
    params=MappingProxyType(_CIFAR10_C),
    variants=MappingProxyType({
        "zoom_trim": "center",          # make_cifar_c's clipped_zoom trims the zoomed crop centrally
        "pixelate_up": "box",           # PIL BOX down and BOX up
        "elastic": "cifar",             # random affine (cv2.warpAffine) + elastic field
        "frost_scale": 0.2,             # frost photographs resized by 0.2, then cropped
        "fog_mapsize": 32,              # plasma_fractal(mapsize=32)
        "motion_border_break": False,   # ImageMagick: edge pixels, no break
    }),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (IMAGENET_C, CIFAR10_C)})

# The size rule of `corrupt(..., preset=None)`: images whose larger side is at most this many
# pixels get the CIFAR-10-C table, larger ones the ImageNet-C table.
CIFAR_MAX_SIDE = 64
