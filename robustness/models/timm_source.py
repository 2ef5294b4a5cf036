"""`--model timm:NAME[:KEY=VALUE,...]`: a model from timm's registry (pytorch-image-models).

NAME is a timm architecture, optionally with its pretrained tag (`vit_small_patch16_224.augreg_in21k_ft_in1k`);
KEY=VALUE pairs go to `timm.create_model` (`timm:vit_tiny_patch16_224:img_size=32,depth=2`: a tiny or re-sized
configuration, then the weights must come from --weights).

Preprocessing is timm's own: `timm.data.resolve_data_config(model=...)` gives input size, interpolation,
crop_pct and mean/std; as for torchvision weights the resize (shorter side, floor(size / crop_pct)) and centre
crop go to the data and the normalization into the model, so attacks work on [0, 1] pixels. A configuration
whose img_size was overridden is no longer described by its pretrained config: its data are resized and
cropped to that img_size.

Weights: --weights PATH (a state dict: .safetensors, .pth, .bin, our checkpoint layouts), else the pretrained
file from the Hugging Face cache (or torch hub's, for configs with only a URL). With HF_HUB_OFFLINE=1 nothing is
downloaded: a file missing from the cache is one line that says where to put it. Pretrained files are read
without running code (safetensors, or torch.load(weights_only=True)), never through timm's own loader.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import UserError, unknown
from .base import LoadedModel, ModelInfo, Normalized, Preprocess, state_dict_sha256
from .checkpoints import extract_state_dict, load_file, load_into

PREFIX = "timm:"
_TRUE = ("1", "true", "yes", "on")


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm: models need the timm package (pip install timm)") from None
    return timm


def timm_names() -> list[str]:
    """Every architecture timm can build (without tags)."""
    return sorted(_timm().list_models())


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """('NAME[.tag]', create_model kwargs) of `NAME[:KEY=VALUE,...]` (the part after `timm:`)."""
    name, _, args = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise UserError("timm: needs a model name, e.g. timm:vit_small_patch16_224 (see `robust-bench list models`)")
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise UserError(f"timm:{spec}: options are KEY=VALUE pairs separated by commas, got {part!r}")
        kwargs[key.strip()] = _value(value.strip())
    for reserved in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"):
        if reserved in kwargs:
            raise UserError(f"timm:{spec}: {reserved} is not an option here (weights come from the cache or --weights)")
    return name, kwargs


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def check_name(name: str) -> None:
    timm = _timm()
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise unknown("timm model", arch, timm.list_models())
    if "." in name and name not in timm.list_pretrained(arch + ".*"):
        raise unknown(f"pretrained tag of timm model {arch}", name, timm.list_pretrained(arch + ".*"))


def build(name: str, kwargs: Mapping[str, Any], num_classes: int | None = None) -> nn.Module:
    """The architecture, randomly initialized (no download)."""
    timm = _timm()
    check_name(name)
    kw = dict(kwargs)
    if num_classes is not None:
        kw["num_classes"] = int(num_classes)
    try:
        return timm.create_model(name, pretrained=False, **kw)
    except TypeError as e:
        raise UserError(f"timm model {name} does not take these options ({', '.join(kw) or 'none'}): {e}") from None
    except Exception as e:  # noqa: BLE001 - bad option values of a timm builder
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot build timm model {name} with {kw}: {first}") from None


def preprocessing(net: nn.Module, kwargs: Mapping[str, Any]) -> tuple[Preprocess, tuple[float, ...], tuple[float, ...],
                                                                        tuple[int, int, int], dict[str, Any]]:
    """(Preprocess, mean, std, input size (C, H, W), timm's data config) from timm's resolve_data_config."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config(model=net)
    c, h, w = (int(v) for v in cfg["input_size"])
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    interpolation = str(cfg.get("interpolation") or "bilinear")
    if interpolation == "random":
        interpolation = "bilinear"
    size = kwargs.get("img_size")
    if size is not None:   # a re-sized configuration: the pretrained config no longer describes it
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        return (Preprocess(resize=side, crop=side, interpolation=interpolation), mean, std, (c, side, side),
                {**cfg, "input_size": (c, side, side), "img_size_override": side})
    if h != w:
        raise UserError(f"timm config input size {h}x{w} is not square; robust-bench's preprocessing (shorter side, "
                        f"centre crop) cannot reproduce it")
    mode = cfg.get("crop_mode") or "center"
    if mode != "center":
        raise UserError(f"timm config crop_mode {mode!r}: only 'center' is reproduced exactly (shorter side resize, "
                        f"centre crop)")
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    return Preprocess(resize=math.floor(h / crop_pct), crop=h, interpolation=interpolation), mean, std, (c, h, w), cfg


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def read_state(path: str | os.PathLike[str], *, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or any layout `extract_state_dict` knows."""
    if str(path).endswith(".safetensors"):
        if not Path(path).is_file():
            raise UserError(f"checkpoint not found: {path}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors
        try:
            return dict(load_safetensors(str(path), device="cpu"))
        except (SafetensorError, OSError) as e:
            raise UserError(f"cannot read {path} (not a safetensors file): {e}") from None
    return extract_state_dict(load_file(path, allow_unsafe=allow_unsafe), path)


def pretrained_file(name: str, net: nn.Module) -> str:
    """The cached pretrained file of `name` (downloaded unless HF_HUB_OFFLINE=1); UserError with where to put it."""
    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    offline = _offline()
    if hub_id:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE
        repo, _, revision = str(hub_id).partition("@")
        errors = []
        for filename in (cfg.get("hf_hub_filename") or "model.safetensors", "pytorch_model.bin"):
            try:
                return hf_hub_download(repo, filename, revision=revision or None, local_files_only=offline)
            except Exception as e:  # noqa: BLE001 - not cached / offline / no such file: try the next, then explain
                errors.append(type(e).__name__)
        how = "HF_HUB_OFFLINE=1 forbids downloading" if offline else f"downloading failed ({errors[0]})"
        raise UserError(f"weights for timm:{name} are not in the Hugging Face cache ({HF_HUB_CACHE}, repo {repo}) and "
                        f"{how}. Run `huggingface-cli download {repo}` on a machine with internet and copy the cache "
                        f"(or set HF_HOME), or pass --weights PATH")
    if url:
        from .sources import hub_cache_path
        cached = hub_cache_path(url)
        if cached.is_file():
            return str(cached)
        if offline:
            raise UserError(f"weights for timm:{name} are not in the torch hub cache ({cached}) and HF_HUB_OFFLINE=1 "
                            f"forbids downloading {url}. Put that file at {cached} (or set TORCH_HOME), or pass --weights PATH")
        from .sources import _download
        _download(url, cached, f"timm:{name}")
        return str(cached)
    raise UserError(f"timm model {name} has no pretrained weights for its default tag; pass --weights PATH "
                    f"(or name a tag: see timm.list_pretrained('{name}*'))")


def from_timm(spec: str, opts) -> LoadedModel:
    """`timm:SPEC` (see the module docstring) with `opts` (ModelOptions: weights, mean/std, num_classes)."""
    name, kwargs = parse_spec(spec)
    net = build(name, kwargs, opts.num_classes)
    if opts.weights:
        source = str(opts.weights)
        state = read_state(opts.weights, allow_unsafe=opts.allow_unsafe)
    else:
        if opts.num_classes is not None:
            raise UserError(f"timm:{spec} with --num-classes has a new head that no pretrained file holds: pass "
                            f"--weights PATH (or fine-tune it: robust-bench train --model timm:{spec})")
        source = pretrained_file(name, net)
        state = read_state(source, allow_unsafe=opts.allow_unsafe)
    load_into(net, state, source)
    return wrap(net, name, kwargs, opts, weights_path=source, sha=state_dict_sha256(state))


def wrap(net: nn.Module, name: str, kwargs: Mapping[str, Any], opts, *, weights_path: str | None,
         sha: str | None) -> LoadedModel:
    """The timm module with its normalization folded in, and its ModelInfo."""
    import timm
    pre, mean, std, size, cfg = preprocessing(net, kwargs)
    if opts.mean is not None or opts.std is not None:
        if opts.mean is None or opts.std is None:
            raise UserError("--mean and --std go together (one value per channel each)")
        mean, std = tuple(opts.mean), tuple(opts.std)
    num_classes = int(getattr(net, "num_classes", 0) or 0) or None
    pcfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    pretrained = pcfg.get("hf_hub_id") or pcfg.get("url")
    info = ModelInfo(name=f"timm:{name}" + (":" + ",".join(f"{k}={v}" for k, v in kwargs.items()) if kwargs else ""),
                     source="timm", arch=name, num_classes=num_classes, in_channels=size[0], input_size=size[1:],
                     mean=mean, std=std, dataset="imagenet" if num_classes == 1000 and not kwargs else None,
                     preprocess=pre, weights_sha256=sha, weights_path=weights_path,
                     extra={"create_kwargs": dict(kwargs), "timm_version": timm.__version__,
                            "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                            "pretrained": pretrained if not kwargs else None})
    return LoadedModel(Normalized(net, mean, std), info)


def rebuild(arch: str, arch_kwargs: Mapping[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
    """(module, name, create kwargs) for a checkpoint whose arch is `timm:NAME` (written by train/compress):
    `arch_kwargs` holds `kwargs` (create_model options) and `num_classes`."""
    name = arch[len(PREFIX):] if arch.startswith(PREFIX) else arch
    kwargs = dict(arch_kwargs.get("kwargs") or {})
    return build(name, kwargs, arch_kwargs.get("num_classes")), name, kwargs
