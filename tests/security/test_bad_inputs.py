"""One table of bad inputs: each is one line on stderr and exit code 2, and leaves the results store
byte for byte as it was (or, for a new --db, absent). Add a row for every new option.

Placeholders in a row: {db} a store with two complete runs {a} and {b} of the same examples; {new} a
store path that does not exist yet; {tmp} the test's folder; {f:NAME} a file from FILES written there."""
from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import numpy as np
import pytest

from leaderboards import ResultStore
from leaderboards.synthetic import add_synthetic_run


def _npz(x: np.ndarray, y: np.ndarray):
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, x=x, y=y)
    return write


_IMGS = np.random.RandomState(0).rand(24, 1, 8, 8).astype(np.float32)
_LABELS = list(range(10)) * 2 + [1, 2, 3]   # every digit class present, so only the bad label is wrong

FILES = {
    "labels_negative.npz": _npz(_IMGS, np.array(_LABELS + [-1])),
    "labels_fraction.npz": _npz(_IMGS, np.array(_LABELS + [3.5])),
    "labels_text.npz": _npz(_IMGS, np.array([str(v) for v in _LABELS + [4]])),
    "suite_fifty.yaml": "models: [digits-cnn]\nsettings: {n_examples: fifty}\n",
    "suite_seed.yaml": "models: [digits-cnn]\nsettings: {seed: abc}\n",
    "suite_attacks.yaml": "models: [digits-cnn]\nattacks: 5\n",
    "suite_batch.yaml": "models: [digits-cnn]\nsettings: {batch_size: -3}\n",
    "suite_eps.yaml": "models: [digits-cnn]\nattacks: [{attack: fgsm, eps: [0.1, lots]}]\n",
    "suite_models.yaml": "models: digits-cnn\n",
    "suite_second_unknown.yaml": "models: [digits-cnn, no-such-model]\nattacks: [fgsm]\n"
                                 "settings: {n_examples: 8}\n",
    "suite_second_attack_unknown.yaml": "models: [digits-cnn]\nattacks: [fgsm, no-such-attack]\n"
                                        "settings: {n_examples: 8}\n",
    "empty.db": "",
    "fixed_batch.py": "import torch\n\n\nclass Fixed(torch.nn.Module):\n"
                      "    def __init__(self):\n        super().__init__()\n"
                      "        self.fc = torch.nn.Linear(64, 10)\n\n"
                      "    def forward(self, x):\n        return self.fc(x.reshape(4, 64))   # batches of 4 only\n\n\n"
                      "def make():\n    return Fixed()\n",
}

RUN = "run --dataset digits --attack fgsm --eps 0.1 --n-examples 8 --db {new}"

CASES = [
    # compare: a gate that cannot fail is refused
    ("compare {a} {b} --db {db} --max-drop nan", "max-drop-nan"),
    ("compare {a} {b} --db {db} --max-drop inf", "max-drop-inf"),
    ("compare {a} {b} --db {db} --max-drop -inf", "max-drop-minus-inf"),
    ("compare {a} {b} --db {db} --max-drop -1", "max-drop-negative"),
    ("compare {a} {b} --db {db} --alpha nan", "alpha-nan"),
    # outputs
    ("leaderboard --db {db} --out {tmp}", "leaderboard-out-folder"),
    ("leaderboard --db {db} --out {db}", "leaderboard-out-onto-store"),
    ("compare {a} {b} --db {db} --junit {db}", "junit-onto-store"),
    ("compare {a} {b} --db {db} --junit {tmp}/no/such/j.xml", "junit-missing-folder"),
    ("plot --db {db} --kind eps --out {tmp}/no/such/p.png", "plot-missing-folder"),
    # stores: an empty file is not a store (and gets no schema written into it); run ids are not patterns
    ("leaderboard --db {f:empty.db}", "leaderboard-empty-file"),
    ("plot --db {f:empty.db} --kind eps --out {tmp}/p.png", "plot-empty-file"),
    ("site --db {f:empty.db} --out {tmp}/site", "site-empty-file"),
    ("compare {a} {b} --db {f:empty.db}", "compare-empty-file"),
    ("compare {a_wild} {b} --db {db}", "compare-prefix-wildcard-underscore"),
    ("compare {a_pct} {b} --db {db}", "compare-prefix-wildcard-percent"),
    ("leaderboard --db {db} --eps=", "leaderboard-eps-empty"),
    ("run --eps= --db {new}", "run-eps-empty"),
    # labels: integers in [0, classes)
    ("run --model digits-cnn --dataset {f:labels_negative.npz} --attack fgsm --eps 0.1 --db {new}", "label-negative"),
    ("run --model digits-cnn --dataset {f:labels_fraction.npz} --attack fgsm --eps 0.1 --db {new}", "label-fraction"),
    ("run --model digits-cnn --dataset {f:labels_text.npz} --attack fgsm --eps 0.1 --db {new}", "label-text"),
    ("train --arch digits-cnn --dataset {f:labels_negative.npz} --epochs 1 --val-size 4 --batch-size 4 "
     "--out {tmp}/t.pt",
     "train-label-negative"),
    # suites: wrong types, and every entry checked before the first run is stored
    ("run --config {f:suite_fifty.yaml} --db {new}", "suite-n-examples-text"),
    ("run --config {f:suite_seed.yaml} --db {new}", "suite-seed-text"),
    ("run --config {f:suite_attacks.yaml} --db {new}", "suite-attacks-number"),
    ("run --config {f:suite_batch.yaml} --db {new}", "suite-batch-negative"),
    ("run --config {f:suite_eps.yaml} --db {new}", "suite-eps-text"),
    ("run --config {f:suite_models.yaml} --db {new}", "suite-models-not-a-list"),
    ("run --config {f:suite_second_unknown.yaml} --db {new}", "suite-second-model-unknown"),
    ("run --config {f:suite_second_attack_unknown.yaml} --db {new}", "suite-second-attack-unknown"),
    ("run --model {f:fixed_batch.py}:make --dataset digits --attack fgsm --eps 0.1 --n-examples 8 --db {new}",
     "model-with-a-fixed-batch-size"),
]


