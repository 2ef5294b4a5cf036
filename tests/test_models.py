"""Model sources: a user's file with checkpoints in every common layout, safe loading, TorchScript,
torch.export, our own checkpoints, torchvision through the hub cache, RobustBench from a local zoo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from robustness.errors import UserError
from robustness.models import ModelOptions, create_model, save_checkpoint, state_dict_sha256

ARCHS = Path(__file__).resolve().parents[1] / "robustness" / "archs.py"


def _net() -> torch.nn.Module:
    from robustness.archs import build_arch
    torch.manual_seed(0)
    return build_arch("digits-cnn", num_classes=10, in_channels=1).eval()


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "module_prefix", "nested_prefix"])
def test_file_factory_loads_every_common_layout(tmp_path, layout):
    net = _net()
    sd = net.state_dict()
    blob = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd, "optimizer": {}},
            "module_prefix": {f"module.{k}": v for k, v in sd.items()},
            "nested_prefix": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 90.0}}[layout]
    ckpt = tmp_path / "w.pt"
    torch.save(blob, ckpt)
    loaded = create_model(f"{ARCHS}:DigitsCNN", ModelOptions(weights=str(ckpt), mean=(0.5,), std=(0.25,)))
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), net((x - 0.5) / 0.25), atol=1e-6)
    assert loaded.info.weights_sha256 == state_dict_sha256(sd)


def test_weights_that_do_not_fit_are_explained(tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, ckpt)
    with pytest.raises(UserError, match="do not fit"):
        create_model(f"{ARCHS}:DigitsCNN", ModelOptions(weights=str(ckpt)))


class Pickled(torch.nn.Module):
    pass


def test_arbitrary_pickles_are_refused_unless_opted_in(tmp_path):
    ckpt = tmp_path / "pickled.pt"
    torch.save({"state_dict": _net().state_dict(), "args": Pickled()}, ckpt)
    with pytest.raises(UserError, match="unsafe-load"):
        create_model(f"{ARCHS}:DigitsCNN", ModelOptions(weights=str(ckpt)))
    loaded = create_model(f"{ARCHS}:DigitsCNN", ModelOptions(weights=str(ckpt), allow_unsafe=True))
    assert loaded.info.weights_sha256 == state_dict_sha256(_net())


def test_torchscript_and_export_archives(tmp_path, cli):
    net = _net()
    ts = tmp_path / "model_ts.pt"
    torch.jit.save(torch.jit.script(net), str(ts))
    ex = tmp_path / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 8, 8),), dynamic_shapes={"x": {0: batch}}), str(ex))
    x = torch.rand(3, 1, 8, 8)
    for path, source in ((ts, "torchscript"), (ex, "export")):
        loaded = create_model(str(path))
        assert loaded.info.source == source
        with torch.no_grad():
            assert torch.allclose(loaded.module(x), net(x), atol=1e-5)
    res = cli("run", "--model", ts, "--dataset", "digits", "--attack", "fgsm", "--eps", "0.1", "--n-examples", "40",
              "--db", tmp_path / "r.db")
    assert res.code == 0, res


def test_own_checkpoint_needs_no_other_flag(tmp_path, cli):
    net = _net()
    ckpt = tmp_path / "ours.pt"
    save_checkpoint(ckpt, arch="digits-cnn", arch_kwargs={"num_classes": 10, "in_channels": 1},
                    state_dict=net.state_dict(),
                    meta={"num_classes": 10, "classes": [str(i) for i in range(10)], "mean": [0.5], "std": [0.5],
                          "input_size": [1, 8, 8], "dataset": "digits"})
    loaded = create_model(str(ckpt))
    assert loaded.info.dataset == "digits" and loaded.info.mean == (0.5,)
    res = cli("run", "--model", ckpt, "--attack", "fgsm", "--eps", "0.1", "--n-examples", "30", "--db",
              tmp_path / "r.db")
    assert res.code == 0, res
    assert "ours.pt" in res.out and "digits" in res.out


def test_builtin_models_are_our_checkpoints():
    for name in ("digits-cnn", "digits-cnn-at"):
        m = create_model(name)
        assert m.info.source == "builtin" and m.info.dataset == "digits" and m.info.num_classes == 10
        assert len(m.info.weights_sha256) == 64


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # any download attempt fails at once, as it does offline
    def offline(*a, **k):
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_torchvision_missing_weights_offline_say_how(hub):
    with pytest.raises(UserError) as e:
        create_model("squeezenet1_1")
    msg = str(e.value)
    assert "squeezenet1_1-b8a52dc0.pth" in msg and "--weights" in msg and "\n" not in msg


def test_torchvision_from_hub_cache_and_from_weights(hub, tmp_path):
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None).eval()
    hub.mkdir(parents=True)
    torch.save(net.state_dict(), hub / "squeezenet1_1-b8a52dc0.pth")
    loaded = create_model("squeezenet1_1")
    info = loaded.info
    assert info.preprocess.resize == 256 and info.preprocess.crop == 224 and info.num_classes == 1000
    assert info.mean == pytest.approx((0.485, 0.456, 0.406)) and info.dataset == "imagenet"
    x = torch.rand(2, 3, 224, 224)
    ref = net((x - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), ref, atol=1e-4)
    own = tmp_path / "mine.pth"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, own)
    via_flag = create_model("squeezenet1_1", ModelOptions(weights=str(own)))
    assert via_flag.info.weights_sha256 == info.weights_sha256


def test_torchvision_model_runs_on_an_image_folder_with_its_preprocessing(hub, tmp_path, cli):
    """ImageNet-sized pipeline end to end: 1000 class folders are too many for a test, so a 1000-class
    array file stands in; the weights' resize/crop turn 64 px images into 224 px inputs."""
    import numpy as np
    import torchvision
    torch.manual_seed(0)
    hub.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), hub / "squeezenet1_1-b8a52dc0.pth")
    x = (np.random.RandomState(0).rand(3, 64, 80, 3) * 255).astype(np.uint8)
    y = np.array([0, 5, 999])
    np.savez(tmp_path / "imgs.npz", x=x, y=y)
    res = cli("run", "--model", "squeezenet1_1", "--dataset", tmp_path / "imgs.npz", "--attack", "fgsm",
              "--eps", "4/255", "--db", tmp_path / "r.db")
    assert res.code == 0, res


