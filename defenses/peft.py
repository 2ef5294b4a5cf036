"""Parameter-efficient fine-tuning: LoRA (through the `peft` package) and BitFit, on any classifier.

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685): each target layer W gets a trainable low-rank update
(alpha / rank) * B A, B initialized to zero so training starts from the pretrained model; `peft` builds the
layers (nn.Linear, nn.Conv2d, nn.MultiheadAttention) and merges them back (W + (alpha / rank) B A).
BitFit (Ben Zaken et al. 2022, https://arxiv.org/abs/2106.10199): only the bias terms train (batch norm's
shift included). In both the classifier head trains in full (a new head for new classes has to).

Targets: module names (or unique name suffixes such as `qkv`, or fnmatch patterns such as `*.attn.*`); the
default for a ViT is its attention projections and MLP layers (timm `qkv`, `proj`, `fc1`, `fc2`; torchvision's
MultiheadAttention and `mlp.0`/`mlp.3`), for other networks every Conv2d (groups=1) and Linear except the head.

The base weights stay frozen and the model is meant to run in eval mode while training (batch-norm statistics
are the pretrained ones), so a separate adapter plus the base model is the whole fine-tuned model.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .finetune import is_head_param

PEFT_METHODS = ("lora", "bitfit")
ADAPTER_NAME = "default"


class PeftError(ValueError):
    """A PEFT setting that cannot apply to this model (no target layers, bad rank); one line on the CLI."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's rank, scale numerator (alpha; the update is scaled by alpha / rank), target layers (None: the
    defaults of the module docstring) and dropout on the LoRA branch."""
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise PeftError(f"--lora-rank must be a whole number >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise PeftError(f"--lora-alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise PeftError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(t.strip() for t in self.targets if t.strip()))
            if not self.targets:
                raise PeftError("--lora-targets is empty")

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": float(self.alpha), "targets": list(self.targets) if self.targets else None,
                "dropout": self.dropout}


@dataclass(frozen=True)
class PeftReport:
    """What was made trainable: counts, the share of the model, and the layers adapted."""
    method: str
    trainable: int
    total: int
    layers: tuple[str, ...] = field(default=())

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def line(self) -> str:
        where = f" in {len(self.layers)} layers" if self.layers else ""
        return f"{self.method}: {self.trainable:,} trainable parameters of {self.total:,} ({self.percent:.2f}%){where}"


def _is_attention_model(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or name.rsplit(".", 1)[-1] == "qkv"
               for name, m in model.named_modules())


_VIT_LINEAR_LEAVES = ("qkv", "proj", "fc1", "fc2")


def default_targets(model: nn.Module, head: str | None) -> list[str]:
    """The layers LoRA adapts when --lora-targets is not given (see the module docstring)."""
    out = []
    vit = _is_attention_model(model)
    inside_mha = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    for name, m in model.named_modules():
        if head is not None and (name == head or name.startswith(head + ".")):
            continue
        if any(name.startswith(p + ".") for p in inside_mha):
            continue   # MultiheadAttention's out_proj is adapted with the attention module itself
        leaf = name.rsplit(".", 1)[-1]
        if vit:
            if isinstance(m, nn.MultiheadAttention):
                out.append(name)
            elif isinstance(m, nn.Linear) and (leaf in _VIT_LINEAR_LEAVES or ".mlp." in f".{name}."):
                if not name.endswith("patch_embed.proj"):
                    out.append(name)
        elif isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            out.append(name)
    return out


def resolve_targets(model: nn.Module, patterns: Sequence[str] | None, head: str | None) -> list[str]:
    """Full module names of the LoRA targets; PeftError when nothing (or a layer peft cannot adapt) matches."""
    supported = (nn.Linear, nn.Conv2d, nn.Conv1d, nn.MultiheadAttention)
    modules = dict(model.named_modules())
    if patterns is None:
        names = default_targets(model, head)
        if not names:
            raise PeftError(f"the model has no layer LoRA can adapt (Linear, Conv2d, MultiheadAttention) besides its "
                            f"head{f' ({head})' if head else ''}; use --finetune bitfit, linear or full")
        return names
    names: list[str] = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = [n for n in modules if n and fnmatch.fnmatchcase(n, pat)]
        elif pat in modules and pat:
            hits = [pat]
        else:
            hits = [n for n in modules if n.endswith("." + pat) or n == pat]
        hits = [n for n in hits if isinstance(modules[n], supported)]
        if not hits:
            kinds = sorted({n.rsplit('.', 1)[-1] for n, m in modules.items() if isinstance(m, supported) and n})
            raise PeftError(f"--lora-targets {pat!r} matches no Linear/Conv2d/MultiheadAttention layer of the model "
                            f"(its layer names end in: {', '.join(kinds[:12]) or 'none'})")
        names += [n for n in hits if n not in names]
    if head is not None:
        names = [n for n in names if not (n == head or n.startswith(head + "."))]
        if not names:
            raise PeftError(f"--lora-targets matches only the head ({head}), which trains in full anyway")
    return names


def apply_lora(model: nn.Module, settings: LoraSettings, head: str | None) -> PeftReport:
    """Inject LoRA layers into `model` in place (through peft), freeze everything but them and the head."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise PeftError("--finetune lora needs the peft package (pip install peft)") from None
    targets = resolve_targets(model, settings.targets, head)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none", init_lora_weights=True)
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except (ValueError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PeftError(f"peft cannot add LoRA to these layers ({', '.join(targets[:4])}, ...): {first}") from None
    for name, p in model.named_parameters():
        p.requires_grad_(_is_lora_param(name) or (head is not None and is_head_param(name, head)))
    return report(model, "lora", targets)


def _is_lora_param(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


def apply_bitfit(model: nn.Module, head: str | None) -> PeftReport:
    """Freeze everything but the bias terms (and the head)."""
    layers = []
    for name, p in model.named_parameters():
        train = name.endswith(".bias") or name == "bias" or (head is not None and is_head_param(name, head))
        p.requires_grad_(train)
        if train and name.endswith("bias"):
            layers.append(name.rsplit(".", 1)[0])
    if not any(p.requires_grad for n, p in model.named_parameters() if not (head and is_head_param(n, head))):
        raise PeftError("the model has no bias terms outside its head for BitFit to train; use --finetune lora, "
                        "linear or full")
    return report(model, "bitfit", layers)


def report(model: nn.Module, method: str, layers: Sequence[str] = ()) -> PeftReport:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return PeftReport(method, trainable, total, tuple(layers))


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base layer (peft's merge) and put the base layer back: a plain module
    with the original architecture, computing the same function."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    for name, m in list(model.named_modules()):
        if isinstance(m, BaseTunerLayer):
            m.merge(safe_merge=True)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, m.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state(model: nn.Module, method: str, head: str | None) -> dict[str, torch.Tensor]:
    """The weights a separate adapter file holds: LoRA's (or BitFit's biases) and the head's. With the base model
    they are the whole fine-tuned model (the base model's batch-norm statistics are unchanged: it trains in eval
    mode)."""
    out = {}
    for name, t in model.state_dict().items():
        keep = (_is_lora_param(name) if method == "lora" else name.endswith("bias")) or \
            (head is not None and is_head_param(name, head))
        if keep:
            out[name] = t.detach().cpu()
    return out


def load_adapter(model: nn.Module, state: Mapping[str, torch.Tensor], method: str, settings: LoraSettings | None,
                 head: str | None, targets: Sequence[str] | None = None) -> PeftReport:
    """Re-create the adapter on the base `model` (in place) and load its weights: every key of `state` must land.
    For LoRA, `targets` are the full layer names recorded when it was trained."""
    if method == "lora":
        assert settings is not None
        rep = apply_lora(model, LoraSettings(settings.rank, settings.alpha, tuple(targets) if targets else
                                             settings.targets, settings.dropout), head)
    elif method == "bitfit":
        rep = apply_bitfit(model, head)
    else:
        raise PeftError(f"unknown adapter method {method!r} (known: {', '.join(PEFT_METHODS)})")
    own = model.state_dict()
    missing = sorted(set(state) - set(own))
    if missing:
        raise PeftError(f"the adapter does not fit the base model: {len(missing)} unknown weights (e.g. {missing[0]})")
    wrong = [k for k in state if tuple(own[k].shape) != tuple(state[k].shape)]
    if wrong:
        raise PeftError(f"the adapter does not fit the base model: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                        f"the model's {tuple(own[wrong[0]].shape)}")
    need = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in state)
    if need:
        raise PeftError(f"the adapter file lacks {len(need)} of the adapter's weights (e.g. {need[0]})")
    model.load_state_dict(state, strict=False)
    return rep


__all__ = ["ADAPTER_NAME", "LoraSettings", "PEFT_METHODS", "PeftError", "PeftReport", "adapter_state",
           "apply_bitfit", "apply_lora", "default_targets", "load_adapter", "merge_lora", "report",
           "resolve_targets"]
