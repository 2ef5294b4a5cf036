"""Batch norm folded into convolutions (robustness/fold.py): the same function up to float rounding on real
images, the folded weights equal to torch's own `fuse_conv_bn_eval`, and every layout where folding would
change the function left alone."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from attacks import PGD
from robustness.fold import fold_batchnorm

from .conftest import CIFAR_TEST, RESNET20, need

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def resnet20_cifar():
    need(RESNET20), need(CIFAR_TEST)
    from robustness.archs import resnet20
    from robustness.data import load_dataset
    from robustness.models import Normalized, extract_state_dict, load_file
    from robustness.models.checkpoints import load_into
    net = resnet20()
    load_into(net, extract_state_dict(load_file(RESNET20), str(RESNET20)), str(RESNET20))
    model = Normalized(net, MEAN, STD).eval()
    data = load_dataset(str(CIFAR_TEST)).dataset
    xs, ys = zip(*(data[i] for i in range(200)))
    return model, torch.stack(xs), torch.tensor(ys)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a fold that ignores one of them shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def test_resnet20_folded_logits_match_on_real_images(resnet20_cifar):
    model, x, y = resnet20_cifar
    before = copy.deepcopy(model.state_dict())
    f = fold_batchnorm(model)
    assert len(f.folded) == 19 and f.reason is None   # conv1/bn1 + 9 blocks x 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in f.module.modules())
    with torch.no_grad():
        a, b = model(x), f.module(x)
    # float32 rounding of 19 re-associated layers: measured 1.1e-5 on logits of size ~10
    assert (a - b).abs().max().item() < 1e-4 * (1 + a.abs().max().item())
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert (a.argmax(1) == y).float().mean() > 0.85   # the real model, not a broken load
    for k, v in model.state_dict().items():           # the original is untouched
        assert torch.equal(v, before[k]), k
    assert model.training is False and f.module.training is False


def test_folded_weights_equal_torch_fuse_conv_bn_eval():
    """torch.nn.utils.fusion.fuse_conv_bn_eval (torch's own implementation) as the reference."""
    torch.manual_seed(0)
    for conv, bn in ((nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)),
                     (nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8)),
                     (nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)),
                     (nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4))):
        seq = _randomize_bn(nn.Sequential(conv, bn))
        f = fold_batchnorm(seq)
        assert f.folded == ("1",)
        ref = fuse_conv_bn_eval(copy.deepcopy(conv).eval(), copy.deepcopy(bn).eval())
        ours = f.module.get_submodule("0")
        assert torch.allclose(ours.weight, ref.weight, rtol=1e-6, atol=1e-7)
        assert torch.allclose(ours.bias, ref.bias, rtol=1e-6, atol=1e-6)
        x = torch.rand(5, conv.in_channels, *([9, 9] if isinstance(conv, nn.Conv2d) else [9]))
        with torch.no_grad():
            assert torch.allclose(f.module(x), seq(x), rtol=1e-5, atol=1e-5)


class _ReadTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        z = self.conv(x)
        return (self.bn(z) + z).flatten(1)


class _BnFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(self.bn(x)).flatten(1)


class _SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(F.relu(self.conv(x)))).flatten(1)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        z = self.bn(self.conv(x))
        if z.sum() > 0:          # torch.fx cannot trace this
            z = z * 2
        return z.flatten(1)


def _hooked():
    m = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Flatten())
    m[0].register_forward_hook(lambda mod, inp, out: out * 1.5)   # a traced copy would lose it
    return m


LEFT_ALONE = {
    "conv output also read elsewhere": _ReadTwice,
    "batch norm before the convolution": _BnFirst,
    "convolution called twice": _SharedConv,
    "data-dependent control flow": _DataDependent,
    "a forward hook": _hooked,
    "no running statistics": lambda: nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3, track_running_stats=False),
                                                   nn.Flatten()),
    "batch norm after a linear layer": lambda: nn.Sequential(nn.Flatten(), nn.Linear(27 * 4, 6), nn.BatchNorm1d(6)),
    "transposed convolution": lambda: nn.Sequential(nn.ConvTranspose2d(3, 3, 3), nn.BatchNorm2d(3), nn.Flatten()),
}


