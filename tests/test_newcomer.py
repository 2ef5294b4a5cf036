"""The smaller frictions of issue 17: where a named data set's files must be, a checkpoint's --data-dir,
the weights file's sha256 next to the weights digest, SIGTERM ending like Ctrl-C, the passes column
explained, the overlay plot, the CPU-only install."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustness.data import load_dataset
from robustness.errors import UserError

from .conftest import ROOT, SHARED, need, python_cmd
from .test_leaderboards import png_size

RESNET20_FILE_SHA256 = "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"   # shared/data/README


@pytest.fixture
def offline(monkeypatch):
    import torchvision

    def refuse(*a, **k):
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse)
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse, raising=False)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse, raising=False)


def test_a_missing_named_set_explains_its_layout(offline, tmp_path, cli):
    (tmp_path / "test" / "airplane").mkdir(parents=True)      # an exported image folder, not the archive
    with pytest.raises(UserError) as e:
        load_dataset("cifar10", data_dir=str(tmp_path))
    text = str(e.value)
    assert f"{tmp_path}/cifar-10-batches-py/" in text and "data_batch_1" in text and "test_batch" in text
    assert f"--dataset {tmp_path / 'test'}" in text and "--data-dir" in text
    with pytest.raises(UserError, match=r"MNIST/raw/ holding t10k-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=str(tmp_path / "none"), download=False)
    r = cli("run", "--model", "digits-cnn", "--dataset", "cifar10", "--data-dir", tmp_path, "--db", tmp_path / "r.db")
    assert r.code == 2 and "cifar-10-batches-py" in r.err and len(r.err.strip().splitlines()) == 1, r


def _checkpoint(path: Path, data_dir: str) -> Path:
    """A checkpoint as `robust-bench train` writes one for MNIST (random weights: only loading matters)."""
    from robustness.archs import build_arch
    from robustness.models.checkpoints import save_checkpoint
    torch.manual_seed(0)
    net = build_arch("small-cnn")
    save_checkpoint(path, arch="small-cnn", arch_kwargs={}, state_dict=net.state_dict(),
                    meta={"num_classes": 10, "dataset": "mnist", "input_size": [1, 28, 28],
                          "train_spec": {"dataset": "mnist", "data_dir": data_dir}})
    return path


def test_a_checkpoint_remembers_its_data_dir(cli, tmp_path, monkeypatch):
    need(SHARED / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    ckpt = _checkpoint(tmp_path / "mnist.pt", str(SHARED))
    r = cli("run", "--model", ckpt, "--attack", "fgsm", "--eps", "0.1", "--n-examples", "20", "--device", "cpu",
            "--db", tmp_path / "r.db", "--json", tmp_path / "o.json")
    assert r.code == 0, r
    assert f"reading mnist from {SHARED}, the --data-dir its checkpoint was trained with" in r.err
    assert json.loads((tmp_path / "o.json").read_text())["results"][0]["dataset"] == "mnist"
    gone = _checkpoint(tmp_path / "gone.pt", str(tmp_path / "moved-away"))
    r = cli("run", "--model", gone, "--attack", "fgsm", "--eps", "0.1", "--n-examples", "20", "--device", "cpu",
            "--db", tmp_path / "r.db", "--data-dir", SHARED)
    assert r.code == 0, r                                  # --data-dir given: the hint is not needed
    # the environment's default folder is empty here: the error names the folder the checkpoint remembers
    monkeypatch.setenv("ROBUST_BENCH_DATA", str(tmp_path / "empty-default"))
    import torchvision

    def refuse(*a, **k):
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse, raising=False)
    r = cli("run", "--model", gone, "--attack", "fgsm", "--eps", "0.1", "--n-examples", "20", "--device", "cpu",
            "--db", tmp_path / "r.db")
    assert r.code == 2 and f"trained with --data-dir {tmp_path / 'moved-away'}" in r.err, r


def test_the_weights_file_sha256_is_recorded_and_shown(cli, tmp_path):
    weights = ROOT / "robustness" / "weights" / "digits-cnn.pt"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    db = tmp_path / "r.db"
    r = cli("run", "--model", "digits-cnn", "--attack", "fgsm", "--eps", "0.1", "--n-examples", "20", "--device",
            "cpu", "--db", db, "--json", tmp_path / "o.json", "--quiet")
    assert r.code == 0, r
    meta = json.loads((tmp_path / "o.json").read_text())["run"]["models"]["digits-cnn"]
    assert meta["file_sha256"] == expected and meta["weights_sha256"] != expected
    row = json.loads(cli("leaderboard", "--db", db, "--format", "json").out)["rows"][0]
    assert row["file_sha256"] == expected and row["weights_sha256"] == meta["weights_sha256"]
    assert cli("site", "--db", db, "--out", tmp_path / "site", "--no-plots").code == 0
    page = next((tmp_path / "site" / "models").glob("*.html")).read_text()
    assert expected in page and meta["weights_sha256"] in page and "sha256 of the file" in page


def test_the_shared_resnet20_file_digest_is_the_published_one(shared_resnet20):
    from robustness.models import ModelOptions, create_model
    m = create_model(f"{ROOT / 'robustness' / 'archs.py'}:resnet20", ModelOptions(weights=str(shared_resnet20)))
    assert m.info.extra["file_sha256"] == RESNET20_FILE_SHA256


@pytest.mark.slow
def test_sigterm_prints_the_resume_line_and_keeps_the_batch_in_flight(tmp_path):
    """A scheduler's SIGTERM mid-batch: the same resume line as Ctrl-C, exit 143, finished sub-attacks kept."""
    db = tmp_path / "r.db"
    cmd = python_cmd() + ["run", "--model", "digits-cnn", "--attack", "autoattack", "--attack-args",
                          "steps=20,square_queries=2000", "--eps", "0.1", "--n-examples", "100", "--device", "cpu",
                          "--db", str(db)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.monotonic() + 300
    try:
        for line in proc.stderr:       # the first finished sub-attack of batch 1
            lines.append(line)
            if "batch 1/1: autoattack apgd-ce" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest
    assert proc.returncode == 143, err[-2000:]
    assert "robust-bench: terminated (SIGTERM)" in err and "rerun the same command to resume" in err
    from leaderboards import ResultStore
    with ResultStore(db) as s:
        run = s.runs()[0]
        assert run.status == "running" and len(s.kept_steps(run.run_id, "digits-cnn", 0)) >= 1


def test_the_passes_column_is_explained(cli):
    r = cli("run", "--help")
    assert r.code == 0 and "passes/ex fwd+bwd, is the model's forward and backward passes per example" in r.out
    readme = (ROOT / "README.md").read_text()
    assert "`passes/ex fwd+bwd`" in readme
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme     # the CPU-only install


def test_overlay_puts_every_attack_in_one_panel(cli, tmp_path):
    from leaderboards import ResultStore
    from leaderboards.synthetic import add_synthetic_run
    db = tmp_path / "s.db"
    with ResultStore(db) as s:
        add_synthetic_run(s, models={"robust": 0.8, "plain": 0.1}, attacks=["fgsm", "pgd", "autoattack"],
                          eps=[1 / 255, 2 / 255, 4 / 255, 8 / 255], n=200, dataset="cifar10", seed=1)
    out = tmp_path / "fig.svg"
    r = cli("plot", "--kind", "eps", "--overlay", "--db", db, "--out", out)
    assert r.code == 0 and "1 panel(s)" in r.err, r
    text = out.read_text()
    for name in ("robust", "plain", "fgsm", "pgd", "autoattack", "in 1/255"):
        assert name in text, name
    assert ">8/255<" not in text                           # whole 255ths are labelled 1 2 4 8 on a 1/255 axis
    png = tmp_path / "fig.png"
    assert cli("plot", "--kind", "eps", "--overlay", "--db", db, "--out", png, "--size", "800x500").code == 0
    assert png_size(png) == (800, 500)
    r = cli("plot", "--kind", "severity", "--overlay", "--db", db, "--out", tmp_path / "s.png")
    assert r.code == 2 and "overlay" in r.err


def test_overlapping_tick_labels_are_thinned():
    from leaderboards.curves import _pyplot, _readable_ticks
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3, 2), dpi=100)
    ticks = [0, 0.001, 0.002, 0.003, 0.1, 0.2, 0.3]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlim(0, 0.3)
    _readable_ticks(fig, [ax])
    fig.canvas.draw()
    shown = [t for t in ax.get_xticklabels() if t.get_visible()]
    boxes = [t.get_window_extent() for t in shown]
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))      # no two visible labels overlap
    assert shown[-1].get_text() == "0.3" and len(shown) < len(ticks)
    plt.close(fig)
