"""Our checkpoints whose model a later step changed (docs/COMPRESSION.md): fine-tuned timm models, pruned,
quantized and distilled models, separate PEFT adapters. Each re-creates its model from what the checkpoint
records (`meta` lineage keys: source, base_model, adapter, compression), so `run --model PATH` needs no other
flag, and each reports that lineage in its ModelInfo.extra (stored with every run).

- arch `timm:NAME`: re-created through timm (robustness/models/timm_source.py);
- a structured-pruning step: every Conv2d / BatchNorm / Linear / LayerNorm whose stored weights are smaller is
  re-created at the stored size (channels removed) before the weights load;
- a quantize step: the float model is rebuilt, then its int8 graph from the stored calibration
  (robustness/compression.py `quantized_model`);
- arch `adapter`: the base model (`meta.adapter.base_model`, loaded as `run` would) with the adapter's weights.

`--model float:PATH` is the float model a quantized checkpoint was made from (its weights travel in the
checkpoint): the surrogate of the transfer attack that evaluating an int8 model needs (`transfer:float:PATH:pgd`).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from ..archs import ARCHS, build_arch
from ..errors import UserError
from .base import LoadedModel, ModelInfo, Normalized, Preprocess, state_dict_sha256
from .checkpoints import META_ADAPTER, META_COMPRESSION, lineage, load_into
from .timm_source import PREFIX as TIMM_PREFIX

ADAPTER_ARCH = "adapter"
FLOAT_PREFIX = "float:"
_INFO_KEYS = ("recipe", "metrics", "paper", "extra_data", "trained_with", "threat_model", "training_failure")


def is_derived(blob: Mapping[str, Any]) -> bool:
    arch = blob.get("arch")
    return (isinstance(arch, str) and (arch.startswith(TIMM_PREFIX) or arch == ADAPTER_ARCH)) or \
        bool(lineage(blob.get("meta")))


def build_any(arch: str, kwargs: Mapping[str, Any], path: str, meta: Mapping[str, Any]) -> nn.Module:
    """The un-normalized architecture of a checkpoint: registry, timm:, torchvision:, robustbench:."""
    if arch in ARCHS:
        return build_arch(arch, **dict(kwargs))
    if arch.startswith(TIMM_PREFIX):
        from .timm_source import rebuild
        return rebuild(arch, kwargs)[0]
    from .sources import _FOREIGN_ARCHS, _rebuild_foreign
    if arch.partition(":")[0] in _FOREIGN_ARCHS:
        return _rebuild_foreign(arch, dict(kwargs), path, dict(meta))
    raise UserError(f"{path} was written for architecture {arch!r}, which this robust-bench does not know")


def shrink_to(module: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Re-create the layers whose stored weights are smaller than the architecture's (structured pruning
    removed channels); returns how many. Layers of other kinds must already fit."""
    changed = 0
    for name, m in list(module.named_modules()):
        w = state.get(f"{name}.weight" if name else "weight")
        if w is None or not hasattr(m, "weight") or m.weight is None or tuple(m.weight.shape) == tuple(w.shape):
            continue
        has_bias = getattr(m, "bias", None) is not None
        if isinstance(m, nn.Conv2d):
            new: nn.Module = nn.Conv2d(w.shape[1] * m.groups, w.shape[0], m.kernel_size, m.stride, m.padding,
                                       m.dilation, m.groups, has_bias, m.padding_mode)
        elif isinstance(m, nn.Linear):
            new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            new = type(m)(w.shape[0], eps=m.eps, momentum=m.momentum, affine=m.affine,
                          track_running_stats=m.track_running_stats)
        elif isinstance(m, nn.LayerNorm):
            new = nn.LayerNorm(tuple(w.shape), eps=m.eps, elementwise_affine=True, bias=has_bias)
        else:
            raise UserError(f"cannot re-create pruned layer {name} ({type(m).__name__})")
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, new)
        changed += 1
    return changed


def _normalize(module: nn.Module, mean, std) -> nn.Module:
    if mean is None or std is None:
        return module
    return Normalized(module, tuple(mean), tuple(std))


def from_derived(blob: Mapping[str, Any], path: str, name: str, opts) -> LoadedModel:
    """A derived checkpoint (see the module docstring) as a model taking [0, 1] pixels."""
    arch, meta = blob.get("arch"), dict(blob.get("meta") or {})
    kwargs = dict(blob.get("arch_kwargs") or {})
    if arch == ADAPTER_ARCH:
        return _from_adapter(blob, path, name, opts)
    if not isinstance(arch, str):
        raise UserError(f"{path} names no architecture")
    module = build_any(arch, kwargs, path, meta)
    steps = list(meta.get(META_COMPRESSION) or [])
    state = blob["state_dict"]
    if any(s.get("structured") for s in steps):
        shrink_to(module, state)
    load_into(module, state, path)
    mean, std = meta.get("mean"), meta.get("std")
    if opts.mean is not None or opts.std is not None:
        mean, std = opts.mean, opts.std
    full = _normalize(module, mean, std)
    sha = state_dict_sha256(state)
    if steps and steps[-1].get("method") == "quantize":
        from ..compression import quantized_model
        full = quantized_model(full, steps[-1], path)
        sha = state_dict_sha256({**state, **{f"quantization.{k}": v for k, v in steps[-1]["observers"].items()}})
    return LoadedModel(full, _info(meta, name, arch, kwargs, mean, std, sha, path))


