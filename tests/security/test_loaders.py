"""No code runs on load without --unsafe-load: crafted hostile files for every loader path (torch.export,
TorchScript, torch.load checkpoints, our own checkpoints, RobustBench model dirs, `train --model`). Each
payload writes a marker file; the marker must never appear, and the refusal is one line with exit 2."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, python_cmd
from tests.security import craft

EXPORT_VARIANTS = ("weight_use_pickle", "sample_inputs", "legacy_weights", "opaque_constant", "sympy_expr",
                   "guards_code", "old_format", "aotinductor", "second_program", "renamed_pt")


@pytest.fixture(scope="module")
def export_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    marker = tmp / "MARKER"
    logging.getLogger("torch.export").setLevel(logging.ERROR)   # torch logs each failed attempt
    return craft.export_variants(tmp, marker), marker


def _one_line_refusal(res) -> None:
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res
    assert "Traceback" not in res.err


@pytest.mark.parametrize("variant", EXPORT_VARIANTS)
def test_hostile_export_archive_runs_nothing(export_files, variant, cli, tmp_path):
    files, marker = export_files
    marker.unlink(missing_ok=True)
    res = cli("run", "--model", files[variant], "--dataset", "digits", "--attack", "fgsm", "--eps", "0.1",
              "--n-examples", "8", "--db", tmp_path / "r.db")
    assert not marker.exists(), f"{variant}: the payload ran"
    _one_line_refusal(res)
    assert "--unsafe-load" in res.err
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("variant", ("weight_use_pickle", "guards_code", "renamed_pt"))
def test_hostile_export_archive_through_train(export_files, variant, cli, tmp_path):
    files, marker = export_files
    marker.unlink(missing_ok=True)
    res = cli("train", "--model", files[variant], "--dataset", "digits", "--epochs", "1", "--out",
              tmp_path / "ft.pt")
    assert not marker.exists(), f"{variant}: the payload ran through train --model"
    _one_line_refusal(res)


def test_plain_exports_still_load_without_the_flag(tmp_path):
    """The vetting must not refuse what torch.export.save writes (static and dynamic batch)."""
    from robustness.models import create_model
    net = craft.digits_net()
    x = torch.rand(3, 1, 8, 8)
    for dynamic in (True, False):
        path = craft.export_archive(tmp_path / f"m{int(dynamic)}.pt2", dynamic=dynamic)
        loaded = create_model(str(path))
        assert loaded.info.source == "export"
        batch = x if dynamic else x[:2]
        with torch.no_grad():
            assert torch.allclose(loaded.module(batch), net(batch), atol=1e-5)


def test_unsafe_load_still_opens_an_archive_the_vetting_refuses(tmp_path):
    """--unsafe-load is the documented way past the refusal: a weight stored as a pickle (what
    torch.export.save does for tensor subclasses) makes a valid archive that needs full unpickling."""
    from robustness.errors import UserError
    from robustness.models import ModelOptions, create_model
    net = craft.digits_net()
    good = craft.export_archive(tmp_path / "g.pt2")
    pickled = craft.rewrite_zip(good, tmp_path / "pickled_weight.pt2", craft.pickle_first_weight)
    with pytest.raises(UserError, match="unsafe-load"):
        create_model(str(pickled))
    loaded = create_model(str(pickled), ModelOptions(allow_unsafe=True))
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), net(x), atol=1e-5)


def test_a_graph_calling_a_python_function_is_refused_before_it_runs(tmp_path):
    """Second layer: torch's verifier already refuses such graphs; ours holds even if it did not."""
    import os as _os
    from robustness.models.export_archive import Refused, vet_program
    program = torch.export.export(craft.digits_net(), (torch.rand(2, 1, 8, 8),))
    vet_program(program)   # a plain program passes
    node = next(n for n in program.graph_module.graph.nodes if n.op == "call_function")
    node.target = _os.system
    with pytest.raises(Refused, match="system"):
        vet_program(program)


# ---- TorchScript ----

@pytest.mark.parametrize("variant", ("data.pkl", "constants.pkl", "code"))
def test_hostile_torchscript_runs_nothing(variant, cli, tmp_path):
    marker = tmp_path / "MARKER"
    path = craft.torchscript_variants(tmp_path, marker)[variant]
    res = cli("run", "--model", path, "--dataset", "digits", "--attack", "fgsm", "--eps", "0.1",
              "--n-examples", "8", "--db", tmp_path / "r.db")
    assert not marker.exists(), f"{variant}: the payload ran"
    _one_line_refusal(res)


# ---- torch.load paths: --weights for a factory / torchvision, our own checkpoints ----

