"""Where models come from: our checkpoints (built-ins included), torchvision, RobustBench, a user's
Python file, TorchScript and torch.export archives. Each returns a `LoadedModel` whose module takes
[0, 1] pixels."""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..archs import ARCHS, build_arch
from ..errors import UserError, unknown
from .base import LoadedModel, ModelInfo, Normalized, Preprocess, state_dict_sha256
from .checkpoints import archive_kind, extract_state_dict, is_own_checkpoint, load_file, load_into


@dataclass(frozen=True)
class ModelOptions:
    """Options that complete a model spec (the CLI's --weights, --mean, --std, --num-classes, --unsafe-load)."""
    weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    allow_unsafe: bool = False
    threat: str = "Linf"


def _normalize(module: nn.Module, mean, std) -> nn.Module:
    if mean is None and std is None:
        return module
    if mean is None or std is None:
        raise UserError("--mean and --std go together (one value per channel each)")
    try:
        return Normalized(module, mean, std)
    except ValueError as e:
        raise UserError(f"bad normalization: {e}") from None


# accuracy keys other projects' checkpoints carry (akamaster's CIFAR ResNets: best_prec1 in percent)
_ACCURACY_KEYS = ("best_prec1", "best_acc1", "best_acc", "test_acc", "test_accuracy", "val_acc", "accuracy", "acc")


