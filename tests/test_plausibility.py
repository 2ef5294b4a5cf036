"""Implausible results warn (issue 17): a clean accuracy near chance, robust equal to clean at every eps,
a clean accuracy far below the one the checkpoint records. Each fires on a model built for it, through
the real engine, and stays silent on the built-in digits-cnn."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attacks.sanity import CODES, PLAUSIBILITY_CODES, Recorded, ResultRow, plausibility_checks

from .conftest import CIFAR_MEAN, CIFAR_STD

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "robustness" / "weights"

MODELS = '''
import torch
import torch.nn as nn
from robustness.archs import DigitsCNN


def random_init():
    torch.manual_seed(0)      # a fixed draw: 9.4% on the digits test set
    return DigitsCNN()


def net():
    return DigitsCNN()


class Columns(nn.Module):
    """Robust by construction on the column images: the class is the brightest column, a margin of 0.8
    that an L-inf perturbation of eps moves by at most 2 eps."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return self.scale * x.mean(dim=(1, 2))


def columns():
    return Columns()
'''


def _codes(findings, model=None) -> list[str]:
    return sorted(f.code for f in findings if model is None or f.model == model)


# ---- the rules on rows ----

def _rows(model, clean, accs, *, n=200, k=10, recorded=None, eps=(0.05, 0.1)):
    return [ResultRow(model, attack, e, a, n, n_classes=k, clean_accuracy=clean, recorded=recorded)
            for attack, per in accs.items() for e, a in zip(eps, per)]


def test_rules_on_rows():
    assert set(PLAUSIBILITY_CODES) <= set(CODES)
    # near chance: 10 classes, the bound is 15%; 2 classes, 60%
    assert _codes(plausibility_checks(_rows("m", 0.12, {"pgd": [0.05, 0.0]}))) == ["clean_near_chance"]
    assert _codes(plausibility_checks(_rows("m", 0.61, {"pgd": [0.5, 0.2]}, k=2))) == ["clean_near_chance"]
    assert plausibility_checks(_rows("m", 0.70, {"pgd": [0.5, 0.2]}, k=2)) == []
    assert plausibility_checks(_rows("m", 0.97, {"pgd": [0.6, 0.2]})) == []
    # robust equal to clean: every attack at every eps, not when one eps broke one example
    same = _rows("m", 0.9, {"fgsm": [0.9, 0.9], "pgd": [0.9, 0.9]})
    assert _codes(plausibility_checks(same)) == ["robust_equals_clean"]
    assert plausibility_checks(_rows("m", 0.9, {"fgsm": [0.9, 0.9], "pgd": [0.9, 0.895]})) == []
    assert plausibility_checks(_rows("m", 0.9, {"pgd": [0.9, 0.9]}, n=10)) == []       # 9 examples: too few
    # far below the recorded: 38.4% measured on 200 against best_prec1 = 91.78
    rec = Recorded(0.9178, None, "resnet20.th (best_prec1 = 91.78)")
    found = plausibility_checks(_rows("m", 0.384, {"pgd": [0.0, 0.0]}, recorded=rec))
    assert _codes(found) == ["clean_below_recorded"] and "best_prec1 = 91.78" in found[0].message
    assert plausibility_checks(_rows("m", 0.90, {"pgd": [0.1, 0.0]}, recorded=rec)) == []      # 1.8 points
    # 10.5 points below on 50 examples: within the noise of 50 examples (SE 5.4 points)
    assert plausibility_checks(_rows("m", 0.8128, {"pgd": [0.1, 0.0]}, n=50, recorded=rec)) == []
    # the recorded number's own examples count: 90% of 10 is no evidence against 78% of 2000 (z = 1.3)
    assert plausibility_checks(_rows("m", 0.78, {"pgd": [0.1, 0.0]}, n=2000, recorded=Recorded(0.9, 10))) == []
    assert _codes(plausibility_checks(_rows("m", 0.78, {"pgd": [0.1, 0.0]}, n=2000,
                                            recorded=Recorded(0.9, 2000)))) == ["clean_below_recorded"]


# ---- through the engine ----

@pytest.fixture
def models_py(tmp_path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path


def _run(cli, tmp_path, *args):
    out = tmp_path / f"run{len(list(tmp_path.glob('run*.json')))}.json"
    r = cli("run", "--device", "cpu", "--db", tmp_path / "r.db", "--json", out, *args)
    assert r.code == 0, r
    return r, json.loads(out.read_text())


def test_clean_near_chance_fires_on_a_random_initialization(cli, tmp_path, models_py):
    r, doc = _run(cli, tmp_path, "--model", f"digits-cnn,{models_py}:random_init", "--dataset", "digits",
                  "--attack", "fgsm,pgd", "--steps", "5")
    by = {w["model"]: w["code"] for w in doc["warnings"] if w["code"] in PLAUSIBILITY_CODES}
    assert by == {"models:random_init": "clean_near_chance"}, doc["warnings"]
    assert "WARNING [clean_near_chance] model=models:random_init" in r.out
    from leaderboards import ResultStore
    with ResultStore(tmp_path / "r.db") as s:
        stored = s.warnings(doc["run"]["run_id"])
    assert [w["model"] for w in stored if w["code"] == "clean_near_chance"] == ["models:random_init"]


def _column_images(path: Path, n: int = 60) -> Path:
    rng = np.random.RandomState(0)
    y = np.arange(n) % 10
    x = rng.uniform(0, 0.2, size=(n, 1, 10, 10)).astype(np.float32)
    x[np.arange(n), 0, :, y] = 1.0
    np.savez(path, x=x, y=y)
    return path


def test_robust_equals_clean_fires_on_a_model_no_attack_can_move(cli, tmp_path, models_py):
    data = _column_images(tmp_path / "columns.npz")
    r, doc = _run(cli, tmp_path, "--model", f"{models_py}:columns", "--dataset", data, "--attack", "fgsm,pgd",
                  "--steps", "10", "--eps", "0.05,0.1,0.2")
    assert {x["accuracy"] for x in doc["results"]} == {1.0}
    codes = [w["code"] for w in doc["warnings"]]
    assert codes.count("robust_equals_clean") == 1 and "clean_near_chance" not in codes, codes
    assert "WARNING [robust_equals_clean]" in r.out
    # where the margin can be crossed (eps 0.5: 1 - 2 eps = 0), accuracy falls and the warning is gone
    _, doc = _run(cli, tmp_path, "--model", f"{models_py}:columns", "--dataset", data, "--attack", "pgd",
                  "--steps", "10", "--eps", "0.05,0.5")
    assert "robust_equals_clean" not in [w["code"] for w in doc["warnings"]]


def test_clean_below_recorded_fires_on_a_wrong_normalization(cli, tmp_path, models_py):
    state = torch.load(WEIGHTS / "digits-cnn.pt", weights_only=True)["state_dict"]
    ckpt = tmp_path / "digits.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 99.17}, ckpt)
    common = ("--model", f"{models_py}:net", "--weights", ckpt, "--dataset", "digits", "--attack", "fgsm")
    _, doc = _run(cli, tmp_path, *common, "--mean", "0.6", "--std", "0.3")
    found = [w for w in doc["warnings"] if w["code"] == "clean_below_recorded"]
    assert len(found) == 1 and "digits.th (best_prec1 = 99.17)" in found[0]["message"], doc["warnings"]
    _, doc = _run(cli, tmp_path, *common)       # as trained: silent
    assert not [w for w in doc["warnings"] if w["code"] in PLAUSIBILITY_CODES], doc["warnings"]


def test_silent_on_the_built_in_models(cli, tmp_path):
    _, doc = _run(cli, tmp_path, "--model", "digits-cnn,digits-cnn-at")
    assert not [w for w in doc["warnings"] if w["code"] in PLAUSIBILITY_CODES], doc["warnings"]


def test_the_shared_resnet20_without_its_normalization(cli, tmp_path, shared_resnet20, cifar_test):
    """The issue's case: the pretrained ResNet-20 (best_prec1 = 91.78 in its file) without --mean/--std."""
    arch = ROOT / "robustness" / "archs.py"
    common = ("--model", f"{arch}:resnet20", "--weights", shared_resnet20, "--dataset", cifar_test,
              "--attack", "fgsm", "--eps", "0", "--n-examples", "200", "--batch-size", "200")
    r, doc = _run(cli, tmp_path, *common)
    clean = doc["results"][0]["clean_accuracy"]
    assert clean < 0.6
    assert "WARNING [clean_below_recorded]" in r.out and "best_prec1 = 91.78" in r.out
    _, doc = _run(cli, tmp_path, *common, "--mean", CIFAR_MEAN, "--std", CIFAR_STD)
    assert doc["results"][0]["clean_accuracy"] > 0.85
    assert not [w for w in doc["warnings"] if w["code"] in PLAUSIBILITY_CODES], doc["warnings"]
