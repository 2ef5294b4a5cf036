"""Per-example randomness of the corruptions: ``corrupt(x, ..., seeds=s)[i]`` depends on image i
and seed i only -- not on the batch it is in, its position, the batch order or the thread count
-- for every corruption and severity; and the per-example random numbers have the distributions
they claim (checked against scipy.stats).  Fidelity of the seeded corruptions to the reference
``imagecorruptions`` is in tests/test_corruptions.py (`test_random_statistics` runs both modes).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.corruptions import CORRUPTIONS, DETERMINISTIC, corrupt, frost_source, set_frost_source
from attacks.corruptions._random import SeededRNG, check_seeds

RANDOM = tuple(n for n in CORRUPTIONS if n not in DETERMINISTIC)

# seeds of any int64 value, negative and near the ends included
SEEDS = torch.tensor([0, 1, -1, 2 ** 62 + 12345, -(2 ** 63), 2 ** 63 - 1, 987654321], dtype=torch.int64)


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images (a blurred noise field plus a gradient), so that edge detectors,
    thresholds and histograms see image-like content rather than white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h // 4 + 2, w // 4 + 2, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w)
    return (0.7 * x + 0.3 * ramp).clamp(0, 1)


def _check_batch_invariance(x: torch.Tensor, name: str, preset: str, severities=range(1, 6)) -> None:
    n = x.shape[0]
    seeds = SEEDS[:n]
    perm = torch.tensor([(3 * i + 1) % n for i in range(n)]) if n > 1 else torch.zeros(1, dtype=torch.long)
    for sev in severities:
        y = corrupt(x, name, sev, seeds=seeds, preset=preset)
        for i in range(n):
            yi = corrupt(x[i:i + 1], name, sev, seeds=seeds[i:i + 1], preset=preset)
            assert torch.equal(y[i:i + 1], yi), \
                f"{name} sev {sev}: image {i} alone differs from it in the batch (max {(y[i] - yi[0]).abs().max():.3g})"
        yp = corrupt(x[perm], name, sev, seeds=seeds[perm], preset=preset)
        assert torch.equal(yp, y[perm]), f"{name} sev {sev}: permuting the batch (with its seeds) changed the outputs"
        # two halves, as two shards would see them
        h = n // 2
        if h:
            parts = torch.cat([corrupt(x[:h], name, sev, seeds=seeds[:h], preset=preset),
                               corrupt(x[h:], name, sev, seeds=seeds[h:], preset=preset)])
            assert torch.equal(parts, y), f"{name} sev {sev}: two shards differ from one batch"


CASES = {
    "32px-imagenet": ((5, 3, 32, 32), "imagenet-c"),
    "32px-cifar": ((5, 3, 32, 32), "cifar10-c"),
    "grey-20x27": ((3, 1, 20, 27), "imagenet-c"),
    "96x80": ((3, 3, 96, 80), "imagenet-c"),   # the large-image code paths (motion blur, separable filters)
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_image_alone_equals_image_in_batch(name, case):
    shape, preset = CASES[case]
    _check_batch_invariance(_images(*shape), name, preset)


@pytest.mark.parametrize("source", ["assets", "procedural"])
def test_frost_both_sources_batch_invariant(source):
    from attacks.corruptions import frost as frost_mod
    if source == "assets" and frost_mod.asset_dir() is None:
        pytest.skip("frost photographs (imagecorruptions) not installed")
    set_frost_source(source)
    try:
        assert frost_source() == source
        _check_batch_invariance(_images(5, 3, 32, 32), "frost", "imagenet-c")
        _check_batch_invariance(_images(5, 3, 32, 32), "frost", "cifar10-c")
    finally:
        set_frost_source(None)


def test_single_image_with_one_seed():
    x = _images(3, 3, 32, 32)
    y = corrupt(x, "snow", 4, seeds=SEEDS[:3])
    assert torch.equal(corrupt(x[1], "snow", 4, seeds=SEEDS[1:2]), y[1])
    assert torch.equal(corrupt(x[1], "snow", 4, seeds=[int(SEEDS[1])]), y[1])  # a list works too


def test_224px_batch_invariance():
    """ImageNet size, where per-op work crosses torch's parallel grain size (one tensor of several
    images is split across threads, one image is not)."""
    x = _images(3, 3, 224, 224)
    for name in CORRUPTIONS:
        _check_batch_invariance(x, name, "imagenet-c", severities=(1, 3, 5))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_thread_count_does_not_change_the_result(name):
    """With 2 threads the batch is cut into chunks run on 2 worker threads (and, were intra-op
    threads used, tensors above torch's grain size would be split across them); the result must
    not depend on it.  A batch-wide draw (generator=) must not be cut."""
    x = _images(4, 3, 96, 96)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append([corrupt(x, name, sev, seeds=SEEDS[:4]) for sev in (1, 3, 5)]
                        + [corrupt(x, name, 3, generator=torch.Generator().manual_seed(0))])
            assert torch.get_num_threads() == threads, "corrupt did not restore torch's thread count"
    finally:
        torch.set_num_threads(old)
    for what, a, b in zip(("seeds, sev 1", "seeds, sev 3", "seeds, sev 5", "generator"), *outs):
        assert torch.equal(a, b), f"{name} ({what}): 1 and 2 threads differ"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_seeds_select_the_randomness(name):
    x = _images(4, 3, 32, 32).repeat(2, 1, 1, 1)          # every image twice
    s = torch.tensor([5, 6, 7, 8, 5, 6, 7, 8])
    y = corrupt(x, name, 3, seeds=s)
    assert torch.equal(y[:4], y[4:]), "same image, same seed, different result"
    assert torch.equal(corrupt(x, name, 3, seeds=s), y), "not reproducible"
    if name in RANDOM:
        other = corrupt(x, name, 3, seeds=s + 100)
        assert not torch.equal(other[:4], y[:4]), "the seed is ignored"
        diff = corrupt(x, name, 3, seeds=torch.tensor([5, 6, 7, 8, 9, 10, 11, 12]))
        assert not torch.equal(diff[4:], y[4:]), "different seeds, same result"
    else:
        assert torch.equal(y, corrupt(x, name, 3)), "a deterministic corruption depends on the seeds"


def test_corruptions_do_not_share_random_numbers():
    """The corruption's name is mixed into the keys: gaussian and speckle noise with the same seeds
    are not the same noise field (speckle = x * N, gaussian = N)."""
    x = torch.full((2, 3, 32, 32), 0.5)
    s = torch.tensor([1, 2])
    g = corrupt(x, "gaussian_noise", 1, seeds=s, preset="cifar10-c") - 0.5
    sp = corrupt(x, "speckle_noise", 1, seeds=s, preset="cifar10-c") - 0.5
    r = np.corrcoef(g.flatten().numpy(), sp.flatten().numpy())[0, 1]
    assert abs(r) < 0.1, r


def test_seed_validation():
    x = torch.rand(3, 3, 16, 16)
    with pytest.raises(ValueError, match="one seed per image"):
        corrupt(x, "fog", 1, seeds=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one seed per image"):
        corrupt(x, "fog", 1, seeds=torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="integers"):
        corrupt(x, "fog", 1, seeds=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="not both"):
        corrupt(x, "fog", 1, seeds=torch.tensor([1, 2, 3]), generator=torch.Generator())
    assert corrupt(x[:0], "fog", 1, seeds=torch.tensor([], dtype=torch.int64)).shape == (0, 3, 16, 16)
    assert check_seeds(np.array([-1], dtype=np.int64), 1)[0] == np.uint64(2 ** 64 - 1)


# ----------------------------------------------------------------------------------------------
# the per-example random numbers themselves, against scipy.stats
# ----------------------------------------------------------------------------------------------
def _rng(n: int, salt: str = "test", step: int = 7919) -> SeededRNG:
    return SeededRNG(check_seeds(torch.arange(n) * step + 3, n), torch.device("cpu"), torch.float32, salt)


def test_uniform_and_normal_distributions():
    stats = pytest.importorskip("scipy.stats")
    r = _rng(64)
    u = r.rand(64, 3, 32, 32).flatten().double().numpy()
    z = r.normal(0.0, 1.0, 64, 3, 31, 17).flatten().double().numpy()   # odd count per image
    z2 = r.normal(2.0, 0.5, 64, 5, dtype=torch.float64)
    assert z2.dtype == torch.float64
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # moments to the precision the sample allows (n ~ 1e5)
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.std() - 1) < 5 / np.sqrt(2 * z.size)
    assert abs(stats.kurtosis(z)) < 0.05   # Gaussian tails, not a sum of a few uniforms
    assert abs(z2.mean().item() - 2.0) < 0.2 and abs(z2.std().item() - 0.5) < 0.15


def test_draws_are_independent():
    """No correlation between images, between consecutive elements, or between consecutive
    draws of the same image (e.g. the two elastic displacement fields)."""
    r = _rng(32, step=1)   # consecutive seeds, as arange(n) would give
    a = r.normal(0.0, 1.0, 32, 4096).numpy()
    b = r.normal(0.0, 1.0, 32, 4096).numpy()
    bound = 5 / np.sqrt(4096)
    for i in range(31):
        assert abs(np.corrcoef(a[i], a[i + 1])[0, 1]) < bound      # neighbouring seeds
        assert abs(np.corrcoef(a[i], b[i])[0, 1]) < bound          # consecutive draws
        assert abs(np.corrcoef(a[i + 1], b[i])[0, 1]) < bound      # neighbouring seed, next draw
        assert abs(np.corrcoef(a[i], b[i + 1])[0, 1]) < bound
    flat = a.flatten()
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5 / np.sqrt(flat.size)


def test_randint_is_uniform():
    stats = pytest.importorskip("scipy.stats")
    r = _rng(16)
    for low, high in ((-4, 4), (0, 5), (0, 1000), (0, 70000)):
        v = r.randint(low, high, 16, 8192).flatten().numpy()
        assert v.min() >= low and v.max() < high
        if high - low <= 1000:
            counts = np.bincount(v - low, minlength=high - low)
            assert stats.chisquare(counts).pvalue > 1e-3, (low, high)
        else:
            assert stats.kstest((v - low + 0.5) / (high - low), "uniform").pvalue > 1e-3


def test_poisson_per_image():
    stats = pytest.importorskip("scipy.stats")
    rates = torch.tensor([0.5, 3.0, 12.0, 60.0]).view(4, 1).expand(4, 20000).contiguous()
    k = _rng(4).poisson(rates)
    for i, lam in enumerate((0.5, 3.0, 12.0, 60.0)):
        v = k[i].numpy().astype(np.int64)
        # chi-square against the Poisson pmf, tail bins pooled
        hi = int(stats.poisson.ppf(0.999, lam))
        counts = np.bincount(np.minimum(v, hi), minlength=hi + 1)
        p = stats.poisson.pmf(np.arange(hi + 1), lam)
        p[-1] = stats.poisson.sf(hi - 1, lam)
        assert stats.chisquare(counts, p * v.size).pvalue > 1e-3, lam
    one = SeededRNG(check_seeds(torch.arange(4) * 7919 + 3, 4)[2:3], torch.device("cpu"), torch.float32, "test")
    assert torch.equal(one.poisson(rates[2:3]), k[2:3])  # image 2 alone: the same draw
