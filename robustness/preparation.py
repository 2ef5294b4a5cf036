"""Everything that can fail on bad input, before any store is opened: attacks resolved from their specs,
models and data loaded, examples chosen, eps checked, and the first batch probed (shapes, classes,
finite logits, attacks applicable to the model, the model checks of attacks/sanity.py)."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from attacks import canonical_norm, check_eps, create_attack, get_attack_entry
from attacks.errors import AttackError

from . import adaptive as _adaptive  # noqa: F401 - registers the transfer: attack family
from .data import LoadedDataset, load_dataset, select_indices
from .distributed import World
from .errors import UserError
from .models import LoadedModel, create_model
from .precomputed import PRECOMPUTED, open_precomputed
from .specs import AttackSpec, RunSpec

__all__ = ["Autocast", "Prepared", "auto_batch_size", "batches_of", "loader", "prepare", "prepare_module",
           "resolve_attacks", "resolve_device", "to_device"]


@dataclass(frozen=True)
class Prepared:
    """A model ready to evaluate, with its data and the examples chosen."""
    label: str
    model: LoadedModel
    data: LoadedDataset
    dataset_name: str
    indices: np.ndarray
    eps: tuple[float, ...]
    corrupted: Any = None   # a PrecomputedCorruptions source, or None: corrupt on the fly
    findings: tuple[Any, ...] = ()   # the model checks' findings on the first batch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    return dev


class Autocast(nn.Module):
    """Runs the wrapped model under autocast and hands back float32 logits (losses stay in fp32)."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def prepare_module(module: nn.Module, device: torch.device, precision: str, channels_last: bool,
                   fold_bn: bool = False, compile_model: bool = False) -> nn.Module:
    module = module.to(device).eval()
    if fold_bn:   # batch norm multiplied into the convolutions (robustness/fold.py); a no-op where it cannot be
        from .fold import fold_batchnorm
        module = fold_batchnorm(module).module
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile_model:   # torch.compile, eager where it fails (robustness/fold.py)
        from .fold import CompiledOrEager
        module = CompiledOrEager(module)
    if precision in ("bf16", "fp16"):
        module = Autocast(module, device.type, torch.bfloat16 if precision == "bf16" else torch.float16)
    elif precision != "fp32":
        raise UserError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
    return module