@pytest.mark.parametrize("case", sorted(LEFT_ALONE))
def test_non_foldable_layouts_are_left_alone(case):
    torch.manual_seed(1)
    model = _randomize_bn(LEFT_ALONE[case]())
    x = torch.rand(4, 3, 6, 6)
    with torch.no_grad():
        want = model(x)
    f = fold_batchnorm(model)
    assert f.module is model and f.folded == () and f.reason
    with torch.no_grad():
        assert torch.equal(f.module(x), want)


def test_train_mode_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    f = fold_batchnorm(model)
    assert f.module is model and "train mode" in f.reason
    assert model.training   # not switched to eval either


def test_only_the_foldable_pair_is_folded():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            z = self.b(F.relu(self.bn_a(self.a(x))))
            return (self.bn_b(z) + z).flatten(1)     # bn_b's conv output is read twice
    torch.manual_seed(2)
    model = _randomize_bn(Mixed())
    f = fold_batchnorm(model)
    assert f.folded == ("bn_a",)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(f.module(x), model(x), rtol=1e-5, atol=1e-5)
    assert isinstance(model.bn_a, nn.BatchNorm2d) and model.a.bias is not None   # original untouched


def test_pgd_outcomes_on_the_folded_model_match_the_original(resnet20_cifar):
    """PGD-10 at 1/255 on 100 real images, scored on the original model: folding is the same function up
    to rounding, not bit for bit, so an example at the decision boundary can flip either way (bench_pgd
    on 1,000 images: 1 differed, as with compile; 0 with channels_last). Allowed here: 2 of 100."""
    model, x, y = resnet20_cifar
    x, y = x[:100], y[:100]
    folded = fold_batchnorm(model).module
    seeds = torch.arange(100)
    a = PGD(steps=10)(model, x, y, 1 / 255, seeds=seeds)
    b = PGD(steps=10)(folded, x, y, 1 / 255, seeds=seeds)
    with torch.no_grad():
        broken_a = (model(a.x_adv).argmax(1) != y).numpy()
        broken_b = (model(b.x_adv).argmax(1) != y).numpy()
    assert 10 < broken_a.sum() < 100
    assert int((broken_a != broken_b).sum()) <= 2


def test_compile_falls_back_to_eager_where_it_fails(monkeypatch):
    from robustness.fold import CompiledOrEager
    from robustness.preparation import prepare_module

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler found\nmore")
    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()))
    wrapped = prepare_module(model, torch.device("cpu"), "fp32", False, compile_model=True)
    assert isinstance(wrapped, CompiledOrEager)
    x = torch.rand(5, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(wrapped(x), model(x))
    assert wrapped.fallback == "RuntimeError: no C++ compiler found"
    assert sorted(wrapped.state_dict()) == sorted("module." + k for k in model.state_dict())


@pytest.mark.slow
def test_compiled_model_matches_eager_forward_and_input_gradient():
    from robustness.fold import CompiledOrEager
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(64, 3)))
    wrapped = CompiledOrEager(model)
    for n in (6, 5):   # a second batch size: dynamic shapes
        x = torch.rand(n, 3, 6, 6, requires_grad=True)
        a = wrapped(x)
        ga, = torch.autograd.grad(a.sum(), x)
        b = model(x)
        gb, = torch.autograd.grad(b.sum(), x)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5) and torch.allclose(ga, gb, rtol=1e-5, atol=1e-5)
    if wrapped.fallback is not None:
        pytest.skip(f"torch.compile does not work here: {wrapped.fallback}")
    assert wrapped.__dict__["_compiled"] is not None   # the comparisons above were of the compiled module


@pytest.mark.slow
def test_run_with_compile_gives_the_eager_numbers(cli, tmp_path):
    """`run --compile` through the whole engine (model checks, cascade, re-check) on the built-in digits
    model: it runs, and its per-example results equal the eager run's up to float rounding (1 in 100)."""
    common = ("run", "--model", "digits-cnn", "--attack", "pgd", "--eps", "0.1", "--n-examples", "100",
              "--device", "cpu", "--db", tmp_path / "r.db")
    docs = []
    for extra in ((), ("--compile",)):
        out = tmp_path / f"run{len(extra)}.json"
        r = cli(*common, "--json", out, *extra)
        assert r.code == 0, r.err[-2000:]
        docs.append(json.loads(out.read_text()))
    rows = [next(r for r in d["results"] if r["attack"] == "pgd")["per_example"] for d in docs]
    assert rows[0]["index"] == rows[1]["index"] and 0 < sum(rows[0]["correct"]) < 100
    assert sum(a != b for a, b in zip(rows[0]["correct"], rows[1]["correct"])) <= 1
