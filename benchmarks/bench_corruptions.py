"""Throughput of attacks.corruptions vs the reference ``imagecorruptions``, per corruption, at 32 px
(CIFAR-10 test images) and 224 px (the same images, bicubic-upsampled), in one process.

    .venv/bin/python benchmarks/bench_corruptions.py [--n-ref 24] [--n-ours 100] [--sizes 32,224]

Both sides get the same images and the ImageNet-C severity tables, with severities cycling
1..5 so every severity weighs equally.  The reference runs image by image as it must (uint8 HWC
numpy in, numpy out), on `--n-ref` images, once; ours runs on a batch of `--n-ours` images
(float NCHW tensor), once per severity, `--repeats` times, and the median is reported (the first
call, which builds cached kernels, is not timed).  Conversions to and from tensors are
included on our side.  "the 15 together" divides the summed per-image times of the 15 standard
corruptions: the throughput of a job that applies all of them.

The reference needs two compatibility patches with current numpy / scikit-image (the same as
tests/test_corruptions.py): ``skimage.filters.gaussian(multichannel=True)`` -> ``channel_axis=-1``
and ``np.float_`` -> ``np.float64``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attacks.corruptions import CORRUPTIONS, STANDARD, corrupt, frost_source  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_images(n: int, size: int) -> np.ndarray:
    from PIL import Image
    shared = Path(os.environ.get("ROBUST_BENCH_SHARED", ROOT.parent / "shared" / "data"))
    test = shared / "cifar10" / "test"
    if not test.is_dir():
        sys.exit(f"CIFAR-10 test images not found at {test}; set ROBUST_BENCH_SHARED")
    paths = sorted((p for c in CLASSES for p in (test / c).glob("*.png")), key=lambda p: int(p.stem))[:n]
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size != 32:
                im = im.resize((size, size), Image.BICUBIC)
            out.append(np.asarray(im))
    return np.stack(out)


def patch_reference():
    """Import imagecorruptions with the two compatibility patches, or return None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import imagecorruptions
            import imagecorruptions.corruptions as icc
    except ImportError:
        return None
    from skimage.filters import gaussian as sk_gaussian

    def gaussian(image, sigma=1, multichannel=None, **kw):
        if multichannel:
            kw["channel_axis"] = -1
        return sk_gaussian(image, sigma, **kw)

    icc.gaussian = gaussian
    np.float_ = np.float64
    return imagecorruptions


def time_reference(ic, imgs: np.ndarray, name: str) -> float:
    """Seconds per image."""
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        for i, a in enumerate(imgs):
            ic.corrupt(a, severity=i % 5 + 1, corruption_name=name)
        return (time.perf_counter() - t) / len(imgs)


def time_ours(imgs: np.ndarray, name: str, repeats: int) -> float:
    """Seconds per image (median over repeats of a pass over severities 1..5)."""
    g = torch.Generator().manual_seed(0)

    def one_pass():
        for sev in range(1, 6):
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255)
            y = corrupt(x, name, sev, generator=g, preset="imagenet-c")
            (y * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    corrupt(torch.from_numpy(imgs[:2]).permute(0, 3, 1, 2).float() / 255, name, 3, generator=g, preset="imagenet-c")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        one_pass()
        times.append((time.perf_counter() - t) / (5 * len(imgs)))
    return statistics.median(times)


def _rate(seconds_per_image: float) -> str:
    r = 1.0 / seconds_per_image
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-ref", type=int, default=24, help="images for the reference, per corruption and size")
    ap.add_argument("--n-ours", type=int, default=100, help="batch size for ours")
    ap.add_argument("--n-ours-224", type=int, default=40, help="batch size for ours at 224 px")
    ap.add_argument("--sizes", default="32,224")
    ap.add_argument("--names", default=",".join(CORRUPTIONS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    ic = patch_reference()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  python {platform.python_version()}  torch {torch.__version__} "
          f"threads {torch.get_num_threads()}  cpus {os.cpu_count()}  load {os.getloadavg()[0]:.2f}  "
          f"frost source: {frost_source()}  reference: {'imagecorruptions' if ic else 'not installed'}")
    for size in (int(s) for s in args.sizes.split(",")):
        n_ours = args.n_ours if size <= 64 else args.n_ours_224
        imgs = load_images(max(n_ours, args.n_ref), size)
        print(f"\n## {size} px  (reference: {args.n_ref} images, ours: batches of {n_ours})\n")
        print(f"| corruption | reference img/s | ours img/s | speed-up |")
        print(f"|---|---:|---:|---:|")
        tot_ref = tot_ours = 0.0
        for name in names:
            t_ours = time_ours(imgs[:n_ours], name, args.repeats)
            t_ref = time_reference(ic, imgs[:args.n_ref], name) if ic else float("nan")
            if name in STANDARD:
                tot_ref += t_ref
                tot_ours += t_ours
            print(f"| {name} | {_rate(t_ref)} | {_rate(t_ours)} | {t_ref / t_ours:.1f}x |", flush=True)
        if all(n in names for n in STANDARD):
            print(f"| **the 15 together** | {_rate(tot_ref)} | {_rate(tot_ours)} | **{tot_ref / tot_ours:.1f}x** |")
    print(f"\n# load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
