"""`robust-bench train`: standard and adversarial training (FGSM, PGD, TRADES) from scratch or by
fine-tuning any model `robust-bench run` loads; writes a self-describing checkpoint that
`robust-bench run --model OUT` evaluates with no other flag. See docs/TRAINING.md.

Several processes: `torchrun --nproc-per-node N -m robustness train ...` (DistributedDataParallel; nccl on
CUDA, gloo on the CPU); --batch-size is the global batch, split evenly; only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import inspect
import io
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .cli import train as _cli_train
from .errors import UserError
from .cli.options import parse_channels, parse_kv, parse_number, positive_int

_DEFAULT_LR = {("sgd", "scratch"): 0.1, ("sgd", "linear"): 0.1, ("sgd", "full"): 0.01, ("sgd", "none"): 0.01,
               ("adamw", "scratch"): 1e-3, ("adamw", "linear"): 1e-3, ("adamw", "full"): 1e-4,
               ("adamw", "none"): 1e-4}
_DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05}
_IN_MEMORY_LIMIT = 4 << 30


def _num(text: str | None, what: str) -> float | None:
    return None if text is None else parse_number(text, what)


def _check_out(path: str) -> Path:
    """--out must be a writable file path in an existing folder (checked by writing a probe file)."""
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


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed (when sys.argv is this command), else rebuilt from the non-default options."""
    argv = sys.argv[1:]
    if argv[:1] == ["train"] and _cli_train.PARSER is not None:
        try:
            from .cli import build_parser
            if build_parser().parse_args(argv) == args:
                return "robust-bench " + shlex.join(_drop_session_options(argv))
        except SystemExit:
            pass
    parts = ["train"]
    if _cli_train.PARSER is not None:
        for action in _cli_train.PARSER._actions:
            if not action.option_strings or action.dest in ("help", "resume", "stop_after"):
                continue
            value = getattr(args, action.dest, None)
            if value == action.default or value is None:
                continue
            opt = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
            if isinstance(value, bool):
                parts.append(opt if value else f"--no-{opt[2:]}")
            else:
                parts += [opt, str(value)]
    return "robust-bench " + shlex.join(parts)


def _drop_session_options(argv: list[str]) -> list[str]:
    """The command without --resume/--stop-after: what reproduces the result in one go."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--resume", "--stop-after"):
            skip = True
            continue
        if a.startswith(("--resume=", "--stop-after=")):
            continue
        out.append(a)
    return out


def _eps_label(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and 1 <= round(k) < 255 and len(f"{eps:g}") > 5 else f"{eps:g}"


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


def _materialize(dataset, indices: np.ndarray, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the chosen examples once into (N, C, H, W) float32 and (N,) int64."""
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


class _EpochLog:
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
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self.arch: str = ""
        self.arch_kwargs: dict[str, Any] = {}
        self.preprocess = None
        self.head: str | None = None          # name in the training module
        self.head_replaced = False
        self.base: str | None = None          # --model spec
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


def _plan_model(args: argparse.Namespace, loaded, dinfo, sample: torch.Tensor, finetune: str, log) -> _Plan:
    from .archs import ARCHS, build_arch
    from .models import Normalized
    from defenses import find_head, freeze_backbone, replace_head
    plan = _Plan()
    num_classes, channels, size = dinfo.num_classes, dinfo.channels, tuple(sample.shape[2:])
    mean, std = parse_channels(args.mean, "mean"), parse_channels(args.std, "std")
    if args.model is None:
        name = args.arch or ("digits-cnn" if dinfo.name == "digits" else "small-cnn" if channels == 1
                             else "preact-resnet18")
        if name not in ARCHS:
            from .errors import unknown
            raise unknown("architecture", name, ARCHS)
        if args.arch is None:
            log(f"note: training architecture {name} (pass --arch to choose)")
        plan.arch = name
        plan.arch_kwargs = _build_kwargs(name, num_classes, channels, size, parse_kv(args.arch_args))
        try:
            plan.inner = build_arch(name, **plan.arch_kwargs)
        except (TypeError, ValueError) as e:
            raise UserError(f"cannot build {name}: {e}") from None
        if (mean is None) != (std is None):
            raise UserError("--mean and --std go together (one value per channel each)")
        if mean is not None and (len(mean) != channels or len(std) != channels):
            raise UserError(f"--mean/--std need {channels} values (one per channel)")
        plan.mean, plan.std = mean, std
    else:
        plan.base = args.model
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
    if args.model is not None:
        what = f"model {args.model}"
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
                raise UserError(f"cannot fine-tune {args.model}: {e}") from None
            plan.head = head
            if k != num_classes:
                if layer.out_features != k:
                    raise UserError(f"cannot fine-tune {args.model}: its last nn.Linear ({head}) has "
                                    f"{layer.out_features} outputs but the model {k}; it is not the classifier head")
                replace_head(full, num_classes, head)
                plan.head_replaced = True
                log(f"note: new head {head} for {num_classes} classes (the model had {k})")
            if finetune == "linear":
                freeze_backbone(full, head)
        if not _registry_form(plan, num_classes):
            _foreign_form(plan, num_classes)
    plan._full = full  # type: ignore[attr-defined]
    return plan


