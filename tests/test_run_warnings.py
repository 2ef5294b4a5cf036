"""Warnings through a whole run: stored with the run, exported in the JSON and printed; a normal model
triggers none, models built to mislead trigger theirs (docs/CHECKS.md explains each)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from leaderboards import ResultStore

MODELS = '''
import torch, torch.nn.functional as F
from robustness.models import create_model

def _net():
    return create_model("digits-cnn").module

class Quantized(torch.nn.Module):
    """Rounds its input to 4 levels: gradients are zero almost everywhere (masked)."""
    def __init__(self):
        super().__init__(); self.net = _net()
    def forward(self, x):
        return self.net(torch.round(x * 3) / 3)

class Softmaxed(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.net = _net()
    def forward(self, x):
        return F.softmax(self.net(x), dim=1)

class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.net = _net()
    def forward(self, x):
        return self.net(x + 0.2 * torch.randn_like(x))

def quantized(): return Quantized()
def softmaxed(): return Softmaxed()
def noisy(): return Noisy()
'''


@pytest.fixture
def model_file(tmp_path) -> Path:
    f = tmp_path / "tricky.py"
    f.write_text(MODELS)
    return f


def _run(cli, tmp_path, model: str, *extra: str) -> tuple[set, dict]:
    out = tmp_path / f"{model.rsplit(':', 1)[-1]}.json"
    res = cli("run", "--model", model, "--dataset", "digits", "--eps", "0.05,0.1", "--n-examples", "120",
              "--db", tmp_path / "r.db", "--json", out, *extra)
    assert res.code == 0, res
    doc = json.loads(out.read_text())
    return {(w["code"], w["attack"]) for w in doc["warnings"]}, {"doc": doc, "out": res.out}


def test_normal_models_trigger_no_warning(cli, tmp_path):
    for m in ("digits-cnn", "digits-cnn-at"):
        codes, got = _run(cli, tmp_path, m)
        assert codes == set(), got["doc"]["warnings"]
        assert "WARNING" not in got["out"]


def test_masked_gradients_warn_for_every_gradient_attack(cli, tmp_path, model_file):
    codes, got = _run(cli, tmp_path, f"{model_file}:quantized")
    assert ("gradient_masking", "fgsm") in codes and ("gradient_masking", "pgd") in codes
    assert "WARNING [gradient_masking]" in got["out"]
    store = ResultStore(tmp_path / "r.db")
    run_id = got["doc"]["run"]["run_id"]
    assert {w["code"] for w in store.warnings(run_id)} >= {"gradient_masking"}


def test_probability_outputs_warn(cli, tmp_path, model_file):
    codes, _ = _run(cli, tmp_path, f"{model_file}:softmaxed")
    assert "probability_outputs" in {c for c, _ in codes}


def test_randomized_forward_warns(cli, tmp_path, model_file):
    codes, _ = _run(cli, tmp_path, f"{model_file}:noisy", "--attack", "pgd")
    assert "randomized_forward" in {c for c, _ in codes}
