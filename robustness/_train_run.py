"""The implementation behind `robustness.train`: resolve a TrainSpec's defaults against the data and the
model, run `defenses.Trainer`, write the checkpoint, judge the run. Imported only when training is asked
for (it pulls in torch)."""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import inspect
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError
from .peft_run import DEFAULT_LR as _PEFT_LR, PEFT_FINETUNE
from .training import TrainingFailed, TrainOutcome, TrainSpec, eps_label

_DEFAULT_LR = {("sgd", "scratch"): 0.1, ("sgd", "linear"): 0.1, ("sgd", "full"): 0.01, ("sgd", "none"): 0.01,
               ("adamw", "scratch"): 1e-3, ("adamw", "linear"): 1e-3, ("adamw", "full"): 1e-4,
               ("adamw", "none"): 1e-4, **_PEFT_LR}   # lora / bitfit: robustness/peft_run.py
_DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05}
# adversarial training from scratch of a network without batch norm: Adam(W) at 5e-3 without weight decay,
# the MNIST setting of Wong et al. 2020 (SGD at 0.1 or 0.01 stays at chance on small-cnn at MNIST eps 0.3,
# measured in docs/TRAINING.md)
_PLAIN_ADVERSARIAL = ("adamw", 5e-3, 0.0)
_IN_MEMORY_LIMIT = 4 << 30
# an L-inf budget at least this large (a third of MNIST's 0.3) gets an eps warm-up by default
_LARGE_LINF_EPS = 0.1
_LARGE_L2_FRACTION = 0.05      # ... and an L2 budget this fraction of the image box's diameter


def _check_out(path: str) -> Path:
    """The checkpoint path must be a writable file in an existing folder (checked by writing a probe file)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--out {path} is a folder; give a file name such as {p / 'model.pt'}")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot write --out {path}: folder {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".robust-bench-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write --out {path}: {e.strerror or e}") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"cannot write --out {path}: permission denied")
    return p


def _eval_dataset(spec: str) -> str | None:
    """What `run --model OUT` should evaluate on: a named set (its test split), the test/val folder beside a
    train folder, else None (run then asks for --dataset)."""
    from .data import registered_datasets
    if spec in {d.name for d in registered_datasets()}:
        return spec
    p = Path(spec)
    if p.is_dir() and p.name.lower() in ("train", "training"):
        for sibling in ("test", "val", "validation"):
            if (p.parent / sibling).is_dir():
                return str((p.parent / sibling).resolve())
    return None


def materialize(dataset, indices: np.ndarray, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the chosen examples of a map-style dataset once into (N, C, H, W) float32 and (N,) int64."""
    from torch.utils.data import DataLoader, Subset

    from .data import TensorImages
    idx = torch.as_tensor(indices, dtype=torch.long)
    if isinstance(dataset, TensorImages) and dataset.transform is None:
        return dataset.x[idx].float().contiguous(), dataset.y[idx].long().clone()
    if len(indices) == 0:
        raise UserError("no examples selected")
    xs, ys = [], []
    for x, y in DataLoader(Subset(dataset, indices.tolist()), batch_size=256, shuffle=False, num_workers=workers):
        xs.append(x.float())
        ys.append(torch.as_tensor(y).long())
    return torch.cat(xs), torch.cat(ys)