@pytest.mark.slow
def test_robustbench_model_from_a_local_zoo(tmp_path, cli):
    """A RobustBench entry loaded through the package's own loader from a local model dir (random
    weights in the zoo's file layout: the download path is not reachable offline)."""
    from attacks._compat import import_robustbench
    pytest.importorskip("pyautoattack")
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    entry = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]["Wong2020Fast"]
    torch.manual_seed(0)
    net = entry["model"]()
    zoo = tmp_path / "zoo" / "cifar10" / "Linf"
    zoo.mkdir(parents=True)
    torch.save(net.state_dict(), zoo / "Wong2020Fast.pt")
    loaded = create_model("robustbench:Wong2020Fast", ModelOptions(weights=str(tmp_path / "zoo")))
    assert loaded.info.num_classes == 10 and loaded.info.source == "robustbench"
    assert loaded.info.weights_sha256 == state_dict_sha256(net)
    missing = cli("run", "--model", "robustbench:Carmon2019Unlabeled", "--weights", tmp_path / "zoo",
                  "--db", tmp_path / "r.db")
    assert missing.code == 2 and "Carmon2019Unlabeled" in missing.err
    unknown = cli("run", "--model", "robustbench:Wong2020Fas", "--db", tmp_path / "r.db")
    assert unknown.code == 2 and "did you mean" in unknown.err


@pytest.mark.parametrize("spec", ["no-such-model", "missing.pt", "missing/arch.py:f", "nets/none.pt2", " "])
def test_check_model_refuses_what_create_model_refuses_without_loading(spec):
    """A suite validates every entry up front with check_model: same verdict, same message."""
    from robustness.models import check_model
    with pytest.raises(UserError) as checked:
        check_model(spec)
    with pytest.raises(UserError) as created:
        create_model(spec)
    assert str(checked.value) == str(created.value)


def test_check_model_accepts_what_loads(tmp_path):
    from robustness.models import check_model
    for spec in ("digits-cnn", f"{ARCHS}:DigitsCNN", "resnet18"):
        check_model(spec)
    with pytest.raises(UserError, match="checkpoint not found"):
        check_model(f"{ARCHS}:DigitsCNN", ModelOptions(weights=str(tmp_path / "none.pt")))
