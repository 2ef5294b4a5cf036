"""Common corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019): the 15 ImageNet-C / CIFAR-10-C corruptions and the 4
extra ("validation") ones, as batched torch functions.

    >>> from attacks.corruptions import corrupt, CORRUPTIONS
    >>> y = corrupt(x, "fog", 3, generator=torch.Generator().manual_seed(0))

`x` is a float NCHW tensor in [0, 1] with 3 channels (RGB) or 1 channel (grey), on any device.
The result has the same shape, dtype and device, clamped to [0, 1].  Work is done in float32
(float64 inputs stay float64).

Grey images: channel-wise corruptions (noise, blurs, fog, contrast, elastic, pixelate, ...) run
on the single channel directly; the colour ones (brightness, saturate, jpeg_compression, snow,
frost, spatter) see the grey channel repeated to RGB and return the BT.601 luma of their RGB
result.

Randomness: with ``seeds`` (one integer per image) every random value of image i comes from
seed i alone (counter-based, see `_random`): ``corrupt(x, ..., seeds=s)[i]`` equals
``corrupt(x[i:i+1], ..., seeds=s[i:i+1])[0]``, so results do not depend on the batch size, the
order or the sharding.  Otherwise random corruptions draw from `generator` (on the generator's
device, then moved to the images' device, so a seeded generator gives the same output on CPU and
GPU) or, when it is None, from torch's global RNG on the images' device; then the draw for image
i depends on the whole batch (one draw per call), not on i alone.

Parameters: `preset` "imagenet-c" (imagecorruptions' tables) or "cifar10-c" (make_cifar_c.py's);
None picks "cifar10-c" for images whose larger side is at most 64 px, else "imagenet-c".  See
`PRESETS` and docs/CORRUPTIONS.md for the tables, their sources and every deviation from the
reference implementations.
"""
from __future__ import annotations

import contextlib
import difflib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import blur, digital, frost as _frost, jpeg, noise, weather
from ._ops import RNG, rgb_to_gray
from ._random import SeededRNG, check_seeds
from ._tables import CIFAR10_C, CIFAR_MAX_SIDE, IMAGENET_C, PRESETS, Preset
from .frost import frost_provenance, frost_source, set_frost_source

Tensor = torch.Tensor

STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
            "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS = STANDARD + EXTRA
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class CorruptionSpec:
    name: str
    fn: Callable
    family: str        # noise | blur | weather | digital
    random: bool       # draws random numbers
    rgb: bool          # needs three channels (grey inputs go through RGB and back)


def _spec(fn, family, random, rgb=False):
    return CorruptionSpec(fn.__name__, fn, family, random, rgb)


SPECS = {s.name: s for s in (
    _spec(noise.gaussian_noise, "noise", True),
    _spec(noise.shot_noise, "noise", True),
    _spec(noise.impulse_noise, "noise", True),
    _spec(blur.defocus_blur, "blur", False),
    _spec(blur.glass_blur, "blur", True),
    _spec(blur.motion_blur, "blur", True),
    _spec(blur.zoom_blur, "blur", False),
    _spec(weather.snow, "weather", True, rgb=True),
    _spec(_frost.frost, "weather", True, rgb=True),
    _spec(weather.fog, "weather", True),
    _spec(digital.brightness, "digital", False, rgb=True),
    _spec(digital.contrast, "digital", False),
    _spec(digital.elastic_transform, "digital", True),
    _spec(digital.pixelate, "digital", False),
    _spec(jpeg.jpeg_compression, "digital", False, rgb=True),
    _spec(noise.speckle_noise, "noise", True),
    _spec(blur.gaussian_blur, "blur", False),
    _spec(weather.spatter, "weather", True, rgb=True),
    _spec(digital.saturate, "digital", False, rgb=True),
)}
assert tuple(SPECS) == CORRUPTIONS

DETERMINISTIC = tuple(n for n in CORRUPTIONS if not SPECS[n].random)


def check_name(name: str) -> str:
    if name in SPECS:
        return name
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key in SPECS:
        return key
    close = difflib.get_close_matches(key, CORRUPTIONS, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown corruption {name!r}{hint} Known: {', '.join(CORRUPTIONS)}")


def check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int):
        try:
            as_int = int(severity)
        except (TypeError, ValueError):
            as_int = None
        if as_int is None or as_int != severity or isinstance(severity, bool):
            raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
        severity = as_int
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity}")
    return severity


def resolve_preset(preset: Optional[str], height: int, width: int) -> Preset:
    """The parameter table for an image of this size (see the module docstring)."""
    if preset is None:
        return CIFAR10_C if max(height, width) <= CIFAR_MAX_SIDE else IMAGENET_C
    if isinstance(preset, Preset):
        return preset
    key = str(preset).strip().lower().replace("_", "-")
    aliases = {"imagenet": "imagenet-c", "imagenetc": "imagenet-c", "cifar10": "cifar10-c", "cifar-10-c": "cifar10-c",
               "cifar10c": "cifar10-c", "cifar": "cifar10-c"}
    key = aliases.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)} or None (by image size)")
    return PRESETS[key]