# ---- the command ----

def run(args: argparse.Namespace) -> int:
    from attacks import canonical_norm
    from defenses import TrainingError, load_state_file, setup_distributed, teardown_distributed
    from .engine import resolve_device

    # -- arguments that need no files --
    norm = canonical_norm(args.norm)
    eps = _num(args.eps, "eps")
    step_size = _num(args.step_size, "step size")
    lr = _num(args.lr, "learning rate")
    if args.model is None and args.finetune is not None:
        raise UserError("--finetune needs --model (the pretrained model to fine-tune)")
    if args.model is not None and args.arch is not None:
        raise UserError("--arch trains from scratch and --model fine-tunes: pass one of them")
    if args.model is None and (args.weights or args.num_classes or args.unsafe_load):
        raise UserError("--weights/--num-classes/--unsafe-load complete --model; with --arch there is nothing to load")
    if args.defense == "fgsm" and args.steps is not None:
        raise UserError("--steps does not apply to --defense fgsm (one step of --step-size, default 1.25*eps)")
    if args.defense == "standard" and (args.steps is not None or step_size is not None):
        raise UserError("--steps/--step-size set the inner attack of fgsm, pgd and trades; standard training has none")
    if args.beta is not None and args.defense != "trades":
        raise UserError("--beta applies to --defense trades only")
    if args.eps_warmup and args.defense == "standard":
        raise UserError("--eps-warmup ramps the budget of adversarial training; standard training has none")
    if args.stop_after is not None and args.stop_after >= args.epochs and args.resume is None:
        raise UserError(f"--stop-after {args.stop_after} is not fewer than --epochs {args.epochs}")
    if args.val_size is not None and args.val_size < 0:
        raise UserError(f"--val-size must be >= 0, got {args.val_size}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if step_size is not None and not step_size > 0:
        raise UserError(f"--step-size must be > 0, got {args.step_size}")
    if args.compile:
        import torch._dynamo
        backends = torch._dynamo.list_backends(exclude_tags=())
        if args.compile not in backends:
            raise UserError(f"unknown torch.compile backend {args.compile!r} (known: {', '.join(sorted(backends)[:8])}, ...)")
    finetune = args.finetune or ("full" if args.model is not None else "scratch")
    out = _check_out(args.out)
    state_path = Path(args.state) if args.state else out.with_name(out.stem + ".state.pt")
    resume = None
    if args.resume:
        try:
            resume = load_state_file(args.resume)
        except TrainingError as e:
            raise UserError(str(e)) from None

    device = resolve_device(args.device)
    try:
        dist = setup_distributed(device)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"cannot start distributed training: {e}") from None
    quiet = args.quiet or not dist.main
    log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        return _train(args, dist, log, norm=norm, eps=eps, step_size=step_size, lr=lr, finetune=finetune, out=out,
                      state_path=state_path, resume=resume)
    except TrainingError as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        if dist.main:
            hint = (f"continue with the same command plus --resume {state_path}" if state_path.is_file()
                    else "no epoch had finished; rerun the command")
            sys.stderr.write(f"robust-bench: interrupted; {hint}\n")
        return 130
    finally:
        teardown_distributed(dist)


