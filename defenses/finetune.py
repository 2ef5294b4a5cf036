"""Fine-tuning helpers that work on any classifier: find its head (the last `nn.Linear` registered),
replace it for a new class count, freeze the rest, split parameters into head and backbone groups."""
from __future__ import annotations

import torch.nn as nn

FINETUNE_MODES = ("none", "linear", "full")


def find_head(module: nn.Module) -> tuple[str, nn.Linear]:
    """Dotted name and module of the last `nn.Linear` in registration order (the classifier of every
    common architecture: resnet `fc`, vgg `classifier.6`, vit `heads.head`, ...). ValueError if none."""
    found = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            found = (name, m)
    if found is None:
        raise ValueError("the model has no nn.Linear layer to use as its classification head")
    return found


def replace_head(module: nn.Module, num_classes: int, name: str | None = None) -> str:
    """Put a freshly initialized Linear with `num_classes` outputs where the head is (same input size,
    bias if the old one had one, same dtype and device). Returns the head's dotted name."""
    if name is None:
        name, old = find_head(module)
    else:
        old = module.get_submodule(name)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device,
                                                                                  old.weight.dtype)
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)
    return name


def is_head_param(param_name: str, head: str) -> bool:
    return param_name == head or param_name.startswith(head + ".")


def freeze_backbone(module: nn.Module, head: str) -> int:
    """requires_grad only on the head's parameters; returns how many parameters stay trainable."""
    n = 0
    for pname, p in module.named_parameters():
        p.requires_grad_(is_head_param(pname, head))
        n += p.numel() if p.requires_grad else 0
    return n


def split_params(module: nn.Module, head: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(head parameters, backbone parameters), trainable ones only."""
    head_p, body_p = [], []
    for pname, p in module.named_parameters():
        if p.requires_grad:
            (head_p if is_head_param(pname, head) else body_p).append(p)
    return head_p, body_p
