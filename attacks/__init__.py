"""Threat models on [0, 1] pixels: FGSM, PGD and (through adapters) third-party attacks.

This package knows only torch: models come in as `nn.Module`s that take [0, 1] NCHW pixels
(normalization is the model's own business), examples as tensors.
"""
from ._core import (NORMS, AttackOutput, PassCounter, canonical_norm, check_applicable, check_eps, clip_to_box,
                    project)
from ._core import ascent_direction, frozen  # the inner maximization of adversarial training (defenses)
from .apgd import APGD, APGDT
from .autoattack import AutoAttack
from .autoattack_package import AutoAttackPackage
from .bpda import BPDA
from .eot import EOT
from .errors import AttackConfigError, AttackError, AttackUnavailable, ThreatModelViolation
from .fab import FAB
from .fmn import FMN
from .fgsm import FGSM
from .l1 import PGDL1
from .pgd import PGD
from .registry import (AttackEntry, attack_names, create_attack, get_attack_entry, register_attack,
                       register_resolver)
from .sanity import Finding, ResultRow, model_checks, result_checks
from .sparse import SparseRS
from .square import Square
from .transfer import Transfer

__all__ = ["NORMS", "APGD", "APGDT", "AttackConfigError", "AttackError", "AttackOutput", "AttackEntry",
           "AttackUnavailable", "AutoAttack", "AutoAttackPackage", "BPDA", "EOT", "FAB", "FGSM", "FMN",
           "Finding", "PGD", "PGDL1", "PassCounter", "ResultRow", "SparseRS", "Square",
           "ThreatModelViolation", "Transfer", "attack_names", "canonical_norm", "check_applicable",
           "check_eps", "clip_to_box", "create_attack", "get_attack_entry", "model_checks", "project",
           "register_attack", "register_resolver", "result_checks"]