def _train(args, dist, say, *, norm, eps, step_size, lr, finetune, out, state_path, resume) -> int:
    from attacks import check_eps
    from defenses import StreamData, TensorData, TrainConfig, Trainer, TrainingError, make_recipe
    from .data import load_dataset

    # notes wait until every check has passed: bad input prints its one error line and nothing else
    pending: list[str] = []
    log = pending.append

    torch.manual_seed(args.seed)
    # -- data: the model's preprocessing (resize/crop) applies, so a --model is loaded first --
    base = None
    if args.model is not None:
        from .models import ModelOptions, create_model
        base = create_model(args.model, ModelOptions(
            weights=args.weights, mean=parse_channels(args.mean, "mean"), std=parse_channels(args.std, "std"),
            num_classes=args.num_classes, allow_unsafe=args.unsafe_load))
    dataset_spec = args.dataset or (base.info.dataset if base is not None else None)
    if dataset_spec is None:
        raise UserError("--dataset is required (the training data)" if base is None else
                        f"model {args.model} does not say which data set it was made for: pass --dataset")
    preprocess = base.info.preprocess if base is not None else None
    loaded = load_dataset(dataset_spec, data_dir=args.data_dir, split="train", preprocess=preprocess)
    dinfo = loaded.info
    n_total = len(loaded)
    val_size = args.val_size if args.val_size is not None else min(1000, n_total // 10)
    if val_size >= n_total:
        raise UserError(f"--val-size {val_size} leaves no training data (the set has {n_total} examples)")
    order = np.random.default_rng([args.seed, 20240517]).permutation(n_total)
    val_idx = np.sort(order[:val_size])
    pool = order[val_size:]
    if args.n_train is not None and args.n_train > len(pool):
        raise UserError(f"--n-train {args.n_train} exceeds the {len(pool)} training examples left after "
                        f"{val_size} for validation")
    train_idx = np.sort(pool[:args.n_train] if args.n_train else pool)
    first, _ = loaded.dataset[int(train_idx[0])]
    first = torch.as_tensor(first).float()
    sample = first.unsqueeze(0).repeat(2, 1, 1, 1)

    # -- threat model --
    if eps is None:
        eps = max(dinfo.default_eps.get(norm) or (0.0,))
        if args.defense != "standard" or val_size:
            log(f"note: eps {_eps_label(eps)} ({norm}; the data set's largest standard budget; pass --eps to choose)")
    try:
        check_eps(eps, norm)
    except ValueError as e:
        raise UserError(str(e)) from None
    diameter = float(first.numel()) ** 0.5
    if norm == "l2" and eps > diameter:
        raise UserError(f"an L2 eps of {eps:g} exceeds the diameter of the [0, 1] image box ({diameter:.3g} for "
                        f"{tuple(first.shape)} images)")
    if args.defense != "standard" and eps <= 0:
        raise UserError(f"--defense {args.defense} needs --eps > 0")
    if norm == "linf" and step_size is not None and step_size > 1:
        raise UserError(f"--step-size {step_size:g} exceeds the [0, 1] pixel range; did you mean {step_size:g}/255?")

    # -- model --
    plan = _plan_model(args, base, dinfo, sample, finetune, log)
    if plan.note:
        log(plan.note)
    full: nn.Module = plan._full  # type: ignore[attr-defined]

    precision = args.precision
    dev = dist.device
    if precision == "fp16" and dev.type == "cpu":
        try:
            with torch.autocast("cpu", dtype=torch.float16):
                torch.ones(1, 1) @ torch.ones(1, 1)
        except Exception:  # noqa: BLE001
            raise UserError("--precision fp16 is not supported on this CPU build; use bf16 or fp32") from None
    try:
        recipe = make_recipe(args.defense, eps=eps, norm=norm, steps=args.steps, step_size=step_size, beta=args.beta,
                             scale_attack_loss=precision == "fp16")
    except ValueError as e:
        raise UserError(str(e)) from None
    opt_kind = "scratch" if args.model is None else finetune
    augment = args.augment
    if augment == "auto":
        augment = "crop-flip" if dinfo.channels == 3 else "none"
    schedule = args.schedule if args.schedule != "auto" else ("cyclic" if args.defense == "fgsm" else "cosine")
    select_by = args.select_by if args.select_by != "auto" else ("clean" if args.defense == "standard" else "pgd")
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=lr if lr is not None else _DEFAULT_LR[(args.optimizer, opt_kind)],
        optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay if args.weight_decay is not None else _DEFAULT_WD[args.optimizer],
        schedule=schedule, augment=augment, seed=args.seed, precision=precision, channels_last=args.channels_last,
        compile=args.compile, head=plan.head,
        backbone_lr_mult=args.backbone_lr_mult if finetune == "full" else 1.0,
        train_backbone=finetune != "linear", val_eps=eps, val_norm=norm, val_steps=args.val_steps,
        select_by=select_by, eps_warmup=args.eps_warmup)
    try:
        config.check()
    except TrainingError as e:
        raise UserError(str(e)) from None
    if config.batch_size > len(train_idx):
        raise UserError(f"--batch-size {config.batch_size} exceeds the {len(train_idx)} training examples")

    # -- data into memory (or streamed) --
    per_example = first.numel() * 4
    in_memory = args.in_memory == "yes" or (args.in_memory == "auto" and per_example * len(train_idx) <= _IN_MEMORY_LIMIT)
    if in_memory:
        x_tr, y_tr = _materialize(loaded.dataset, train_idx, args.workers)
        train_data: Any = TensorData(x_tr, y_tr)
    else:
        from torch.utils.data import Subset
        train_data = StreamData(Subset(loaded.dataset, train_idx.tolist()), workers=args.workers,
                                pin_memory=dist.device.type == "cuda")
    val = _materialize(loaded.dataset, val_idx, args.workers) if val_size else None

    split_id = {"train": _digest(train_idx), "val": _digest(val_idx), "n_total": n_total}
    if resume is not None and (resume.get("extra") or {}).get("split") not in (None, split_id):
        raise UserError("the resume file was written for another training/validation split (data set, --n-train, "
                        "--val-size or --seed differ)")
    log_dir = None if (args.log_dir or "").lower() == "none" else Path(args.log_dir or Path("runs") / out.stem)
    epoch_log = _EpochLog(log_dir if dist.main else None, (resume or {}).get("history") or [], log)
    for line in pending:
        say(line)
    log = say
    log(f"training {plan.arch or args.model} on {dinfo.name}: {len(train_idx)} examples, {val_size} for validation, "
        f"defense {args.defense}" + (f" (eps {_eps_label(eps)} {norm})" if args.defense != "standard" else "")
        + f", {config.epochs} epochs of {len(train_idx) // config.batch_size} steps"
        + (f", {dist.world} processes" if dist.distributed else "") + f", {dist.device}")
    trainer = Trainer(full, recipe, config, train_data, val, dist=dist, log=log, on_epoch=epoch_log,
                      progress=not args.quiet and dist.main and sys.stderr.isatty(), state_path=state_path,
                      resume=resume, extra_state={"split": split_id}, stop_after=args.stop_after)
    try:
        result = trainer.fit()
    except Exception as e:
        if args.compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor", "torch._subclasses")):
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"torch.compile failed ({first_line}); rerun without --compile") from None
        raise
    finally:
        epoch_log.close()
    if not result.finished:
        if dist.main:
            print(f"stopped after epoch {result.epochs_done} of {config.epochs}; continue with the same command "
                  f"plus --resume {state_path}")
        return 0

    if dist.main:
        full.load_state_dict(result.best_state)
        prefix = plan.prefix()
        inner_state = {k[len(prefix):]: v for k, v in full.state_dict().items() if k.startswith(prefix)}
        meta = _meta(args, plan, dinfo, dataset_spec, recipe, config, result, first, eps, norm, finetune,
                     len(train_idx), val_size, dist.world)
        from .models import save_checkpoint
        try:
            save_checkpoint(out, arch=plan.arch, arch_kwargs=plan.arch_kwargs, state_dict=inner_state, meta=meta)
        except OSError as e:
            raise UserError(f"cannot write --out {out}: {e.strerror or e}") from None
        if not args.keep_state and state_path.exists():
            state_path.unlink()
        best = result.best_row
        m = meta["metrics"]
        tail = ""
        if m.get("val_clean") is not None:
            tail = f": validation clean {100 * m['val_clean']:.1f}%"
            if m.get("val_pgd") is not None:
                tail += f", PGD-{config.val_steps} eps {_eps_label(eps)} {100 * m['val_pgd']:.1f}%"
        print(f"wrote {out} (epoch {best.get('epoch')} of {config.epochs}, selected by {m['selected_by']}){tail}")
    return 0


