"""`robust-bench train`: checkpoints that `robust-bench run` evaluates with no other flag, exact resume,
fine-tuning (linear probing leaves the backbone bit-identical; torchvision and a user's file.py), the
engine options, and bad input (one line, exit code 2, nothing overwritten)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import CIFAR_MEAN, CIFAR_STD, CIFAR_TRAIN, RESNET20, ROOT, need

FAST = ["--dataset", "digits", "--val-size", "100", "--batch-size", "64", "--val-steps", "3", "--log-dir", "none"]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _npz(path: Path, n: int = 48, classes: int = 3, shape=(1, 8, 8), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.random((n, *shape), dtype=np.float32) * 0.5 + (y / (2 * classes)).reshape(-1, 1, 1, 1).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


def test_checkpoint_round_trips_through_run_with_no_other_flag(cli, tmp_path):
    ckpt, logs = tmp_path / "at.pt", tmp_path / "logs"
    r = cli("train", *FAST[:-2], "--defense", "pgd", "--eps", "0.1", "--steps", "3", "--epochs", "2",
            "--log-dir", logs, "--out", ckpt)
    assert r.code == 0, r
    assert "wrote" in r.out and "epoch   2/2" in r.err
    blob = torch.load(ckpt, weights_only=True)
    meta = blob["meta"]
    assert blob["arch"] == "digits-cnn" and blob["arch_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert meta["dataset"] == "digits" and meta["input_size"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["recipe"]["defense"] == "pgd" and meta["recipe"]["steps"] == 3 and meta["recipe"]["epochs"] == 2
    assert meta["metrics"]["best_epoch"] in (1, 2) and 0 <= meta["metrics"]["val_pgd"] <= meta["metrics"]["val_clean"]
    assert meta["trained_with"].startswith("robust-bench train ") and "--defense pgd" in meta["trained_with"]
    rows = list(csv.DictReader((logs / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"] and sum(int(row["best"]) for row in rows) >= 1
    assert float(rows[-1]["images_per_s"]) > 0
    if not any(logs.glob("events.out.tfevents*")):
        assert "tensorboard is not installed" in r.err
    assert not (tmp_path / "at.state.pt").exists()          # removed once training finished

    out = tmp_path / "run.json"
    r = cli("run", "--model", ckpt, "--db", tmp_path / "r.db", "--json", out, "--attack", "pgd", "--eps", "0.1",
            "--quiet")
    assert r.code == 0, r
    res = json.loads(out.read_text())["results"][0]
    assert res["model"] == "at.pt" and res["dataset"] == "digits" and res["n"] == 360
    assert res["clean_accuracy"] > 0.5


def test_resume_gives_bit_identical_weights_to_an_uninterrupted_run(cli, tmp_path):
    args = [*FAST, "--defense", "fgsm", "--eps", "0.1", "--epochs", "3", "--quiet"]
    assert cli("train", *args, "--out", tmp_path / "full.pt").code == 0
    part = tmp_path / "part.pt"
    r = cli("train", *args, "--out", part, "--stop-after", "1")
    assert r.code == 0 and "--resume" in r.out and not part.exists()
    state = tmp_path / "part.state.pt"
    assert state.is_file()
    r = cli("train", *args, "--out", part, "--resume", state)
    assert r.code == 0, r
    full, resumed = _state(tmp_path / "full.pt"), _state(part)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    a, b = (torch.load(p, weights_only=True)["meta"] for p in (tmp_path / "full.pt", part))
    assert a["metrics"] == b["metrics"] and "--resume" not in b["trained_with"]


def test_resume_with_other_arguments_is_refused(cli, tmp_path):
    args = [*FAST, "--epochs", "2", "--quiet", "--out", tmp_path / "m.pt"]
    assert cli("train", *args, "--stop-after", "1").code == 0
    r = cli("train", *args, "--lr", "0.5", "--resume", tmp_path / "m.state.pt")
    assert r.code == 2 and "other arguments" in r.err and "lr" in r.err


@pytest.mark.parametrize("extra,message", [
    (["--defense", "pgd", "--eps", "2"], "exceeds the [0, 1] pixel range"),
    (["--defense", "pgd", "--eps", "0"], "needs --eps > 0"),
    (["--defense", "fgsm", "--norm", "l2", "--eps", "100"], "diameter"),
    (["--defense", "pgd", "--eps", "8/0"], "bad eps"),
    (["--resume", "MISSING"], "resume file not found"),
    (["--model", "digits-cnn", "--finetune", "none", "--dataset", "NPZ3", "--val-size", "8"],
     "outputs 10 classes but data set"),
    (["--defense", "fgsm", "--eps", "0.1", "--steps", "3"], "--steps does not apply"),
    (["--finetune", "linear"], "--finetune needs --model"),
])
def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(cli, tmp_path, extra, message):
    out = tmp_path / "keep.pt"
    out.write_bytes(b"previous checkpoint")
    npz = _npz(tmp_path / "three.npz")
    extra = [str(npz) if a == "NPZ3" else str(tmp_path / "missing.state.pt") if a == "MISSING" else a for a in extra]
    args = [*FAST, "--epochs", "1", "--out", out]
    if "--dataset" in extra:
        i = args.index("--dataset")
        args[i + 1] = extra[extra.index("--dataset") + 1]
        extra = extra[:extra.index("--dataset")] + extra[extra.index("--dataset") + 2:]
    r = cli("train", *args, *extra)
    assert r.code == 2, r
    assert message in r.err and r.err.count("\n") == 1 and r.err.startswith("robust-bench: error:")
    assert out.read_bytes() == b"previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pt", "three.npz"]


@pytest.mark.parametrize("target", ["a_file/model.pt", "no_such_folder/model.pt", "."])
def test_unwritable_out_is_refused_before_training(cli, tmp_path, target):
    (tmp_path / "a_file").write_text("x")
    r = cli("train", *FAST, "--epochs", "1", "--out", tmp_path / target)
    assert r.code == 2 and "--out" in r.err and r.err.count("\n") == 1, r


def test_linear_probe_of_the_shared_resnet20_leaves_every_backbone_weight_bit_identical(cli, tmp_path):
    need(RESNET20), need(CIFAR_TRAIN)
    ckpt = tmp_path / "probe.pt"
    r = cli("train", "--model", f"{ROOT / 'robustness' / 'archs.py'}:resnet20", "--weights", RESNET20,
            "--mean", CIFAR_MEAN, "--std", CIFAR_STD, "--dataset", CIFAR_TRAIN, "--finetune", "linear",
            "--defense", "fgsm", "--eps", "2/255", "--n-train", "256", "--val-size", "64", "--batch-size", "64",
            "--epochs", "1", "--val-steps", "2", "--log-dir", "none", "--quiet", "--out", ckpt)
    assert r.code == 0, r
    original = {k.removeprefix("module."): v for k, v in
                torch.load(RESNET20, map_location="cpu", weights_only=True)["state_dict"].items()}
    blob = torch.load(ckpt, weights_only=True)
    tuned = blob["state_dict"]
    extra = set(tuned) - set(original)    # this 2019 file predates BN's num_batches_tracked buffers
    assert set(original) <= set(tuned) and all(k.endswith("num_batches_tracked") for k in extra)
    assert all(int(tuned[k]) == 0 for k in extra)                        # batch norm never ran in train mode
    backbone = [k for k in original if not k.startswith("linear.")]
    assert len(backbone) > 90 and all(torch.equal(tuned[k], original[k]) for k in backbone)   # BN buffers too
    assert not torch.equal(tuned["linear.weight"], original["linear.weight"])
    # our own archs.py:resnet20 maps to the registry: the checkpoint is self-describing, with the test folder
    assert blob["arch"] == "resnet20" and blob["meta"]["mean"] == [0.485, 0.456, 0.406]
    assert blob["meta"]["dataset"] == str((CIFAR_TRAIN.parent / "test").resolve())
    assert blob["meta"]["recipe"]["finetune"] == "linear"


def test_full_finetune_of_a_builtin_with_a_new_head(cli, tmp_path):
    npz = _npz(tmp_path / "three.npz", n=96)
    ckpt = tmp_path / "ft.pt"
    r = cli("train", "--model", "digits-cnn", "--dataset", npz, "--finetune", "full", "--backbone-lr-mult", "0.5",
            "--epochs", "2", "--batch-size", "16", "--val-size", "16", "--val-steps", "2", "--eps", "0.05",
            "--log-dir", "none", "--out", ckpt)
    assert r.code == 0, r
    assert "new head fc for 3 classes" in r.err
    blob = torch.load(ckpt, weights_only=True)
    assert blob["arch"] == "digits-cnn" and blob["arch_kwargs"]["num_classes"] == 3
    assert blob["state_dict"]["fc.weight"].shape[0] == 3 and blob["meta"]["num_classes"] == 3
    base = torch.load(ROOT / "robustness" / "weights" / "digits-cnn.pt", weights_only=True)["state_dict"]
    assert not torch.equal(blob["state_dict"]["conv1.weight"], base["conv1.weight"])   # the backbone trained too
    r = cli("run", "--model", ckpt, "--dataset", npz, "--db", tmp_path / "r.db", "--attack", "fgsm", "--eps",
            "0.05", "--quiet")
    assert r.code == 0, r


def test_finetuned_torchvision_model_is_recreated_by_run(cli, tmp_path):
    import torchvision
    torch.manual_seed(0)
    weights = tmp_path / "mnv3.pt"
    torch.save(torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict(), weights)
    npz = _npz(tmp_path / "rgb.npz", n=16, shape=(3, 32, 32))
    ckpt = tmp_path / "tv.pt"
    r = cli("train", "--model", "mobilenet_v3_small", "--weights", weights, "--dataset", npz, "--finetune", "linear",
            "--epochs", "1", "--batch-size", "8", "--val-size", "0", "--augment", "none", "--log-dir", "none",
            "--quiet", "--out", ckpt)
    assert r.code == 0, r
    blob = torch.load(ckpt, weights_only=True)
    assert blob["arch"] == "torchvision:mobilenet_v3_small"
    assert blob["arch_kwargs"] == {"num_classes": 3, "head": "classifier.3"}
    assert blob["meta"]["preprocess"]["crop"] == 224 and blob["meta"]["input_size"] == [3, 224, 224]
    r = cli("run", "--model", ckpt, "--dataset", npz, "--db", tmp_path / "r.db", "--attack", "fgsm",
            "--eps", "1/255", "--n-examples", "4", "--quiet")
    assert r.code == 0, r


def test_finetuned_model_of_a_users_file_names_the_flags_that_load_it(cli, tmp_path):
    arch = tmp_path / "mynet.py"
    arch.write_text("import torch.nn as nn\n"
                    "def net(num_classes=10):\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))\n")
    npz = _npz(tmp_path / "three.npz")
    ckpt = tmp_path / "mine.pt"
    r = cli("train", "--model", f"{arch}:net", "--dataset", npz, "--epochs", "1", "--batch-size", "16",
            "--val-size", "8", "--val-steps", "2", "--eps", "0.05", "--log-dir", "none", "--quiet", "--out", ckpt)
    assert r.code == 0, r
    r = cli("run", "--model", ckpt, "--dataset", npz, "--db", tmp_path / "r.db", "--quiet")
    assert r.code == 2 and "never imports code" in r.err
    assert f"--model {arch}:net --weights {ckpt} --num-classes 3" in r.err
    r = cli("run", "--model", f"{arch}:net", "--weights", ckpt, "--num-classes", "3", "--dataset", npz,
            "--db", tmp_path / "r.db", "--attack", "fgsm", "--eps", "0.05", "--quiet")
    assert r.code == 0, r


def test_mixed_precision_channels_last_and_compile_run_on_the_cpu(cli, tmp_path):
    """bf16 autocast + channels_last + torch.compile (aot_eager: the dynamo path without minutes of C++
    compilation on a small CPU; see the inductor test), then fp16 autocast (no gradient scaler off CUDA)."""
    for extra in (["--precision", "bf16", "--channels-last", "--compile", "aot_eager"], ["--precision", "fp16"]):
        r = cli("train", *FAST, "--n-train", "256", "--defense", "pgd", "--eps", "0.1", "--steps", "2", "--epochs", "1",
                "--quiet", *extra, "--out", tmp_path / "p.pt")
        assert r.code == 0, (extra, r)
        assert torch.load(tmp_path / "p.pt", weights_only=True)["meta"]["recipe"]["precision"] == extra[1]
    r = cli("train", *FAST, "--epochs", "1", "--compile", "no-such-backend", "--out", tmp_path / "q.pt")
    assert r.code == 2 and "backend" in r.err


@pytest.mark.skipif(os.environ.get("ROBUST_BENCH_TEST_INDUCTOR") != "1",
                    reason="inductor compiles C++ for minutes on a 2-core CPU; set ROBUST_BENCH_TEST_INDUCTOR=1 to run "
                           "(the compile path itself is covered with aot_eager)")
def test_compile_with_inductor(cli, tmp_path):
    r = cli("train", *FAST, "--epochs", "1", "--compile", "--quiet", "--out", tmp_path / "c.pt")
    assert r.code == 0, r


def test_epoch_log_writes_tensorboard_scalars_when_tensorboard_is_installed(tmp_path, monkeypatch):
    """tensorboard is optional: with it, each epoch's numbers become scalars (here a stand-in writer)."""
    import importlib.util
    import sys
    import types

    from robustness._train_run import EpochLog as _EpochLog
    written = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            written.append(("open", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            written.append(("close",))

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorboard" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    notes = []
    log = _EpochLog(tmp_path / "logs", [{"epoch": 1, "lr": 0.1}], notes.append)
    log({"epoch": 2, "lr": 0.05, "train_loss": 1.5, "val_pgd": None, "images_per_s": 10.0})
    log.close()
    assert written[0] == ("open", str(tmp_path / "logs"), 2) and ("lr", 0.05, 2) in written
    assert ("train_loss", 1.5, 2) in written and not any(w[0] == "val_pgd" for w in written)
    assert written[-1] == ("close",) and notes == []
    assert [r["epoch"] for r in csv.DictReader((tmp_path / "logs" / "metrics.csv").open())] == ["1", "2"]