@pytest.fixture
def env(tmp_path):
    db = tmp_path / "results.db"
    with ResultStore(db) as s:
        a = add_synthetic_run(s, models={"m": 0.6}, attacks=["pgd"], eps=[0.1], n=40, seed=1, run_key="k1")
        b = add_synthetic_run(s, models={"m": 0.2}, attacks=["pgd"], eps=[0.1], n=40, seed=1, run_key="k2")
    for name, content in FILES.items():
        if callable(content):
            content(tmp_path / name)
        else:
            (tmp_path / name).write_text(content)
    # LIKE patterns that match run a and nothing else: a prefix that is not a prefix of any run id
    return {"db": db, "a": a, "b": b, "new": tmp_path / "new.db", "tmp": tmp_path,
            "a_wild": "_" + a[1:6], "a_pct": a[:2] + "%" + a[-2:]}


def _argv(template: str, env: dict) -> list[str]:
    text = template
    for name in FILES:
        text = text.replace("{f:" + name + "}", str(env["tmp"] / name))
    return shlex.split(text.format(**{k: str(v) for k, v in env.items()}))


def _sha(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def _case(c):
    template, name, *marks = c
    return pytest.param(template, id=name, marks=marks)


@pytest.mark.parametrize("template", [_case(c) for c in CASES])
def test_bad_input_is_one_line_and_exit_2(template, env, cli):
    stores = [env["db"], env["new"], env["tmp"] / "empty.db"]
    before = {p: _sha(p) for p in stores}
    res = cli(*_argv(template, env))
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err, res
    for p in stores:
        assert _sha(p) == before[p], f"{p} changed"


def test_library_compare_refuses_a_gate_that_cannot_fail(env):
    from leaderboards.compare import compare, load_run
    base, cand = load_run(env["a"], env["db"]), load_run(env["b"], env["db"])
    assert compare(base, cand, max_drop=1.0).failed   # the synthetic candidate is much worse
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="max_drop"):
            compare(base, cand, max_drop=bad)


def test_a_model_with_a_fixed_batch_size_is_told_so(env, cli):
    """The probe's one line should say what is wrong (the batch size) and what to pass, not blame the images."""
    res = cli("run", "--model", f"{env['tmp'] / 'fixed_batch.py'}:make", "--dataset", "digits", "--attack", "fgsm",
              "--eps", "0.1", "--n-examples", "8", "--db", env["new"])
    assert res.code == 2 and "--batch-size" in res.err, res


# ---- error hints name commands that exist ----

def _list_choices() -> set[str]:
    import argparse
    from robustness.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    what = next(a for a in sub.choices["list"]._actions if a.dest == "what")
    return set(what.choices)


@pytest.mark.parametrize("kind", ["model", "dataset", "attack", "recipe", "factory", "architecture", "corruption",
                                  "RobustBench cifar10/Linf model"])
def test_unknown_name_hints_name_a_real_list_command(kind):
    import re
    from robustness.errors import unknown
    msg = str(unknown(kind, "zzzzzz", [f"name{i}" for i in range(40)]))
    assert "\n" not in msg and "zzzzzz" in msg
    for listed in re.findall(r"robust-bench list ([^`]+)`", msg):
        assert listed in _list_choices(), f"{kind}: the hint names `robust-bench list {listed}`, which does not exist"
    assert "list" in msg or "name0" in msg, f"{kind}: no hint at all: {msg}"


def test_unknown_factory_hint_from_the_cli(env, cli):
    res = cli("run", "--model", f"{env['tmp'] / 'fixed_batch.py'}:mak3", "--dataset", "digits", "--db", env["new"])
    assert res.code == 2 and "list factorys" not in res.err and "make" in res.err, res
