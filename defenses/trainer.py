"""The training loop shared by every recipe: epochs of (augment, inner attack, forward, step), validation
with clean, FGSM and PGD accuracy after each epoch, best-epoch selection (robust accuracy by default,
against robust overfitting, Rice et al. 2020), a catastrophic-overfitting alarm (Wong et al. 2020),
mixed precision, channels_last, torch.compile, DistributedDataParallel, and a training-state file that
resumes to exactly the result of an uninterrupted run.

Determinism: the order of examples comes from a DistributedSampler seeded by (seed, epoch); every random
number of a step from `BatchRandom` seeded by (seed, epoch, step); validation random starts from one seed
per validation example. With the same number of CPU threads a run is bit-for-bit reproducible, resumed
or not. Across process counts results agree up to floating-point summation order (and, for models with
batch norm, per-process batch statistics).
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from attacks import FGSM, PGD

from ._random import BatchRandom, derive_seed
from .augment import augment
from .diagnosis import TrainingFailure, diagnose
from .distributed import DistInfo, all_reduce_sum
from .finetune import split_params
from .recipes import Recipe
from .schedules import DEFAULT_MILESTONES, DEFAULT_PEAK, LRFactor

STATE_FORMAT = "robust-bench-train-state"
STATE_VERSION = 1
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
SELECT_BY = ("pgd", "clean", "last")

# catastrophic overfitting: robust validation accuracy collapses while single-step accuracy stays high
CO_DROP = 0.20        # PGD accuracy this far below its best so far ...
CO_NEAR_ZERO = 0.02   # ... or below this ...
CO_FGSM_GAP = 0.20    # ... while FGSM accuracy exceeds PGD accuracy by at least this much


class TrainingError(ValueError):
    """A configuration or state the trainer cannot work with (bad values, a mismatching resume file,
    a diverged run); the CLI reports it as one line."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128            # global: split evenly over processes
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    augment: str = "none"
    seed: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    compile: str | None = None       # a torch.compile backend ("inductor"), or None
    head: str | None = None          # dotted name of the classifier head (fine-tuning)
    backbone_lr_mult: float = 1.0    # rate of non-head parameters relative to `lr`
    train_backbone: bool = True      # False: linear probing; the whole model stays in eval mode
    val_eps: float = 0.0
    val_norm: str = "linf"
    val_steps: int = 10
    select_by: str = "pgd"
    eps_warmup: float = 0.0          # epochs over which the training eps ramps linearly from 0 to eps
    cycle_peak: float = DEFAULT_PEAK # cyclic schedule: fraction of training at the peak rate
    lr_milestones: tuple[float, ...] | None = None   # step schedule: epochs of each x0.1 (None: 1/2, 3/4)
    sync_bn: bool = False            # SyncBatchNorm across DistributedDataParallel processes
    eval_batch_size: int = 256

    def check(self) -> None:
        if self.epochs < 1:
            raise TrainingError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TrainingError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise TrainingError(f"learning rate must be >= 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.weight_decay < 0:
            raise TrainingError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.precision not in PRECISIONS:
            raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.select_by not in SELECT_BY:
            raise TrainingError(f"select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if not self.backbone_lr_mult >= 0:
            raise TrainingError(f"backbone lr multiplier must be >= 0, got {self.backbone_lr_mult}")
        if not self.eps_warmup >= 0:
            raise TrainingError(f"eps warm-up must be >= 0 epochs, got {self.eps_warmup}")
        if self.val_steps < 1:
            raise TrainingError(f"validation steps must be >= 1, got {self.val_steps}")
        if self.lr_milestones is not None:
            ms = list(self.lr_milestones)
            if not ms or ms != sorted(ms) or len(set(ms)) != len(ms) or not all(0 < m < self.epochs for m in ms):
                raise TrainingError(f"learning-rate milestones must be increasing epochs between 0 and {self.epochs} "
                                    f"(exclusive), got {', '.join(f'{m:g}' for m in ms) or 'none'}")
        try:
            LRFactor(self.schedule, 1, self.cycle_peak, self.milestone_fractions())
        except ValueError as e:
            raise TrainingError(str(e)) from None

    def milestone_fractions(self) -> tuple[float, ...]:
        if self.lr_milestones is None:
            return DEFAULT_MILESTONES
        return tuple(m / self.epochs for m in self.lr_milestones)

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption."""
        d = asdict(self)
        for k in ("compile", "eval_batch_size"):
            d.pop(k)
        if d["lr_milestones"] is not None:
            d["lr_milestones"] = list(d["lr_milestones"])
        return d


# ---- data ----

class TrainData(Protocol):
    def __len__(self) -> int: ...

    def batches(self, sampler: Iterable[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TensorData:
    """Training examples held in memory as one float tensor (N, C, H, W) in [0, 1] and labels (N,)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise TrainingError(f"{x.shape[0]} images but {y.shape[0]} labels")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, sampler, batch_size):
        order = list(sampler)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = torch.as_tensor(order[i:i + batch_size])
            yield self.x[idx], self.y[idx]


class StreamData:
    """A map-style dataset read through a DataLoader each epoch (for sets too large to hold in memory)."""

    def __init__(self, dataset: Dataset, workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset, self.workers, self.pin_memory = dataset, workers, pin_memory

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def batches(self, sampler, batch_size):
        loader = DataLoader(self.dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                            num_workers=self.workers, pin_memory=self.pin_memory)
        for x, y in loader:
            yield x, torch.as_tensor(y)


# ---- model wrappers ----

class _Autocast(nn.Module):
    """Runs the model under autocast and returns float32 logits (attacks and losses stay in fp32)."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.model(x)
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


class _Multi(nn.Module):
    """One forward for all of a recipe's inputs (TRADES needs two), so DDP sees one forward per step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x) for x in xs)


# ---- results ----

@dataclass
class TrainResult:
    model: nn.Module                         # the trained module (last epoch), eval mode
    best_state: dict[str, torch.Tensor]      # state_dict of the selected epoch (CPU)
    best_epoch: int                          # 1-based
    history: list[dict[str, Any]]
    finished: bool                           # False when stopped early (--stop-after)
    epochs_done: int
    failure: TrainingFailure | None = None   # stayed at chance, diverged or collapsed (see `diagnosis`)

    @property
    def best_row(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1] if self.history and self.best_epoch >= 1 else {}


CSV_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_clean", "val_fgsm", "val_pgd", "train_seconds",
               "val_seconds", "images_per_s", "best", "warning")


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))