def _digest(idx: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(np.asarray(idx, dtype="<i8").tobytes()).hexdigest()[:16]


def _meta(args, plan: _Plan, dinfo, dataset_spec: str, recipe, config, result, first: torch.Tensor, eps: float,
          norm: str, finetune: str, n_train: int, val_size: int, world: int) -> dict[str, Any]:
    best = result.best_row
    last = result.history[-1] if result.history else {}
    recipe_meta = {**recipe.describe(), "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                   "optimizer": config.optimizer, "weight_decay": config.weight_decay, "schedule": config.schedule,
                   "augment": config.augment, "n_train": n_train, "val_size": val_size, "seed": config.seed,
                   "finetune": None if finetune == "scratch" else finetune, "base_model": plan.base,
                   "base_weights": args.weights, "head_replaced": plan.head_replaced,
                   "backbone_lr_mult": config.backbone_lr_mult if finetune == "full" else None,
                   "eps_warmup": config.eps_warmup or None, "precision": config.precision, "processes": world,
                   "train_data": dataset_spec}
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
            "recipe": recipe_meta, "metrics": metrics, "trained_with": _command_line(args)}
    if recipe.adversarial:
        meta["threat_model"] = {"norm": norm, "eps": eps}
    return meta


def _selected_by(config, best_row: dict[str, Any]) -> str:
    if config.select_by == "pgd" and best_row.get("val_pgd") is None:
        return "clean" if best_row.get("val_clean") is not None else "last"
    if config.select_by == "clean" and best_row.get("val_clean") is None:
        return "last"
    return config.select_by
