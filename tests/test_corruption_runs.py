"""`robust-bench run --attack corruptions`: one stored result per (corruption, severity) with per-example
outcomes, plain accuracy on corrupted images, and the CE / mCE summary against a baseline run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from leaderboards import ResultStore
from leaderboards.corruption_metrics import ALEXNET, summarize_corruptions


def test_corruption_run_stores_each_severity(cli, tmp_path):
    db, out = tmp_path / "r.db", tmp_path / "o.json"
    res = cli("run", "--model", "digits-cnn", "--attack", "corruptions", "--corruptions",
              "gaussian_noise,contrast,fog", "--severity", "1,3,5", "--n-examples", "80", "--db", db, "--json", out)
    assert res.code == 0, res
    assert "mean corruption accuracy" in res.out and "gaussian_noise" in res.out
    doc = json.loads(out.read_text())
    rows = [r for r in doc["results"] if r["norm"] == "corruption"]
    assert {(r["attack"], r["eps"]) for r in rows} == {(f"corruption:{c}", float(s))
                                                      for c in ("gaussian_noise", "contrast", "fog") for s in (1, 3, 5)}
    for r in rows:
        pe = r["per_example"]
        assert len(pe["correct"]) == 80 and sum(pe["correct"]) == round(r["accuracy"] * 80)
    fog = {r["eps"]: r["accuracy"] for r in rows if r["attack"] == "corruption:fog"}
    assert fog[5.0] < fog[1.0] <= rows[0]["clean_accuracy"] + 0.05
    summary = doc["corruption_summary"]["digits-cnn"]
    cells = [r["accuracy"] for r in rows]
    assert summary["mean_accuracy"] == pytest.approx(sum(cells) / len(cells))
    # the same run again is found complete, not recomputed
    again = cli("run", "--model", "digits-cnn", "--attack", "corruptions", "--corruptions",
                "gaussian_noise,contrast,fog", "--severity", "1,3,5", "--n-examples", "80", "--db", db)
    assert again.code == 0 and "already complete" in again.err


def test_corruption_accuracy_counts_every_example_not_only_clean_correct(tmp_path, cli):
    """Severities do not nest: per-example outcomes may recover at a higher severity, and an example the
    model gets wrong clean can be right once corrupted; both are stored as they are."""
    db = tmp_path / "r.db"
    res = cli("run", "--model", "digits-cnn", "--attack", "corruptions", "--corruptions", "glass_blur",
              "--severity", "1-5", "--db", db)
    assert res.code == 0, res
    store = ResultStore(db)
    (run,) = store.runs()
    per = {int(r.eps): np.array(r.per_example.correct) for r in store.results(run.run_id, with_examples=True)}
    assert len(per) == 5
    assert per[5].sum() < per[1].sum()
    clean = np.array(store.results(run.run_id, with_examples=True)[0].per_example.clean_correct)
    # plain accuracy: no example is forced wrong because it was wrong clean, or at a lower severity
    assert any((per[s] & ~clean).any() or (per[s + 1] & ~per[s]).any() for s in range(1, 5))


def test_mce_against_a_baseline_run(cli, tmp_path):
    db = tmp_path / "r.db"
    args = ("--attack", "corruptions", "--corruptions", "glass_blur,motion_blur", "--severity", "3,5",
            "--n-examples", "120", "--db", db)
    base = cli("run", "--model", "digits-cnn", *args, "--json", tmp_path / "b.json")
    assert base.code == 0, base
    base_id = json.loads((tmp_path / "b.json").read_text())["run"]["run_id"]
    cand = cli("run", "--model", "digits-cnn-at", *args, "--baseline", base_id, "--json", tmp_path / "c.json")
    assert cand.code == 0, cand
    s = json.loads((tmp_path / "c.json").read_text())["corruption_summary"]["digits-cnn-at"]
    assert s["mce"] is not None and s["baseline"].startswith("digits-cnn")
    assert "mCE" in cand.out
    bad = cli("run", "--model", "digits-cnn", *args, "--baseline", "nosuchrun")
    assert bad.code == 2


def test_bad_corruption_input(cli, tmp_path):
    r = cli("run", "--attack", "corruptions", "--corruptions", "fogg", "--db", tmp_path / "r.db")
    assert r.code == 2 and "did you mean fog" in r.err
    r = cli("run", "--attack", "corruptions", "--severity", "6", "--db", tmp_path / "r.db")
    assert r.code == 2 and "severities are 1..5" in r.err
    assert not (tmp_path / "r.db").exists()


def test_mce_arithmetic_against_alexnet():
    """AlexNet itself scores CE = 100% on every corruption and mCE = 100%."""
    acc = {c: {s: 1 - e for s, e in sev.items()} for c, sev in ALEXNET.errors.items()}
    s = summarize_corruptions(acc, 1 - ALEXNET.clean_error, ALEXNET)
    assert s.mce == pytest.approx(1.0) and s.relative_mce == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in s.ce.values())


def test_corruptions_grid_command(cli, tmp_path):
    out = tmp_path / "grid.png"
    res = cli("corruptions-grid", "--out", out, "--corruptions", "fog,contrast", "--index", "3")
    assert res.code == 0, res
    from PIL import Image
    with Image.open(out) as im:
        w, h = im.size
    assert w > h > 0  # 5 severities across, 2 corruptions down
    bad = cli("corruptions-grid", "--out", tmp_path / "missing" / "g.png")
    assert bad.code == 2


def _fake_cifar10_c(tmp_path, n=60):
    """A CIFAR-10-C-shaped folder made from the first n shared test images with our own corruptions
    (the published files are 2.5 GB and cannot be downloaded here); the clean set as an .npz."""
    import torch
    from attacks.corruptions import corrupt
    from robustness.data import load_dataset
    from .conftest import CIFAR_TEST, need
    data = load_dataset(str(need(CIFAR_TEST))).dataset
    x = torch.stack([data[i][0] for i in range(n)])
    y = np.array([data.samples[i][1] for i in range(n)])
    to_u8 = lambda t: (t.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    np.savez(tmp_path / "clean.npz", x=to_u8(x), y=y)
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    for name in ("pixelate", "contrast"):
        g = torch.Generator().manual_seed(0)
        np.save(root / f"{name}.npy", np.concatenate([to_u8(corrupt(x, name, s, generator=g)) for s in range(1, 6)]))
    np.save(root / "labels.npy", np.tile(y, 5))
    return root, tmp_path / "clean.npz"


def test_precomputed_cifar10_c_files(cli, tmp_path, shared_resnet20):
    root, clean = _fake_cifar10_c(tmp_path)
    from .conftest import CIFAR_MEAN, CIFAR_STD, ROOT
    model = ["--model", f"{ROOT / 'robustness' / 'archs.py'}:resnet20", "--weights", shared_resnet20,
             "--mean", CIFAR_MEAN, "--std", CIFAR_STD]
    pre = cli("run", *model, "--dataset", "cifar10-c", "--data-dir", root, "--clean-dataset", clean,
              "--attack", "corruptions", "--corruptions", "pixelate,contrast", "--db", tmp_path / "r.db",
              "--json", tmp_path / "pre.json")
    assert pre.code == 0, pre
    fly = cli("run", *model, "--dataset", clean, "--attack", "corruptions", "--corruptions", "pixelate,contrast",
              "--db", tmp_path / "r.db", "--json", tmp_path / "fly.json")
    assert fly.code == 0, fly
    a = {(r["attack"], r["eps"]): r["accuracy"] for r in json.loads((tmp_path / "pre.json").read_text())["results"]}
    b = {(r["attack"], r["eps"]): r["accuracy"] for r in json.loads((tmp_path / "fly.json").read_text())["results"]}
    assert a.keys() == b.keys() and len(a) == 10
    # deterministic corruptions: the same images up to uint8 rounding of the stored files
    assert all(abs(a[k] - b[k]) <= 0.05 for k in a), (a, b)
    missing = cli("run", *model, "--dataset", "cifar10-c", "--data-dir", root, "--clean-dataset", clean,
                  "--attack", "corruptions", "--corruptions", "snow", "--db", tmp_path / "r.db")
    assert missing.code == 2 and "snow.npy is missing" in missing.err
    np.save(root / "pixelate.npy", np.zeros((7, 32, 32, 3), np.uint8))
    wrong = cli("run", *model, "--dataset", "cifar10-c", "--data-dir", root, "--clean-dataset", clean,
                "--attack", "corruptions", "--corruptions", "pixelate", "--db", tmp_path / "r.db")
    assert wrong.code == 2 and "has shape (7, 32, 32, 3)" in wrong.err
    plain = cli("run", *model, "--dataset", "cifar10-c", "--data-dir", root, "--db", tmp_path / "r.db")
    assert plain.code == 2 and "--attack corruptions" in plain.err