class EpochLog:
    """metrics.csv (rewritten whole after each epoch, so a resumed run's file is complete) and TensorBoard
    scalars when the `tensorboard` package is installed."""

    def __init__(self, log_dir: Path | None, history: list[dict[str, Any]], note: Callable[[str], None]) -> None:
        from defenses import CSV_COLUMNS
        self.dir, self.rows, self.columns, self.tb = log_dir, list(history), CSV_COLUMNS, None
        if log_dir is None:
            return
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create --log-dir {log_dir}: {e.strerror or e}") from None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(log_dir), purge_step=len(history) + 1 if history else None)
        else:
            note(f"note: tensorboard is not installed; per-epoch metrics go to {log_dir / 'metrics.csv'} only "
                 f"(pip install tensorboard for event files)")

    def __call__(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.dir is None:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.columns), extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in self.columns})
        tmp = self.dir / "metrics.csv.tmp"
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.dir / "metrics.csv")
        if self.tb is not None:
            for k in ("lr", "train_loss", "train_acc", "val_clean", "val_fgsm", "val_pgd", "images_per_s"):
                if row.get(k) is not None:
                    self.tb.add_scalar(k, row[k], row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---- the model: from scratch or a loaded one, and how its checkpoint will describe it ----

class _Plan:
    """The training module plus what the checkpoint needs: arch and kwargs that re-create the inner module,
    normalization, preprocessing, head."""

    def __init__(self) -> None:
        self.inner: nn.Module | None = None
        self.full: nn.Module | None = None
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self.arch: str = ""
        self.arch_kwargs: dict[str, Any] = {}
        self.preprocess = None
        self.head: str | None = None          # name in the training module
        self.head_replaced = False
        self.peft = None                      # --finetune lora|bitfit: robustness.peft_run.PeftState
        self.base: str | None = None          # the --model spec
        self.base_info = None
        self.note: str | None = None

    def module(self) -> nn.Module:
        from .models import Normalized
        assert self.inner is not None
        if self.mean is None:
            return self.inner
        return Normalized(self.inner, self.mean, self.std)

    def prefix(self) -> str:
        return "model." if self.mean is not None else ""


def _build_kwargs(name: str, num_classes: int, channels: int, size: tuple[int, int] | None,
                  extra: dict[str, Any]) -> dict[str, Any]:
    from .archs import ARCHS
    try:
        params = inspect.signature(ARCHS[name]).parameters
    except (TypeError, ValueError):
        params = {}
    kw: dict[str, Any] = {"num_classes": num_classes}
    if "in_channels" in params:
        kw["in_channels"] = channels
    if "input_size" in params and size is not None:
        if size[0] != size[1]:
            raise UserError(f"architecture {name} needs square images, the data are {size[0]}x{size[1]}")
        kw["input_size"] = size[0]
    for k, v in extra.items():
        if k not in params:
            raise UserError(f"architecture {name} takes no argument {k!r} (takes {', '.join(params) or 'none'})")
        kw[k] = v
    return kw


def _same_layout(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def _registry_form(plan: _Plan, num_classes: int) -> bool:
    """Can the fine-tuned inner module be re-created from the architecture registry? Sets arch/kwargs if so."""
    from .archs import ARCHS, build_arch
    info, spec = plan.base_info, plan.base or ""
    candidates: list[tuple[str, dict[str, Any]]] = []
    if info.source in ("checkpoint", "builtin") and info.arch in ARCHS:
        candidates.append((info.arch, dict(info.extra.get("arch_kwargs") or {})))
    elif info.source == "file":
        from . import archs as archs_module
        file, _, factory = spec.rpartition(":")
        if Path(file).resolve() == Path(archs_module.__file__).resolve():
            for name, fn in ARCHS.items():
                if getattr(fn, "__name__", None) == factory:
                    candidates.append((name, {}))
    for name, kwargs in candidates:
        kwargs = {**kwargs, "num_classes": num_classes}
        try:
            probe = build_arch(name, **kwargs)
        except Exception:  # noqa: BLE001 - kwargs the builder does not take: not this form
            continue
        if _same_layout(probe, plan.inner):
            plan.arch, plan.arch_kwargs = name, kwargs
            return True
    return False


def _foreign_form(plan: _Plan, num_classes: int) -> None:
    """Architectures outside the registry. torchvision and RobustBench models are re-created from their
    source by `run` (the checkpoint stores the source name and the head); a user's file.py is not imported
    from a checkpoint (that would run code a weights-only file should not), so `run` then needs the same
    --model spec with --weights OUT."""
    info, spec = plan.base_info, plan.base or ""
    head = plan.head[len(plan.prefix()):] if plan.head else None
    if info.source == "torchvision":
        plan.arch, plan.arch_kwargs = f"torchvision:{info.arch}", {"num_classes": num_classes, "head": head}
    elif info.source == "timm":
        kwargs = {k: v for k, v in (info.extra or {}).get("create_kwargs", {}).items() if k != "num_classes"}
        plan.arch, plan.arch_kwargs = f"timm:{info.arch}", {"kwargs": kwargs, "num_classes": num_classes, "head": head}
    elif info.source == "robustbench":
        board = (info.extra or {}).get("robustbench_board", "cifar10/Linf")
        plan.arch = f"robustbench:{board}/{info.arch}"
        plan.arch_kwargs = {"num_classes": num_classes, "head": head}
    elif info.source == "file":
        file, _, factory = spec.rpartition(":")
        plan.arch = f"file:{Path(file).resolve()}:{factory}"
        plan.arch_kwargs = {"num_classes": num_classes, "head": head}
        plan.note = (f"note: {spec} is not in robust-bench's architecture registry; evaluate the result with "
                     f"--model {spec} --weights OUT" + (f" --num-classes {num_classes}" if plan.head_replaced else "")
                     + " (and the same --mean/--std)")
    else:
        raise UserError(f"cannot fine-tune a {info.source} model ({spec}): its architecture cannot be "
                        f"re-created; fine-tune the source model instead (--model file.py:factory --weights ...)")


def _plan_model(spec: TrainSpec, loaded, dinfo, sample: torch.Tensor, finetune: str, log) -> _Plan:
    from defenses import find_head, freeze_backbone, replace_head

    from .archs import ARCHS, build_arch
    from .models import Normalized
    plan = _Plan()
    num_classes, channels, size = dinfo.num_classes, dinfo.channels, tuple(sample.shape[2:])
    mean, std = spec.mean, spec.std
    if spec.model is None:
        name = spec.arch or default_arch(dinfo.name, channels)
        if name not in ARCHS:
            from .errors import unknown
            raise unknown("architecture", name, ARCHS)
        if spec.arch is None:
            log(f"note: training architecture {name} (pass --arch to choose)")
        plan.arch = name
        plan.arch_kwargs = _build_kwargs(name, num_classes, channels, size, dict(spec.arch_args))
        try:
            plan.inner = build_arch(name, **plan.arch_kwargs)
        except (TypeError, ValueError) as e:
            raise UserError(f"cannot build {name}: {e}") from None
        if (mean is None) != (std is None):
            raise UserError("--mean and --std go together (one value per channel each)")
        if mean is not None and (len(mean) != channels or len(std) != channels):
            raise UserError(f"--mean/--std need {channels} values (one per channel)")
        plan.mean, plan.std = (tuple(float(v) for v in mean), tuple(float(v) for v in std)) if mean else (None, None)
    else:
        plan.base = spec.model
        plan.base_info, plan.preprocess = loaded.info, loaded.info.preprocess
        module = loaded.module
        if isinstance(module, Normalized):
            plan.inner = module.model
            plan.mean = tuple(float(f"{float(v):.7g}") for v in module.mean.flatten())
            plan.std = tuple(float(f"{float(v):.7g}") for v in module.std.flatten())
        else:
            plan.inner = module
    full = plan.module()
    try:
        with torch.no_grad():
            full.eval()
            logits = full(sample)
    except Exception as e:  # noqa: BLE001 - shape mismatch between model and data
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"the model cannot take the data set's images ({channels} channels, {size[0]}x{size[1]} "
                        f"pixels): {first}") from None
    if logits.dim() != 2:
        raise UserError(f"the model returned shape {tuple(logits.shape)}, not (batch, classes) logits")
    k = int(logits.shape[1])
    if spec.model is not None:
        what = f"model {spec.model}"
        if finetune == "none":
            if k != num_classes:
                raise UserError(f"{what} outputs {k} classes but data set {dinfo.name} has {num_classes}; pass "
                                f"--finetune linear or full to train a new head")
            mc, dc = plan.base_info.classes, dinfo.classes
            if mc and dc and tuple(mc) != tuple(dc):
                log(f"warning: {what}'s classes ({', '.join(list(mc)[:3])}, ...) are named differently from the "
                    f"data set's ({', '.join(list(dc)[:3])}, ...); training assumes they are in the same order")
        else:
            try:
                head, layer = find_head(full)
            except ValueError as e:
                raise UserError(f"cannot fine-tune {spec.model}: {e}") from None
            plan.head = head
            if k != num_classes:
                if layer.out_features != k:
                    raise UserError(f"cannot fine-tune {spec.model}: its last nn.Linear ({head}) has "
                                    f"{layer.out_features} outputs but the model {k}; it is not the classifier head")
                replace_head(full, num_classes, head)
                plan.head_replaced = True
                log(f"note: new head {head} for {num_classes} classes (the model had {k})")
            if finetune == "linear":
                freeze_backbone(full, head)
        if not _registry_form(plan, num_classes):
            _foreign_form(plan, num_classes)
        if finetune in PEFT_FINETUNE:   # after the form: the checkpoint describes the architecture without it
            from .peft_run import apply
            plan.peft = apply(full, plan.head, spec, log)
    plan.full = full
    return plan


def default_arch(dataset: str, channels: int) -> str:
    return "digits-cnn" if dataset == "digits" else "small-cnn" if channels == 1 else "preact-resnet18"


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def default_optimization(spec: TrainSpec, kind: str, module: nn.Module, adversarial: bool) -> tuple[str, float, float]:
    """(optimizer, peak rate, weight decay) where the spec leaves them open. SGD at 0.1 from scratch suits
    batch-normalized networks; a plain network under adversarial training from scratch gets AdamW at 5e-3
    without weight decay (Wong et al.'s MNIST setting) unless an optimizer or a rate is given (a rate alone
    keeps SGD, the rate's usual meaning)."""
    plain = kind == "scratch" and adversarial and not _has_batch_norm(module)
    optimizer = spec.optimizer or (_PLAIN_ADVERSARIAL[0] if plain and spec.lr is None else "sgd")
    lr, wd = _DEFAULT_LR[(optimizer, kind)], _DEFAULT_WD[optimizer]
    if plain and optimizer == _PLAIN_ADVERSARIAL[0]:
        lr, wd = _PLAIN_ADVERSARIAL[1], _PLAIN_ADVERSARIAL[2]
    return optimizer, spec.lr if spec.lr is not None else lr, spec.weight_decay if spec.weight_decay is not None else wd


def default_eps_warmup(defense: str, eps: float, norm: str, epochs: int, diameter: float) -> float:
    """Epochs of linear eps ramp when --eps-warmup is not given: none for standard training or small
    budgets; for large ones (L-inf >= 0.1, L2 >= 5% of the image diameter) a third of the run, at least
    half an epoch and at most 5 epochs, so a short run still ends at the full budget for most of an epoch."""
    if defense in ("standard", "gaussian"):
        return 0.0
    large = eps >= _LARGE_LINF_EPS if norm == "linf" else eps >= _LARGE_L2_FRACTION * diameter
    if not large:
        return 0.0
    return float(min(5.0, max(0.5, epochs / 3)))


# ---- the run ----

def run(spec: TrainSpec, *, command: str | None, log: Callable[[str], None] | None, progress: bool) -> TrainOutcome:
    from attacks import canonical_norm
    from defenses import TrainingError, load_state_file, setup_distributed, teardown_distributed
    from defenses.distributed import world_from_env

    from .engine import resolve_device
    say = log or (lambda s: None)
    norm = canonical_norm(spec.norm)
    if spec.compile:
        import torch._dynamo
        backends = torch._dynamo.list_backends(exclude_tags=())
        if spec.compile not in backends:
            raise UserError(f"unknown torch.compile backend {spec.compile!r} (known: {', '.join(sorted(backends)[:8])}, ...)")
    finetune = spec.finetune or ("full" if spec.model is not None else "scratch")
    out = _check_out(spec.out) if spec.out else None
    state_path = spec.state_path()
    resume = None
    if spec.resume:
        try:
            resume = load_state_file(spec.resume)
        except TrainingError as e:
            raise UserError(str(e)) from None
    device = resolve_device(spec.device)
    try:
        world = world_from_env()[0]
    except ValueError as e:
        raise UserError(f"cannot start distributed training: {e}") from None
    if spec.sync_bn and world > 1 and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA processes (torch's SyncBatchNorm does not run on the CPU); without "
                        "it each process normalizes with its own batch statistics")
    try:
        dist = setup_distributed(device)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"cannot start distributed training: {e}") from None
    log_fn = say if dist.main else (lambda s: None)
    try:
        return _train(spec, dist, log_fn, command=command, progress=progress and dist.main, norm=norm,
                      finetune=finetune, out=out, state_path=state_path, resume=resume)
    except TrainingError as e:
        raise UserError(str(e)) from None
    finally:
        teardown_distributed(dist)


