"""A data set is named by what it holds (issue 17): two image folders both called `test` are two data
sets, one folder reached by two paths is one; `--dataset-name` (CLI, RunSpec, API) names it for people."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from robustness.data import load_dataset
from robustness.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

GREY = '''
import torch
import torch.nn as nn
from robustness.archs import DigitsCNN


class Grey(nn.Module):
    """The shipped digits-cnn on RGB images: their channel mean."""

    def __init__(self):
        super().__init__()
        self.net = DigitsCNN()
        state = torch.load(r"{weights}", weights_only=True)["state_dict"]
        self.net.load_state_dict(state)

    def forward(self, x):
        return self.net(x.mean(1, keepdim=True))


def grey():
    return Grey()
'''


def export_digits(folder: Path, indices) -> None:
    """The digits test images `indices` as PNG files, folder/<class>/<index>.png."""
    from PIL import Image
    data = load_dataset("digits").dataset
    for i in indices:
        x, y = data[int(i)]
        (folder / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).save(folder / str(y) / f"{i}.png")


@pytest.fixture
def two_test_folders(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "a" / "test", tmp_path / "b" / "test"
    export_digits(a, range(0, 100))       # every class in each
    export_digits(b, range(100, 200))
    return a, b


def test_two_folders_named_test_are_two_data_sets(two_test_folders, tmp_path):
    a, b = two_test_folders
    da, db = load_dataset(str(a)), load_dataset(str(b))
    assert da.info.name.startswith("test#") and db.info.name.startswith("test#")
    assert da.info.name != db.info.name and da.info.digest != db.info.digest
    # the same images reached another way (a copy elsewhere, a trailing slash) are the same data set
    copy = tmp_path / "elsewhere" / "test"
    shutil.copytree(a, copy)
    assert load_dataset(str(copy)).info.name == da.info.name
    assert load_dataset(str(a) + "/").info.name == da.info.name
    # one changed image is another data set
    png = sorted(copy.rglob("*.png"))[0]
    png.write_bytes(png.read_bytes() + b"\0")
    assert load_dataset(str(copy)).info.name != da.info.name
    # a name of the user's replaces the folder's, the digest stays
    named = load_dataset(str(a), name="digits-png")
    assert named.info.name == "digits-png#" + da.info.digest[:8]
    assert named.info.to_json()["digest"] == da.info.digest


def test_array_files_are_named_by_content(tmp_path):
    rng = np.random.RandomState(0)
    for sub, seed in (("x", 0), ("y", 1)):
        (tmp_path / sub).mkdir()
        r = np.random.RandomState(seed)
        np.savez(tmp_path / sub / "test.npz", x=r.rand(6, 1, 8, 8).astype(np.float32), y=r.randint(0, 3, 6))
    a, b = load_dataset(str(tmp_path / "x" / "test.npz")), load_dataset(str(tmp_path / "y" / "test.npz"))
    assert a.info.name != b.info.name and a.info.name.startswith("test#")
    del rng


def test_dataset_name_is_checked_and_only_for_folders_and_files(two_test_folders):
    a, _ = two_test_folders
    with pytest.raises(UserError, match="named data set"):
        load_dataset("digits", name="mine")
    for bad in ("", "  ", "a#b"):
        with pytest.raises(UserError, match="--dataset-name"):
            load_dataset(str(a), name=bad)


def test_runs_on_two_test_folders_make_two_tables(cli, tmp_path, two_test_folders):
    """The engine through the CLI: each folder's run is its own data set, the leaderboard a table each;
    --dataset-name reaches the stored name; `--dataset test` selects both, `test#digest` one."""
    a, b = two_test_folders
    arch = tmp_path / "grey.py"
    arch.write_text(GREY.format(weights=ROOT / "robustness" / "weights" / "digits-cnn.pt"))
    db = tmp_path / "r.db"
    common = ["--model", f"{arch}:grey", "--attack", "fgsm", "--eps", "0.1", "--device", "cpu", "--quiet",
              "--db", db]
    r = cli("run", "--dataset", a, *common, "--json", tmp_path / "a.json")
    assert r.code == 0, r
    r = cli("run", "--dataset", b, *common, "--dataset-name", "digits-b", "--json", tmp_path / "b.json")
    assert r.code == 0, r
    name_a = json.loads((tmp_path / "a.json").read_text())["results"][0]["dataset"]
    name_b = json.loads((tmp_path / "b.json").read_text())["results"][0]["dataset"]
    assert name_a == load_dataset(str(a)).info.name and name_b.startswith("digits-b#")
    doc = json.loads(cli("leaderboard", "--db", db, "--format", "json").out)
    assert sorted(doc["datasets"]) == sorted([name_a, name_b])
    assert all(len(board["rows"]) == 1 and board["rows"][0]["rank"] == 1 for board in doc["boards"])
    one = json.loads(cli("leaderboard", "--db", db, "--format", "json", "--dataset", "test").out)
    assert one["dataset"] == name_a
    assert cli("run", "--dataset", "digits", "--dataset-name", "x", *common).code == 2


def test_dataset_name_in_the_spec_and_the_api(two_test_folders):
    import robustness as rb
    from robustness.specs import RunSpec
    a, _ = two_test_folders
    assert "dataset_name" not in RunSpec().to_json()          # runs stored before it keep their keys
    assert RunSpec(dataset=str(a), dataset_name="mine").to_json()["dataset_name"] == "mine"
    with pytest.raises(UserError, match="--dataset-name"):
        RunSpec(dataset=str(a), dataset_name="a#b").check()
    assert rb.load_dataset(str(a), name="mine").info.name.startswith("mine#")
    import torch
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    assert rb.load_dataset((x, y), name="noise").info.name.startswith("noise#")
    ev = rb.evaluate("digits-cnn", (x.expand(5, 1, 8, 8), y), attacks=["fgsm"], eps=[0.1], dataset_name="noise",
                     device="cpu", num_classes=10)
    assert ev.results[0].dataset.startswith("noise#")