def auto_batch_size(module: nn.Module, data: LoadedDataset, device: torch.device, n: int,
                    channels_last: bool, start: int = 32, cap: int = 4096) -> int:
    """The largest power-of-two batch (up to the number of examples) for which a forward and an input
    backward pass fit in GPU memory, found by trying and backing off on out-of-memory errors. On the
    CPU a failed allocation kills the process instead of raising, so auto means 256 there."""
    limit = max(1, min(n, cap))
    if device.type != "cuda":
        return min(256, limit)
    x0, _ = data.dataset[0]
    best, size = 0, min(start, limit)
    while True:
        try:
            x = x0.unsqueeze(0).expand(size, *x0.shape).contiguous().to(device).requires_grad_(True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = module(x)
            torch.autograd.grad(out.float().logsumexp(1).sum(), x)
            del x, out
            best = size
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        if size >= limit:
            break
        size = min(size * 2, limit)
    if best == 0:
        raise UserError("--batch-size auto: not even one example fits in GPU memory")
    # leave headroom: attacks keep a few extra copies of the batch alive
    return best if best == limit else max(1, best // 2)


def _accepts_any(builder: Any) -> bool:
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):
        return False


def _own_params(spec: RunSpec) -> RunSpec:
    """Give each attack only the shared options it declares (FGSM takes no --steps), so the stored spec
    says what ran; an option that no listed attack takes is an error, not silently dropped."""
    entries = []
    for a in spec.attacks:
        try:
            entries.append(get_attack_entry(a.name))
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
    used: set[str] = set()
    attacks = []
    for a, entry in zip(spec.attacks, entries):
        declared = set(entry.parameters())
        keep = tuple((k, v) for k, v in a.params if k in declared or _accepts_any(entry.builder))
        used.update(k for k, _ in keep)
        attacks.append(AttackSpec(a.name, keep, a.label))
    unused = sorted({k for a in spec.attacks for k, _ in a.params} - used)
    if unused:
        raise UserError(f"no listed attack takes {', '.join(unused)} (see `robust-bench list attacks`)")
    return dataclasses.replace(spec, attacks=tuple(attacks))


def resolve_attacks(spec: RunSpec) -> tuple[RunSpec, list[tuple[str, Any]]]:
    """The spec with each attack's params narrowed to what it declares, and (label, attack object) pairs."""
    try:
        spec = dataclasses.replace(spec, norm=canonical_norm(spec.norm))
    except ValueError as e:
        raise UserError(str(e)) from None
    spec = _own_params(spec)
    out, seen = [], set()
    for a in spec.attacks:
        if a.shown in seen:
            raise UserError(f"attack {a.shown!r} is listed twice")
        seen.add(a.shown)
        entry = get_attack_entry(a.name)
        if spec.norm not in entry.norms:
            raise UserError(f"attack {a.name} supports {', '.join(entry.norms)}, not {spec.norm}")
        try:
            # model_options reach only the attacks that load models (transfer: surrogates)
            out.append((a.shown, create_attack(a.name, norm=spec.norm, model_options=spec.model_options, **a.kwargs)))
        except ImportError as e:
            raise UserError(f"attack {a.name} needs a package that is not installed: {e}") from None
        except (TypeError, ValueError, OverflowError, AttackError) as e:
            raise UserError(f"bad arguments for attack {a.name}: {e}") from None
    return spec, out


def entry_of(label: str):
    """The registry entry of an attack label: its name, or `name(settings)` for a second one."""
    return get_attack_entry(label.split("(", 1)[0] if "(" in label and not label.startswith("torchattacks:")
                            else label)


def check_corruptions(spec: RunSpec) -> None:
    if not spec.corruptions:
        return
    from attacks.corruptions import CORRUPTIONS, PRESETS
    for name in spec.corruptions:
        if name not in CORRUPTIONS:
            from .errors import unknown
            raise unknown("corruption", name, CORRUPTIONS)
    if spec.corruption_preset is not None and spec.corruption_preset not in PRESETS:
        raise UserError(f"unknown corruption preset {spec.corruption_preset!r}; known: {', '.join(sorted(PRESETS))}")


def _labels(data: LoadedDataset) -> np.ndarray | None:
    """All labels without decoding images, where the data set keeps them in a list or tensor."""
    ds = data.dataset
    for attr in ("targets", "y", "labels"):
        v = getattr(ds, attr, None)
        if v is not None:
            return np.asarray(v).reshape(-1)
    return None


def batches_of(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def loader(data: LoadedDataset, batches: Sequence[np.ndarray]) -> DataLoader:
    return DataLoader(data.dataset, batch_sampler=[b.tolist() for b in batches], num_workers=0)


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(device, non_blocking=True).float()
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device)


def prepare(spec: RunSpec, attacks: Sequence[tuple[str, Any]], device: torch.device, *,
            world: World | None = None, log: Callable[[str], None] = lambda s: None,
            models: Sequence[LoadedModel] | None = None,
            data: LoadedDataset | None = None) -> tuple[list[Prepared], int]:
    """Load and check every model with its data; returns them and the batch size to use (`auto`
    resolved). `models`/`data` given as objects (the Python API) replace the names of the spec."""
    world = world or World()
    norm = canonical_norm(spec.norm)
    prepared: list[Prepared] = []
    labels: set[str] = set()
    batch_size = spec.batch_size
    sources: list[Any] = list(models) if models is not None else list(spec.models)
    for source in sources:
        loaded = source if isinstance(source, LoadedModel) else create_model(source, spec.model_options)
        label = loaded.info.name
        if label in labels:
            raise UserError(f"model {label!r} is listed twice")
        labels.add(label)
        ds_name = spec.dataset or loaded.info.dataset
        corrupted = None
        if data is not None:
            dataset = data
        elif ds_name is None:
            raise UserError(f"model {label} does not say which data set it was made for: pass --dataset")
        elif ds_name in PRECOMPUTED:
            if not spec.corruptions:
                raise UserError(f"{ds_name} holds corrupted images: evaluate it with --attack corruptions")
            dataset = load_dataset(spec.clean_dataset or PRECOMPUTED[ds_name],
                                   data_dir=spec.clean_data_dir or spec.data_dir, split="test",
                                   preprocess=loaded.info.preprocess)
            corrupted = open_precomputed(ds_name, spec.data_dir, len(dataset), loaded.info.preprocess)
            corrupted.check(spec.corruptions, spec.severities, _labels(dataset))
        else:
            dataset = _load_model_data(spec, loaded, ds_name, log)
        indices = select_indices(len(dataset), spec.n_examples, spec.subset, spec.seed)
        eps = spec.eps if spec.eps is not None else dataset.info.default_eps.get(norm)
        if not eps and spec.attacks:
            raise UserError(f"no default eps for {dataset.info.name} under {norm}: pass --eps")
        for e in eps or ():
            try:
                check_eps(e, norm)
            except ValueError as err:
                raise UserError(str(err)) from None
        module = prepare_module(loaded.module, device, spec.precision, spec.channels_last,
                                fold_bn=spec.fold_bn, compile_model=spec.compile)
        p = Prepared(label, LoadedModel(module, loaded.info), dataset,
                     ds_name if corrupted else dataset.info.name, indices,
                     tuple(sorted(set(float(e) for e in eps or ()))), corrupted)
        if batch_size == "auto":
            size = auto_batch_size(module, dataset, device, len(indices), spec.channels_last)
            batch_size = world.broadcast(size) if world.active else size
            log(f"--batch-size auto: {batch_size}")
        p = dataclasses.replace(p, findings=tuple(probe(p, attacks, device, spec.channels_last, int(batch_size))))
        prepared.append(p)
    return prepared, int(batch_size) if batch_size != "auto" else 256


def _load_model_data(spec: RunSpec, loaded: LoadedModel, ds_name: str, log: Callable[[str], None]) -> LoadedDataset:
    """The data set by name; a checkpoint that names its own data set also remembers the --data-dir it was
    trained with, used when none is given and that folder exists here (and named in the error otherwise)."""
    from pathlib import Path
    hint = loaded.info.extra.get("data_dir") if spec.dataset is None and spec.data_dir is None else None
    hint = hint if isinstance(hint, str) and hint else None
    data_dir = spec.data_dir
    if hint and Path(hint).is_dir():
        data_dir = hint
        log(f"{loaded.info.name}: reading {ds_name} from {hint}, the --data-dir its checkpoint was trained with")
    try:
        return load_dataset(ds_name, data_dir=data_dir, split=spec.split, preprocess=loaded.info.preprocess,
                            name=spec.dataset_name)
    except UserError as e:
        if hint and data_dir is None:
            raise UserError(f"{e} (model {loaded.info.name} was trained with --data-dir {hint}, which is not a "
                            f"folder here)") from None
        raise


def _batch_size_that_works(module: nn.Module, x: torch.Tensor) -> int | None:
    """The largest power of two below the failing batch that the model takes, if any (a model written
    for one fixed batch size fails on the whole batch, not on its images)."""
    size = 1
    while size < x.shape[0]:
        size *= 2
    size //= 2
    while size >= 1:
        try:
            with torch.no_grad():
                out = module(x[:size])
            if isinstance(out, torch.Tensor) and out.shape[:1] == (size,):
                return size
        except Exception:  # noqa: BLE001
            pass
        size //= 2
    return None


def probe(p: Prepared, attacks: Sequence[tuple[str, Any]], device: torch.device, channels_last: bool,
          batch_size: int) -> list[Any]:
    """Shape, class-count and NaN checks on the first batch, naming both model and data set; then the
    attacks' applicability to this model and the model checks (logits or probabilities, a deterministic
    forward, usable gradients)."""
    info, dinfo = p.model.info, p.data.info
    if info.in_channels is not None and info.in_channels != dinfo.channels:
        raise UserError(f"model {p.label} takes {info.in_channels}-channel images but data set {dinfo.name} "
                        f"has {dinfo.channels} channels")
    x, y = next(iter(loader(p.data, batches_of(p.indices, batch_size)[:1])))
    x, y = to_device(x, y, device, channels_last)
    try:
        with torch.no_grad():
            logits = p.model.module(x)
    except Exception as e:  # noqa: BLE001 - shape errors surface as RuntimeError, AssertionError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        works = _batch_size_that_works(p.model.module, x)
        if works is not None:
            raise UserError(f"model {p.label} failed on a batch of {x.shape[0]} examples but runs on {works}: it "
                            f"takes only some batch sizes; pass --batch-size {works} (a size that divides the number "
                            f"of examples, so the last batch is not smaller)") from None
        raise UserError(f"model {p.label} cannot take data set {dinfo.name}'s images "
                        f"({dinfo.channels} channels, {tuple(x.shape[2:])} pixels): {first}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"model {p.label} returned {shape}, not (batch, classes) logits")
    k = logits.shape[1]
    if k != dinfo.num_classes:
        raise UserError(f"model {p.label} outputs {k} classes but data set {dinfo.name} has "
                        f"{dinfo.num_classes}")
    if info.num_classes is not None and info.num_classes != k:
        raise UserError(f"model {p.label} says it has {info.num_classes} classes but outputs {k}")
    if not torch.isfinite(logits).all():
        raise UserError(f"model {p.label} produced NaN or infinite logits on data set {dinfo.name}")
    from attacks import check_applicable, model_checks
    for label, attack in attacks:
        try:   # targeted without targets, DLR on < 3 classes, ...: refused before a run is stored
            check_applicable(attack, k)
        except AttackError as e:
            raise UserError(f"attack {label} on model {p.label}: {e}") from None
    gradient_attacks = [label for label, _ in attacks if entry_of(label).white_box]
    return record_findings(p) + model_checks(p.model.module, x, y, model_name=p.label,
                                             attacks=gradient_attacks or None)


def record_findings(p: Prepared) -> list[Any]:
    """What the model's own file says against it: a checkpoint `robust-bench train` wrote although the run
    failed (`--allow-failed`, or kept for inspection) still evaluates, but every number of it says so."""
    from attacks import Finding
    failure = (p.model.info.extra or {}).get("training_failure")
    if not isinstance(failure, dict):
        return []
    kind, epoch = failure.get("kind", "failed"), failure.get("epoch")
    at = f" at epoch {epoch}" if epoch else ""
    return [Finding("training_failed", f"the checkpoint is marked as a failed training run ({kind}{at}): "
                    f"{failure.get('message', '')}; its numbers describe a model that did not train as asked",
                    model=p.label)]
