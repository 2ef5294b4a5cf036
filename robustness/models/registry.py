"""`--model` resolution: one name, many sources, tried in a fixed order.

  robustbench:NAME | robustbench:DATASET/THREAT/NAME   RobustBench model zoo
  timm:NAME[:KEY=VALUE,...]                             timm's registry (models/timm_source.py)
  float:PATH                                            the float model inside a quantized checkpoint
  path/to/file.py:factory                               a user's architecture (+ --weights, --mean, --std)
  path/to/model.pt                                      our checkpoint, TorchScript or torch.export archive
  a registered name (digits-cnn, ...)                   built-ins, refused if registered twice
  a torchvision classifier name (resnet50, vit_b_16)    DEFAULT weights
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from ..errors import UserError, unknown
from .base import LoadedModel
from .checkpoints import load_file
from .derived import FLOAT_PREFIX, float_of, peek as peek_derived
from .sources import (ModelOptions, from_file, from_own_checkpoint, from_python, from_robustbench,
                      from_torchvision, robustbench_entry, torchvision_names)
from .timm_source import PREFIX as TIMM_PREFIX, check_name as check_timm_name, from_timm, parse_spec as parse_timm_spec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    loader: Callable[[ModelOptions], LoadedModel]
    dataset: str | None
    description: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, loader: Callable[[ModelOptions], LoadedModel], *, dataset: str | None,
                   description: str) -> ModelEntry:
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    entry = ModelEntry(name, loader, dataset, description)
    _MODELS[name] = entry
    return entry


def registered_models() -> list[ModelEntry]:
    return [_MODELS[k] for k in sorted(_MODELS)]


def create_model(spec: str, opts: ModelOptions | None = None) -> LoadedModel:
    """Resolve `spec` (see the module docstring) to a model in eval mode that takes [0, 1] pixels."""
    loaded = _create(spec, opts or ModelOptions())
    loaded.module.eval()
    return loaded


def _create(spec: str, opts: ModelOptions) -> LoadedModel:
    spec = spec.strip()
    if not spec:
        raise UserError("empty model name")
    if spec.startswith("robustbench:"):
        return from_robustbench(spec.split(":", 1)[1], opts)
    if spec.startswith(TIMM_PREFIX):
        return from_timm(spec[len(TIMM_PREFIX):], opts)
    if spec.startswith(FLOAT_PREFIX):
        return float_of(spec[len(FLOAT_PREFIX):], opts)
    head, sep, _ = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return from_python(spec, opts)
    if spec in _MODELS:
        return _MODELS[spec].loader(opts)
    if Path(spec).suffix or "/" in spec or Path(spec).exists():
        if not Path(spec).exists():
            raise UserError(f"model file not found: {spec}")
        return peek_derived(spec, opts) or from_file(spec, opts)
    tv = torchvision_names()
    if spec in tv:
        return from_torchvision(spec, opts)
    raise unknown("model", spec, list(_MODELS) + tv)


def check_model(spec: str, opts: ModelOptions | None = None) -> None:
    """The UserError `create_model` would raise for a name or path that resolves to nothing, without loading
    anything (a suite checks all its entries this way before the first run)."""
    opts = opts or ModelOptions()
    spec = spec.strip()
    if not spec:
        raise UserError("empty model name")
    if spec.startswith("robustbench:"):
        robustbench_entry(spec.split(":", 1)[1], opts)
        return
    if opts.weights and not Path(opts.weights).is_file():
        raise UserError(f"checkpoint not found: {opts.weights}")
    if spec.startswith(TIMM_PREFIX):
        check_timm_name(parse_timm_spec(spec[len(TIMM_PREFIX):])[0])
        return
    if spec.startswith(FLOAT_PREFIX):
        if not Path(spec[len(FLOAT_PREFIX):]).is_file():
            raise UserError(f"model file not found: {spec[len(FLOAT_PREFIX):]}")
        return
    head, sep, _ = spec.rpartition(":")
    if sep and head.endswith(".py"):
        if not Path(head).is_file():
            raise UserError(f"architecture file not found: {head}")
        return
    if spec in _MODELS:
        return
    if Path(spec).suffix or "/" in spec or Path(spec).exists():
        if not Path(spec).exists():
            raise UserError(f"model file not found: {spec}")
        return
    tv = torchvision_names()
    if spec not in tv:
        raise unknown("model", spec, list(_MODELS) + tv)


def _builtin(file: str, name: str) -> Callable[[ModelOptions], LoadedModel]:
    def load(opts: ModelOptions) -> LoadedModel:
        path = resources.files("robustness") / "weights" / file
        with resources.as_file(path) as p:
            if not p.is_file():
                raise UserError(f"built-in weights {p} are missing from this installation")
            loaded = from_own_checkpoint(load_file(p), str(p), name, opts)
        return LoadedModel(loaded.module, loaded.info.with_(source="builtin"))
    return load


register_model("digits-cnn", _builtin("digits-cnn.pt", "digits-cnn"), dataset="digits",
               description="small CNN, standard training on the 8x8 digits (built in, offline)")
register_model("digits-cnn-at", _builtin("digits-cnn-at.pt", "digits-cnn-at"), dataset="digits",
               description="small CNN, PGD adversarial training at L-inf eps 0.1 on the 8x8 digits (built in)")
