"""Training as a library (`rb.TrainSpec`, `rb.train`), published recipes, and runs that fail saying so.

The recipe values are checked against the papers' own settings, written here from the official code
(locuslab/fast_adversarial, MadryLab/mnist_challenge and cifar10_challenge, yaodongyu/TRADES,
locuslab/robust_overfitting), not read back from robustness/recipes.py. A run "at chance" is judged
against the majority-class share of the validation labels, computed here from the data.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT, SHARED, need

FAST = ["--dataset", "digits", "--val-size", "100", "--batch-size", "64", "--val-steps", "3", "--log-dir", "none"]

# (recipe, {field: the paper's value}) - read from each paper's official training script / config
PAPERS = {
    "wong2020-fgsm-mnist": dict(arch="small-cnn", defense="fgsm", eps=0.3, step_size=0.375, epochs=10, batch_size=100,
                                optimizer="adamw", lr=5e-3, weight_decay=0.0, schedule="cyclic", cycle_peak=0.4,
                                augment="none"),
    "wong2020-fgsm-cifar10": dict(arch="preact-resnet18", defense="fgsm", eps=8 / 255, step_size=10 / 255,
                                  epochs=15, batch_size=128, optimizer="sgd", lr=0.2, momentum=0.9,
                                  weight_decay=5e-4, schedule="cyclic", cycle_peak=0.5, augment="crop-flip"),
    "madry2018-pgd-mnist": dict(arch="madry-cnn", defense="pgd", eps=0.3, steps=40, step_size=0.01, batch_size=50,
                                optimizer="adamw", lr=1e-4, schedule="constant"),
    "madry2018-pgd-cifar10": dict(defense="pgd", eps=8 / 255, steps=7, step_size=2 / 255, batch_size=128,
                                  optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="step",
                                  augment="crop-flip"),
    "zhang2019-trades-cifar10": dict(arch="wrn-34-10", defense="trades", eps=0.031, step_size=0.007, steps=10,
                                     beta=6.0, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=2e-4),
    "rice2020-pgd-cifar10": dict(arch="preact-resnet18", defense="pgd", eps=8 / 255, steps=10, step_size=2 / 255,
                                 epochs=200, lr=0.1, weight_decay=5e-4, schedule="step", lr_milestones=(100.0, 150.0),
                                 select_by="pgd"),
}


# ---- the spec and the recipes, no training ----

def test_every_recipe_resolves_passes_validation_and_has_the_papers_settings():
    import robustness as rb
    from robustness.recipes import RECIPES
    assert set(PAPERS) <= set(RECIPES)
    for name, paper in PAPERS.items():
        spec = rb.TrainSpec.from_recipe(name)
        assert spec.check() is spec and spec.recipe == name
        for field, value in paper.items():
            got = getattr(spec, field)
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, (name, field, got)
        r = RECIPES[name]
        assert r.url.startswith("https://arxiv.org/abs/") and "github.com" in r.code and "%" in r.published
    # Madry CIFAR: 80,000 steps of 128 with decays at 40,000 and 60,000 (config.json), in epochs of 50,000
    madry = rb.TrainSpec.from_recipe("madry2018-pgd-cifar10")
    assert madry.epochs == round(80000 * 128 / 50000)
    assert madry.lr_milestones == pytest.approx((40000 * 128 / 50000, 60000 * 128 / 50000))
    # TRADES: adjust_learning_rate divides by 10 from epoch 75 (1-based), i.e. after 74 finished epochs
    trades = rb.TrainSpec.from_recipe("zhang2019-trades-cifar10")
    assert trades.epochs == 76 and trades.lr_milestones == (74.0,)


def test_recipe_options_are_overridable_and_step_sizes_follow_eps():
    import robustness as rb
    spec = rb.TrainSpec.from_recipe("wong2020-fgsm-mnist", epochs=3, eps=0.2, data_dir="d")
    assert (spec.epochs, spec.eps, spec.data_dir, spec.lr) == (3, 0.2, "d", 5e-3)
    assert spec.step_size == pytest.approx(1.25 * 0.2)                # the paper's alpha = 1.25 eps
    assert rb.TrainSpec.from_recipe("wong2020-fgsm-mnist", eps=0.2, step_size=0.1).step_size == 0.1
    std = rb.TrainSpec.from_recipe("rice2020-pgd-cifar10", defense="standard").check()
    assert std.steps is None and std.step_size is None and std.epochs == 200
    from robustness.errors import UserError
    with pytest.raises(UserError, match="unknown recipe"):
        rb.TrainSpec.from_recipe("wong2021")
    with pytest.raises(UserError, match="no field"):
        rb.TrainSpec.from_recipe("wong2020-fgsm-mnist", epoch=3)


def test_the_command_line_parses_a_recipe_under_its_options(cli):
    import argparse

    from robustness.cli import build_parser
    from robustness.cli.train import spec_from_args
    args = build_parser().parse_args(["train", "--recipe", "rice2020-pgd-cifar10", "--epochs", "3", "--eps", "4/255",
                                      "--lr-milestones", "1,2", "--out", "x.pt"])
    assert isinstance(args, argparse.Namespace)
    spec = spec_from_args(args)
    assert spec.recipe == "rice2020-pgd-cifar10" and spec.epochs == 3 and spec.eps == pytest.approx(4 / 255)
    assert spec.lr_milestones == (1.0, 2.0) and spec.step_size == pytest.approx(1 / 255)   # 2/255 at 8/255
    assert spec.log_dir == "runs/x" and spec.arch == "preact-resnet18"
    listing = cli("list", "recipes")
    assert listing.code == 0
    for name in PAPERS:
        assert name in listing.out
    assert "arxiv.org/abs/2001.03994" in listing.out and "88.8%" in listing.out and "46.06%" in listing.out


@pytest.mark.parametrize("changes,message", [
    (dict(eps="8/255"), "--eps must be a finite number"),
    (dict(epochs=0), "--epochs must be >= 1"),
    (dict(defense="madry"), "bad --defense 'madry'"),
    (dict(lr_milestones=(5, 3), schedule="step"), "--lr-milestones must be increasing"),
    (dict(lr_milestones=(2,), schedule="cosine"), "apply to --schedule step"),
    (dict(cycle_peak=1.0), "--cycle-peak must lie strictly between 0 and 1"),
    (dict(defense="fgsm", steps=3), "--steps does not apply"),
    (dict(finetune="linear"), "--finetune needs --model"),
    (dict(mean=(0.5,)), "--mean and --std go together"),
])
def test_spec_validation_names_the_option(changes, message):
    import robustness as rb
    from robustness.errors import UserError
    with pytest.raises(UserError) as e:
        rb.TrainSpec(dataset="digits", **changes).check()
    assert message in str(e.value)


def test_the_cli_module_imports_no_torch_and_the_library_no_argparse():
    code = ("import sys; import robustness.cli.train, robustness.training, robustness.recipes; "
            "print('torch' in sys.modules, 'argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"
    for f in ("training.py", "_train_run.py", "recipes.py"):
        text = (ROOT / "robustness" / f).read_text()
        assert "argparse" not in text and "from .cli" not in text and "robustness.cli" not in text, f


# ---- training on the digits (seconds) ----

def test_python_api_trains_without_a_file_and_records_the_resolved_spec(tmp_path):
    import robustness as rb
    spec = rb.TrainSpec(dataset="digits", defense="pgd", eps=0.1, steps=3, epochs=2, batch_size=64, val_size=100,
                        val_steps=3, lr=0.1)
    outcome = rb.train(spec)
    assert isinstance(outcome, rb.TrainOutcome) and outcome.ok and outcome.checkpoint is None
    assert outcome.spec.arch == "digits-cnn" and outcome.spec.step_size == pytest.approx(2.5 * 0.1 / 3)
    assert outcome.spec.eps_warmup is not None and outcome.spec.schedule == "cosine"
    assert len(outcome.history) == 2 and outcome.best["epoch"] in (1, 2)
    model = outcome.model
    from robustness.data import load_dataset
    data = load_dataset("digits").dataset
    with torch.no_grad():
        acc = (model(data.x[:200]).argmax(1) == data.y[:200]).float().mean().item()
    assert acc > 0.5
    assert outcome.meta["trained_with"].startswith("robustness.train(TrainSpec(")
    assert outcome.meta["train_spec"]["defense"] == "pgd"


def test_recipe_run_records_its_final_values_in_the_checkpoint(cli, tmp_path):
    ckpt = tmp_path / "r.pt"
    r = cli("train", "--recipe", "wong2020-fgsm-mnist", *FAST, "--arch", "digits-cnn", "--eps", "0.1", "--epochs", "2",
            "--quiet", "--out", ckpt)
    assert r.code == 0, r
    meta = torch.load(ckpt, weights_only=True)["meta"]
    s = meta["train_spec"]
    assert s["recipe"] == "wong2020-fgsm-mnist" and s["epochs"] == 2 and s["eps"] == 0.1
    assert s["lr"] == 5e-3 and s["optimizer"] == "adamw" and s["step_size"] == pytest.approx(0.125)
    assert s["val_size"] == 100 and s["arch"] == "digits-cnn" and s["cycle_peak"] == 0.4
    assert meta["recipe"]["named_recipe"] == "wong2020-fgsm-mnist" and meta["recipe"]["lr"] == 5e-3
    assert "--recipe wong2020-fgsm-mnist" in meta["trained_with"] and "training_failure" not in meta


def _majority_share_of_validation_labels() -> float:
    """The chance level of the digits run below, from the data: the validation split the trainer holds out
    (seed 0, 100 examples) and the share of its most frequent class."""
    import numpy as np

    from robustness.data import load_dataset
    y = load_dataset("digits", split="train").dataset.y.numpy()
    order = np.random.default_rng([0, 20240517]).permutation(len(y))
    counts = np.bincount(y[np.sort(order[:100])])
    return counts.max() / counts.sum()


def test_a_run_that_stays_at_chance_exits_3_names_the_cause_and_marks_the_checkpoint(cli, tmp_path):
    ckpt = tmp_path / "zero.pt"
    r = cli("train", *FAST, "--defense", "standard", "--lr", "0", "--epochs", "3", "--quiet", "--out", ckpt)
    assert r.code == 3, r
    err = r.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robust-bench: error: training failed: training stayed at chance")
    assert "the learning rate is 0" in err[0] and "--lr" in err[0]
    chance = _majority_share_of_validation_labels()
    assert f"chance {100 * chance:.1f}%" in err[0]
    assert "marked as failed" in r.out
    meta = torch.load(ckpt, weights_only=True)["meta"]
    failure = meta["training_failure"]
    assert failure["kind"] == "chance" and failure["message"] in err[0]
    assert meta["metrics"]["val_clean"] <= chance + 0.1 * (1 - chance)
    # the model loader hands the failure on, for `run` to print
    from robustness.models import create_model
    info = create_model(str(ckpt)).info
    assert info.extra["training_failure"]["kind"] == "chance"
    # and `run` says it with every evaluation of that checkpoint: printed and stored
    out = tmp_path / "run.json"
    r = cli("run", "--model", ckpt, "--dataset", "digits", "--attack", "fgsm", "--eps", "0.1", "--n-examples", "20",
            "--db", tmp_path / "r.db", "--json", out)
    assert r.code == 0, r
    assert "WARNING [training_failed]" in r.out and "training stayed at chance" in r.out, r.out
    found = [w for w in json.loads(out.read_text())["warnings"] if w["code"] == "training_failed"]
    assert len(found) == 1 and "(chance at epoch" in found[0]["message"], found
    # accepted on request: exit 0, a warning, the same record in the checkpoint
    r = cli("train", *FAST, "--defense", "standard", "--lr", "0", "--epochs", "3", "--quiet", "--allow-failed",
            "--out", ckpt)
    assert r.code == 0 and r.err.startswith("warning: training failed: training stayed at chance"), r
    assert torch.load(ckpt, weights_only=True)["meta"]["training_failure"]["kind"] == "chance"
    # without a validation split: the final model's clean accuracy on training images decides
    r = cli("train", *FAST, "--val-size", "0", "--defense", "fgsm", "--eps", "0.1", "--lr", "0", "--epochs", "3",
            "--quiet", "--out", ckpt)
    assert r.code == 3 and "clean accuracy on training images" in r.err, r


def test_a_diverging_run_stops_and_says_so(cli, tmp_path):
    ckpt = tmp_path / "nan.pt"
    r = cli("train", *FAST, "--defense", "standard", "--lr", "1e12", "--schedule", "constant", "--epochs", "3",
            "--quiet", "--out", ckpt)
    assert r.code == 3, r
    assert "training diverged in epoch 1 (the loss is not finite): lower --lr (now 1e+12)" in r.err
    assert "no epoch is worth keeping" in r.err and not ckpt.exists()


def test_collapse_and_chance_diagnosis_from_a_history():
    """Catastrophic overfitting as Wong et al. describe it: PGD accuracy near 0 while FGSM accuracy stays high."""
    from defenses import TrainConfig, diagnose
    cfg = TrainConfig(epochs=3, lr=0.1)
    ok = {"epoch": 1, "val_clean": 0.9, "val_fgsm": 0.5, "val_pgd": 0.45, "warning": "", "train_loss": 1.0}
    co = {"epoch": 2, "val_clean": 0.95, "val_fgsm": 0.85, "val_pgd": 0.01, "train_loss": 0.5,
          "warning": "catastrophic overfitting: PGD validation accuracy 1.0% (best 45.0% after epoch 1) while FGSM "
                     "accuracy is 85.0%"}
    f = diagnose([ok, co], cfg, adversarial=True, chance=0.1, best_epoch=1)
    assert f.kind == "collapsed" and f.epoch == 2 and "--step-size" in f.message and "keeps epoch 1" in f.message
    f = diagnose([ok, co], cfg, adversarial=True, chance=0.1, best_epoch=2)
    assert "--select-by pgd" in f.message
    assert diagnose([ok], cfg, adversarial=True, chance=0.1, best_epoch=1) is None
    flat = [{"epoch": 1, "val_clean": 0.11, "train_loss": 2.30, "warning": ""}]
    f = diagnose(flat, cfg, adversarial=True, chance=0.1, best_epoch=1)
    assert f.kind == "chance" and "--eps-warmup" in f.message
    assert diagnose(flat, cfg, adversarial=False, chance=0.1, best_epoch=1).kind == "chance"
    assert diagnose([{**flat[0], "val_clean": 0.3}], cfg, adversarial=False, chance=0.1, best_epoch=1) is None
    # too little evidence is not judged: 8 validation images, or a few steps without validation
    assert diagnose(flat, cfg, adversarial=False, chance=0.1, best_epoch=1, n_val=8, steps=500) is None
    no_val = [{"epoch": 1, "val_clean": None, "train_acc": 0.1, "train_loss": 2.3, "warning": ""}]
    assert diagnose(no_val, cfg, adversarial=False, chance=0.1, best_epoch=1, n_val=0, steps=20) is None
    f = diagnose(no_val, cfg, adversarial=False, chance=0.1, best_epoch=1, n_val=0, steps=500)
    assert f.kind == "chance" and "training accuracy 10.0%" in f.message
    # adversarial training accuracy is accuracy under attack: only the clean accuracy on training images counts
    # (measured: Madry's recipe after 360 steps, 18.2% adversarial training accuracy at 69.3% clean test accuracy)
    assert diagnose(no_val, cfg, adversarial=True, chance=0.1, best_epoch=1, n_val=0, steps=500) is None
    assert diagnose(no_val, cfg, adversarial=True, chance=0.1, best_epoch=1, n_val=0, steps=500, train_clean=0.69) is None
    f = diagnose(no_val, cfg, adversarial=True, chance=0.1, best_epoch=1, n_val=0, steps=500, train_clean=0.1)
    assert f.kind == "chance" and "clean accuracy on training images 10.0%" in f.message


def test_sync_bn_is_refused_on_cpu_processes_and_a_no_op_in_one(cli, tmp_path, monkeypatch):
    r = cli("train", *FAST, "--epochs", "1", "--sync-bn", "--out", tmp_path / "one.pt")
    assert r.code == 0 and "--sync-bn has no effect in one process" in r.err, r
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    r = cli("train", *FAST, "--epochs", "1", "--sync-bn", "--device", "cpu", "--out", tmp_path / "two.pt")
    assert r.code == 2 and "--sync-bn needs CUDA" in r.err and r.err.count("\n") == 1, r
    assert not (tmp_path / "two.pt").exists()


# ---- the failing command of the issue, on the shared MNIST ----

MNIST_RAW = SHARED / "MNIST" / "raw" / "train-images-idx3-ubyte"
ISSUE = ["--arch", "small-cnn", "--dataset", "mnist", "--defense", "fgsm", "--eps", "0.3"]


@pytest.mark.slow
def test_the_issues_mnist_command_leaves_chance_level_with_the_defaults(cli, tmp_path):
    """`train --arch small-cnn --dataset mnist --defense fgsm --eps 0.3 --epochs 2 --n-train 12000` stayed at
    9.7% (chance) with SGD at 0.1, no warm-up and FGSM's start clipped to the box. Here on a shorter budget
    (6,000 images, 2 epochs): those settings still fail, now with exit code 3; the defaults leave chance
    level by far."""
    need(MNIST_RAW)
    common = [*ISSUE, "--data-dir", SHARED, "--epochs", "2", "--n-train", "6000", "--val-size", "500", "--val-steps",
              "5", "--log-dir", "none", "--quiet"]
    old = cli("train", *common, "--optimizer", "sgd", "--lr", "0.1", "--eps-warmup", "0", "--clip-start",
              "--out", tmp_path / "old.pt")
    assert old.code == 3 and "stayed at chance level" in old.err and "--eps-warmup" in old.err, old
    new = cli("train", *common, "--out", tmp_path / "new.pt")
    assert new.code == 0, new
    meta = torch.load(tmp_path / "new.pt", weights_only=True)["meta"]
    print(json.dumps(meta["metrics"]), meta["train_spec"]["lr"], meta["train_spec"]["eps_warmup"])
    assert meta["metrics"]["val_clean"] > 0.6 and "training_failure" not in meta