def recorded_accuracy(blob: Any, path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The accuracy a checkpoint file records about itself, as a fraction, and where it was read: the runs'
    clean accuracy is checked against it (attacks.sanity clean_below_recorded). Values above 1 are percent."""
    if not isinstance(blob, Mapping):
        return None
    for key in _ACCURACY_KEYS:
        v = blob.get(key)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = float(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 100:
            return {"accuracy": round(float(v) / 100 if v > 1 else float(v), 6), "n": None,
                    "source": f"{Path(path).name} ({key} = {v:.6g})"}
    return None


def _own_recorded(meta: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """A checkpoint of ours records the clean accuracy on its validation split (metrics.val_clean)."""
    m = meta.get("metrics") if isinstance(meta.get("metrics"), Mapping) else {}
    v, n = m.get("val_clean"), m.get("val_n")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1:
        return {"accuracy": float(v), "n": int(n) if isinstance(n, int) and n > 0 else None,
                "source": f"{Path(path).name} (metrics.val_clean, on its validation split)"}
    return None


def file_sha256(path: str | os.PathLike[str] | None) -> str | None:
    """The sha256 of a weights file's bytes (the weights digest is of the tensors, whatever the layout):
    what someone holding the file can check with `sha256sum`."""
    if path is None:
        return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _with_file(extra: dict[str, Any], path: str | os.PathLike[str] | None) -> dict[str, Any]:
    digest = file_sha256(path)
    return {**extra, "file_sha256": digest} if digest else extra


def _train_data_dir(meta: Mapping[str, Any]) -> str | None:
    """The --data-dir a checkpoint of ours was trained with (its meta.train_spec), the evaluation's default."""
    spec = meta.get("train_spec") if isinstance(meta.get("train_spec"), Mapping) else {}
    d = spec.get("data_dir")
    return d if isinstance(d, str) and d else None


# ---- our own checkpoints (the built-ins are such files) ----

def from_own_checkpoint(blob: dict[str, Any], path: str, name: str, opts: ModelOptions) -> LoadedModel:
    """Our checkpoint format. `arch` is a registry name, or (fine-tuned foreign models, written by
    `robust-bench train`) `torchvision:NAME` / `robustbench:DATASET/THREAT/NAME`, re-created from that source
    with the head the training put in (`arch_kwargs` num_classes and head), or `file:PATH:FACTORY`, which is
    refused with the flags that load it (a checkpoint never imports code)."""
    arch = blob.get("arch")
    meta = dict(blob.get("meta") or {})
    kwargs = dict(blob.get("arch_kwargs") or {})
    if isinstance(arch, str) and arch in ARCHS:
        module = build_arch(arch, **kwargs)
    elif isinstance(arch, str) and arch.partition(":")[0] in _FOREIGN_ARCHS:
        module = _rebuild_foreign(arch, kwargs, path, meta)
    else:
        raise UserError(f"{path} was written for architecture {arch!r}, which this robust-bench does not know")
    load_into(module, blob["state_dict"], path)
    mean, std = meta.get("mean"), meta.get("std")
    if opts.mean is not None or opts.std is not None:
        mean, std = opts.mean, opts.std
    module = _normalize(module, tuple(mean) if mean else None, tuple(std) if std else None)
    size = meta.get("input_size")
    pre = meta.get("preprocess")
    info = ModelInfo(name=name, source="checkpoint", arch=arch, num_classes=meta.get("num_classes"),
                     in_channels=size[0] if size else None, input_size=tuple(size[1:]) if size else None,
                     mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
                     classes=tuple(meta["classes"]) if meta.get("classes") else None, dataset=meta.get("dataset"),
                     preprocess=Preprocess(**pre) if isinstance(pre, dict) else None,
                     weights_sha256=state_dict_sha256(blob["state_dict"]), weights_path=str(path),
                     extra=_with_file({**{k: v for k, v in meta.items() if k in ("recipe", "metrics", "paper", "extra_data",
                                                                    "trained_with", "threat_model", "training_failure")},
                            "arch_kwargs": kwargs,
                            **({"recorded_accuracy": rec} if (rec := _own_recorded(meta, path)) else {}),
                            **({"data_dir": d} if (d := _train_data_dir(meta)) else {})}, path))
    return LoadedModel(module, info)


_FOREIGN_ARCHS = ("torchvision", "robustbench", "file")


def _rebuild_foreign(arch: str, kwargs: dict[str, Any], path: str, meta: dict[str, Any]) -> nn.Module:
    """The architecture of a fine-tuned torchvision / RobustBench model, with the replaced head if any."""
    kind, _, rest = arch.partition(":")
    num_classes, head = kwargs.get("num_classes"), kwargs.get("head")
    if kind == "file":
        file, _, factory = rest.rpartition(":")
        flags = f"--model {file}:{factory} --weights {path}"
        if num_classes is not None:
            flags += f" --num-classes {num_classes}"
        if meta.get("mean") and meta.get("std"):
            flags += " --mean " + ",".join(f"{v:g}" for v in meta["mean"]) + " --std " + \
                     ",".join(f"{v:g}" for v in meta["std"])
        raise UserError(f"{path} holds a model fine-tuned from {file}:{factory}, an architecture outside "
                        f"robust-bench's registry, and a checkpoint never imports code: evaluate it with {flags}")
    if kind == "torchvision":
        import torchvision
        try:
            net = torchvision.models.get_model(rest, weights=None)
        except Exception as e:  # noqa: BLE001 - unknown name in this torchvision version
            raise UserError(f"{path} needs torchvision model {rest!r}, which this torchvision cannot build: "
                            f"{e}") from None
    else:
        from attacks._compat import import_robustbench
        board, _, model_name = rest.rpartition("/")
        try:
            dataset, threat = board.split("/")
            import_robustbench()
            from robustbench.model_zoo import model_dicts
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
            net = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][model_name]["model"]()
        except ImportError as e:
            raise UserError(f"{path} needs RobustBench's {model_name} architecture: {e}") from None
        except (KeyError, ValueError):
            raise UserError(f"{path} needs RobustBench model {rest!r}, which this robustbench does not know") from None
    if head and num_classes is not None:
        layer = net.get_submodule(head)
        if isinstance(layer, nn.Linear) and layer.out_features != num_classes:
            from defenses.finetune import replace_head
            replace_head(net, int(num_classes), head)
    return net