def provenance(name: str) -> dict:
    """Facts about the environment that change corruption `name`'s numbers, to record with every
    result of it: for frost, which frost layer was used (`frost.frost_provenance`); empty for
    the others, which depend on nothing but their code and the parameter table."""
    return frost_provenance() if check_name(name) == "frost" else {}


@contextlib.contextmanager
def _intra_op_threads(n: Optional[int]):
    """torch's intra-op thread count set to `n` for the duration (None: unchanged).

    One thread on CPU: a corruption is a chain of many small element-wise passes, where an
    OpenMP team costs more than it saves (on a loaded machine, far more: each pass waits for the
    slowest thread), and where a split of one tensor across threads can round a reduction or an
    interpolation differently (so the result would depend on the thread count)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_CHUNK_VALUES = 1 << 19   # values per chunk: a few MB per temporary, cache- and allocator-friendly
_MIN_CHUNK_VALUES = 1 << 15  # below this a chunk's Python overhead outweighs its work
_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(workers, thread_name_prefix="corrupt"), workers
        return _pool


def _run_chunks(job: Callable[[int, int], None], xw: Tensor, splittable: bool) -> None:
    """Run ``job(b0, b1)`` over the batch.

    On CPU, every op runs with one intra-op thread (`_intra_op_threads`), and the parallelism is
    over images instead: the batch is cut into chunks of about `_CHUNK_VALUES` values (at least
    two per worker, for balance when some cores are busy), run by `torch.get_num_threads()`
    Python threads -- torch releases the GIL inside each op, so they share no barrier and a
    stalled thread delays only its own chunk.  Chunks are exact: with per-image draws an image's
    result does not depend on its batch (tests/test_corruption_seeds.py).  A batch-wide draw
    (``generator=`` with a random corruption) runs as one chunk on one thread.  Other devices:
    one chunk, as before."""
    B = xw.shape[0]
    if xw.device.type != "cpu":
        job(0, B)
        return
    workers = torch.get_num_threads()
    per_image = max(1, xw[0].numel())
    n = 1
    if splittable:
        n = max(-(-B * per_image // _CHUNK_VALUES), 2 * workers if workers > 1 else 1)
        n = max(1, min(n, B, B * per_image // _MIN_CHUNK_VALUES))
    bounds = [round(i * B / n) for i in range(n + 1)]
    chunks = [(b0, b1) for b0, b1 in zip(bounds, bounds[1:]) if b1 > b0]
    with _intra_op_threads(1):
        if workers <= 1 or len(chunks) == 1:
            for b0, b1 in chunks:
                job(b0, b1)
            return
        futures = [_executor(workers).submit(job, b0, b1) for b0, b1 in chunks]
        for f in futures:
            f.result()


def corrupt(x: Tensor, name: str, severity: int, *, generator: Optional[torch.Generator] = None,
            seeds=None, preset: Optional[str] = None) -> Tensor:
    """Apply corruption `name` at `severity` (1..5) to a batch of images (NCHW, [0, 1]).

    A single image (CHW) is accepted too and returned as CHW (with one seed, if `seeds`).
    `seeds`: a 1-D integer tensor (or sequence), one seed per image, for results that do not
    depend on the batch; exclusive with `generator`.
    """
    name = check_name(name)
    severity = check_severity(severity)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected float pixels in [0, 1], got dtype {x.dtype} (convert uint8 with x.float() / 255)")
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW batch (or one CHW image), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got {x.shape[1]}")
    if seeds is not None and generator is not None:
        raise ValueError("pass either seeds (one per image) or generator, not both")
    seed_arr = check_seeds(seeds, x.shape[0]) if seeds is not None else None
    if x.shape[0] == 0:
        return x.squeeze(0) if single else x.clone()
    spec = SPECS[name]
    table = resolve_preset(preset, x.shape[-2], x.shape[-1])
    work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x.detach().to(work_dtype)
    grey = xw.shape[1] == 1
    if grey and spec.rgb:
        xw = xw.expand(-1, 3, -1, -1)
    param = table.param(name, severity)
    if seed_arr is not None:
        def rng_for(b0: int, b1: int):
            return SeededRNG(seed_arr[b0:b1], xw.device, work_dtype, salt=name)
    else:
        shared = RNG(generator, xw.device, work_dtype)

        def rng_for(b0: int, b1: int):
            return shared
    # images are independent when the draws are per image (or there are none): then the batch can
    # be cut into chunks, run on a few threads (see `_run_chunks`); one batch-wide draw cannot be
    splittable = seed_arr is not None or not spec.random
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)

    def job(b0: int, b1: int) -> None:
        out = spec.fn(xw[b0:b1].contiguous(), param, rng_for(b0, b1), table)
        if grey and spec.rgb:
            out = rgb_to_gray(out)
        y[b0:b1] = out.clamp(0, 1)

    _run_chunks(job, xw, splittable)
    return y.squeeze(0) if single else y


__all__ = ["CORRUPTIONS", "STANDARD", "EXTRA", "SEVERITIES", "PRESETS", "DETERMINISTIC", "SPECS", "CorruptionSpec",
           "Preset", "corrupt", "check_name", "check_severity", "resolve_preset", "provenance", "frost_source",
           "frost_provenance", "set_frost_source"]
