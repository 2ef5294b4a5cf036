"""Several processes: `torchrun --nproc-per-node 2 -m robustness train ...` on the CPU (gloo) gives the
result of one process with the same arguments.

The global batch is split evenly (each process takes every other example of each global batch through a
DistributedSampler) and every random draw is made per global batch, so the two runs see the same examples
and the same numbers; they differ only in floating-point summation order (gradients averaged by
all-reduce). Measured on the digits (standard training, 2 epochs, 38 SGD steps at lr 0.1): the largest
weight difference is 3.6e-5 and the validation accuracies are equal. Asserted: weights within 1e-3,
validation accuracy within 1 example in 100.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import torch

ARGS = ["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--val-size", "100",
        "--val-steps", "3", "--eps", "0.1"]
WEIGHT_TOL = 1e-3
ACC_TOL = 0.01 + 1e-9


def test_two_gloo_processes_match_one_process(cli, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "robustness", *ARGS, "--out", "ddp.pt", "--log-dir", "logs"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ddp.pt") == 1                      # only rank 0 reports and writes
    assert proc.stderr.count("epoch   2/2") == 1
    rows = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt", "logs"]

    r = cli(*ARGS, "--out", tmp_path / "one.pt", "--log-dir", "none", "--quiet")
    assert r.code == 0, r
    ddp, one = (torch.load(tmp_path / f, weights_only=True) for f in ("ddp.pt", "one.pt"))
    assert ddp["meta"]["recipe"]["processes"] == 2 and one["meta"]["recipe"]["processes"] == 1
    diff = max((ddp["state_dict"][k] - one["state_dict"][k]).abs().max().item() for k in one["state_dict"])
    assert diff <= WEIGHT_TOL, diff
    for key in ("val_clean", "val_fgsm", "val_pgd"):
        assert abs(ddp["meta"]["metrics"][key] - one["meta"]["metrics"][key]) <= ACC_TOL, key
    assert ddp["meta"]["metrics"]["best_epoch"] == one["meta"]["metrics"]["best_epoch"]