def from_file(path: str, opts: ModelOptions) -> LoadedModel:
    """`--model PATH`: our checkpoint, a TorchScript archive or a torch.export archive."""
    p = Path(path)
    kind = archive_kind(p)
    name = p.name
    if kind == "torchscript":
        try:
            module = torch.jit.load(str(p), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot load TorchScript model {p}: {e}") from None
        return _scripted(module, name, "torchscript", p, opts)
    if kind == "export":
        from .export_archive import load_export_module
        module = _TracedGraph(load_export_module(p, allow_unsafe=opts.allow_unsafe))
        return _scripted(module, name, "export", p, opts)
    blob = load_file(p, allow_unsafe=opts.allow_unsafe)
    if is_own_checkpoint(blob):
        return from_own_checkpoint(blob, str(p), name, opts)
    if isinstance(blob, nn.Module):  # only reachable with --unsafe-load
        return _scripted(blob, name, "pickle", p, opts)
    raise UserError(f"{p} holds weights but no architecture; pass --model path/to/arch.py:factory --weights {p}")


class _TracedGraph(nn.Module):
    """Holds a torch.export graph module, whose mode was fixed when it was exported (it refuses
    .eval()/.train()): switching modes on the holder leaves the graph alone."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> "_TracedGraph":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def _scripted(module: nn.Module, name: str, source: str, path: Path, opts: ModelOptions) -> LoadedModel:
    sd = module.state_dict()
    module = _normalize(module, opts.mean, opts.std)
    return LoadedModel(module, ModelInfo(name=name, source=source, num_classes=opts.num_classes, mean=opts.mean,
                                         std=opts.std, weights_sha256=state_dict_sha256(sd),
                                         weights_path=str(path), extra=_with_file({}, path)))


# ---- a user's architecture file: path/to/file.py:factory ----

def from_python(spec: str, opts: ModelOptions) -> LoadedModel:
    file, _, factory = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise UserError(f"architecture file not found: {path}")
    mod_name = "_robust_bench_user_" + re.sub(r"\W", "_", str(path.resolve()))
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UserError(f"cannot import {path}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file failed to import
        raise UserError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise unknown("factory", factory, names)
    kwargs = {}
    if opts.num_classes is not None:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs["num_classes"] = opts.num_classes
    try:
        net = fn(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{spec}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"{spec} returned {type(net).__name__}, not a torch.nn.Module")
    sha = None
    extra: dict[str, Any] = {}
    if opts.weights:
        blob = load_file(opts.weights, allow_unsafe=opts.allow_unsafe)
        state = extract_state_dict(blob, opts.weights)
        load_into(net, state, opts.weights)
        sha = state_dict_sha256(state)
        rec = recorded_accuracy(blob, opts.weights)
        if rec:
            extra["recorded_accuracy"] = rec
    else:
        sha = state_dict_sha256(net)
    net = _normalize(net, opts.mean, opts.std)
    info = ModelInfo(name=f"{path.stem}:{factory}", source="file", arch=f"{path.name}:{factory}",
                     num_classes=opts.num_classes, mean=opts.mean, std=opts.std, weights_sha256=sha,
                     weights_path=opts.weights, extra=_with_file(extra, opts.weights))
    return LoadedModel(net, info)


# ---- torchvision ----

def torchvision_names() -> list[str]:
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


def hub_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def from_torchvision(name: str, opts: ModelOptions) -> LoadedModel:
    """A torchvision classifier with its DEFAULT weights; their resize/crop go to the data, their
    normalization into the model."""
    import torchvision
    weights = torchvision.models.get_model_weights(name).DEFAULT
    net = torchvision.models.get_model(name, weights=None)
    if opts.weights:
        source = opts.weights
        state = extract_state_dict(load_file(opts.weights, allow_unsafe=opts.allow_unsafe), opts.weights)
    else:
        cached = hub_cache_path(weights.url)
        if not cached.is_file():
            _download(weights.url, cached, name)
        source = str(cached)
        state = extract_state_dict(load_file(cached, allow_unsafe=opts.allow_unsafe), str(cached))
    load_into(net, state, source)
    t = weights.transforms()
    crop = int(t.crop_size[0])
    pre = Preprocess(resize=int(t.resize_size[0]), crop=crop, interpolation=t.interpolation.value)
    mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    metrics = weights.meta.get("_metrics", {})
    info = ModelInfo(name=name, source="torchvision", arch=name, num_classes=len(weights.meta["categories"]),
                     in_channels=3, input_size=(crop, crop), mean=mean, std=std,
                     classes=tuple(weights.meta["categories"]), dataset="imagenet", preprocess=pre,
                     weights_sha256=state_dict_sha256(state), weights_path=source,
                     extra=_with_file({"weights": str(weights), "url": weights.url, "published": metrics}, source))
    return LoadedModel(Normalized(net, mean, std), info)


def _download(url: str, dst: Path, name: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    match = getattr(torch.hub, "HASH_REGEX", re.compile(r"-([a-f0-9]*)\.")).search(dst.name)
    try:
        torch.hub.download_url_to_file(url, str(dst), match.group(1) if match else None, progress=False)
    except Exception as e:  # noqa: BLE001 - offline, proxy, hash mismatch: all need the same advice
        raise UserError(f"weights for {name} are not in the torch hub cache ({dst}) and downloading {url} failed "
                        f"({type(e).__name__}). Download that file on a machine with internet and put it at "
                        f"{dst} (or set TORCH_HOME), or pass --weights PATH") from None


# ---- RobustBench model zoo: robustbench:[dataset/threat/]name ----

def robustbench_entry(spec: str, opts: ModelOptions) -> tuple[str, str, str]:
    """(dataset, threat, name) of a zoo entry that exists; UserError otherwise (nothing is loaded)."""
    from attacks._compat import import_robustbench
    parts = spec.split("/")
    if len(parts) == 3:
        dataset, threat, name = parts
    elif len(parts) == 1:
        dataset, threat, name = "cifar10", opts.threat, parts[0]
    else:
        raise UserError(f"robustbench model spec is robustbench:NAME or robustbench:DATASET/THREAT/NAME, got {spec!r}")
    try:
        import_robustbench()
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as e:
        raise UserError(str(e)) from None
    try:
        ds_enum, tm_enum = BenchmarkDataset(dataset), ThreatModel(threat)
    except ValueError:
        raise UserError(f"RobustBench has no {dataset}/{threat} board (data sets: cifar10, cifar100, imagenet; "
                        f"threats: Linf, L2, corruptions)") from None
    zoo = model_dicts[ds_enum][tm_enum]
    if name not in zoo:
        raise unknown(f"RobustBench {dataset}/{threat} model", name, zoo)
    return dataset, threat, name


def from_robustbench(spec: str, opts: ModelOptions) -> LoadedModel:
    dataset, threat, name = robustbench_entry(spec, opts)
    model_dir = Path(opts.weights or os.environ.get("ROBUST_BENCH_ZOO", "models"))
    path = model_dir / dataset / threat / f"{name}.pt"
    from attacks._compat import robustbench_load_model
    try:
        net = robustbench_load_model(name, model_dir, dataset, threat, allow_unsafe=opts.allow_unsafe)
    except pickle.UnpicklingError:
        where = path if path.is_file() else "its downloaded weights (timm / torch hub cache)"
        raise UserError(f"RobustBench model {name}: {where} stores Python objects, not just tensors: loading it "
                        f"would run code from the file. Re-save it as a state_dict, or pass --unsafe-load if you "
                        f"trust its source") from None
    except Exception as e:  # noqa: BLE001 - offline download failure or a corrupt file
        if path.is_file():
            raise UserError(f"cannot load RobustBench model {name} from {path}: {_first_line(e)}") from None
        raise UserError(f"RobustBench weights for {name} are not at {path} and downloading them failed "
                        f"({type(e).__name__}); put the file there or pass --weights DIR (the model dir)") from None
    size = 224 if dataset == "imagenet" else 32
    n_classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
    info = ModelInfo(name=f"robustbench:{name}", source="robustbench", arch=name, num_classes=n_classes,
                     in_channels=3, input_size=(size, size), dataset=dataset,
                     preprocess=Preprocess(resize=256, crop=224) if dataset == "imagenet" else None,
                     weights_sha256=state_dict_sha256(net), weights_path=str(path),
                     extra=_with_file({"threat_model": threat, "robustbench_board": f"{dataset}/{threat}"},
                                      path if path.is_file() else None))
    return LoadedModel(net, info)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
