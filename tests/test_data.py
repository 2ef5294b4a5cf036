"""Data sets: torchvision loaders on local files, image folders in official order, array files, subsets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robustness.data import indices_sha256, load_dataset, select_indices
from robustness.errors import UserError

from .conftest import CIFAR_MEAN, CIFAR_STD, SHARED, need


def test_mnist_through_torchvision_from_the_shared_folder(cli, tmp_path):
    need(SHARED / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    data = load_dataset("mnist", data_dir=str(SHARED), download=False)
    assert len(data) == 10_000 and data.info.channels == 1 and data.info.num_classes == 10
    x, y = data.dataset[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1 and y == 7  # MNIST's first test digit
    train = load_dataset("mnist", data_dir=str(SHARED), split="train", download=False)
    assert len(train) == 60_000


def test_missing_named_set_offline_says_where(tmp_path, monkeypatch):
    import torchvision
    def offline(*a, **k):
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline, raising=False)
    with pytest.raises(UserError, match="--data-dir"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_image_folder_with_numbered_files_keeps_the_official_order(cifar_test):
    data = load_dataset(str(cifar_test))
    assert len(data) == 10_000 and data.info.classes[0] == "airplane" and data.info.num_classes == 10
    ds = data.dataset
    for i in (0, 1, 9999):
        path, label = ds.samples[i]
        assert int(path.rsplit("/", 1)[1].split(".")[0]) == i
    # CIFAR-10's official first test labels: cat, ship, ship, airplane, frog
    assert [ds.samples[i][1] for i in range(5)] == [3, 8, 8, 0, 6]


def test_array_files(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(10, 6, 6, 3)).astype(np.uint8)
    y = rng.randint(0, 4, size=10)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    d = load_dataset(str(tmp_path / "a.npz"))
    img, label = d.dataset[3]
    assert img.shape == (3, 6, 6) and torch.allclose(img, torch.tensor(x[3]).permute(2, 0, 1).float() / 255)
    assert label == y[3]
    xf = rng.rand(10, 3, 6, 6).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=xf, y=y)
    assert torch.allclose(load_dataset(str(tmp_path / "f.npz")).dataset[2][0], torch.tensor(xf[2]))
    # the CIFAR-10-C layout: <corruption>.npy with 5 severities x N images, labels.npy beside it
    np.save(tmp_path / "fog.npy", np.concatenate([x] * 5))
    np.save(tmp_path / "labels.npy", y)
    c = load_dataset(str(tmp_path / "fog.npy"))
    assert len(c) == 50 and c.dataset[13][1] == y[3]
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(UserError, match="'x' and 'y'"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "range.npz", x=xf * 255, y=y)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        load_dataset(str(tmp_path / "range.npz"))


def test_subsets_are_deterministic_and_recorded(cli, tmp_path):
    a = select_indices(1000, 50, "random", seed=0)
    assert np.array_equal(a, select_indices(1000, 50, "random", seed=0))
    assert not np.array_equal(a, select_indices(1000, 50, "random", seed=1))
    assert list(a) == sorted(set(a.tolist())) and len(a) == 50
    assert list(select_indices(1000, 5, "first", seed=3)) == [0, 1, 2, 3, 4]
    assert indices_sha256(a) != indices_sha256(select_indices(1000, 50, "first", 0))
    res = cli("run", "--model", "digits-cnn", "--attack", "fgsm", "--eps", "0.1", "--n-examples", "7",
              "--subset", "first", "--db", tmp_path / "r.db", "--json", tmp_path / "o.json")
    assert res.code == 0, res
    import json
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["results"][0]["per_example"]["index"] == list(range(7))


def test_digits_split_is_fixed():
    test = load_dataset("digits").dataset
    train = load_dataset("digits", split="train").dataset
    assert len(test) == 360 and len(train) == 1437
    assert float(test.x.max()) == 1.0 and test.x.shape[1:] == (1, 8, 8)
    assert int(test.y[:10].sum()) == int(load_dataset("digits").dataset.y[:10].sum())


def test_resnet20_reproduces_its_published_accuracy(cli, shared_resnet20, cifar_test, tmp_path):
    """The shared pretrained CIFAR-10 ResNet-20 through `--model file.py:factory` with our own architecture
    file: 91.73% on the 10,000 test images (published test error 8.27%)."""
    from pathlib import Path
    arch = Path(__file__).resolve().parents[1] / "robustness" / "archs.py"
    res = cli("run", "--model", f"{arch}:resnet20", "--weights", shared_resnet20, "--mean", CIFAR_MEAN,
              "--std", CIFAR_STD, "--dataset", cifar_test, "--attack", "fgsm", "--eps", "0", "--batch-size", "500",
              "--db", tmp_path / "r.db", "--json", tmp_path / "o.json")
    assert res.code == 0, res
    import json
    r = json.loads((tmp_path / "o.json").read_text())["results"][0]
    assert r["n"] == 10_000
    assert round(100 * r["clean_accuracy"], 2) == 91.73


def test_imagenet_validation_folder_in_canonical_order(tmp_path):
    """1000 WordNet-id folders (one tiny image each): classes sorted by wnid, the model's resize/crop
    applied, and a folder with the wrong number of classes refused."""
    from PIL import Image
    from robustness.models import Preprocess
    rng = np.random.RandomState(0)
    wnids = [f"n{10_000_000 + 7919 * i:08d}" for i in range(1000)]
    val = tmp_path / "val"
    for w in reversed(wnids):
        (val / w).mkdir(parents=True)
        Image.fromarray(rng.randint(0, 256, (20, 30, 3), dtype=np.uint8)).save(val / w / "ILSVRC2012_val.png")
    data = load_dataset("imagenet", data_dir=str(tmp_path), preprocess=Preprocess(resize=256, crop=224))
    assert data.info.num_classes == 1000 and list(data.info.classes) == sorted(wnids)
    x, y = data.dataset[5]
    assert x.shape == (3, 224, 224) and y == 5
    import shutil
    shutil.rmtree(val / wnids[0])
    with pytest.raises(UserError, match="999 class folders"):
        load_dataset("imagenet", data_dir=str(tmp_path))


@pytest.mark.parametrize("labels, match", [([0, 1, -1, 2], ">= 0"), ([0, 1, 3.5, 2], "whole numbers"),
                                           ([0, 1, float("nan"), 2], "whole numbers"), (["0", "1", "2", "3"], "integer")])
def test_bad_labels_are_refused_in_array_files(tmp_path, labels, match):
    x = np.random.RandomState(0).rand(4, 1, 6, 6).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.array(labels))
    with pytest.raises(UserError, match=match):
        load_dataset(str(tmp_path / "a.npz"))
    np.save(tmp_path / "imgs.npy", x)
    np.save(tmp_path / "labels.npy", np.array(labels))
    with pytest.raises(UserError, match=match):
        load_dataset(str(tmp_path / "imgs.npy"))
    np.savez(tmp_path / "ok.npz", x=x, y=np.array([0.0, 1.0, 3.0, 2.0]))   # whole floats are class indices
    assert [load_dataset(str(tmp_path / "ok.npz")).dataset[i][1] for i in range(4)] == [0, 1, 3, 2]


def test_a_torchvision_set_with_a_label_outside_its_classes_is_refused(monkeypatch):
    need(SHARED / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    import torchvision
    original = torchvision.datasets.MNIST.__init__

    def corrupt(self, *a, **k):
        original(self, *a, **k)
        self.targets = self.targets.clone()
        self.targets[5] = 10
    monkeypatch.setattr(torchvision.datasets.MNIST, "__init__", corrupt)
    with pytest.raises(UserError, match="label 10"):
        load_dataset("mnist", data_dir=str(SHARED), download=False)
