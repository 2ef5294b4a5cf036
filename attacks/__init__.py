"""Threat models on [0, 1] pixels: FGSM, PGD and (through adapters) third-party attacks.

This package knows only torch: models come in as `nn.Module`s that take [0, 1] NCHW pixels
(normalization is the model's own business), examples as tensors.
"""
from ._core import NORMS, AttackOutput, canonical_norm, check_eps, clip_to_box, project
from .fgsm import FGSM
from .pgd import PGD
from .registry import (AttackEntry, attack_names, create_attack, get_attack_entry, register_attack,
                       register_resolver)

__all__ = ["NORMS", "AttackOutput", "AttackEntry", "FGSM", "PGD", "attack_names", "canonical_norm",
           "check_eps", "clip_to_box", "create_attack", "get_attack_entry", "project", "register_attack",
           "register_resolver"]
