"""What a run is: frozen, typed specifications. Same spec (and same weights and examples) = same run, so
the store finds it again to resume or reuse it. Numbers stay numbers (eps are floats, never strings)."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from leaderboards.threats import CORRUPTION_PREFIX, WORST_CASE

from .errors import UserError
from .models.sources import ModelOptions

__all__ = ["AttackSpec", "RunSpec", "WORST_CASE", "corruption_label"]

SEVERITIES = (1, 2, 3, 4, 5)


def corruption_label(name: str) -> str:
    """How a corruption appears as a threat: attack `corruption:NAME`, eps = severity."""
    return f"{CORRUPTION_PREFIX}{name}"


@dataclass(frozen=True)
class AttackSpec:
    """An attack by registry name with its settings, e.g. AttackSpec("pgd", (("steps", 50),)).
    `AttackSpec.of(obj)` describes an attack object (`attacks.PGD(steps=50)`) the same way."""
    name: str
    params: tuple[tuple[str, Any], ...] = ()
    label: str | None = None   # how results name it; default the name (two PGDs need two labels)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def shown(self) -> str:
        return self.label or self.name

    @classmethod
    def of(cls, attack: Any) -> "AttackSpec":
        """A name, an AttackSpec, or a registered attack object: its settings that differ from the
        defaults become the params (so `PGD()` and "pgd" are the same run)."""
        if isinstance(attack, AttackSpec):
            return attack
        if isinstance(attack, str):
            return cls(attack.strip())
        name = getattr(attack, "name", None)
        if not isinstance(name, str) or not dataclasses.is_dataclass(attack):
            raise UserError(f"cannot describe attack {attack!r}: pass a registered name, an AttackSpec, or one "
                            f"of the attack classes of `attacks` (see `robust-bench list attacks`)")
        params = []
        for f in dataclasses.fields(attack):
            value = getattr(attack, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.name != "norm" and value != default:
                params.append((f.name, value))
        return cls(name, tuple(sorted(params)))


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's numbers. `check()` holds the cross-field rules."""
    models: tuple[str, ...] = ("digits-cnn", "digits-cnn-at")
    dataset: str | None = None
    dataset_name: str | None = None              # an image folder's / array file's name (before its digest)
    data_dir: str | None = None
    split: str = "test"
    attacks: tuple[AttackSpec, ...] = (AttackSpec("fgsm"), AttackSpec("pgd"))
    norm: str = "linf"
    eps: tuple[float, ...] | None = None
    n_examples: int | None = None
    subset: str = "random"
    seed: int = 0
    batch_size: int | str = 256   # or "auto": the largest batch that fits the device
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    model_options: ModelOptions = field(default_factory=ModelOptions)
    tag: str | None = None
    corruptions: tuple[str, ...] = ()            # common corruptions, each evaluated at every severity
    severities: tuple[int, ...] = SEVERITIES
    corruption_preset: str | None = None         # imagenet-c | cifar10-c | None: by image size
    clean_dataset: str | None = None             # clean set beside a precomputed one (cifar10-c, ...)
    clean_data_dir: str | None = None
    min_norm: str | None = None                  # "fmn" or "fmn:STEPS": a minimum-norm stage first (cascade.py)
    # evaluation speed-ups that change numbers only by float rounding (robustness/fold.py): batch norm
    # folded into the convolutions, torch.compile (eager where it fails); part of the run key when on
    fold_bn: bool = False
    compile: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["attacks"] = [{"name": a.name, "params": dict(a.params), **({"label": a.label} if a.label else {})}
                        for a in self.attacks]
        if d["dataset_name"] is None:   # absent unless used: the keys of runs stored before it stay the same
            del d["dataset_name"]
        if d["min_norm"] is None:   # absent unless used, so the keys of runs stored before it stay the same
            del d["min_norm"]
        for flag in ("fold_bn", "compile"):
            if not d[flag]:
                del d[flag]
        return d

    def check(self) -> "RunSpec":
        """Refuse combinations that would be accepted and then ignored or misread; returns self."""
        if not self.models:
            raise UserError("no model to evaluate")
        if self.dataset_name is not None:
            from .data import check_dataset_name
            check_dataset_name(self.dataset_name)
        if not self.attacks and not self.corruptions:
            raise UserError("nothing to evaluate: give at least one attack or corruption")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                          or self.batch_size < 1):
            raise UserError(f"--batch-size must be a number >= 1 or auto, got {self.batch_size!r}")
        check_sampling(self)
        if self.eps is not None:
            if not self.eps:
                raise UserError("--eps needs at least one value")
            for e in self.eps:
                if isinstance(e, bool) or not isinstance(e, (int, float)):
                    raise UserError(f"eps must be numbers, got {e!r}")
        if not self.corruptions:
            unused = [flag for flag, v in (("--severity", self.severities != SEVERITIES),
                                           ("--corruption-preset", self.corruption_preset is not None),
                                           ("--clean-dataset", self.clean_dataset is not None),
                                           ("--clean-data-dir", self.clean_data_dir is not None)) if v]
            if unused:
                raise UserError(f"{unused[0]} applies only to common corruptions: add --attack corruptions "
                                f"(or drop it)")
        if self.min_norm is not None:
            from .cascade import min_norm_stage
            min_norm_stage(self.min_norm, self.norm)   # refuses an unknown stage or a norm it cannot do
        bad = [s for s in self.severities if isinstance(s, bool) or s not in SEVERITIES]
        if bad or not self.severities:
            raise UserError(f"severities are 1..5, got {', '.join(map(str, bad)) or 'none'}")
        return self

    @classmethod
    def from_protocol(cls, name: str, **overrides: Any) -> "RunSpec":
        """A RunSpec from a published protocol (`leaderboards/protocols/*.yaml` or a YAML path): its data
        set, examples, norm, eps and attacks; `overrides` set anything else (models, device, ...). An
        override that contradicts the protocol (another eps, data set, ...) is an error."""
        from leaderboards.protocols import ProtocolError, load_protocol
        try:
            p = load_protocol(name)
        except ProtocolError as e:
            raise UserError(str(e)) from None
        prefix = CORRUPTION_PREFIX
        corruptions = tuple(a.name[len(prefix):] for a in p.attacks if a.name.startswith(prefix))
        fixed: dict[str, Any] = {"dataset": p.dataset, "split": p.split, "subset": p.subset,
                                 "n_examples": p.n_examples,
                                 "attacks": tuple(AttackSpec(a.name, tuple(sorted(dict(a.params).items())))
                                                  for a in p.attacks if not a.name.startswith(prefix))}
        if corruptions:   # a corruption protocol: its "eps" are the severities
            fixed.update(corruptions=corruptions, severities=tuple(int(e) for e in p.eps))
        else:
            fixed.update(norm=p.norm or "linf", eps=tuple(float(e) for e in p.eps))
        if p.subset == "random":
            fixed["seed"] = p.seed
        for k, v in overrides.items():
            if k in fixed and v is not None and _normalized(v) != _normalized(fixed[k]):
                raise UserError(f"protocol {p.name} fixes {k} = {fixed[k]!r}; drop {k}={v!r} or use no protocol")
        merged = {**{k: v for k, v in overrides.items() if v is not None}, **fixed}
        return cls(**merged).check()


def check_sampling(spec: Any) -> None:
    """The checks every spec that samples examples shares (RunSpec, CertifySpec): which examples, seed, precision."""
    for name, value in (("n_examples", spec.n_examples), ("seed", spec.seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{name} must be a whole number, got {value!r}")
    if spec.n_examples is not None and spec.n_examples < 1:
        raise UserError(f"n_examples must be >= 1, got {spec.n_examples}")
    if spec.subset not in ("random", "first"):
        raise UserError(f"subset must be random or first, got {spec.subset!r}")
    if spec.precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--precision must be fp32, bf16 or fp16, got {spec.precision!r}")


def _normalized(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_normalized(x) for x in v)
    if isinstance(v, AttackSpec):
        return (v.name, tuple(v.params))
    return v
