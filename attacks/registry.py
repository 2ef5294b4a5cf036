"""Name -> attack builder. Duplicate names are refused; `create_attack` passes each builder only the
arguments it declares, so shared CLI options (--steps, --restarts) reach the attacks that take them.

`batch_dependent`: the attack draws its randomness once per call (third-party code seeded with one
number per batch), so an example's outcome depends on which examples share its batch, hence on
--batch-size. Our own attacks seed every example separately and must keep this False."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from .apgd import APGD, APGDT
from .autoattack import AutoAttack
from .autoattack_package import AutoAttackPackage
from .bpda import BPDA
from .entry import AttackEntry
from .eot import EOT, with_eot
from .errors import AttackConfigError
from .fab import FAB
from .fgsm import FGSM
from .fmn import FMN
from .l1 import PGDL1
from .pgd import PGD
from .sparse import SparseRS
from .square import Square, SquareFromPackage
from .transfer import transfer_entry


_REGISTRY: dict[str, AttackEntry] = {}
# Families resolved on demand, e.g. "torchattacks:CW": prefix -> (name -> AttackEntry)
_RESOLVERS: dict[str, Callable[[str], AttackEntry]] = {}


def register_attack(name: str, builder: Callable[..., Any], *, norms: tuple[str, ...], description: str,
                    white_box: bool = True, batch_dependent: bool = False) -> AttackEntry:
    if name in _REGISTRY:
        raise AttackConfigError(f"attack {name!r} is already registered")
    entry = AttackEntry(name, builder, tuple(norms), description, white_box, batch_dependent)
    _REGISTRY[name] = entry
    return entry


def register_resolver(prefix: str, resolver: Callable[[str], AttackEntry]) -> None:
    if prefix in _RESOLVERS:
        raise AttackConfigError(f"attack family {prefix!r} is already registered")
    _RESOLVERS[prefix] = resolver


def attack_names() -> list[str]:
    return sorted(_REGISTRY)


def get_attack_entry(name: str) -> AttackEntry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _RESOLVERS:
        return _RESOLVERS[prefix](rest)
    close = difflib.get_close_matches(name, list(_REGISTRY) + [p + ":" for p in _RESOLVERS], n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(attack_names())}"
    raise KeyError(f"unknown attack {name!r}{hint}")


def create_attack(name: str, **params: Any) -> Any:
    """Build an attack, dropping None values and arguments the attack does not declare; eot=N > 1 wraps
    it in EOT (an attack that declares eot itself gets it instead)."""
    entry = get_attack_entry(name)
    accepted = entry.parameters()
    kwargs = {k: v for k, v in params.items() if v is not None and k in accepted}
    eot = None if "eot" in entry.declared() else kwargs.pop("eot", None)
    return with_eot(entry.builder(**kwargs), eot)


register_attack("fgsm", FGSM, norms=("linf", "l2"),
                description="Fast gradient sign method, one step of size eps (Goodfellow et al. 2015)")
register_attack("pgd", PGD, norms=("linf", "l2"),
                description="Projected gradient descent with restarts (Madry et al. 2018)")
register_attack("apgd", APGD, norms=("linf", "l2"),
                description="Auto-PGD: step-size-free PGD with momentum, CE/DLR loss (Croce & Hein 2020)")
register_attack("apgd-t", APGDT, norms=("linf", "l2"),
                description="APGD on the targeted DLR loss against the top-k other classes (Croce & Hein 2020)")
register_attack("fab", FAB, norms=("linf", "l2"),
                description="Fast adaptive boundary attack; targeted=True for FAB-T (Croce & Hein 2020)")
register_attack("fmn", FMN, norms=("linf", "l2"),
                description="Fast minimum-norm attack, its minimum projected onto the eps-ball (Pintor et al. 2021); "
                            "also the --min-norm stage")
register_attack("square", Square, norms=("linf", "l2"), white_box=False,
                description="Square attack, score-based black box, our implementation with per-example "
                            "seeds (Andriushchenko et al. 2020)")
register_attack("square-package", SquareFromPackage, norms=("linf", "l2"), white_box=False, batch_dependent=True,
                description="Square attack, the AutoAttack package's implementation (one draw per batch)")
register_attack("autoattack", AutoAttack, norms=("linf", "l2"),
                description="AutoAttack, our implementation: APGD-CE, APGD-T, FAB-T, Square, worst case per "
                            "example (Croce & Hein 2020); version=standard|plus|rand")
register_attack("pgd-l1", PGDL1, norms=("l1",),
                description="L1 PGD: sparse steepest-ascent steps (SLIDE, Tramer & Boneh 2019), exact projection "
                            "onto the L1 ball and the box (Croce & Hein 2021)")
register_attack("sparse-rs", SparseRS, norms=("l0",), white_box=False,
                description="Sparse-RS, score-based random search over k pixels (L0: eps pixels; Croce et al. 2022)")
register_attack("autoattack-package", AutoAttackPackage, norms=("linf", "l2"), batch_dependent=True,
                description="AutoAttack, the reference package (pyautoattack) called as it is; version=standard|plus|rand")


def _torchattacks(name: str) -> AttackEntry:
    """torchattacks:NAME, resolved on first use (torchattacks is imported only then)."""
    from .torchattacks_adapter import resolve
    return resolve(name)


register_resolver("torchattacks", _torchattacks)


def _wrapping(prefix: str, wrap: Callable[..., Any], extra: dict[str, Any],
              description: str) -> Callable[[str], AttackEntry]:
    """A family PREFIX:NAME: attack NAME wrapped by `wrap`, taking NAME's arguments and `extra`'s."""
    def resolve(rest: str) -> AttackEntry:
        inner = get_attack_entry(rest)
        params = {**inner.parameters(), **extra}

        def build(**kw: Any) -> Any:
            own = {k: kw.pop(k, default) for k, default in extra.items()}
            return wrap(create_attack(rest, **kw), **own)
        build.__signature__ = inspect.Signature(   # type: ignore[attr-defined]
            [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in params.items()])
        return AttackEntry(f"{prefix}:{rest}", build, inner.norms, f"{description} {rest}", inner.white_box,
                           inner.batch_dependent)
    return resolve


# adaptive attacks (docs/CHECKS.md): each a row of its own, named after the attack it adapts
register_resolver("eot", _wrapping("eot", lambda a, eot: EOT(a, eot), {"eot": 20},
                                   "expectation over transformation (20 passes per model call) of"))
register_resolver("bpda", _wrapping("bpda", lambda a, bpda: BPDA(a, bpda), {"bpda": "auto"},
                                    "BPDA (identity on the backward pass of the masking parts) around"))
register_resolver("transfer", transfer_entry)   # surrogates by name: the harness sets the loader
