"""Compression as a library: prune, quantize or distill a model `run` loads, write a checkpoint that says what
was done and what it cost (size, parameters, sparsity or bit width, CPU latency measured at save time), and
evaluate a quantized model honestly. docs/COMPRESSION.md has the method notes and measured figures.

    import robustness as rb
    out = rb.compress(rb.CompressSpec(model="resnet20.pt", method="prune", sparsity=0.9, out="r20-s90.pt"))
    out.stats.sparsity, out.stats.gzip_bytes, out.stats.latency_ms
    ev = rb.evaluate_compressed("r20-int8.pt", "cifar10", attacks=["pgd"], eps=[2 / 255])

- prune: global unstructured magnitude pruning (torch.nn.utils.prune.global_unstructured, L1) of every Conv and
  Linear weight, or structured channel pruning (torch-pruning's MagnitudePruner, L1 importance); optional fine-tuning
  afterwards with any defense while the masks hold (pruned weights stay zero), then the masks are made permanent.
- quantize: int8 post-training static quantization through PT2E (torch.export + torchao's X86InductorQuantizer,
  per-channel weights, per-tensor activations calibrated on N training images; `mode="dynamic"` quantizes only the
  Linear layers with per-batch activation scales). torch.ao.quantization's eager API is being retired; PT2E is the
  supported path. The checkpoint keeps the float weights and the calibration, so it rebuilds with no other flag and
  the float twin travels with it.
- distill: a student `arch` trained on the teacher's soft labels (Hinton et al.), or with an adversarial defense on
  the teacher's soft labels at adversarial inputs (RSLAD; defenses/distill.py).

Quantized models are evaluated on their straight-through twin: the converted int8 graph computes the forward pass
(bit for bit: each quantize/dequantize pair calls the same torchao ops), its rounding passes gradients straight
through (zero outside the clamp range, as torch.fake_quantize). `evaluate_compressed` adds for every gradient attack
the transfer of the float model's adversarial examples; the worst case per example is then never above the transfer
alone, and a masked gradient cannot make the model look robust.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError
from .models import LoadedModel, ModelOptions, Normalized, create_model
from .models.checkpoints import META_BASE_MODEL, META_COMPRESSION, META_SOURCE

METHODS = ("prune", "quantize", "distill")
STRUCTURES = ("unstructured", "channel")
QUANT_MODES = ("static", "dynamic")
DEFENSES = ("standard", "fgsm", "pgd", "trades")

__all__ = ["CompressOutcome", "CompressSpec", "CompressionStats", "METHODS", "QuantizedModel", "compress",
           "evaluate_compressed", "honest_attacks", "measure", "prune_model", "quantize_model", "quantized_model"]


@dataclass(frozen=True)
class CompressSpec:
    """One compression of one model. None means a default resolved by `compress` (recorded in the checkpoint).
    `sparsity`: the fraction of prunable weights removed (unstructured) or of channels removed (channel); `epochs`:
    fine-tuning after pruning (0: none) or the student's training (distill); `defense`: the fine-tuning / distillation
    recipe (standard, or an adversarial one: fgsm, pgd, trades; distillation then runs RSLAD)."""
    model: str
    method: str
    out: str | None = None
    weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    unsafe_load: bool = False
    # data for calibration, fine-tuning and distillation (default: the model's own data set, train split)
    dataset: str | None = None
    data_dir: str | None = None
    n_train: int | None = None
    val_size: int = 500
    # prune
    sparsity: float | None = None
    structure: str = "unstructured"
    # training after pruning / of the student
    epochs: int | None = None
    defense: str = "standard"
    eps: float | None = None
    steps: int | None = None
    batch_size: int = 128
    lr: float | None = None
    # quantize
    calibration: int = 256
    mode: str = "static"
    # distill
    arch: str | None = None
    arch_args: Mapping[str, Any] = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.9
    # measurement and engine
    latency_repeats: int = 50
    latency_compile: bool | None = None      # None: for quantize (int8 kernels need inductor), not otherwise
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        if not isinstance(self.arch_args, dict):
            object.__setattr__(self, "arch_args", dict(self.arch_args or {}))
        for name in ("out", "weights", "data_dir", "dataset", "model"):
            if isinstance(getattr(self, name), Path):
                object.__setattr__(self, name, str(getattr(self, name)))

    def replace(self, **changes: Any) -> "CompressSpec":
        return dataclasses.replace(self, **changes)

    def check(self) -> "CompressSpec":
        """The checks that need no files: one UserError line per problem, named after the CLI option."""
        if self.method not in METHODS:
            raise UserError(f"bad --method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.defense not in DEFENSES:
            raise UserError(f"bad --defense {self.defense!r}: expected one of {', '.join(DEFENSES)}")
        if self.method == "prune":
            if self.sparsity is None:
                raise UserError("--method prune needs --sparsity (a fraction strictly between 0 and 1, e.g. 0.5,0.9)")
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or \
                    not math.isfinite(self.sparsity) or not 0 < self.sparsity < 1:
                raise UserError(f"--sparsity must lie strictly between 0 and 1 (the fraction removed), got "
                                f"{self.sparsity!r}")
            if self.structure not in STRUCTURES:
                raise UserError(f"bad --structure {self.structure!r}: expected one of {', '.join(STRUCTURES)}")
        elif self.sparsity is not None:
            raise UserError(f"--sparsity applies to --method prune, not {self.method}")
        if self.method == "distill" and not self.arch:
            raise UserError("--method distill needs --arch (the student's architecture, e.g. resnet20)")
        if self.method != "distill" and self.arch:
            raise UserError(f"--arch names the student of --method distill, not of {self.method}")
        if self.method == "quantize":
            if self.mode not in QUANT_MODES:
                raise UserError(f"bad --mode {self.mode!r}: expected one of {', '.join(QUANT_MODES)}")
            if self.epochs:
                raise UserError("--epochs: quantization here is post-training (no fine-tuning)")
            if self.defense != "standard":
                raise UserError("--defense applies to fine-tuning after pruning and to distillation, not to "
                                "post-training quantization")
            if self.device != "cpu":
                raise UserError(f"int8 quantization runs on the CPU (x86 int8 kernels); --device {self.device} "
                                f"cannot, use --device cpu")
        for name in ("epochs", "steps", "n_train"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "epochs" else 1)):
                raise UserError(f"--{name.replace('_', '-')} must be a whole number >= "
                                f"{0 if name == 'epochs' else 1}, got {v!r}")
        for name, low in (("batch_size", 1), ("calibration", 1), ("latency_repeats", 1), ("val_size", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserError(f"--{name.replace('_', '-')} must be a whole number >= {low}, got {v!r}")
        if self.defense != "standard" and self.method == "prune" and not self.epochs:
            raise UserError("--defense sets the fine-tuning after pruning: give --epochs N too")
        if self.eps is not None and (not isinstance(self.eps, (int, float)) or not 0 < self.eps <= 1):
            raise UserError(f"--eps must be in (0, 1], got {self.eps!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise UserError(f"--lr must be > 0, got {self.lr!r}")
        if not self.temperature > 0 or not 0 <= self.alpha <= 1:
            raise UserError("--temperature must be > 0 and --alpha in [0, 1]")
        if (self.mean is None) != (self.std is None):
            raise UserError("--mean and --std go together (one value per channel each)")
        return self

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("mean", "std"):
            if d[k] is not None:
                d[k] = list(d[k])
        d["arch_args"] = dict(self.arch_args)
        return d


@dataclass(frozen=True)
class CompressionStats:
    """What a model costs. `size_bytes`: its weights as saved (float32 state dict; int8 weights, scales, zero points
    and float biases for a quantized graph); `gzip_bytes`: that file gzip-compressed (zeros left by pruning compress
    away: the size to ship); `sparsity`: zero share of the prunable (Conv/Linear) weights; `latency_ms`: median CPU
    time per image (batch 1) in eager PyTorch, `compiled_ms` under torch.compile (inductor), measured with
    `threads` threads at `load` (1-minute load average) on `machine`."""
    size_bytes: int
    gzip_bytes: int
    parameters: int
    nonzero: int
    sparsity: float
    bits: int
    latency_ms: float
    compiled_ms: float | None
    threads: int
    load: float
    machine: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompressOutcome:
    spec: CompressSpec
    checkpoint: Path | None
    stats: CompressionStats
    base: CompressionStats
    step: Mapping[str, Any]                  # what the checkpoint's meta.compression gained (tensors left out)
    history: tuple[Mapping[str, Any], ...] = ()
    model: nn.Module | None = field(default=None, repr=False, compare=False)


# ---- measuring ----

def _machine() -> str:
    import platform
    return f"{platform.machine()} {os.cpu_count()} cores"


def _tensors_bytes(tensors: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buf)
    raw = buf.getvalue()
    return len(raw), len(gzip.compress(raw, compresslevel=6, mtime=0))


def _prunable(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def weight_sparsity(module: nn.Module) -> float:
    """Zero share of the Conv/Linear weights (the tensors pruning acts on)."""
    zeros = total = 0
    for _, m in _prunable(module):
        w = m.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


LATENCY_THREADS = 1     # one thread: on a shared machine more threads mostly measure the neighbours


def latency_ms(module: nn.Module, shape: Sequence[int], repeats: int = 50, compile: bool = False) -> float:
    """Median wall time of one batch-1 forward pass on the CPU with LATENCY_THREADS threads, after warm-up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        return _latency(module, shape, repeats, compile)
    finally:
        torch.set_num_threads(threads)


