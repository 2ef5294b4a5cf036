"""Training as a library: a typed, frozen `TrainSpec` in, a checkpoint and a frozen `TrainOutcome` out.

    import robustness as rb
    spec = rb.TrainSpec.from_recipe("wong2020-fgsm-mnist", data_dir="../shared/data", out="mnist-fgsm.pt")
    outcome = rb.train(spec)          # TrainingFailed if the run stayed at chance, diverged or collapsed
    outcome.checkpoint, outcome.best["val_pgd"], outcome.history

`robust-bench train` (robustness/cli/train.py) only turns its options into a TrainSpec and prints the
outcome. This module imports no torch until `train` runs (the implementation is `_train_run`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import UserError

if TYPE_CHECKING:
    import torch.nn as nn

    from defenses import TrainingFailure

DEFENSES = ("standard", "fgsm", "pgd", "trades", "gaussian")
NORMS = ("linf", "l2")
AUGMENTS = ("auto", "none", "crop", "flip", "crop-flip")
IN_MEMORY = ("auto", "yes", "no")
FINETUNE = ("none", "linear", "full", "lora", "bitfit")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("auto", "cosine", "cyclic", "step", "constant")
SELECT_BY = ("auto", "pgd", "clean", "last")
PRECISIONS = ("fp32", "bf16", "fp16")

# what the failure of a run exits with on the command line (2 is bad input)
FAILED_EXIT_CODE = 3


@dataclass(frozen=True)
class TrainSpec:
    """Everything one training run needs. Numbers are numbers (eps=8/255, not "8/255"); None means "the
    default for this data set, architecture and defense", resolved by `train` and recorded in the checkpoint
    (`meta.train_spec`). Field names are the command line's options with `_` for `-`."""
    # what to train: from scratch (arch) or by fine-tuning a model `run` loads (model)
    arch: str | None = None
    arch_args: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    finetune: str | None = None                  # none | linear | full | lora | bitfit (default with a model: full)
    lora_rank: int = 8                           # --finetune lora (robustness/peft_run.py, defenses/peft.py)
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] | None = None  # None: attention + MLP layers of a ViT, else every Conv/Linear
    save_adapter: bool = False                   # lora/bitfit: write the adapter alone, not merged weights
    backbone_lr_mult: float = 0.1
    weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    unsafe_load: bool = False
    # data
    dataset: str | None = None
    data_dir: str | None = None
    n_train: int | None = None
    val_size: int | None = None                  # None: 10% of the training data, at most 1000
    augment: str = "auto"
    workers: int = 0
    in_memory: str = "auto"
    # defense
    defense: str = "standard"
    eps: float | None = None                     # None: the data set's largest standard budget
    norm: str = "linf"
    steps: int | None = None
    step_size: float | None = None
    beta: float | None = None
    sigma: float | None = None                   # gaussian: the noise level (default 0.25)
    clip_start: bool = False                     # fgsm: clip the random start to the [0, 1] box first
    eps_warmup: float | None = None              # None: automatic (a ramp for large budgets)
    # optimization
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None                      # None: what the optimizer and architecture tolerate
    optimizer: str | None = None                 # None: sgd, or adamw for a network without batch norm
                                                 # trained adversarially from scratch
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "auto"
    cycle_peak: float = 0.4                      # cyclic schedule: where the rate peaks (fraction of training)
    lr_milestones: tuple[float, ...] | None = None   # step schedule: epochs of each x0.1 (None: 1/2, 3/4)
    # validation
    val_steps: int = 10
    select_by: str = "auto"
    # engine
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: str | None = None
    sync_bn: bool = False
    seed: int = 0
    # output
    out: str | None = None                       # the checkpoint; None: keep the model in memory only
    log_dir: str | None = None                   # metrics.csv (+ TensorBoard); None: no log
    state: str | None = None                     # training-state file (default: OUT with suffix .state.pt)
    keep_state: bool = False
    resume: str | None = None
    stop_after: int | None = None
    allow_failed: bool = False                   # return a failed run's outcome instead of raising
    recipe: str | None = None                    # the named recipe this spec started from (recorded)

    def __post_init__(self) -> None:
        # tuples and plain dicts whatever the caller passed, so specs compare, copy and serialize cleanly
        for name in ("mean", "std", "lr_milestones", "lora_targets"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v) if isinstance(v, (list, tuple)) else v)
        if not isinstance(self.arch_args, dict):
            object.__setattr__(self, "arch_args", dict(self.arch_args or {}))
        for name in ("out", "log_dir", "state", "resume", "weights", "data_dir", "dataset", "model"):
            v = getattr(self, name)
            if isinstance(v, Path):
                object.__setattr__(self, name, str(v))

    # ---- construction ----
    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> "TrainSpec":
        """The published settings of recipe `name` (see `robust-bench list recipes`), with `overrides`
        taking precedence. UserError for an unknown recipe or field."""
        from .recipes import get_recipe
        recipe = get_recipe(name)
        unknown_fields = sorted(set(overrides) - _FIELDS)
        if unknown_fields:
            raise UserError(f"TrainSpec has no field {unknown_fields[0]!r}")
        settings = dict(recipe.settings)
        # a recipe's step size is relative to its budget: another eps scales it, unless a step is given too
        eps = overrides.get("eps")
        if eps is not None and settings.get("eps") and settings.get("step_size") and "step_size" not in overrides:
            settings["step_size"] = settings["step_size"] * eps / settings["eps"]
        # another defense drops the settings of the recipe's inner attack that it does not take
        defense = overrides.get("defense", settings.get("defense"))
        drop = {"standard": ("steps", "step_size", "beta", "eps_warmup", "clip_start"), "fgsm": ("steps", "beta"),
                "pgd": ("beta", "clip_start"), "trades": ("clip_start",),
                "gaussian": ("steps", "step_size", "beta", "eps_warmup", "clip_start")}.get(defense, ())
        settings = {k: v for k, v in settings.items() if k not in drop}
        return cls(**{**settings, **overrides, "recipe": name})

    def replace(self, **changes: Any) -> "TrainSpec":
        return dataclasses.replace(self, **changes)

    # ---- validation ----
    def check(self) -> "TrainSpec":
        """The checks that need no data and no files: types and ranges, choices, and options that do not
        go together. UserError (one line, named after the command-line option) on the first problem."""
        _choice(self.defense, DEFENSES, "--defense")
        _choice(self.norm, NORMS, "--norm")
        _choice(self.augment, AUGMENTS, "--augment")
        _choice(self.in_memory, IN_MEMORY, "--in-memory")
        if self.optimizer is not None:
            _choice(self.optimizer, OPTIMIZERS, "--optimizer")
        _choice(self.schedule, SCHEDULES, "--schedule")
        _choice(self.select_by, SELECT_BY, "--select-by")
        _choice(self.precision, PRECISIONS, "--precision")
        if self.finetune is not None:
            _choice(self.finetune, FINETUNE, "--finetune")
        for name in ("epochs", "batch_size", "val_steps"):
            _int(getattr(self, name), name, minimum=1)
        for name in ("n_train", "num_classes", "steps", "stop_after"):
            if getattr(self, name) is not None:
                _int(getattr(self, name), name, minimum=1)
        _int(self.seed, "seed", minimum=None)
        for name in ("eps", "step_size", "lr", "weight_decay", "beta", "eps_warmup", "sigma"):
            if getattr(self, name) is not None:
                _number(getattr(self, name), name)
        for name in ("momentum", "backbone_lr_mult", "cycle_peak"):
            _number(getattr(self, name), name)
        if self.model is None and self.finetune is not None:
            raise UserError("--finetune needs --model (the pretrained model to fine-tune)")
        if self.finetune != "lora" and (self.lora_rank != 8 or self.lora_alpha != 16.0 or self.lora_targets):
            raise UserError("--lora-rank/--lora-alpha/--lora-targets apply to --finetune lora")
        if self.save_adapter and self.finetune not in ("lora", "bitfit"):
            raise UserError("--save-adapter writes a LoRA or BitFit adapter: it needs --finetune lora or bitfit")
        _int(self.lora_rank, "lora_rank", minimum=1)
        if not (_number(self.lora_alpha, "lora_alpha") > 0):
            raise UserError(f"--lora-alpha must be > 0, got {self.lora_alpha!r}")
        if self.model is not None and self.arch is not None:
            raise UserError("--arch trains from scratch and --model fine-tunes: pass one of them")
        if self.model is None and (self.weights or self.num_classes or self.unsafe_load):
            raise UserError("--weights/--num-classes/--unsafe-load complete --model; with --arch there is nothing to load")
        if self.defense == "fgsm" and self.steps is not None:
            raise UserError("--steps does not apply to --defense fgsm (one step of --step-size, default 1.25*eps)")
        if self.defense == "standard" and (self.steps is not None or self.step_size is not None):
            raise UserError("--steps/--step-size set the inner attack of fgsm, pgd and trades; standard training has none")
        if self.beta is not None and self.defense != "trades":
            raise UserError("--beta applies to --defense trades only")
        if self.sigma is not None and self.defense != "gaussian":
            raise UserError("--sigma applies to --defense gaussian only")
        if self.sigma is not None and not self.sigma > 0:
            raise UserError(f"--sigma must be > 0, got {self.sigma:g}")
        if self.defense == "gaussian" and (self.steps is not None or self.step_size is not None or self.eps_warmup):
            raise UserError("--steps/--step-size/--eps-warmup set the inner attack of fgsm, pgd and trades; "
                            "gaussian noise augmentation has none")
        if self.clip_start and self.defense != "fgsm":
            raise UserError("--clip-start applies to --defense fgsm only (its random start)")
        if self.eps_warmup and self.defense == "standard":
            raise UserError("--eps-warmup ramps the budget of adversarial training; standard training has none")
        if self.stop_after is not None and self.stop_after >= self.epochs and self.resume is None:
            raise UserError(f"--stop-after {self.stop_after} is not fewer than --epochs {self.epochs}")
        if self.val_size is not None:
            _int(self.val_size, "val_size", minimum=None)
            if self.val_size < 0:
                raise UserError(f"--val-size must be >= 0, got {self.val_size}")
        _int(self.workers, "workers", minimum=None)
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")
        if self.step_size is not None and not self.step_size > 0:
            raise UserError(f"--step-size must be > 0, got {self.step_size:g}")
        if self.eps is not None and self.eps < 0:
            raise UserError(f"bad eps {self.eps:g}: must be >= 0")
        if self.lr is not None and self.lr < 0:
            raise UserError(f"--lr must be >= 0, got {self.lr:g}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay:g}")
        if self.beta is not None and self.beta < 0:
            raise UserError(f"--beta must be >= 0, got {self.beta:g}")
        if self.eps_warmup is not None and self.eps_warmup < 0:
            raise UserError(f"--eps-warmup must be >= 0 epochs, got {self.eps_warmup:g}")
        if self.momentum < 0 or self.backbone_lr_mult < 0:
            raise UserError("--momentum and --backbone-lr-mult must be >= 0")
        if not 0 < self.cycle_peak < 1:
            raise UserError(f"--cycle-peak must lie strictly between 0 and 1, got {self.cycle_peak:g}")
        if self.lr_milestones is not None:
            ms = [float(_number(m, "lr_milestones")) for m in self.lr_milestones]
            if not ms or ms != sorted(ms) or len(set(ms)) != len(ms) or not all(0 < m < self.epochs for m in ms):
                raise UserError(f"--lr-milestones must be increasing epochs between 0 and --epochs {self.epochs} "
                                f"(exclusive), got {','.join(f'{m:g}' for m in ms) or 'none'}")
            if self.schedule not in ("step", "auto"):
                raise UserError(f"--lr-milestones apply to --schedule step, not {self.schedule}")
        if (self.mean is None) != (self.std is None) and self.model is None:
            raise UserError("--mean and --std go together (one value per channel each)")
        if self.std is not None and any(not (isinstance(s, (int, float)) and s > 0) for s in self.std):
            raise UserError("--std values must be > 0")
        if self.recipe is not None:
            from .recipes import get_recipe
            get_recipe(self.recipe)
        return self

    # ---- derived ----
    def state_path(self) -> Path | None:
        """Where the training state goes after every epoch (None: nowhere, without --out or --state)."""
        if self.state:
            return Path(self.state)
        if self.out:
            out = Path(self.out)
            return out.with_name(out.stem + ".state.pt")
        return None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("mean", "std", "lr_milestones"):
            if d[k] is not None:
                d[k] = list(d[k])
        d["arch_args"] = dict(self.arch_args)
        return d

    def python(self) -> str:
        """A call that reproduces this spec: the fields that differ from the defaults (without the
        session-only ones: resume, stop-after)."""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
            if f.name in ("resume", "stop_after") or v == default:
                continue
            parts.append(f"{f.name}={v!r}")
        return f"robustness.train(TrainSpec({', '.join(parts)}))"


