"""Reading checkpoints safely, in the layouts people actually save, and writing our own.

Always `torch.load(weights_only=True)`: a pickle can run arbitrary code. A file that needs full
unpickling is refused with an explanation unless the caller passes `allow_unsafe=True`
(the CLI's `--unsafe-load`).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import UserError

FORMAT_KEY = "robust_bench_checkpoint"
FORMAT_VERSION = 1

_PREFIXES = ("module.", "_orig_mod.", "model.")

# lineage keys of a checkpoint's meta: what `run --model PATH` needs to re-create the model with no other flag,
# and what a compression report shows. `source`: where the architecture comes from (registry, torchvision, timm,
# robustbench); `base_model`: the --model spec it was derived from (fine-tuned, compressed, distilled);
# `adapter`: the PEFT adapter ({"method": "lora", "rank", "alpha", "targets", "merged"} or bitfit); `compression`:
# the steps applied, oldest first ({"method": "prune" | "quantize" | "distill", ...} with size, latency, sparsity
# or bit width measured at save time)
META_SOURCE, META_BASE_MODEL, META_ADAPTER, META_COMPRESSION = "source", "base_model", "adapter", "compression"
LINEAGE_KEYS = (META_SOURCE, META_BASE_MODEL, META_ADAPTER, META_COMPRESSION)


def lineage(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The lineage entries of a checkpoint's meta (absent ones left out)."""
    return {k: meta[k] for k in LINEAGE_KEYS if meta and meta.get(k) is not None}


def load_file(path: str | os.PathLike[str], *, allow_unsafe: bool = False) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read a user's file is one line, not a traceback
        msg = str(e)
        # a class or function the safe unpickler would have to import: the file is a real pickle of objects
        needs_pickle = isinstance(e, pickle.UnpicklingError) and ("global" in msg.lower() or "GLOBAL" in msg)
        if not needs_pickle:
            first = next((ln.strip() for ln in msg.splitlines() if "Unsupported" in ln or "error" in ln.lower()),
                         (msg.strip().splitlines() or [type(e).__name__])[0])
            raise UserError(f"cannot read checkpoint {path} (corrupt or not a PyTorch file): {first}") from None
    if not allow_unsafe:
        raise UserError(f"{path} stores Python objects, not just tensors: loading it would run code from the "
                        f"file. Re-save it as a state_dict, or pass --unsafe-load if you trust its source")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def extract_state_dict(obj: Any, path: str | os.PathLike[str] = "checkpoint") -> dict[str, torch.Tensor]:
    """A bare state_dict, or one under 'state_dict' / 'model' / 'model_state_dict' / 'net' / 'ema',
    with DataParallel ('module.') and torch.compile ('_orig_mod.') prefixes removed."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not _is_state(obj):
        for key in ("state_dict", "model_state_dict", "model", "net", "ema", "params"):
            if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
                return extract_state_dict(obj[key], path)
    if not isinstance(obj, Mapping) or not _is_state(obj):
        raise UserError(f"{path} holds no state_dict (looked for a dict of tensors, or one under 'state_dict', "
                        f"'model', 'model_state_dict', 'net')")
    return strip_prefixes(dict(obj))


def _is_state(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) for k in obj) and \
        sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES[:2]:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; on mismatch, also try without a 'model.' prefix, then explain the difference."""
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    target = set(module.state_dict())
    if set(state) != target and all(k.startswith("model.") for k in state):
        alt = {k[6:]: v for k, v in state.items()}
        if set(alt) == target:
            state = alt
    # BatchNorm's step counter postdates many published checkpoints and never affects eval outputs
    current = module.state_dict()
    for k in target - set(state):
        if k.endswith("num_batches_tracked"):
            state[k] = current[k]
    missing, unexpected = sorted(target - set(state)), sorted(set(state) - target)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"weights in {source} do not fit the architecture: {'; '.join(parts)}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        line = next((l.strip() for l in str(e).splitlines() if "size mismatch" in l), str(e).splitlines()[0])
        raise UserError(f"weights in {source} do not fit the architecture: {line}") from None


def archive_kind(path: str | os.PathLike[str]) -> str | None:
    """'torchscript', 'export' or None (a plain torch.save file), from the archive's members."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("models/model.json") or n.endswith("serialized_exported_program.json") for n in names):
        return "export"
    return None


def is_own_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get(FORMAT_KEY) == FORMAT_VERSION


def save_checkpoint(path: str | os.PathLike[str], *, arch: str, arch_kwargs: Mapping[str, Any],
                    state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Weights plus everything `robust-bench run --model PATH` needs; readable with weights_only=True.
    Written to a temporary file and renamed, so an interrupted save never leaves a half file."""
    path = Path(path)
    blob = {FORMAT_KEY: FORMAT_VERSION, "arch": arch, "arch_kwargs": dict(arch_kwargs),
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "meta": dict(meta)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