def _latency(module: nn.Module, shape: Sequence[int], repeats: int, compile: bool) -> float:
    x = torch.rand(1, *shape)
    fn: Callable = module
    if compile:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True     # constant weights: what lets inductor pick int8 kernels
        fn = torch.compile(module)
    with torch.no_grad():
        for _ in range(5):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(module: nn.Module, shape: Sequence[int], *, repeats: int = 50, compile: bool = False,
            weights: Mapping[str, torch.Tensor] | None = None, bits: int = 32) -> CompressionStats:
    """CompressionStats of a float module (or, with `weights`, of the tensors given as its deployable form)."""
    module = module.cpu().eval()
    params = dict(module.named_parameters())
    size, zipped = _tensors_bytes(weights if weights is not None else _float_weights(module))
    compiled = None
    if compile:
        try:
            compiled = round(latency_ms(module, shape, repeats, compile=True), 4)
        except Exception as e:  # noqa: BLE001 - no C++ compiler, an op inductor cannot lower: eager only
            compiled = None
            _note(f"note: torch.compile latency not measured ({type(e).__name__})")
    return CompressionStats(size_bytes=size, gzip_bytes=zipped, parameters=sum(p.numel() for p in params.values()),
                            nonzero=sum(int((p != 0).sum()) for p in params.values()),
                            sparsity=round(weight_sparsity(module), 6), bits=bits,
                            latency_ms=round(latency_ms(module, shape, repeats), 4), compiled_ms=compiled,
                            threads=LATENCY_THREADS, load=round(os.getloadavg()[0], 2), machine=_machine())