def _weights_files(tmp: Path, marker: Path) -> dict[str, Path]:
    files = {}
    files["zip_bare"] = tmp / "zip_bare.pt"
    files["zip_bare"].write_bytes(craft.payload_torch_save(marker))
    files["zip_in_state_dict"] = tmp / "zip_sd.pt"
    files["zip_in_state_dict"].write_bytes(craft.payload_torch_save(marker, lambda p: {"state_dict": {"w": p}}))
    files["legacy_pickle"] = tmp / "legacy.pt"
    files["legacy_pickle"].write_bytes(craft.payload_pickle(marker))
    files["own_checkpoint"] = tmp / "own.pt"
    files["own_checkpoint"].write_bytes(craft.payload_torch_save(
        marker, lambda p: {"robust_bench_checkpoint": 1, "arch": "digits-cnn", "arch_kwargs": {},
                           "state_dict": {}, "meta": {"extra": p}}))
    return files


WEIGHT_FILES = ("zip_bare", "zip_in_state_dict", "legacy_pickle", "own_checkpoint")
ARCHS = ROOT / "robustness" / "archs.py"


@pytest.mark.parametrize("variant", WEIGHT_FILES)
@pytest.mark.parametrize("how", ("factory_weights", "model_file", "torchvision_weights", "train_model"))
def test_hostile_checkpoints_run_nothing(variant, how, cli, tmp_path):
    marker = tmp_path / "MARKER"
    f = _weights_files(tmp_path, marker)[variant]
    common = ["--dataset", "digits", "--attack", "fgsm", "--eps", "0.1", "--n-examples", "8", "--db", tmp_path / "r.db"]
    args = {"factory_weights": ["run", "--model", f"{ARCHS}:DigitsCNN", "--weights", f, *common],
            "model_file": ["run", "--model", f, *common],
            "torchvision_weights": ["run", "--model", "squeezenet1_1", "--weights", f, *common],
            "train_model": ["train", "--model", f, "--dataset", "digits", "--epochs", "1",
                            "--out", tmp_path / "ft.pt"]}[how]
    res = cli(*args)
    assert not marker.exists(), f"{variant} via {how}: the payload ran"
    _one_line_refusal(res)


@pytest.mark.slow   # two subprocesses: ~20 s on the shared machine
def test_checkpoints_hold_with_torch_forced_to_full_unpickling(tmp_path):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 flips torch.load's default: every load must say weights_only=True."""
    marker = tmp_path / "MARKER"
    files = _weights_files(tmp_path, marker)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONPATH": str(ROOT)}
    for how, args in (("model_file", ["--model", files["own_checkpoint"]]),
                      ("factory_weights", ["--model", f"{ARCHS}:DigitsCNN", "--weights", files["zip_bare"]])):
        proc = subprocess.run([*python_cmd(), "run", *map(str, args), "--dataset", "digits", "--attack", "fgsm",
                               "--eps", "0.1", "--n-examples", "8", "--db", str(tmp_path / "r.db")],
                              env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert not marker.exists(), f"{how}: the payload ran with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (how, proc.stderr[-2000:])


# ---- RobustBench model directories ----

def _need_robustbench() -> None:
    from attacks._compat import import_robustbench
    try:
        import_robustbench()
    except ImportError as e:
        pytest.skip(str(e))


def _zoo_with(tmp: Path, name: str, payload: bytes) -> Path:
    zoo = tmp / "zoo"
    (zoo / "cifar10" / "Linf").mkdir(parents=True)
    (zoo / "cifar10" / "Linf" / f"{name}.pt").write_bytes(payload)
    return zoo


@pytest.mark.slow   # a subprocess importing robustbench: ~25 s on the shared machine
def test_hostile_robustbench_checkpoint_runs_nothing_even_when_torch_defaults_to_pickle(tmp_path):
    """robustbench calls torch.load without weights_only: with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (or an old
    torch) its own loader unpickles anything. Ours must not."""
    _need_robustbench()
    marker = tmp_path / "MARKER"
    zoo = _zoo_with(tmp_path, "Wong2020Fast", craft.payload_torch_save(marker))
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*python_cmd(), "run", "--model", "robustbench:Wong2020Fast", "--weights", str(zoo),
                           "--attack", "fgsm", "--eps", "1/255", "--n-examples", "4", "--db", str(tmp_path / "r.db")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert not marker.exists(), "the zoo checkpoint's payload ran"
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--unsafe-load" in lines[0], proc.stderr[-3000:]
    assert not (tmp_path / "r.db").exists()


def test_robustbench_weights_load_as_robustbench_loads_them(tmp_path):
    """Same module outputs as robustbench.utils.load_model on the same file (the package's own loader is
    the reference), for a checkpoint in the zoo's {'state_dict': {'module.' ...}} layout."""
    _need_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import load_model
    from robustness.models import ModelOptions, create_model
    torch.manual_seed(0)
    net = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]["Wong2020Fast"]["model"]()
    import io
    buf = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, buf)
    zoo = _zoo_with(tmp_path, "Wong2020Fast", buf.getvalue())
    ours = create_model("robustbench:Wong2020Fast", ModelOptions(weights=str(zoo))).module.eval()
    ref = load_model("Wong2020Fast", model_dir=str(zoo), dataset="cifar10", threat_model="Linf").eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