def _info(meta: Mapping[str, Any], name: str, arch: str, kwargs: Mapping[str, Any], mean, std, sha: str,
          path: str) -> ModelInfo:
    size = meta.get("input_size")
    pre = meta.get("preprocess")
    extra = {k: v for k, v in meta.items() if k in _INFO_KEYS}
    extra.update(_jsonable(lineage(meta)))
    extra["arch_kwargs"] = dict(kwargs)
    return ModelInfo(name=name, source="checkpoint", arch=arch, num_classes=meta.get("num_classes"),
                     in_channels=size[0] if size else None, input_size=tuple(size[1:]) if size else None,
                     mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
                     classes=tuple(meta["classes"]) if meta.get("classes") else None, dataset=meta.get("dataset"),
                     preprocess=Preprocess(**pre) if isinstance(pre, dict) else None,
                     weights_sha256=sha, weights_path=str(path), extra=extra)


def _jsonable(v: Any) -> Any:
    """Lineage without tensors (a quantization's calibration state stays in the checkpoint)."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items() if k != "observers" and not isinstance(x, torch.Tensor)}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def peek(path: str, opts) -> LoadedModel | None:
    """The model of a derived checkpoint at `path`, or None for any other file (left to `from_file`, which
    reports unreadable ones). The first look maps the file lazily, so a plain checkpoint is not read twice."""
    from .checkpoints import archive_kind, is_own_checkpoint, load_file
    if archive_kind(path) is not None:
        return None
    try:
        head = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy or foreign files: from_file reads and explains them
        return None
    if not (is_own_checkpoint(head) and is_derived(head)):
        return None
    from pathlib import Path
    return from_derived(load_file(path, allow_unsafe=opts.allow_unsafe), str(path), Path(path).name, opts)


def _from_adapter(blob: Mapping[str, Any], path: str, name: str, opts) -> LoadedModel:
    from defenses.peft import LoraSettings, PeftError, load_adapter

    from .registry import create_model
    from .sources import ModelOptions
    meta = dict(blob.get("meta") or {})
    ad = dict(meta.get(META_ADAPTER) or {})
    base_spec = ad.get("base_model")
    if not base_spec:
        raise UserError(f"{path} is an adapter that names no base model")
    try:
        base = create_model(base_spec, ModelOptions(weights=ad.get("base_weights"),
                                                    mean=tuple(ad["base_mean"]) if ad.get("base_mean") else None,
                                                    std=tuple(ad["base_std"]) if ad.get("base_std") else None,
                                                    num_classes=ad.get("base_num_classes"),
                                                    allow_unsafe=opts.allow_unsafe))
    except UserError as e:
        raise UserError(f"{path} is an adapter for {base_spec}, which does not load here: {e}") from None
    module = base.module
    head = ad.get("head")
    if ad.get("head_replaced") and head:
        from defenses import replace_head
        replace_head(module, int(meta["num_classes"]), head)
    settings = LoraSettings(**{k: (tuple(v) if k == "targets" and v else v) for k, v in
                               (ad.get("settings") or {}).items()}) if ad.get("method") == "lora" else None
    try:
        load_adapter(module, blob["state_dict"], ad.get("method", ""), settings, head, ad.get("layers"))
    except PeftError as e:
        raise UserError(f"{path}: {e}") from None
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    extra = {k: v for k, v in meta.items() if k in _INFO_KEYS}
    extra.update(_jsonable(lineage(meta)))
    info = base.info.with_(name=name, source="checkpoint", weights_path=str(path),
                           num_classes=meta.get("num_classes", base.info.num_classes),
                           classes=tuple(meta["classes"]) if meta.get("classes") else base.info.classes,
                           dataset=meta.get("dataset", base.info.dataset),
                           weights_sha256=state_dict_sha256(module), extra=extra)
    return LoadedModel(module, info)


def float_of(path: str, opts) -> LoadedModel:
    """`float:PATH`: the float model inside the quantized checkpoint PATH."""
    from pathlib import Path

    from ..compression import QuantizedModel
    from .registry import create_model
    if not Path(path).is_file():
        raise UserError(f"model file not found: {path}")
    loaded = create_model(path, opts)
    if not isinstance(loaded.module, QuantizedModel):
        raise UserError(f"float:{path}: {path} is not a quantized checkpoint (float: names the float model of one)")
    fm = loaded.module.float_model
    return LoadedModel(fm, loaded.info.with_(name=f"float:{Path(path).name}", weights_sha256=state_dict_sha256(fm)))