def _float_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    inner = module.model if isinstance(module, Normalized) else module
    return {k: v for k, v in inner.state_dict().items()}


_NOTES: list[str] = []


def _note(line: str) -> None:
    _NOTES.append(line)


# ---- the model: loading, describing its architecture for the checkpoint ----

def _split(full: nn.Module) -> tuple[nn.Module, tuple[float, ...] | None, tuple[float, ...] | None]:
    if isinstance(full, Normalized):
        return full.model, tuple(float(f"{float(v):.7g}") for v in full.mean.flatten()), \
            tuple(float(f"{float(v):.7g}") for v in full.std.flatten())
    return full, None, None


def arch_of(loaded: LoadedModel, spec: str) -> tuple[str, dict[str, Any]]:
    """(arch, arch_kwargs) that re-create the model's inner module in a checkpoint (UserError when nothing can:
    a user's file.py architecture is never imported from a checkpoint)."""
    from .archs import ARCHS
    info = loaded.info
    kwargs = dict(info.extra.get("arch_kwargs") or {})
    if info.source in ("checkpoint", "builtin") and isinstance(info.arch, str):
        return info.arch, kwargs
    if info.source == "timm":
        return f"timm:{info.arch}", {"kwargs": dict(info.extra.get("create_kwargs") or {}),
                                     "num_classes": info.num_classes}
    if info.source == "torchvision":
        return f"torchvision:{info.arch}", {"num_classes": info.num_classes, "head": None}
    if info.source == "robustbench":
        board = info.extra.get("robustbench_board", "cifar10/Linf")
        return f"robustbench:{board}/{info.arch}", {"num_classes": info.num_classes, "head": None}
    if info.source == "file":
        from . import archs as archs_module
        file, _, factory = spec.rpartition(":")
        if Path(file).resolve() == Path(archs_module.__file__).resolve():
            for name, fn in ARCHS.items():
                if getattr(fn, "__name__", None) == factory:
                    kw = {"num_classes": info.num_classes} if info.num_classes else {}
                    return name, kw
    raise UserError(f"cannot write a checkpoint for {spec} ({info.source}): its architecture is not one robust-bench "
                    f"re-creates (registry, timm:, torchvision, robustbench:, or robustness/archs.py:FACTORY)")


def _load(spec: CompressSpec) -> LoadedModel:
    return create_model(spec.model, ModelOptions(weights=spec.weights, mean=spec.mean, std=spec.std,
                                                 num_classes=spec.num_classes, allow_unsafe=spec.unsafe_load))


