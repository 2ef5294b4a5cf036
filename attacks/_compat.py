"""The one place that papers over packaging quirks of third-party attack and model-zoo packages.

- AutoAttack: the PyPI package is `pyautoattack` (keyword-only arguments, no `verbose`,
  `run_standard_evaluation(x, y, batch_size=...)` returns a pair); the GitHub original is importable as
  `autoattack`. `import_autoattack()` returns whichever is installed.
- RobustBench 1.1.1 (PyPI) does `from autoattack import AutoAttack` and `from autoattack.state import ...`
  but depends on `pyautoattack`, which installs the module under another name; it also imports
  `pkg_resources`, gone from setuptools 81. `import_robustbench()` aliases `autoattack` to
  `pyautoattack` in `sys.modules` (only when no real `autoattack` exists) before importing it, and turns a
  missing `pkg_resources` into an ImportError that says to install `setuptools<81`.
- RobustBench's `load_model` (and timm, which it uses for some zoo entries, and torch.hub for others) call
  `torch.load` without `weights_only` or with `weights_only=False`: with `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`
  or an old torch, a zoo checkpoint runs code. `robustbench_load_model()` holds every `torch.load` made
  during the call to `weights_only=True`, keeping the package's own per-model state-dict handling.
"""
from __future__ import annotations

import importlib
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from .errors import AttackUnavailable


def import_autoattack() -> ModuleType:
    """The AutoAttack package: `pyautoattack` (PyPI) or `autoattack` (GitHub). AttackUnavailable (an
    ImportError) if neither."""
    for name in ("pyautoattack", "autoattack"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise AttackUnavailable("AutoAttack is not installed: pip install 'robust-bench[zoo]' (or pip install pyautoattack)")


def _alias_autoattack() -> None:
    try:
        importlib.import_module("autoattack")
        return
    except ImportError:
        pass
    try:
        pkg = importlib.import_module("pyautoattack")
    except ImportError:
        return  # robustbench's own import error will say what is missing
    sys.modules["autoattack"] = pkg
    for sub in ("state", "autopgd_base", "fab_pt", "square", "checks", "other_utils", "autoattack"):
        try:
            sys.modules[f"autoattack.{sub}"] = importlib.import_module(f"pyautoattack.{sub}")
        except ImportError:
            pass


def import_robustbench() -> ModuleType:
    """`robustbench`, importable despite its PyPI packaging (see the module docstring)."""
    _alias_autoattack()
    try:
        with warnings.catch_warnings():   # its deprecation notice would be a second stderr line per run
            warnings.simplefilter("ignore")
            import pkg_resources  # noqa: F401  (robustbench.loaders needs it)
    except ImportError:
        raise ImportError("robustbench needs pkg_resources, removed in setuptools 81: "
                          "pip install 'setuptools<81'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module("robustbench")
        except ImportError as e:
            raise ImportError(f"robustbench is not importable ({e}): pip install 'robust-bench[zoo]'") from None


_LOAD_LOCK = threading.Lock()


@contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Every `torch.load` in the block unpickles tensors and plain containers only (weights_only=True),
    whatever the caller passed: a checkpoint holding anything else fails with UnpicklingError."""
    import torch
    with _LOAD_LOCK:
        original = torch.load

        def load(*args: Any, **kwargs: Any) -> Any:
            kwargs["weights_only"] = True
            return original(*args, **kwargs)
        torch.load = load  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.load = original  # type: ignore[assignment]


def robustbench_load_model(name: str, model_dir: str | Path, dataset: str, threat_model: str, *,
                           allow_unsafe: bool = False) -> Any:
    """`robustbench.utils.load_model`, with its checkpoint reads held to weights_only=True unless
    `allow_unsafe` (the CLI's --unsafe-load)."""
    import_robustbench()
    from robustbench.utils import load_model
    if allow_unsafe:
        return load_model(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    with weights_only_torch_load():
        return load_model(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
