"""Throughput of attacks.corruptions vs the reference ``imagecorruptions``, per corruption, at 32 px
(CIFAR-10 test images) and 224 px (the same images, bicubic-upsampled), side by side in one process.

    .venv/bin/python benchmarks/bench_corruptions.py [--n-ref 12] [--n-ours 256] [--n-ours-224 64]
                                                     [--sizes 32,224] [--repeats 3] [--names a,b]

Like for like:

* the same images (the reference runs on the first `--n-ref` of the images ours gets), the
  ImageNet-C severity tables, severities cycling 1..5 so each weighs the same;
* both sides warmed up (one untimed call per corruption: the reference reads its frost
  photographs and fills its caches, ours builds its kernels) and timed as the median of
  `--repeats` passes, interleaved (reference, ours, reference, ours, ...), so both see the same
  machine load;
* two thread settings, each applied to both sides: "1 thread" (torch.set_num_threads(1);
  cv2.setNumThreads(1) and BLAS limited to 1 thread via threadpoolctl for the reference) and
  "default" (whatever the libraries choose by themselves: torch's default intra-op count, which
  ours turns into that many worker threads over chunks of the batch, cv2's and BLAS's defaults);
* uint8 HWC in, uint8 HWC out on both sides: ours includes the conversion to a float NCHW tensor
  and back.  The reference runs image by image as it must; ours on a batch, with one seed per
  image (`seeds=`, as the engine runs it).  A last column times ours at 1 thread with one
  `generator` per batch instead: the cost of per-example randomness.

"the 15 together" divides the summed per-image times of the 15 standard corruptions: the
throughput of a job that applies all of them.  Wall-clock times; the load average is printed.

The reference needs two compatibility patches with current numpy / scikit-image (the same as
tests/test_corruptions.py): ``skimage.filters.gaussian(multichannel=True)`` -> ``channel_axis=-1``
and ``np.float_`` -> ``np.float64``.
"""
from __future__ import annotations

import argparse
import contextlib
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

from attacks.corruptions import CORRUPTIONS, STANDARD, corrupt, provenance  # noqa: E402

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


@contextlib.contextmanager
def thread_setting(one: bool):
    """Both sides on one thread (torch, OpenCV, BLAS), or everything at its own default."""
    if not one:
        yield
        return
    old_torch = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import cv2
        old_cv2 = cv2.getNumThreads()
        cv2.setNumThreads(1)
    except ImportError:
        cv2 = None
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=1)
    except ImportError:
        limits = None
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        if cv2 is not None:
            cv2.setNumThreads(old_cv2)
        if limits is not None:
            limits.restore_original_limits()


def run_reference(ic, imgs: np.ndarray, name: str) -> float:
    """Seconds per image for one pass."""
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        for i, a in enumerate(imgs):
            ic.corrupt(a, severity=i % 5 + 1, corruption_name=name)
        return (time.perf_counter() - t) / len(imgs)


def run_ours(imgs: np.ndarray, name: str, randomness: str = "seeds") -> float:
    """Seconds per image for one pass over severities 1..5 (conversions included)."""
    n = len(imgs)
    t = time.perf_counter()
    for sev in range(1, 6):
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255)
        if randomness == "seeds":
            y = corrupt(x, name, sev, seeds=torch.arange(n) + 1000 * sev, preset="imagenet-c")
        else:
            y = corrupt(x, name, sev, generator=torch.Generator().manual_seed(sev), preset="imagenet-c")
        (y * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return (time.perf_counter() - t) / (5 * n)


def _rate(seconds_per_image: float) -> str:
    if not np.isfinite(seconds_per_image):
        return "n/a"
    r = 1.0 / seconds_per_image
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-ref", type=int, default=12, help="images for the reference, per corruption and size")
    ap.add_argument("--n-ours", type=int, default=256, help="batch size for ours at 32 px")
    ap.add_argument("--n-ours-224", type=int, default=64, help="batch size for ours at larger sizes")
    ap.add_argument("--sizes", default="32,224")
    ap.add_argument("--names", default=",".join(CORRUPTIONS))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    ic = patch_reference()
    if ic is None:
        print("imagecorruptions is not installed: reference columns are n/a", file=sys.stderr)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  python {platform.python_version()}  torch {torch.__version__}  "
          f"default torch threads {torch.get_num_threads()}  cpus {os.cpu_count()}  "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}  frost: {provenance('frost')}")
    print(f"# command: {' '.join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:]))}")
    for size in (int(s) for s in args.sizes.split(",")):
        n_ours = args.n_ours if size <= 64 else args.n_ours_224
        imgs = load_images(max(n_ours, args.n_ref), size)
        ours_imgs, ref_imgs = imgs[:n_ours], imgs[:args.n_ref]
        load0 = os.getloadavg()
        print(f"\n## {size} px  (reference: the first {args.n_ref} images, one at a time; ours: batches of {n_ours}; "
              f"median of {args.repeats}; load average at start {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f})\n")
        print("| corruption | ref img/s (1 thread) | ours img/s (1 thread) | ratio | ref img/s (default) | "
              "ours img/s (default) | ratio | ours, one generator per batch (1 thread) | per-example cost |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        tot = {k: 0.0 for k in ("r1", "o1", "rd", "od", "g1")}
        for name in names:
            for one in (True, False):  # warm-up, both sides, both settings
                with thread_setting(one):
                    if ic:
                        run_reference(ic, ref_imgs[:2], name)
                    run_ours(ours_imgs[: min(8, n_ours)], name)
            t = {k: [] for k in tot}
            for _ in range(args.repeats):
                with thread_setting(True):
                    t["r1"].append(run_reference(ic, ref_imgs, name) if ic else float("nan"))
                    t["o1"].append(run_ours(ours_imgs, name))
                    t["g1"].append(run_ours(ours_imgs, name, "generator"))
                with thread_setting(False):
                    t["rd"].append(run_reference(ic, ref_imgs, name) if ic else float("nan"))
                    t["od"].append(run_ours(ours_imgs, name))
            m = {k: statistics.median(v) for k, v in t.items()}
            if name in STANDARD:
                for k in tot:
                    tot[k] += m[k]
            print(f"| {name} | {_rate(m['r1'])} | {_rate(m['o1'])} | {m['r1'] / m['o1']:.1f}x | {_rate(m['rd'])} | "
                  f"{_rate(m['od'])} | {m['rd'] / m['od']:.1f}x | {_rate(m['g1'])} | {m['o1'] / m['g1']:.2f} |", flush=True)
        if all(n in names for n in STANDARD):
            print(f"| **the 15 together** | {_rate(tot['r1'])} | {_rate(tot['o1'])} | **{tot['r1'] / tot['o1']:.1f}x** | "
                  f"{_rate(tot['rd'])} | {_rate(tot['od'])} | **{tot['rd'] / tot['od']:.1f}x** | {_rate(tot['g1'])} | "
                  f"{tot['o1'] / tot['g1']:.2f} |")
        load1 = os.getloadavg()
        print(f"\nload average at end {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