def _training_data(spec: CompressSpec, loaded: LoadedModel, n: int | None, val: int):
    """(x_train, y_train, val or None, data set name, info) from the model's data set's train split."""
    from .data import load_dataset
    name = spec.dataset or loaded.info.dataset
    if name is None:
        raise UserError(f"model {spec.model} does not say which data set it was made for: pass --dataset "
                        f"(the training data)")
    data = load_dataset(name, data_dir=spec.data_dir, split="train", preprocess=loaded.info.preprocess)
    total = len(data)
    order = np.random.default_rng([spec.seed, 15]).permutation(total)
    val = min(val, total // 10)
    pool = order[val:]
    if n is not None and n > len(pool):
        raise UserError(f"--n-train {n} exceeds the {len(pool)} training examples left after {val} for validation")
    train_idx = np.sort(pool[:n] if n else pool)
    xs, ys = _materialize(data.dataset, train_idx)
    v = _materialize(data.dataset, np.sort(order[:val])) if val else None
    return xs, ys, v, name, data.info


def _materialize(dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader, Subset
    xs, ys = [], []
    for x, y in DataLoader(Subset(dataset, indices.tolist()), batch_size=256, shuffle=False):
        xs.append(torch.as_tensor(x).float())
        ys.append(torch.as_tensor(y).long())
    return torch.cat(xs), torch.cat(ys)


# ---- pruning ----

def prune_model(module: nn.Module, sparsity: float, structure: str = "unstructured",
                example: torch.Tensor | None = None, head: str | None = None) -> dict[str, Any]:
    """Prune `module` in place. Unstructured: global L1 magnitude over every Conv/Linear weight, with
    torch.nn.utils.prune masks left on (call `make_permanent` after any fine-tuning). Channel: torch-pruning removes
    `sparsity` of the output channels of each prunable layer (the head and, if the first attempt leaves the model
    inconsistent, the layers that feed residual sums stay whole). Returns what was done."""
    if structure == "unstructured":
        import torch.nn.utils.prune as prune
        params = [(m, "weight") for _, m in _prunable(module)]
        if not params:
            raise UserError("the model has no Conv/Linear weights to prune")
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(sparsity))
        return {"structured": False, "layers": len(params)}
    return _prune_channels(module, sparsity, example, head)


def make_permanent(module: nn.Module) -> int:
    """torch.nn.utils.prune's masks folded into the weights (weight = weight_orig * mask, hooks removed)."""
    import torch.nn.utils.prune as prune
    n = 0
    for m in module.modules():
        for name in [k for k, v in list(getattr(m, "_forward_pre_hooks", {}).items())]:
            hook = m._forward_pre_hooks[name]
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
                n += 1
    return n


def _block_outputs(module: nn.Module) -> list[nn.Module]:
    """The first conv and, in each block holding two or more convs, its last one: the layers whose output
    channels a residual sum may share (torch-pruning does not follow parameter-free channel padding)."""
    convs = [m for _, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    out = convs[:1]
    for _, parent in module.named_modules():
        own = [c for c in parent.children() if isinstance(c, nn.Conv2d)]
        if len(own) >= 2:
            out.append(own[-1])
    return out


def _prune_channels(module: nn.Module, sparsity: float, example: torch.Tensor | None, head: str | None) -> dict[str, Any]:
    import copy
    try:
        import torch_pruning as tp
    except ImportError:
        raise UserError("--structure channel needs the torch-pruning package (pip install torch-pruning)") from None
    if example is None:
        raise UserError("channel pruning needs an example input")
    with torch.no_grad():
        want = tuple(module(example).shape)
    heads = [m for n, m in module.named_modules() if isinstance(m, nn.Linear) and (head is None or n == head)][-1:]
    attempts = (("all layers but the head", lambda m: []), ("inner channels of blocks", _block_outputs))
    errors = []
    for label, extra in attempts:
        trial = copy.deepcopy(module)
        names = {id(m): n for n, m in module.named_modules()}
        ignored = [trial.get_submodule(names[id(m)]) for m in heads] + extra(trial)
        try:
            pruner = tp.pruner.MagnitudePruner(trial, example, importance=tp.importance.MagnitudeImportance(p=1),
                                               pruning_ratio=float(sparsity), ignored_layers=ignored)
            pruner.step()
            with torch.no_grad():
                got = tuple(trial(example).shape)
            if got != want:
                raise RuntimeError(f"output shape {got}, expected {want}")
        except Exception as e:  # noqa: BLE001 - an inconsistent pruning shows as a shape error: try the next policy
            errors.append(f"{label}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
            continue
        # move the pruned layers into the caller's module object
        for name, child in list(trial.named_children()):
            setattr(module, name, child)
        return {"structured": True, "policy": label, "channel_ratio": float(sparsity)}
    raise UserError(f"torch-pruning cannot prune this architecture's channels consistently ({'; '.join(errors)}); "
                    f"use --structure unstructured")


# ---- quantization (PT2E) ----

def _qd():
    try:
        import torchao  # noqa: F401 - registers the quantized_decomposed ops
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        raise UserError("--method quantize needs the torchao package (pip install torchao): PT2E quantization "
                        "lives there") from None
    return prepare_pt2e, convert_pt2e, xiq


def _check_quantization_backend() -> None:
    engines = set(torch.backends.quantized.supported_engines)
    if not engines & {"x86", "fbgemm", "onednn"}:
        raise UserError(f"this CPU/PyTorch build has no x86 int8 engine (supported: {', '.join(sorted(engines)) or 'none'}); "
                        f"int8 quantization cannot run here")


def _export(full: nn.Module, shape: Sequence[int]) -> nn.Module:
    example = torch.rand(2, *shape)
    try:
        ep = torch.export.export(full.eval(), (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as e:  # noqa: BLE001 - data-dependent control flow and the like
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"torch.export cannot capture this model for quantization: {first}") from None
    return ep.module()


def _quantizer(mode: str):
    _, _, xiq = _qd()
    return xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config(
        is_dynamic=mode == "dynamic"))


def _observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in prepared.state_dict().items() if k.startswith("activation_post_process")}


def quantize_model(full: nn.Module, calibration: torch.Tensor, shape: Sequence[int], mode: str = "static",
                   batch_size: int = 64) -> tuple["QuantizedModel", dict[str, torch.Tensor]]:
    """(int8 twin, calibration state) of a float module taking [0, 1] pixels, calibrated on `calibration`."""
    _check_quantization_backend()
    prepare_pt2e, convert_pt2e, _ = _qd()
    with torch.no_grad():
        prepared = prepare_pt2e(_export(full, shape), _quantizer(mode))
        for i in range(0, len(calibration), batch_size):
            prepared(calibration[i:i + batch_size])
        state = _observer_state(prepared)
        converted = convert_pt2e(prepared)
    return QuantizedModel(converted, full, mode), state


def quantized_model(full: nn.Module, step: Mapping[str, Any], path: str) -> "QuantizedModel":
    """The int8 twin a checkpoint's quantize step describes, rebuilt from the float model and its calibration."""
    _check_quantization_backend()
    prepare_pt2e, convert_pt2e, _ = _qd()
    shape = tuple(step["input_shape"])
    observers = dict(step.get("observers") or {})
    with torch.no_grad():
        prepared = prepare_pt2e(_export(full, shape), _quantizer(step.get("mode", "static")))
        own = _observer_state(prepared)
        if set(own) != set(observers) or any(own[k].numel() and own[k].shape != observers[k].shape for k in own):
            raise UserError(f"{path}: its quantization calibration does not fit the graph this torch/torchao builds "
                            f"(written with torch {step.get('torch')}, torchao {step.get('torchao')}); re-quantize "
                            f"it with robust-bench compress")
        # buffer by buffer: the per-channel observers' own state-dict loading skips `eps`, which sets the scales
        for key, value in observers.items():
            owner, _, buf = key.rpartition(".")
            prepared.get_submodule(owner)._buffers[buf] = value.detach().clone()
        converted = convert_pt2e(prepared)
    return QuantizedModel(converted, full, step.get("mode", "static"))


def _ste_qdq(x, q_scale, q_zero_point, q_min, q_max, q_dtype, dq_scale, dq_zero_point, dq_min, dq_max, dq_dtype,
             out_dtype=None):
    return _StraightThrough.apply(x, (q_scale, q_zero_point, q_min, q_max, q_dtype),
                                  (dq_scale, dq_zero_point, dq_min, dq_max, dq_dtype), out_dtype, False)


def _ste_qdq_tensor(x, q_scale, q_zero_point, q_min, q_max, q_dtype, dq_scale, dq_zero_point, dq_min, dq_max,
                    dq_dtype, out_dtype=None):
    return _StraightThrough.apply(x, (q_scale, q_zero_point, q_min, q_max, q_dtype),
                                  (dq_scale, dq_zero_point, dq_min, dq_max, dq_dtype), out_dtype, True)


class _StraightThrough(torch.autograd.Function):
    """Forward: torchao's quantize then dequantize, exactly as the converted graph computes them. Backward: the
    identity where the rounded value lies inside [quant_min, quant_max], zero where it was clamped (as
    torch.fake_quantize_per_tensor_affine)."""

    @staticmethod
    def forward(ctx, x, q_args, dq_args, out_dtype, tensor_qparams):
        ops = torch.ops.quantized_decomposed
        q_op = ops.quantize_per_tensor.tensor if tensor_qparams else ops.quantize_per_tensor.default
        dq_op = ops.dequantize_per_tensor.tensor if tensor_qparams else ops.dequantize_per_tensor.default
        q = q_op(x, *q_args)
        out = dq_op(q, *dq_args, out_dtype=out_dtype) if out_dtype is not None else dq_op(q, *dq_args)
        scale, zero_point, q_min, q_max = q_args[:4]
        inside = torch.round(x * (1.0 / scale)) + zero_point
        ctx.save_for_backward((inside >= q_min) & (inside <= q_max))
        return out

    @staticmethod
    def backward(ctx, grad):
        inside, = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None


def straight_through(converted: nn.Module) -> tuple[nn.Module, int]:
    """The converted graph with every quantize -> dequantize pair of activations replaced by one straight-through
    call of the same two ops; returns (graph module, pairs replaced)."""
    import copy
    ops = torch.ops.quantized_decomposed
    pairs = {ops.dequantize_per_tensor.default: (ops.quantize_per_tensor.default, _ste_qdq),
             ops.dequantize_per_tensor.tensor: (ops.quantize_per_tensor.tensor, _ste_qdq_tensor)}
    gm = copy.deepcopy(converted)
    graph = gm.graph
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in pairs:
            continue
        q = node.args[0]
        q_target, fn = pairs[node.target]
        if getattr(q, "op", None) != "call_function" or q.target != q_target:
            continue
        with graph.inserting_after(node):
            new = graph.call_function(fn, (q.args[0], *q.args[1:], *node.args[1:]), dict(node.kwargs))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        replaced += 1
    graph.eliminate_dead_code()
    gm.recompile()
    return gm, replaced


class QuantizedModel(nn.Module):
    """An int8 model as robust-bench evaluates it: the converted PT2E graph's forward pass (bit for bit) with
    straight-through gradients (`straight_through`). `reference` is the converted graph itself (no gradients);
    `float_model` the model it was quantized from (the transfer attack's surrogate). Mode switches leave the
    graphs alone (an exported graph's mode is fixed)."""

    def __init__(self, converted: nn.Module, float_model: nn.Module, mode: str = "static") -> None:
        super().__init__()
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        twin, pairs = straight_through(converted)
        for g in (converted, twin):      # .eval()/.train() from any caller: harmless (no dropout, BN folded)
            allow_exported_model_train_eval(g)
        self.twin = twin
        self.mode, self.pairs = mode, pairs
        # not registered as submodules: one set of weights in state_dict(), and the engine's .to()/.eval() reach
        # only the graph that answers
        self.__dict__["reference"] = converted
        self.__dict__["float_model"] = float_model.eval()

    def train(self, mode: bool = True) -> "QuantizedModel":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.twin(x)

    def int8_weights(self) -> dict[str, torch.Tensor]:
        """The tensors the int8 graph uses (int8 weights, their scales and zero points, float biases)."""
        used = {n.target for n in self.reference.graph.nodes if n.op == "get_attr"}
        out = {}
        for name in sorted(used):
            t = self.reference
            for part in name.split("."):
                t = getattr(t, part)
            if isinstance(t, torch.Tensor):
                out[name] = t
        return out


def _quant_stats(q: QuantizedModel, shape: Sequence[int], repeats: int, compile: bool) -> CompressionStats:
    weights = q.int8_weights()
    size, zipped = _tensors_bytes(weights)
    compiled = None
    if compile:
        try:
            compiled = round(latency_ms(q.reference, shape, repeats, compile=True), 4)
        except Exception as e:  # noqa: BLE001
            _note(f"note: torch.compile latency of the int8 graph not measured ({type(e).__name__})")
    params = list(q.float_model.parameters())
    return CompressionStats(size_bytes=size, gzip_bytes=zipped, parameters=sum(p.numel() for p in params),
                            nonzero=sum(int((p != 0).sum()) for p in params),
                            sparsity=round(weight_sparsity(q.float_model), 6), bits=8,
                            latency_ms=round(latency_ms(q.reference, shape, repeats), 4), compiled_ms=compiled,
                            threads=LATENCY_THREADS, load=round(os.getloadavg()[0], 2), machine=_machine())


# ---- training (fine-tuning after pruning, distillation) ----

def _fit(module: nn.Module, recipe, spec: CompressSpec, x: torch.Tensor, y: torch.Tensor, val, epochs: int,
         eps: float, head: str | None, lr: float, log: Callable[[str], None]):
    from defenses import TensorData, TrainConfig, Trainer, TrainingError
    norm = getattr(recipe, "norm", "linf")
    config = TrainConfig(epochs=epochs, batch_size=min(spec.batch_size, len(x)), lr=lr, optimizer="sgd",
                         momentum=0.9, weight_decay=5e-4, schedule="cosine",
                         augment="crop-flip" if x.shape[1] == 3 else "none", seed=spec.seed, head=head,
                         val_eps=eps, val_norm=norm, val_steps=10,
                         select_by="pgd" if recipe.adversarial else "clean")
    from defenses import DistInfo

    from .preparation import resolve_device
    try:
        trainer = Trainer(module, recipe, config, TensorData(x, y), val, log=log,
                          dist=DistInfo(device=resolve_device(spec.device)))
        result = trainer.fit()
    except TrainingError as e:
        raise UserError(str(e)) from None
    if result.failure is not None:
        raise UserError(f"training after {'pruning' if spec.method == 'prune' else 'distillation'} failed: "
                        f"{result.failure.message}")
    if result.best_epoch >= 1:
        module.load_state_dict(result.best_state)
    module.cpu().eval()
    bad = [n for n, t in module.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"training diverged: {bad[0]} holds NaN or infinite values; lower --lr")
    return result


def _recipe(spec: CompressSpec, eps: float, teacher: nn.Module | None):
    from defenses import make_recipe
    from defenses.distill import RSLAD, Distill
    try:
        if teacher is not None:
            if spec.defense == "standard":
                return Distill(teacher=teacher, temperature=spec.temperature, alpha=spec.alpha)
            steps = 1 if spec.defense == "fgsm" else (spec.steps or 10)
            step = 1.25 * eps if spec.defense == "fgsm" else None
            return RSLAD(eps=eps, teacher=teacher, steps=steps, step_size=step)
        return make_recipe(spec.defense, eps=eps, steps=spec.steps)
    except ValueError as e:
        raise UserError(str(e)) from None


# ---- the whole step ----

def compress(spec: CompressSpec, *, model: LoadedModel | None = None, log: Callable[[str], None] | None = None,
             command: str | None = None) -> CompressOutcome:
    """Compress `spec.model` (or the given loaded `model`) and, with `spec.out`, write the checkpoint. UserError on
    bad input before anything is written."""
    spec.check()
    say = log or (lambda s: None)
    _NOTES.clear()
    torch.manual_seed(spec.seed)
    out = _check_out(spec.out) if spec.out else None
    if spec.method == "quantize":
        _check_quantization_backend()
    loaded = model or _load(spec)
    if isinstance(loaded.module, QuantizedModel):
        raise UserError(f"{spec.model} is already int8-quantized; compress its float model instead")
    base_spec = spec.model
    arch, arch_kwargs = arch_of(loaded, base_spec) if out is not None else ("", {})
    full = loaded.module.cpu().eval()
    inner, mean, std = _split(full)
    meta_in = _source_meta(loaded)
    shape = _input_shape(loaded, spec)
    repeats = spec.latency_repeats
    compile_latency = spec.method == "quantize" if spec.latency_compile is None else spec.latency_compile
    say(f"measuring {base_spec}: size, parameters, CPU latency ({repeats} batch-1 passes"
        + (", and compiled" if compile_latency else "") + ")")
    base_stats = measure(full, shape, repeats=repeats, compile=compile_latency)
    step: dict[str, Any] = {"method": spec.method, "base": base_stats.to_json(), "base_model": base_spec,
                            "base_weights_sha256": loaded.info.weights_sha256, "seed": spec.seed}
    history: tuple[Mapping[str, Any], ...] = ()
    dataset_name = loaded.info.dataset
    eps = spec.eps
    result_module: nn.Module
    if spec.method == "prune":
        head = _head_name(inner)
        example = torch.rand(2, *shape)
        work = full
        done = prune_model(inner, float(spec.sparsity), spec.structure,
                           example=None if spec.structure == "unstructured" else _normalized_example(full, example),
                           head=head)
        step.update({"structure": spec.structure, "sparsity_asked": float(spec.sparsity), **done})
        if spec.epochs:
            x, y, val, dataset_name, dinfo = _training_data(spec, loaded, spec.n_train, spec.val_size)
            eps = eps if eps is not None else _default_eps(dinfo, spec.defense)
            lr = spec.lr or 0.01
            say(f"fine-tuning the pruned model: {spec.epochs} epochs, defense {spec.defense}, {len(x)} examples")
            result = _fit(work, _recipe(spec, eps, None), spec, x, y, val, spec.epochs, eps, None, lr, say)
            history = tuple(dict(r) for r in result.history)
            step["finetune"] = {"epochs": spec.epochs, "defense": spec.defense, "eps": eps if spec.defense != "standard"
                                else None, "lr": lr, "n_train": len(x), "data": dataset_name,
                                "best": {k: result.best_row.get(k) for k in ("epoch", "val_clean", "val_pgd")}}
        make_permanent(inner)
        result_module = full
        stats = measure(full, shape, repeats=repeats, compile=compile_latency)
        step["sparsity"] = stats.sparsity
        step["parameters_removed"] = base_stats.parameters - stats.parameters
        say(f"pruned {spec.structure}: weight sparsity {100 * stats.sparsity:.2f}% (asked "
            f"{100 * float(spec.sparsity):.0f}%), parameters {base_stats.parameters:,} -> {stats.parameters:,}")
    elif spec.method == "quantize":
        x, _, _, dataset_name, _ = _training_data(spec, loaded, spec.calibration, 0)
        say(f"quantizing (PT2E, {spec.mode}, x86 int8) with {len(x)} calibration images from {dataset_name}")
        q, observers = quantize_model(full, x, shape, spec.mode)
        result_module = q
        stats = _quant_stats(q, shape, repeats, compile_latency)
        import torchao
        step.update({"mode": spec.mode, "bits": 8, "calibration": len(x), "calibration_data": dataset_name,
                     "input_shape": list(shape), "observers": observers, "straight_through_pairs": q.pairs,
                     "backend": "torchao.pt2e X86InductorQuantizer", "torch": str(torch.__version__),
                     "torchao": str(torchao.__version__)})
    else:
        from .archs import ARCHS, build_arch
        if spec.arch not in ARCHS:
            from .errors import unknown
            raise unknown("architecture", str(spec.arch), ARCHS)
        x, y, val, dataset_name, dinfo = _training_data(spec, loaded, spec.n_train, spec.val_size)
        kwargs = _student_kwargs(spec.arch, dinfo.num_classes, shape, dict(spec.arch_args))
        try:
            student_inner = build_arch(spec.arch, **kwargs)
        except (TypeError, ValueError) as e:
            raise UserError(f"cannot build student {spec.arch}: {e}") from None
        student = Normalized(student_inner, mean, std) if mean is not None else student_inner
        eps = eps if eps is not None else _default_eps(dinfo, spec.defense)
        epochs = spec.epochs if spec.epochs is not None else 10
        # batch-normalized students take SGD at 0.1; plain ones diverge there (small-cnn did, at 20k CIFAR images)
        lr = spec.lr or (0.1 if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules())
                         else 0.01)
        recipe = _recipe(spec, eps, full)
        say(f"distilling {base_spec} into {spec.arch}: {epochs} epochs, {recipe.name}, {len(x)} examples")
        result = _fit(student, recipe, spec, x, y, val, epochs, eps, None, lr, say)
        history = tuple(dict(r) for r in result.history)
        arch, arch_kwargs = spec.arch, kwargs
        inner, result_module = student_inner, student
        stats = measure(student, shape, repeats=repeats, compile=compile_latency)
        step.update({"student": spec.arch, "teacher": base_spec, "recipe": recipe.describe(), "epochs": epochs,
                     "lr": lr, "n_train": len(x), "data": dataset_name,
                     "best": {k: result.best_row.get(k) for k in ("epoch", "val_clean", "val_pgd")}})
    step["stats"] = stats.to_json()
    for line in _NOTES:
        say(line)
    checkpoint = None
    if out is not None:
        meta = _meta(loaded, meta_in, step, mean, std, shape, dataset_name, spec, command, arch,
                     arch_kwargs.get("num_classes", loaded.info.num_classes) if spec.method == "distill"
                     else loaded.info.num_classes)
        from .models import save_checkpoint
        state = _float_weights(result_module if not isinstance(result_module, QuantizedModel) else full)
        try:
            save_checkpoint(out, arch=arch, arch_kwargs=arch_kwargs, state_dict=state, meta=meta)
        except OSError as e:
            raise UserError(f"cannot write --out {out}: {e.strerror or e}") from None
        checkpoint = out
        say(f"wrote {out} ({out.stat().st_size:,} bytes)")
    shown = {k: v for k, v in step.items() if k != "observers"}
    return CompressOutcome(spec, checkpoint, stats, base_stats, shown, history, result_module)


def _student_kwargs(arch: str, num_classes: int, shape: Sequence[int], extra: dict[str, Any]) -> dict[str, Any]:
    import inspect

    from .archs import ARCHS
    try:
        params = inspect.signature(ARCHS[arch]).parameters
    except (TypeError, ValueError):
        params = {}
    kw: dict[str, Any] = {"num_classes": num_classes}
    if "in_channels" in params:
        kw["in_channels"] = int(shape[0])
    if "input_size" in params:
        kw["input_size"] = int(shape[1])
    for k in extra:
        if k not in params:
            raise UserError(f"architecture {arch} takes no argument {k!r} (takes {', '.join(params) or 'none'})")
    return {**kw, **extra}


def _check_out(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--out {path} is a folder; give a file name such as {p / 'model.pt'}")
    if not p.resolve().parent.is_dir():
        raise UserError(f"cannot write --out {path}: folder {p.resolve().parent} does not exist")
    return p


def _head_name(inner: nn.Module) -> str | None:
    from defenses import find_head
    try:
        return find_head(inner)[0]
    except ValueError:
        return None


def _normalized_example(full: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """What the inner module receives for `example` pixels (torch-pruning traces the inner module)."""
    if isinstance(full, Normalized):
        return (example - full.mean) / full.std
    return example


def _default_eps(dinfo, defense: str) -> float:
    if defense == "standard":
        return 0.0
    return float(min(dinfo.default_eps.get("linf") or (8 / 255,)))


def _input_shape(loaded: LoadedModel, spec: CompressSpec) -> tuple[int, ...]:
    info = loaded.info
    if info.in_channels and info.input_size:
        return (int(info.in_channels), *(int(v) for v in info.input_size))
    name = spec.dataset or info.dataset
    if name is None:
        raise UserError(f"model {spec.model} does not say its input size: pass --dataset")
    from .data import load_dataset
    first = load_dataset(name, data_dir=spec.data_dir, split="test", preprocess=info.preprocess).dataset[0][0]
    return tuple(int(v) for v in torch.as_tensor(first).shape)


def _source_meta(loaded: LoadedModel) -> dict[str, Any]:
    """The lineage and descriptive meta a compressed checkpoint inherits from the model it came from."""
    info = loaded.info
    inherited = {k: info.extra[k] for k in ("recipe", "metrics", "threat_model", "compression", "source",
                                            "base_model", "adapter") if k in info.extra}
    return inherited


def _source_of(arch: str) -> str:
    kind, sep, _ = arch.partition(":")
    return kind if sep else "registry"


def _absolute(spec: str) -> str:
    """A model spec that still resolves from another working directory (paths made absolute)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return f"{Path(head).resolve()}:{tail}"
    p = Path(spec)
    return str(p.resolve()) if p.exists() and (p.suffix or "/" in spec) else spec


def _meta(loaded: LoadedModel, inherited: Mapping[str, Any], step: Mapping[str, Any], mean, std, shape,
          dataset_name: str | None, spec: CompressSpec, command: str | None, arch: str,
          num_classes: int | None) -> dict[str, Any]:
    info = loaded.info
    # a later step keeps the earlier ones (a distilled student is a new model: its history starts with it)
    previous = [] if spec.method == "distill" else [s for s in inherited.get("compression") or []
                                                    if isinstance(s, Mapping)]
    meta: dict[str, Any] = {
        "num_classes": num_classes,
        "classes": list(info.classes) if info.classes else None,
        "mean": list(mean) if mean else None, "std": list(std) if std else None,
        "input_size": [int(v) for v in shape], "dataset": info.dataset or _eval_dataset(dataset_name),
        "preprocess": info.preprocess.to_json() if info.preprocess else None,
        META_SOURCE: _source_of(arch),
        META_BASE_MODEL: _absolute(spec.model),
        META_COMPRESSION: previous + [dict(step)],
        "compress_spec": {k: v for k, v in spec.to_json().items() if v is not None},
        "trained_with": command or f"robustness.compress({spec!r})",
    }
    if spec.method == "distill" and spec.defense != "standard":
        meta["threat_model"] = {"norm": "linf", "eps": step.get("recipe", {}).get("eps")}
    elif "threat_model" in inherited:
        meta["threat_model"] = inherited["threat_model"]
    if info.extra.get("adapter"):
        meta["adapter"] = info.extra["adapter"]
    return meta


def _eval_dataset(name: str | None) -> str | None:
    if name is None:
        return None
    from .data import registered_datasets
    if name in {d.name for d in registered_datasets()}:
        return name
    p = Path(name)
    if p.is_dir() and p.name.lower() in ("train", "training"):
        for sibling in ("test", "val", "validation"):
            if (p.parent / sibling).is_dir():
                return str((p.parent / sibling).resolve())
    return None


# ---- evaluating a compressed model honestly ----

def is_quantized(info: Any) -> bool:
    """Whether a model's record says its last compression step quantized it: read from the record, not the
    module's type, which evaluation wrappers (autocast, --compile) hide."""
    steps = (getattr(info, "extra", None) or {}).get(META_COMPRESSION) or []
    return bool(steps) and isinstance(steps[-1], dict) and steps[-1].get("method") == "quantize"


def honest_attacks(model: LoadedModel, attacks: Sequence[Any]) -> list[Any]:
    """The attacks to run on `model`: for a quantized checkpoint, each gradient attack (on the straight-through
    twin) and its transfer from the float model, `transfer:float:PATH:ATTACK` with the same settings; other
    models: `attacks` as given."""
    if not (isinstance(model.module, QuantizedModel) or is_quantized(model.info)):
        return list(attacks)
    from attacks import get_attack_entry

    from .specs import AttackSpec
    path = model.info.weights_path
    if not path or not Path(path).is_file():
        raise UserError("a quantized model is evaluated with transfers from its float model, which are loaded from "
                        "its checkpoint: save it (CompressSpec.out) and evaluate the file")
    out = list(attacks)
    for a in attacks:
        spec = AttackSpec.of(a)
        if spec.name.startswith("transfer:") or not get_attack_entry(spec.name).white_box:
            continue
        label = f"transfer:float:{spec.label}" if spec.label else None
        out.append(AttackSpec(f"transfer:float:{Path(path).resolve()}:{spec.name}", spec.params, label))
    return out


def evaluate_compressed(model: str | LoadedModel, data: Any = None, *, attacks: Sequence[Any] = ("fgsm", "pgd"),
                        **kwargs: Any):
    """`robustness.evaluate` with `honest_attacks`: for a quantized model the worst case per example covers the
    gradient attacks on its straight-through twin and the transfers from its float model."""
    from .api import evaluate, load_model
    loaded = load_model(model) if not isinstance(model, LoadedModel) else model
    return evaluate(loaded, data, attacks=honest_attacks(loaded, attacks), **kwargs)
