"""Corruption error, mCE and relative mCE (Hendrycks & Dietterich 2019, section 3).

CE_c = sum_s E_{s,c} / sum_s E^base_{s,c};  mCE = mean_c CE_c over the 15 standard corruptions;
relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean).
The ImageNet-C baseline is AlexNet: its top-1 error per corruption and severity as published with the
benchmark (the same table timm ships as `imagenetc_alexnet_error_rates_list`); its clean top-1 error is
43.48% (torchvision's AlexNet, 56.52% accuracy). Any stored run can serve as the baseline instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
            "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression")

ALEXNET_IMAGENET_C: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
ALEXNET_CLEAN_ERROR = 0.4348


@dataclass(frozen=True)
class Baseline:
    name: str
    errors: Mapping[str, Mapping[int, float]]   # corruption -> severity -> top-1 error
    clean_error: float | None


ALEXNET = Baseline("AlexNet (ImageNet-C)",
                   {c: dict(zip(range(1, 6), e)) for c, e in ALEXNET_IMAGENET_C.items()}, ALEXNET_CLEAN_ERROR)


@dataclass(frozen=True)
class CorruptionSummary:
    mean_accuracy: float                       # over every corruption and severity evaluated
    clean_accuracy: float
    ce: dict[str, float] = field(default_factory=dict)            # corruption error vs the baseline
    relative_ce: dict[str, float] = field(default_factory=dict)
    mce: float | None = None                   # over the standard corruptions the baseline covers
    relative_mce: float | None = None
    baseline: str | None = None

    def to_json(self) -> dict:
        return {"mean_accuracy": self.mean_accuracy, "clean_accuracy": self.clean_accuracy, "ce": self.ce,
                "relative_ce": self.relative_ce, "mce": self.mce, "relative_mce": self.relative_mce,
                "baseline": self.baseline}


def summarize_corruptions(accuracy: Mapping[str, Mapping[int, float]], clean_accuracy: float,
                          baseline: Baseline | None = None) -> CorruptionSummary:
    """`accuracy`: corruption -> severity -> top-1 accuracy. CE needs the baseline at the same severities."""
    cells = [a for sev in accuracy.values() for a in sev.values()]
    mean = sum(cells) / len(cells) if cells else float("nan")
    if baseline is None:
        return CorruptionSummary(mean, clean_accuracy)
    ce, rel = {}, {}
    clean_err = 1 - clean_accuracy
    for c, sev in accuracy.items():
        base = baseline.errors.get(c)
        if not base or not all(s in base for s in sev):
            continue
        err = {s: 1 - a for s, a in sev.items()}
        denom = sum(base[s] for s in sev)
        if denom > 0:
            ce[c] = sum(err.values()) / denom
        if baseline.clean_error is not None:
            rden = sum(base[s] - baseline.clean_error for s in sev)
            if rden > 0:
                rel[c] = sum(e - clean_err for e in err.values()) / rden
    std = [c for c in STANDARD if c in ce]
    mce = sum(ce[c] for c in std) / len(std) if std else None
    rstd = [c for c in STANDARD if c in rel]
    rmce = sum(rel[c] for c in rstd) / len(rstd) if rstd else None
    return CorruptionSummary(mean, clean_accuracy, ce, rel, mce, rmce, baseline.name)


def baseline_from_accuracy(name: str, accuracy: Mapping[str, Mapping[int, float]],
                           clean_accuracy: float | None) -> Baseline:
    """Any evaluated model as the reference (e.g. `--baseline RUN`)."""
    return Baseline(name, {c: {s: 1 - a for s, a in sev.items()} for c, sev in accuracy.items()},
                    None if clean_accuracy is None else 1 - clean_accuracy)