def save_state_file(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: an interruption never leaves a half-written state."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training-state file (loaded with weights_only=True); TrainingError if missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"resume file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file: one line
        raise TrainingError(f"cannot read resume file {path}: {str(e).strip().splitlines()[0] if str(e) else e}") \
            from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a robust-bench training-state file")
    if state.get("version") != STATE_VERSION:
        raise TrainingError(f"{path} has training-state version {state.get('version')}; this robust-bench "
                            f"reads version {STATE_VERSION}")
    return state


# fields every training-state file has recorded since version 1; newer ones default when absent
_EARLY_KEYS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "augment", "seed",
               "precision", "channels_last", "head", "backbone_lr_mult", "train_backbone", "val_eps", "val_norm",
               "val_steps", "select_by", "eps_warmup")
_EARLY_RECIPE_KEYS = ("eps", "norm", "steps", "step_size", "beta", "scale_attack_loss")
_LEGACY_RECIPE = {"clip_start": True}   # what a state file without the field was trained with


class Trainer:
    """Train `model` (a module taking [0, 1] pixels) with `recipe`. `val` is (x, y) held in memory, or None.

    Callbacks (main process only): `log(line)`, `on_epoch(row)`. `state_path`: where the training state
    is written after every epoch (main process). `resume`: a state loaded with `load_state_file`.
    `extra_state`: anything the caller wants back on resume (plain types). `stop_after`: leave after that
    many epochs of this call (the state file then resumes the run)."""

    def __init__(self, model: nn.Module, recipe: Recipe, config: TrainConfig, train: TrainData,
                 val: tuple[torch.Tensor, torch.Tensor] | None = None, *, dist: DistInfo | None = None,
                 log: Callable[[str], None] = lambda s: None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 progress: bool = False, state_path: str | os.PathLike[str] | None = None,
                 resume: dict[str, Any] | None = None, extra_state: dict[str, Any] | None = None,
                 stop_after: int | None = None) -> None:
        config.check()
        self.model, self.recipe, self.config, self.train_data, self.val = model, recipe, config, train, val
        self.dist = dist or DistInfo()
        self.log, self.on_epoch, self.progress = log, on_epoch, progress
        self.state_path, self.resume, self.extra_state = state_path, resume, dict(extra_state or {})
        self.stop_after = stop_after
        if config.batch_size % self.dist.world:
            raise TrainingError(f"batch size {config.batch_size} is not divisible by the {self.dist.world} "
                                f"processes")
        self.steps_per_epoch = len(train) // config.batch_size
        if self.steps_per_epoch < 1:
            raise TrainingError(f"the training set ({len(train)} examples) is smaller than one batch "
                                f"({config.batch_size}); lower --batch-size")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        if resume is not None:
            self._check_resume(resume)

    # ---- set-up ----
    def _check_resume(self, state: dict[str, Any]) -> None:
        # fields newer than the state file compare as their defaults
        defaults = TrainConfig().fingerprint()
        saved_config, saved_recipe = state.get("config") or {}, state.get("recipe") or {}
        recipe_defaults = {f.name: _LEGACY_RECIPE.get(f.name, f.default) for f in dataclasses.fields(self.recipe)
                           if f.default is not dataclasses.MISSING and f.name not in _EARLY_RECIPE_KEYS}
        saved = {**{k: v for k, v in defaults.items() if k not in saved_config and k not in _EARLY_KEYS},
                 **saved_config,
                 **{f"recipe.{k}": v for k, v in recipe_defaults.items() if k not in saved_recipe},
                 **{f"recipe.{k}": v for k, v in saved_recipe.items()}}
        now = {**self.config.fingerprint(), **{f"recipe.{k}": v for k, v in self.recipe.describe().items()}}
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            shown = "; ".join(f"{k} was {saved.get(k)!r}, now {now.get(k)!r}" for k in diff[:4])
            raise TrainingError(f"the resume file was written with other arguments ({shown}); resume with the "
                                f"arguments of the interrupted run")
        if int(state.get("epoch", 0)) >= self.config.epochs:
            raise TrainingError(f"the resume file has already finished all {self.config.epochs} epochs")

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.head is not None and cfg.backbone_lr_mult != 1.0:
            head_p, body_p = split_params(net, cfg.head)
            groups = [{"params": head_p, "lr": cfg.lr}]
            if body_p and cfg.backbone_lr_mult > 0:
                groups.append({"params": body_p, "lr": cfg.lr * cfg.backbone_lr_mult})
            elif body_p:
                for p in body_p:
                    p.requires_grad_(False)
        else:
            groups = [{"params": [p for p in net.parameters() if p.requires_grad], "lr": cfg.lr}]
        if not any(g["params"] for g in groups):
            raise TrainingError("the model has no trainable parameters")
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _state(self, net, opt, sched, scaler, epoch, best, history) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "config": self.config.fingerprint(),
                "recipe": self.recipe.describe(), "epoch": epoch, "world": self.dist.world,
                "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                "best": best, "history": history, "rng": _rng_state(), "extra": self.extra_state}

    # ---- the loop ----
    def fit(self) -> TrainResult:
        cfg, d = self.config, self.dist
        torch.manual_seed(cfg.seed)
        net = self.model.to(d.device)
        if cfg.sync_bn and d.distributed:
            # in place below the root (the root itself is never a batch-norm layer in practice)
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            self.model = net
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        attack_net: nn.Module = _Autocast(net, d.device.type, self.amp_dtype)
        train_fwd: nn.Module = _Multi(attack_net)
        if d.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            train_fwd = DDP(train_fwd, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        if cfg.compile:
            train_fwd = torch.compile(train_fwd, backend=cfg.compile)
            attack_net = torch.compile(attack_net, backend=cfg.compile)
        opt = self._optimizer(net)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, LRFactor(cfg.schedule, self.steps_per_epoch * cfg.epochs,
                                                                 cfg.cycle_peak, cfg.milestone_fractions()))
        scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.precision == "fp16" and d.device.type == "cuda")
        start, history, best = 0, [], None
        if self.resume is not None:
            s = self.resume
            net.load_state_dict(s["model"])
            opt.load_state_dict(s["optimizer"])
            sched.load_state_dict(s["scheduler"])
            scaler.load_state_dict(s["scaler"])
            start, history, best = int(s["epoch"]), list(s["history"]), s["best"]
            _set_rng_state(s["rng"])
            self.log(f"resuming after epoch {start} of {cfg.epochs}")
        sampler = DistributedSampler(self.train_data, num_replicas=d.world, rank=d.rank, shuffle=True,  # type: ignore[arg-type]
                                     seed=cfg.seed, drop_last=True)
        local_bs = cfg.batch_size // d.world
        ran, finished, diverged = 0, True, None
        for epoch in range(start, cfg.epochs):
            if self.stop_after is not None and ran >= self.stop_after:
                finished = False
                break
            row = self._train_epoch(epoch, net, attack_net, train_fwd, opt, sched, scaler, sampler, local_bs)
            if not math.isfinite(row["train_loss"]):
                # the weights are no longer numbers: nothing to validate or save; earlier epochs stay selectable
                diverged = {**row, "diverged": True}
                self.log(f"epoch {epoch + 1:>3}/{cfg.epochs}  the training loss is not finite: stopping")
                break
            t0 = time.perf_counter()
            row.update(self.validate(attack_net))
            row["val_seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            best = self._select(epoch, row, net, best)
            row["best"] = int(best["epoch"] == epoch + 1)
            row["warning"] = self._overfitting(history)
            if d.main:
                self._report(row)
                if self.state_path is not None:
                    save_state_file(self.state_path, self._state(net, opt, sched, scaler, epoch + 1, best, history))
            ran += 1
        net.eval()
        if best is None and diverged is None:
            raise TrainingError("no epoch was run")
        failure = None
        if finished or diverged:
            n_val = 0 if self.val is None else int(self.val[1].shape[0])
            train_clean = self._train_clean(attack_net) if n_val == 0 and diverged is None else None
            failure = diagnose(history, cfg, adversarial=self.recipe.adversarial, chance=self._chance(),
                               diverged=diverged, best_epoch=int(best["epoch"]) if best else None,
                               steps=len(history) * self.steps_per_epoch, n_val=n_val, train_clean=train_clean)
        if best is None:                      # diverged in the first epoch: no weights worth keeping
            return TrainResult(net, {}, 0, history, True, len(history), failure)
        return TrainResult(net, best["state"], int(best["epoch"]), history, finished, len(history), failure)

    @torch.no_grad()
    def _train_clean(self, model: nn.Module, n: int = 1000) -> float | None:
        """Clean accuracy of the final model on the first `n` training examples held in memory (the same on
        every process): what tells chance level when there is no validation split."""
        x_all, y_all = getattr(self.train_data, "x", None), getattr(self.train_data, "y", None)
        if x_all is None or y_all is None:
            return None
        was = model.training
        model.eval()
        correct = 0
        m = min(n, int(y_all.shape[0]))
        for i in range(0, m, self.config.eval_batch_size):
            x = x_all[i:min(m, i + self.config.eval_batch_size)].to(self.dist.device).float()
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            correct += int(self._clean_correct(model, x, y_all[i:i + x.shape[0]].to(x.device)).sum())
        model.train(was)
        return correct / max(m, 1)

    def _chance(self) -> float | None:
        """Accuracy of always answering the most frequent class of the data the accuracy is measured on
        (validation labels, else the training labels held in memory); None when unknown."""
        y = self.val[1] if self.val is not None else getattr(self.train_data, "y", None)
        if y is None or len(y) == 0:
            return None
        counts = torch.bincount(torch.as_tensor(y).long().flatten())
        return float(counts.max()) / float(counts.sum())

    def _train_epoch(self, epoch, net, attack_net, train_fwd, opt, sched, scaler, sampler, local_bs):
        cfg, d = self.config, self.dist
        sampler.set_epoch(epoch)
        # the wrappers too: `frozen` and `validate` restore the mode of the module they are given
        for m in (net, attack_net, train_fwd):
            m.train(cfg.train_backbone)
        stats = torch.zeros(3, dtype=torch.float64, device=d.device)   # loss sum, correct, count
        bar = None
        if self.progress and d.main:
            from tqdm import tqdm
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                       file=sys.stderr, leave=False, dynamic_ncols=True)
        lr = opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(self.train_data.batches(sampler, local_bs)):
            if step >= self.steps_per_epoch:
                break
            x = x.to(d.device, non_blocking=True).float()
            y = y.to(d.device, non_blocking=True)
            rnd = BatchRandom(derive_seed(cfg.seed, "step", epoch, step), cfg.batch_size, d.rank, d.world, d.device)
            x = augment(x, cfg.augment, rnd)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            recipe = self.recipe
            if cfg.eps_warmup > 0:
                recipe = recipe.scaled((epoch * self.steps_per_epoch + step + 1) / (cfg.eps_warmup * self.steps_per_epoch))
            inputs = recipe.inputs(attack_net, x, y, rnd)
            outputs = train_fwd(*inputs)
            loss, logits = recipe.loss(outputs, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            with torch.no_grad():
                stats += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                      torch.tensor(float(len(y)), dtype=torch.float64, device=d.device)])
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
        if d.device.type == "cuda":
            torch.cuda.synchronize(d.device)
        seconds = time.perf_counter() - t0
        all_reduce_sum(stats, d)
        loss_sum, correct, count = stats.tolist()
        return {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(count, 1),
                "train_acc": correct / max(count, 1), "train_seconds": round(seconds, 3),
                "images_per_s": round(count / seconds, 1) if seconds > 0 else None}

    @torch.no_grad()
    def _clean_correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x).argmax(1) == y

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        """Clean, FGSM and PGD-`val_steps` accuracy on this process's share of the validation set, summed
        over processes. A robust example must be classified correctly clean and under the attack."""
        if self.val is None:
            return {"val_clean": None, "val_fgsm": None, "val_pgd": None}
        cfg, d = self.config, self.dist
        x_all, y_all = self.val
        idx = torch.arange(x_all.shape[0])[d.rank::d.world]
        counts = torch.zeros(4, dtype=torch.float64, device=d.device)   # clean, fgsm, pgd, n
        attack = cfg.val_eps > 0
        fgsm = FGSM(norm=cfg.val_norm)
        pgd = PGD(norm=cfg.val_norm, steps=cfg.val_steps)
        # a recipe that trains for noisy inputs (gaussian, for randomized smoothing) is judged on them:
        # the same draw for each validation example every epoch
        noise_sd = float(getattr(self.recipe, "validation_noise", 0.0) or 0.0)
        was = model.training
        model.eval()
        for i in range(0, len(idx), cfg.eval_batch_size):
            b = idx[i:i + cfg.eval_batch_size]
            x = x_all[b].to(d.device).float()
            y = y_all[b].to(d.device)
            if noise_sd:
                x = x + noise_sd * torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
                    derive_seed(cfg.seed, "val-noise", int(j)))) for j in b]).to(x)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            clean = self._clean_correct(model, x, y)
            sel = clean.nonzero().squeeze(1)
            n_f = n_p = 0
            if attack and sel.numel():
                xs, ys = x[sel], y[sel]
                n_f = int((~fgsm(model, xs, ys, cfg.val_eps).fooled).sum())
                seeds = torch.tensor([derive_seed(cfg.seed, "val", int(j)) for j in b[sel.cpu()]], dtype=torch.int64)
                n_p = int((~pgd(model, xs, ys, cfg.val_eps, seeds=seeds).fooled).sum())
            counts += torch.tensor([float(clean.sum()), n_f, n_p, len(b)], dtype=torch.float64, device=d.device)
        model.train(was)
        all_reduce_sum(counts, d)
        c, f, p, n = counts.tolist()
        n = max(n, 1)
        return {"val_clean": c / n, "val_fgsm": f / n if attack else None, "val_pgd": p / n if attack else None}

    def _select(self, epoch: int, row: dict[str, Any], net: nn.Module, best: dict[str, Any] | None):
        by = self.config.select_by
        if by == "pgd" and row.get("val_pgd") is None:
            by = "clean"
        if by == "clean" and row.get("val_clean") is None:
            by = "last"
        metric = float(epoch) if by == "last" else float(row[f"val_{by}"])
        if best is None or metric > best["metric"] or by == "last":
            best = {"epoch": epoch + 1, "metric": metric, "by": by,
                    "state": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}}
        return best

    def _overfitting(self, history: list[dict[str, Any]]) -> str:
        """A warning when PGD validation accuracy collapses (> CO_DROP below its best, or near 0) while FGSM
        accuracy stays high: the signature of catastrophic overfitting in single-step training."""
        if not self.recipe.adversarial:
            return ""
        row = history[-1]
        pgd, fgsm = row.get("val_pgd"), row.get("val_fgsm")
        if pgd is None or fgsm is None:
            return ""
        best_row = max(history, key=lambda r: r.get("val_pgd") or 0.0)
        best_pgd = best_row.get("val_pgd") or 0.0
        collapsed = best_pgd - pgd > CO_DROP or pgd < CO_NEAR_ZERO
        if collapsed and fgsm - pgd >= CO_FGSM_GAP:
            return (f"catastrophic overfitting: PGD validation accuracy {100 * pgd:.1f}% (best {100 * best_pgd:.1f}% "
                    f"after epoch {best_row['epoch']}) while FGSM accuracy is {100 * fgsm:.1f}%")
        return ""

    def _report(self, row: dict[str, Any]) -> None:
        def pct(v):
            return "  -  " if v is None else f"{100 * v:5.1f}%"
        cfg = self.config
        self.log(f"epoch {row['epoch']:>3}/{cfg.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
                 f"train {pct(row['train_acc'])}  val clean {pct(row['val_clean'])}  fgsm {pct(row['val_fgsm'])}  "
                 f"pgd {pct(row['val_pgd'])}  {row['train_seconds']:.1f}s  {row['images_per_s'] or 0:.0f} img/s"
                 f"{'  *' if row['best'] else ''}")
        if row["warning"]:
            self.log(f"warning: {row['warning']}; the checkpoint keeps the best epoch by robust validation "
                     f"accuracy. Lower --step-size, train fewer epochs, or use --defense pgd")
        if self.on_epoch is not None:
            self.on_epoch(row)
