"""`train --finetune lora|bitfit`: the harness side of parameter-efficient fine-tuning (the methods are
defenses/peft.py). `apply` adds the adapter to the training module after the checkpoint's architecture form is
settled; `finish` merges it into a plain checkpoint (default) or, with `--save-adapter`, writes the adapter alone
(arch `adapter`, the base model named in `meta.adapter`), both loadable by `run --model OUT` with no other flag.
Trainable parameters (count and share) and peak memory go to the log and to `meta.adapter`.
"""
from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .errors import UserError

PEFT_FINETUNE = ("lora", "bitfit")
# SGD / AdamW peak rates. With the base frozen in eval mode (batch-norm statistics fixed) large steps are not
# tolerated: PGD fine-tuning of the shared ResNet-20 collapsed to chance at SGD 0.05 and fell to 27% clean at 0.01
# within 16 steps, and kept its accuracy at 0.002 (docs/TRAINING.md)
DEFAULT_LR = {("sgd", "lora"): 0.002, ("sgd", "bitfit"): 0.002, ("adamw", "lora"): 2e-4, ("adamw", "bitfit"): 2e-4}


@dataclass(frozen=True)
class PeftState:
    method: str
    report: Any                     # defenses.peft.PeftReport
    settings: Any                   # LoraSettings or None


def apply(full: nn.Module, head: str | None, spec, log: Callable[[str], None]) -> PeftState:
    from defenses.peft import LoraSettings, PeftError, apply_bitfit, apply_lora
    try:
        if spec.finetune == "lora":
            settings = LoraSettings(rank=spec.lora_rank, alpha=float(spec.lora_alpha),
                                    targets=tuple(spec.lora_targets) if spec.lora_targets else None)
            rep = apply_lora(full, settings, head)
        else:
            settings = None
            rep = apply_bitfit(full, head)
    except PeftError as e:
        raise UserError(f"--finetune {spec.finetune}: {e}") from None
    log(f"note: {rep.line()}")
    return PeftState(spec.finetune, rep, settings)


def peak_memory() -> dict[str, Any]:
    """Peak resident memory of this process (and CUDA's peak allocation when CUDA was used), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict[str, Any] = {"peak_rss_mib": round(rss / (1024 if sys.platform != "darwin" else 1024 * 1024), 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def finish(full: nn.Module, state: PeftState, plan, spec, meta: dict[str, Any], out: Path | None,
           log: Callable[[str], None]) -> bool:
    """Record the adapter in `meta`; merge LoRA into the weights, or with spec.save_adapter write the adapter
    checkpoint to `out`. Returns True when it wrote `out` itself (the caller then writes nothing)."""
    from defenses.peft import adapter_state, merge_lora
    from .models.checkpoints import META_ADAPTER, META_BASE_MODEL
    rep = state.report
    head = plan.head
    record = {"method": state.method, "trainable": rep.trainable, "total": rep.total,
              "trainable_percent": round(rep.percent, 4), "layers": list(rep.layers) if state.method == "lora" else None,
              "settings": state.settings.to_json() if state.settings is not None else None, "head": head,
              "head_replaced": plan.head_replaced, "merged": not spec.save_adapter, **peak_memory()}
    log(f"{rep.line()}; peak memory {record['peak_rss_mib']} MiB RSS"
        + (f", {record['peak_cuda_mib']} MiB CUDA" if "peak_cuda_mib" in record else ""))
    meta[META_BASE_MODEL] = _absolute(spec.model)
    if not spec.save_adapter:
        if state.method == "lora":
            merge_lora(full)
        meta[META_ADAPTER] = record
        return False
    record.update({"base_model": _absolute(spec.model), "base_weights": str(Path(spec.weights).resolve())
                   if spec.weights else None, "base_mean": list(spec.mean) if spec.mean else None,
                   "base_std": list(spec.std) if spec.std else None, "base_num_classes": spec.num_classes})
    meta[META_ADAPTER] = record
    if out is None:
        return False
    from .models import save_checkpoint
    from .models.derived import ADAPTER_ARCH
    try:
        save_checkpoint(out, arch=ADAPTER_ARCH, arch_kwargs={}, state_dict=adapter_state(full, state.method, head),
                        meta=meta)
    except OSError as e:
        raise UserError(f"cannot write --out {out}: {e.strerror or e}") from None
    log(f"wrote the adapter alone ({out.stat().st_size:,} bytes); `run --model {out}` loads {spec.model} with it")
    return True


def _absolute(spec: str) -> str:
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return f"{Path(head).resolve()}:{tail}"
    p = Path(spec)
    return str(p.resolve()) if p.exists() and (p.suffix or "/" in spec) else spec