def _train(spec: TrainSpec, dist, say, *, command, progress, norm, finetune, out, state_path, resume) -> TrainOutcome:
    from attacks import check_eps
    from defenses import StreamData, TensorData, TrainConfig, Trainer, make_recipe

    from .data import load_dataset

    # notes wait until every check has passed: bad input prints its one error line and nothing else
    pending: list[str] = []
    log = pending.append

    torch.manual_seed(spec.seed)
    # -- data: the model's preprocessing (resize/crop) applies, so a --model is loaded first --
    base = None
    if spec.model is not None:
        from .models import ModelOptions, create_model
        base = create_model(spec.model, ModelOptions(weights=spec.weights, mean=spec.mean, std=spec.std,
                                                     num_classes=spec.num_classes, allow_unsafe=spec.unsafe_load))
    dataset_spec = spec.dataset or (base.info.dataset if base is not None else None)
    if dataset_spec is None:
        raise UserError("--dataset is required (the training data)" if base is None else
                        f"model {spec.model} does not say which data set it was made for: pass --dataset")
    preprocess = base.info.preprocess if base is not None else None
    loaded = load_dataset(dataset_spec, data_dir=spec.data_dir, split="train", preprocess=preprocess)
    dinfo = loaded.info
    n_total = len(loaded)
    val_size = spec.val_size if spec.val_size is not None else min(1000, n_total // 10)
    if val_size >= n_total:
        raise UserError(f"--val-size {val_size} leaves no training data (the set has {n_total} examples)")
    order = np.random.default_rng([spec.seed, 20240517]).permutation(n_total)
    val_idx = np.sort(order[:val_size])
    pool = order[val_size:]
    if spec.n_train is not None and spec.n_train > len(pool):
        raise UserError(f"--n-train {spec.n_train} exceeds the {len(pool)} training examples left after "
                        f"{val_size} for validation")
    train_idx = np.sort(pool[:spec.n_train] if spec.n_train else pool)
    first, _ = loaded.dataset[int(train_idx[0])]
    first = torch.as_tensor(first).float()
    sample = first.unsqueeze(0).repeat(2, 1, 1, 1)

    # -- threat model --
    eps = spec.eps
    if eps is None:
        eps = max(dinfo.default_eps.get(norm) or (0.0,))
        if spec.defense not in ("standard", "gaussian") or (val_size and spec.defense != "gaussian"):
            log(f"note: eps {eps_label(eps)} ({norm}; the data set's largest standard budget; pass --eps to choose)")
    try:
        check_eps(eps, norm)
    except ValueError as e:
        raise UserError(str(e)) from None
    diameter = float(first.numel()) ** 0.5
    if norm == "l2" and eps > diameter:
        raise UserError(f"an L2 eps of {eps:g} exceeds the diameter of the [0, 1] image box ({diameter:.3g} for "
                        f"{tuple(first.shape)} images)")
    if spec.defense not in ("standard", "gaussian") and eps <= 0:
        raise UserError(f"--defense {spec.defense} needs --eps > 0")
    step_size = spec.step_size
    if norm == "linf" and step_size is not None and step_size > 1:
        raise UserError(f"--step-size {step_size:g} exceeds the [0, 1] pixel range; did you mean {step_size:g}/255?")

    # -- model --
    plan = _plan_model(spec, base, dinfo, sample, finetune, log)
    if plan.note:
        log(plan.note)
    full = plan.full
    assert full is not None

    precision = spec.precision
    if precision == "fp16" and dist.device.type == "cpu":
        try:
            with torch.autocast("cpu", dtype=torch.float16):
                torch.ones(1, 1) @ torch.ones(1, 1)
        except Exception:  # noqa: BLE001
            raise UserError("--precision fp16 is not supported on this CPU build; use bf16 or fp32") from None
    try:
        recipe = make_recipe(spec.defense, eps=eps, norm=norm, steps=spec.steps, step_size=step_size, beta=spec.beta,
                             clip_start=spec.clip_start, sigma=spec.sigma, scale_attack_loss=precision == "fp16")
    except ValueError as e:
        raise UserError(str(e)) from None
    opt_kind = "scratch" if spec.model is None else finetune
    augment = spec.augment if spec.augment != "auto" else ("crop-flip" if dinfo.channels == 3 else "none")
    schedule = spec.schedule if spec.schedule != "auto" else ("cyclic" if spec.defense == "fgsm" else
                                                             "step" if spec.lr_milestones else "cosine")
    if spec.lr_milestones and schedule != "step":
        raise UserError(f"--lr-milestones apply to --schedule step, not {schedule}")
    select_by = spec.select_by if spec.select_by != "auto" else ("clean" if spec.defense in ("standard", "gaussian")
                                                                 else "pgd")
    optimizer, lr, weight_decay = default_optimization(spec, opt_kind, full, recipe.adversarial)
    if spec.optimizer is None and optimizer != "sgd":
        log(f"note: optimizer {optimizer} at {lr:g}, weight decay {weight_decay:g} ({plan.arch or spec.model} has "
            f"no batch normalization and stays at chance under adversarial training with SGD; pass --optimizer "
            f"to choose)")
    eps_warmup = spec.eps_warmup
    if eps_warmup is None:
        eps_warmup = default_eps_warmup(spec.defense, eps, norm, spec.epochs, diameter)
        if eps_warmup:
            log(f"note: eps warm-up over {eps_warmup:.3g} epochs (eps {eps_label(eps)} is a large budget to learn "
                f"from the start; pass --eps-warmup 0 to train at the full budget from the first step)")
    config = TrainConfig(
        epochs=spec.epochs, batch_size=spec.batch_size, lr=lr, optimizer=optimizer, momentum=spec.momentum,
        weight_decay=weight_decay, schedule=schedule, augment=augment, seed=spec.seed, precision=precision,
        channels_last=spec.channels_last, compile=spec.compile, head=plan.head,
        backbone_lr_mult=spec.backbone_lr_mult if finetune == "full" else 1.0,
        train_backbone=finetune not in ("linear", *PEFT_FINETUNE), val_eps=0.0 if spec.defense == "gaussian" else eps, val_norm=norm,
        val_steps=spec.val_steps,
        select_by=select_by, eps_warmup=eps_warmup, cycle_peak=spec.cycle_peak,
        lr_milestones=tuple(float(m) for m in spec.lr_milestones) if spec.lr_milestones else None,
        sync_bn=spec.sync_bn)
    config.check()
    if config.batch_size > len(train_idx):
        raise UserError(f"--batch-size {config.batch_size} exceeds the {len(train_idx)} training examples")

    # the spec with every default resolved: what the checkpoint records and the outcome returns
    resolved = spec.replace(
        arch=plan.arch if spec.model is None else spec.arch, dataset=dataset_spec, val_size=val_size, augment=augment,
        eps=eps, norm=norm, steps=getattr(recipe, "steps", None) if spec.defense in ("pgd", "trades") else None,
        step_size=getattr(recipe, "step_size", None), beta=getattr(recipe, "beta", None), eps_warmup=eps_warmup,
        sigma=getattr(recipe, "sigma", None),
        lr=lr, optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, select_by=select_by, finetune=spec.finetune,
        mean=plan.mean if spec.model is None else spec.mean, std=plan.std if spec.model is None else spec.std)

    # -- data into memory (or streamed) --
    per_example = first.numel() * 4
    in_memory = spec.in_memory == "yes" or (spec.in_memory == "auto" and per_example * len(train_idx) <= _IN_MEMORY_LIMIT)
    if in_memory:
        x_tr, y_tr = materialize(loaded.dataset, train_idx, spec.workers)
        train_data: Any = TensorData(x_tr, y_tr)
    else:
        from torch.utils.data import Subset
        train_data = StreamData(Subset(loaded.dataset, train_idx.tolist()), workers=spec.workers,
                                pin_memory=dist.device.type == "cuda")
    val = materialize(loaded.dataset, val_idx, spec.workers) if val_size else None

    split_id = {"train": _digest(train_idx), "val": _digest(val_idx), "n_total": n_total}
    if resume is not None and (resume.get("extra") or {}).get("split") not in (None, split_id):
        raise UserError("the resume file was written for another training/validation split (data set, --n-train, "
                        "--val-size or --seed differ)")
    log_dir = Path(spec.log_dir) if spec.log_dir else None
    epoch_log = EpochLog(log_dir if dist.main else None, (resume or {}).get("history") or [], log)
    for line in pending:
        say(line)
    log = say
    log(f"training {plan.arch or spec.model} on {dinfo.name}: {len(train_idx)} examples, {val_size} for validation, "
        f"defense {spec.defense}" + (f" (sigma {recipe.sigma:g})" if spec.defense == "gaussian" else
                                     f" (eps {eps_label(eps)} {norm})" if spec.defense != "standard" else "")
        + (f" [recipe {spec.recipe}]" if spec.recipe else "")
        + f", {config.epochs} epochs of {len(train_idx) // config.batch_size} steps"
        + (f", {dist.world} processes" if dist.distributed else "") + f", {dist.device}")
    if spec.sync_bn and not dist.distributed:
        log("note: --sync-bn has no effect in one process")
    trainer = Trainer(full, recipe, config, train_data, val, dist=dist, log=log, on_epoch=epoch_log,
                      progress=progress, state_path=state_path if dist.main else None, resume=resume,
                      extra_state={"split": split_id}, stop_after=spec.stop_after)
    try:
        result = trainer.fit()
    except Exception as e:
        if spec.compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor", "torch._subclasses")):
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"torch.compile failed ({first_line}); rerun without --compile") from None
        raise
    finally:
        epoch_log.close()
    history = tuple(dict(r) for r in result.history)

    def outcome(checkpoint, meta, model) -> TrainOutcome:
        best = result.best_row
        return TrainOutcome(spec=resolved, checkpoint=checkpoint, history=history,
                            best={k: best.get(k) for k in ("epoch", "val_clean", "val_fgsm", "val_pgd", "train_loss")}
                            | {"selected_by": _selected_by(config, best) if best else None},
                            final=dict(history[-1]) if history else {}, failure=result.failure,
                            finished=result.finished, state_file=state_path if state_path and state_path.exists()
                            else None, meta=meta, model=model)

    if not result.finished:
        return outcome(None, {}, None)
    meta: dict[str, Any] = {}
    checkpoint = None
    model = None
    if result.best_epoch >= 1:
        full.load_state_dict(result.best_state)
        full.eval()
        model = full.cpu()
        meta = _meta(resolved, command, plan, dinfo, dataset_spec, recipe, config, result, first, eps, norm,
                     finetune, len(train_idx), val_size, dist.world)
        wrote = False
        if getattr(plan, "peft", None) is not None:
            from .peft_run import finish
            wrote = finish(full, plan.peft, plan, spec, meta, out if dist.main else None, log)
            checkpoint = out if wrote else None
        if dist.main and out is not None and not wrote:
            prefix = plan.prefix()
            inner_state = {k[len(prefix):]: v for k, v in full.state_dict().items() if k.startswith(prefix)}
            from .models import save_checkpoint
            try:
                save_checkpoint(out, arch=plan.arch, arch_kwargs=plan.arch_kwargs, state_dict=inner_state, meta=meta)
            except OSError as e:
                raise UserError(f"cannot write --out {out}: {e.strerror or e}") from None
            checkpoint = out
    if dist.main and state_path is not None and not spec.keep_state and state_path.exists():
        state_path.unlink()
    done = outcome(checkpoint, meta, model)
    if done.failure is not None and not spec.allow_failed:
        raise TrainingFailed(done)
    return done