_FIELDS = {f.name for f in dataclasses.fields(TrainSpec)}


def eps_label(eps: float) -> str:
    """8/255 for budgets that are a whole number of 255ths, else the number."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and 1 <= round(k) < 255 and len(f"{eps:g}") > 5 else f"{eps:g}"


def _choice(value: Any, choices: tuple[str, ...], option: str) -> None:
    if value not in choices:
        raise UserError(f"bad {option} {value!r}: expected one of {', '.join(choices)}")


def _int(value: Any, name: str, minimum: int | None) -> int:
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{option} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{option} must be >= {minimum}, got {value}")
    return value


def _number(value: Any, name: str) -> float:
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TrainOutcome:
    """What a run produced. `spec` holds the final values (defaults resolved, recipe applied); `best` the
    selected epoch's validation metrics, `final` the last epoch's row; `failure` is None for a run that
    worked. `model` is the selected epoch's network (taking [0, 1] pixels), in eval mode, on the CPU."""
    spec: TrainSpec
    checkpoint: Path | None
    history: tuple[Mapping[str, Any], ...]
    best: Mapping[str, Any]
    final: Mapping[str, Any]
    failure: "TrainingFailure | None"
    finished: bool                               # False when --stop-after left early (resume from state_file)
    state_file: Path | None
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False)
    model: "nn.Module | None" = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.failure is None


class TrainingFailed(Exception):
    """A run that stayed at chance, diverged or collapsed (and `allow_failed` was not set). The outcome,
    with its checkpoint marked as failed when one was written, is `.outcome`."""

    def __init__(self, outcome: TrainOutcome) -> None:
        assert outcome.failure is not None
        super().__init__(outcome.failure.message)
        self.outcome = outcome


def train(spec: TrainSpec, *, command: str | None = None, log: Callable[[str], None] | None = None,
          progress: bool = False) -> TrainOutcome:
    """Run `spec`. `command` is what `meta.trained_with` records (the CLI passes its command line; by
    default the Python call that reproduces the spec). `log` receives progress lines (None: silent);
    `progress` shows a tqdm bar. Bad input: UserError before anything is written. A failed run:
    TrainingFailed unless `spec.allow_failed`. Several processes: started by torchrun, only rank 0 writes."""
    spec.check()
    from ._train_run import run
    return run(spec, command=command, log=log, progress=progress)