def _digest(idx: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(idx, dtype="<i8").tobytes()).hexdigest()[:16]


def _meta(spec: TrainSpec, command: str | None, plan: _Plan, dinfo, dataset_spec: str, recipe, config, result,
          first: torch.Tensor, eps: float, norm: str, finetune: str, n_train: int, val_size: int,
          world: int) -> dict[str, Any]:
    best = result.best_row
    last = result.history[-1] if result.history else {}
    recipe_meta = {**recipe.describe(), "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                   "optimizer": config.optimizer, "weight_decay": config.weight_decay, "schedule": config.schedule,
                   "augment": config.augment, "n_train": n_train, "val_size": val_size, "seed": config.seed,
                   "finetune": None if finetune == "scratch" else finetune, "base_model": plan.base,
                   "base_weights": spec.weights, "head_replaced": plan.head_replaced,
                   "backbone_lr_mult": config.backbone_lr_mult if finetune == "full" else None,
                   "eps_warmup": config.eps_warmup or None, "precision": config.precision, "processes": world,
                   "train_data": dataset_spec, "named_recipe": spec.recipe,
                   "cycle_peak": config.cycle_peak if config.schedule == "cyclic" else None,
                   "lr_milestones": list(config.lr_milestones) if config.lr_milestones else None,
                   "sync_bn": config.sync_bn or None}
    metrics = {"selected_by": result.history and _selected_by(config, best), "best_epoch": best.get("epoch"),
               "epochs_done": result.epochs_done, "val_clean": best.get("val_clean"), "val_fgsm": best.get("val_fgsm"),
               "val_pgd": best.get("val_pgd"), "val_attack": f"pgd-{config.val_steps}", "val_eps": eps,
               "val_norm": norm, "val_n": val_size,
               "last": {k: last.get(k) for k in ("epoch", "val_clean", "val_fgsm", "val_pgd", "train_loss")},
               "warnings": [r["warning"] for r in result.history if r.get("warning")]}
    meta = {"num_classes": dinfo.num_classes, "classes": list(dinfo.classes) if dinfo.classes else None,
            "mean": list(plan.mean) if plan.mean else None, "std": list(plan.std) if plan.std else None,
            "input_size": [int(v) for v in first.shape], "dataset": _eval_dataset(dataset_spec),
            "preprocess": plan.preprocess.to_json() if plan.preprocess else None,
            "recipe": recipe_meta, "metrics": metrics, "trained_with": command or spec.python(),
            "train_spec": _plain(spec.replace(resume=None, stop_after=None).to_json())}
    if result.failure is not None:
        meta["training_failure"] = result.failure.to_json()
    if recipe.adversarial:
        meta["threat_model"] = {"norm": norm, "eps": eps}
    return meta


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-able values only (a checkpoint is read with weights_only=True)."""
    def conv(v):
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return str(v)
    return {k: conv(v) for k, v in d.items()}


def _selected_by(config, best_row: dict[str, Any]) -> str:
    if config.select_by == "pgd" and best_row.get("val_pgd") is None:
        return "clean" if best_row.get("val_clean") is not None else "last"
    if config.select_by == "clean" and best_row.get("val_clean") is None:
        return "last"
    return config.select_by

