"""The evaluation engine: models x attacks x eps on a fixed set of examples, batch by batch into the store.

Principles (AutoAttack's, applied to any attack list):
- per-example flags: only examples still classified correctly are attacked further;
- eps ascending: an example broken at eps_i is broken at every larger eps (its perturbation lies in the
  larger ball), so it is not attacked again and robust accuracy cannot rise with eps;
- every adversarial example is re-checked here (inside the ball, inside [0, 1], misclassified) before it
  counts: the engine, not the attack, decides;
- each batch is committed with all its outcomes in one transaction; the same command resumes an
  interrupted run and ends with exactly the uninterrupted result (random starts are seeded per example).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from attacks import canonical_norm, check_eps, create_attack, get_attack_entry
from attacks.errors import AttackError, ThreatModelViolation
from leaderboards import Cost, Outcome, ResultStore, ThreatResult

from .data import LoadedDataset, indices_sha256, load_dataset, select_indices
from .distributed import World
from .precomputed import PRECOMPUTED, open_precomputed
from .errors import UserError
from .models import LoadedModel, ModelOptions, create_model


WORST_CASE = "worst-case"


def corruption_label(name: str) -> str:
    """How a corruption appears as a threat: attack `corruption:NAME`, eps = severity."""
    return f"corruption:{name}"


@dataclass(frozen=True)
class AttackSpec:
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's numbers. Same spec (and same weights) = same run = resumable."""
    models: tuple[str, ...] = ("digits-cnn", "digits-cnn-at")
    dataset: str | None = None
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
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    corruption_preset: str | None = None         # imagenet-c | cifar10-c | None: by image size
    clean_dataset: str | None = None             # clean set beside a precomputed one (cifar10-c, ...)
    clean_data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["attacks"] = [{"name": a.name, "params": dict(a.params)} for a in self.attacks]
        return d


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


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    resumed: bool
    reused: bool
    results: tuple[ThreatResult, ...]
    metadata: dict[str, Any]
    spec: dict[str, Any]
    warnings: tuple[dict[str, Any], ...] = ()


def _labels(data: LoadedDataset) -> np.ndarray | None:
    """All labels without decoding images, where the data set keeps them in a list or tensor."""
    ds = data.dataset
    for attr in ("targets", "y", "labels"):
        v = getattr(ds, attr, None)
        if v is not None:
            return np.asarray(v).reshape(-1)
    return None


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


class _Autocast(nn.Module):
    """Runs the wrapped model under autocast and hands back float32 logits (losses stay in fp32)."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def prepare_module(module: nn.Module, device: torch.device, precision: str, channels_last: bool) -> nn.Module:
    module = module.to(device).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if precision in ("bf16", "fp16"):
        module = _Autocast(module, device.type, torch.bfloat16 if precision == "bf16" else torch.float16)
    elif precision != "fp32":
        raise UserError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
    return module


def example_seeds(seed: int, label: str, eps: float, indices: np.ndarray) -> torch.Tensor:
    """One 63-bit seed per (run seed, attack, eps, example): random starts independent of batching."""
    prefix = f"{seed}|{label}|{eps!r}|".encode()
    return torch.tensor([int.from_bytes(hashlib.sha256(prefix + str(int(i)).encode()).digest()[:8], "little")
                         & 0x7FFF_FFFF_FFFF_FFFF for i in indices], dtype=torch.int64)


# Rounding slack of the threat-model check, relative to the pixel values: x + delta is rounded to
# float32 (half an ulp, 2**-24 relative), and clipping to the box may round once more; 2**-22 leaves a
# factor 2 above that. Relative, not absolute, so at eps = 1e-6 a perturbation of 1.5 eps is still caught.
_ROUNDING = 2.0 ** -22


def threat_model_excess(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> str | None:
    """None if x_adv is a point of the threat model around x (shape, finite, [0, 1], inside the eps-ball
    up to float32 rounding of the projection); otherwise what is wrong, with the excess, in words."""
    if tuple(x_adv.shape) != tuple(x.shape):
        return f"returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}"
    if not x_adv.is_floating_point():
        return f"returned {x_adv.dtype} pixels, not floats"
    if x_adv.numel() == 0:
        return None
    a, b = x.detach().double(), x_adv.detach().double()
    if not torch.isfinite(b).all():
        return f"returned non-finite pixels (NaN or inf) for {int((~torch.isfinite(b)).flatten(1).any(1).sum())} examples"
    lo, hi = float(b.min()), float(b.max())
    if lo < 0 or hi > 1:
        return f"returned pixels outside [0, 1] (min {lo:.9g}, max {hi:.9g})"
    d = (b - a).flatten(1)
    slack = _ROUNDING * torch.maximum(a.abs(), b.abs()).flatten(1)
    if norm == "linf":
        over = d.abs() - (eps * (1 + _ROUNDING) + slack)
        size = d.abs().max(1).values
        bad = (over > 0).any(1)
    elif norm == "l2":
        size = d.norm(dim=1)
        bad = size > eps * (1 + 1e-5) + slack.norm(dim=1)
    else:
        raise ValueError(f"no threat-model check for norm {norm!r}")
    if not bad.any():
        return None
    worst = float(size[bad].max())
    return (f"perturbation of {worst:.6g} ({norm}) exceeds eps {eps:.6g} by {worst - eps:.3g} "
            f"on {int(bad.sum())} of {x.shape[0]} examples")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    import importlib.metadata as md
    versions = {"python": platform.python_version()}
    for pkg in ("robust-bench", "torch", "torchvision", "numpy", "torchattacks", "robustbench", "pyautoattack"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    dev = str(device)
    if device.type == "cuda":
        dev = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        dev = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"versions": versions, "git_commit": git_commit(), "device": dev, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:]}


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
    import inspect
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):
        return False


def own_params(spec: RunSpec) -> RunSpec:
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
        attacks.append(AttackSpec(a.name, keep))
    unused = sorted({k for a in spec.attacks for k, _ in a.params} - used)
    if unused:
        raise UserError(f"no listed attack takes {', '.join(unused)} (see `robust-bench list attacks`)")
    return dataclasses.replace(spec, attacks=tuple(attacks))


def parse_attacks(spec: RunSpec) -> list[tuple[str, Any]]:
    out, seen = [], set()
    for a in spec.attacks:
        if a.name in seen:
            raise UserError(f"attack {a.name!r} is listed twice")
        seen.add(a.name)
        try:
            entry = get_attack_entry(a.name)
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
        if spec.norm not in entry.norms:
            raise UserError(f"attack {a.name} supports {', '.join(entry.norms)}, not {spec.norm}")
        try:
            out.append((a.name, create_attack(a.name, norm=spec.norm, **a.kwargs)))
        except (TypeError, ValueError) as e:
            raise UserError(f"bad arguments for attack {a.name}: {e}") from None
        except ImportError as e:
            raise UserError(f"attack {a.name} needs a package that is not installed: {e}") from None
    return out


class BatchFailed(UserError):
    """A batch failed for a reason outside the engine (the model raised, an image is unreadable, the
    device ran out of memory): one line for the user, and unlike other errors the run is kept, so the
    same command resumes it once the cause is fixed."""


def _failure(model: str, b: int, n_batches: int, idx: np.ndarray, e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    hint = ""
    if "out of memory" in first.lower():
        hint = " (try a smaller --batch-size)"
    span = f"examples {int(idx.min())}..{int(idx.max())}" if len(idx) else "no examples"
    return f"{model}: batch {b + 1} of {n_batches} ({span}) failed: {text}{hint}"


def _split_report(details: dict[str, Any] | None, n: int) -> tuple[dict[str, Any] | None, list | None]:
    """An attack's `details` as (what is stored per batch, the per-example `broken_by` names or None).
    Plain data only reaches the store; a per-example list of the wrong length is an attack bug."""
    if not details:
        return None, None
    report = {k: v for k, v in details.items() if k != "broken_by"}
    names = details.get("broken_by")
    if names is not None:
        names = list(names)
        if len(names) != n:
            raise ThreatModelViolation(str(details.get("name", "attack")), 0.0, "-",
                                       f"reported broken_by for {len(names)} of {n} examples")
    return json.loads(json.dumps(report, default=str)), names


class Evaluator:
    """Runs a RunSpec against a store: `prepare()` loads and checks everything (no store needed), then
    `run(store, prepared)`; `log` receives one-line notes."""

    def __init__(self, spec: RunSpec, store: ResultStore | None = None, *,
                 log: Callable[[str], None] = lambda s: None, progress: bool = False,
                 world: World | None = None) -> None:
        self.store, self.log, self.progress = store, log, progress
        self.spec = own_params(spec)
        self.world = world or World()
        try:
            self.norm = canonical_norm(spec.norm)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.device = resolve_device(self.world.device_name(spec.device))
        if spec.batch_size != "auto" and (not isinstance(spec.batch_size, int) or spec.batch_size < 1):
            raise UserError(f"--batch-size must be a number >= 1 or auto, got {spec.batch_size}")
        self.attacks = parse_attacks(self.spec)
        self._check_corruptions()

    def _check_corruptions(self) -> None:
        if not self.spec.corruptions:
            if not self.attacks:
                raise UserError("nothing to evaluate: give at least one attack or corruption")
            return
        from attacks.corruptions import CORRUPTIONS, PRESETS
        for name in self.spec.corruptions:
            if name not in CORRUPTIONS:
                from .errors import unknown
                raise unknown("corruption", name, CORRUPTIONS)
        bad = [s for s in self.spec.severities if s not in (1, 2, 3, 4, 5)]
        if bad or not self.spec.severities:
            raise UserError(f"severities are 1..5, got {', '.join(map(str, bad)) or 'none'}")
        if self.spec.corruption_preset is not None and self.spec.corruption_preset not in PRESETS:
            raise UserError(f"unknown corruption preset {self.spec.corruption_preset!r}; "
                            f"known: {', '.join(sorted(PRESETS))}")

    # ---- preparation: everything that can fail on bad input happens before the store is touched ----
    def prepare(self) -> list[Prepared]:
        prepared, labels = [], set()
        for name in self.spec.models:
            loaded = create_model(name, self.spec.model_options)
            label = loaded.info.name
            if label in labels:
                raise UserError(f"model {label!r} is listed twice")
            labels.add(label)
            ds_name = self.spec.dataset or loaded.info.dataset
            if ds_name is None:
                raise UserError(f"model {name} does not say which data set it was made for: pass --dataset")
            corrupted = None
            if ds_name in PRECOMPUTED:
                if not self.spec.corruptions:
                    raise UserError(f"{ds_name} holds corrupted images: evaluate it with --attack corruptions")
                data = load_dataset(self.spec.clean_dataset or PRECOMPUTED[ds_name],
                                    data_dir=self.spec.clean_data_dir or self.spec.data_dir, split="test",
                                    preprocess=loaded.info.preprocess)
                corrupted = open_precomputed(ds_name, self.spec.data_dir, len(data), loaded.info.preprocess)
                corrupted.check(self.spec.corruptions, self.spec.severities, _labels(data))
            else:
                data = load_dataset(ds_name, data_dir=self.spec.data_dir, split=self.spec.split,
                                    preprocess=loaded.info.preprocess)
            indices = select_indices(len(data), self.spec.n_examples, self.spec.subset, self.spec.seed)
            eps = self.spec.eps if self.spec.eps is not None else data.info.default_eps.get(self.norm)
            if not eps:
                raise UserError(f"no default eps for {data.info.name} under {self.norm}: pass --eps")
            for e in eps:
                try:
                    check_eps(e, self.norm)
                except ValueError as err:
                    raise UserError(str(err)) from None
            module = prepare_module(loaded.module, self.device, self.spec.precision, self.spec.channels_last)
            p = Prepared(label, LoadedModel(module, loaded.info), data, ds_name if corrupted else data.info.name,
                         indices, tuple(sorted(set(float(e) for e in eps))), corrupted)
            if self.spec.batch_size == "auto":
                size = auto_batch_size(module, data, self.device, len(indices), self.spec.channels_last)
                size = self.world.broadcast(size) if self.world.active else size
                self.spec = dataclasses.replace(self.spec, batch_size=size)
                self.log(f"--batch-size auto: {size}")
            p = dataclasses.replace(p, findings=tuple(self._probe(p)))
            prepared.append(p)
        return prepared

    def _batches(self, p: Prepared) -> list[np.ndarray]:
        bs = self.spec.batch_size
        return [p.indices[i:i + bs] for i in range(0, len(p.indices), bs)]

    def _loader(self, p: Prepared, batches: Sequence[np.ndarray]) -> DataLoader:
        return DataLoader(p.data.dataset, batch_sampler=[b.tolist() for b in batches], num_workers=0)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True).float()
        if self.spec.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device)

    def _probe(self, p: Prepared) -> list[Any]:
        """Shape, class-count and NaN checks on the first batch, naming both model and data set; then
        the model checks (logits or probabilities, a deterministic forward, usable gradients)."""
        info, dinfo = p.model.info, p.data.info
        if info.in_channels is not None and info.in_channels != dinfo.channels:
            raise UserError(f"model {p.label} takes {info.in_channels}-channel images but data set {dinfo.name} "
                            f"has {dinfo.channels} channels")
        x, y = next(iter(self._loader(p, self._batches(p)[:1])))
        x, y = self._to_device(x, y)
        try:
            with torch.no_grad():
                logits = p.model.module(x)
        except Exception as e:  # noqa: BLE001 - shape errors surface as RuntimeError, AssertionError, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"model {p.label} cannot take data set {dinfo.name}'s images "
                            f"({dinfo.channels} channels, {tuple(x.shape[2:])} pixels): {first}") from None
        if logits.dim() != 2:
            raise UserError(f"model {p.label} returned shape {tuple(logits.shape)}, not (batch, classes) logits")
        k = logits.shape[1]
        if k != dinfo.num_classes:
            raise UserError(f"model {p.label} outputs {k} classes but data set {dinfo.name} has "
                            f"{dinfo.num_classes}")
        if info.num_classes is not None and info.num_classes != k:
            raise UserError(f"model {p.label} says it has {info.num_classes} classes but outputs {k}")
        if not torch.isfinite(logits).all():
            raise UserError(f"model {p.label} produced NaN or infinite logits on data set {dinfo.name}")
        from attacks import check_applicable, model_checks
        for label, attack in self.attacks:
            try:   # targeted without targets, DLR on < 3 classes, ...: refused before a run is stored
                check_applicable(attack, k)
            except AttackError as e:
                raise UserError(f"attack {label} on model {p.label}: {e}") from None
        gradient_attacks = [label for label, _ in self.attacks if get_attack_entry(label).white_box]
        return model_checks(p.model.module, x, y, model_name=p.label, attacks=gradient_attacks or None)

    # ---- the run ----
    def run_key(self, prepared: Sequence[Prepared]) -> str:
        facts = {"spec": self.spec.to_json(),
                 "models": [{"label": p.label, "weights": p.model.info.weights_sha256, "dataset": p.dataset_name,
                             "indices": indices_sha256(p.indices), "eps": p.eps} for p in prepared]}
        facts["spec"].pop("device", None)
        facts["device"] = self.device.type
        if "frost" in self.spec.corruptions:   # a resume must not mix photographs and the procedural frost
            from attacks.corruptions import frost_source
            facts["frost_source"] = frost_source()
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()

    def run(self, store: ResultStore | None = None, prepared: Sequence[Prepared] | None = None) -> RunOutcome:
        """Evaluate into `store` (or the one given at construction). Pass `prepared` from `prepare()` to
        validate all input before the store is even opened."""
        self.store = store or self.store
        if self.store is None and self.world.main:
            raise ValueError("Evaluator.run needs a ResultStore")
        prepared = list(prepared) if prepared is not None else self.prepare()
        key = self.run_key(prepared)
        # rank 0 alone reads and writes the store; the other ranks learn its decision
        decision = self._open_run(key, prepared) if self.world.main else None
        decision = self.world.broadcast(decision)
        run_id = decision["run_id"]
        if decision["reused"]:
            return RunOutcome(run_id, False, True, tuple(decision["results"]), decision["metadata"],
                              decision["spec"], tuple(decision["warnings"]))
        torch.manual_seed(self.spec.seed)
        try:
            for p in prepared:
                self._evaluate_model(run_id, p, set(decision["done"].get(p.label, ())))
        except BatchFailed:
            raise   # something outside our control failed: the completed batches stay for a resume
        except (UserError, AttackError):
            if self.world.main:
                # a run that cannot be trusted (NaN logits, an attack outside its threat model) is not kept
                self.store.delete_run(run_id)
            raise
        done = self._finish(run_id, prepared) if self.world.main else None
        results, warnings = self.world.broadcast(done)
        return RunOutcome(run_id, decision["resumed"], False, tuple(results), decision["metadata"],
                          decision["spec"], tuple(warnings))

    def _open_run(self, key: str, prepared: Sequence[Prepared]) -> dict[str, Any]:
        """Find the run these arguments already started (resume / reuse) or create it."""
        if self.store is None:
            raise ValueError("Evaluator.run needs a ResultStore on rank 0")
        existing = self.store.find_run(key)
        if existing is not None and existing.status == "complete":
            self.log(f"run {existing.run_id} with these arguments is already complete in {self.store.path}; "
                     f"showing it")
            return {"run_id": existing.run_id, "reused": True, "resumed": False,
                    "results": self.store.results(existing.run_id), "metadata": existing.metadata,
                    "spec": existing.spec, "warnings": self.store.warnings(existing.run_id)}
        spec_json = self.spec.to_json()
        if existing is not None:
            run_id, resumed, metadata = existing.run_id, True, existing.metadata
            self.log(f"resuming run {run_id}")
        else:
            metadata = environment(self.device)
            metadata.update(seed=self.spec.seed, tag=self.spec.tag, world_size=self.world.size,
                            models={p.label: {"weights_sha256": p.model.info.weights_sha256,
                                              "indices_sha256": indices_sha256(p.indices),
                                              "dataset": p.dataset_name, "n": int(len(p.indices))}
                                    for p in prepared})
            run_id, resumed = self.store.create_run(key, spec_json, metadata, self.spec.tag), False
        for p in prepared:
            self.store.register_model(run_id, p.label, p.dataset_name,
                                      {"model": p.model.info.to_json(), "dataset": p.data.info.to_json(),
                                       "eps": list(p.eps), "norm": self.norm}, p.indices.tolist())
        done = {p.label: sorted(self.store.done_batches(run_id, p.label)) for p in prepared}
        return {"run_id": run_id, "reused": False, "resumed": resumed, "metadata": metadata, "spec": spec_json,
                "done": done}

    def _evaluate_model(self, run_id: str, p: Prepared, done: set[int]) -> None:
        """Pending batches go round-robin to the ranks; after each round rank 0 gathers and commits them."""
        batches = self._batches(p)
        pending = [i for i in range(len(batches)) if i not in done]
        if not pending:
            return
        w = self.world
        mine = pending[w.rank::w.size]
        rounds = math.ceil(len(pending) / w.size)
        bar = None
        if self.progress and w.main:
            from tqdm import tqdm
            bar = tqdm(total=len(batches), initial=len(batches) - len(pending), desc=p.label, unit="batch",
                       file=sys.stderr, leave=False)
        loader = iter(self._loader(p, [batches[i] for i in mine])) if mine else iter(())
        n_done = len(batches) - len(pending)
        for r in range(rounds):
            payload: Any = None
            if r < len(mine):
                b = mine[r]
                try:
                    x, y = next(loader)
                    payload = (b, *self.evaluate_batch(p, batches[b], x, y))
                except (UserError, AttackError) as e:
                    payload = ("error", "refused", str(e))
                except Exception as e:  # noqa: BLE001 - a model, data file or device failing mid-run
                    payload = ("error", "failed", _failure(p.label, b, len(batches), batches[b], e))
            stop = None
            for item in w.gather(payload) or ():
                if item is None:
                    continue
                if item[0] == "error":
                    stop = stop if stop and stop[0] == "refused" else item[1:]
                    continue
                b, outcomes, costs = item
                self.store.write_batch(run_id, p.label, b, outcomes, costs)
                n_done += 1
                if bar is not None:
                    bar.update(1)
            stop = w.broadcast(stop) if w.active else stop
            if stop:
                if bar is not None:
                    bar.close()
                kind, message = stop
                if kind == "refused":
                    raise UserError(message)
                raise BatchFailed(f"{message}; the {n_done} completed batches of {p.label} are kept: fix the "
                                  f"cause and rerun the same command to resume")
        if bar is not None:
            bar.close()

    def evaluate_batch(self, p: Prepared, idx: np.ndarray, x: torch.Tensor,
                       y: torch.Tensor) -> tuple[list[Outcome], list[Cost]]:
        model = p.model.module
        x, y = self._to_device(x, y)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(x)
        if not torch.isfinite(logits).all():
            raise UserError(f"model {p.label} produced NaN or infinite logits on data set {p.dataset_name}")
        clean = (logits.argmax(1) == y)
        clean_seconds = time.perf_counter() - t0
        outcomes: list[Outcome] = []
        costs: list[Cost] = []
        clean_np = clean.cpu().numpy()
        n = len(idx)
        for a_i, (label, attack) in enumerate(self.attacks):
            broken = np.where(clean_np, np.nan, 0.0)
            by = np.full(n, None, dtype=object)
            composite = False
            for eps in p.eps:
                alive = np.flatnonzero(np.isnan(broken))
                t0 = time.perf_counter()
                fwd = bwd = 0
                report = None
                if len(alive) and eps > 0:
                    sel = torch.as_tensor(alive, device=self.device)
                    xs, ys = x[sel], y[sel]
                    out = attack(model, xs, ys, eps, seeds=example_seeds(self.spec.seed, label, eps, idx[alive]),
                                 verify=False)
                    fwd, bwd = out.forward, out.backward
                    self._check_contract(label, xs, out.x_adv, eps)
                    with torch.no_grad():
                        adv_logits = model(out.x_adv)
                    fwd += len(alive)
                    if not torch.isfinite(adv_logits).all():
                        k = int((~torch.isfinite(adv_logits)).any(1).sum())
                        raise UserError(f"model {p.label} produced NaN or infinite logits on {k} adversarial "
                                        f"examples of {label} at eps={eps:g}: a non-finite output is neither right "
                                        f"nor wrong, so no robust accuracy is reported; make the model's forward "
                                        f"pass finite on every input in [0, 1]")
                    still = (adv_logits.argmax(1) == ys).cpu().numpy()
                    broken[alive[~still]] = eps
                    report, names = _split_report(out.details, len(alive))
                    if names is not None:
                        composite = True
                        hit = alive[~still]
                        by[hit] = [names[j] if names[j] is not None else "unattributed"
                                   for j in np.flatnonzero(~still)]
                seconds = time.perf_counter() - t0
                if a_i == 0 and eps == p.eps[0]:
                    seconds += clean_seconds
                costs.append(Cost(label, eps, seconds, fwd, bwd, report))
            outcomes.extend(Outcome(label, int(i), bool(c), None if np.isnan(b) else float(b),
                                    w if composite else None)
                            for i, c, b, w in zip(idx, clean_np, broken, by))
            if a_i == 0:
                worst, worst_by = broken.copy(), np.full(n, label, dtype=object)
            else:
                # fmin: NaN (never broken) loses; the first attack to break an example at the smallest eps
                # is credited with it
                earlier = ~np.isnan(broken) & (np.isnan(worst) | (broken < worst))
                worst_by[earlier] = label
                worst = np.fmin(worst, broken)
        if len(self.attacks) > 1:
            # AutoAttack's principle for any list: robust only if it survived every attack
            outcomes.extend(Outcome(WORST_CASE, int(i), bool(c), None if np.isnan(b) else float(b),
                                    w if c and not np.isnan(b) else None)
                            for i, c, b, w in zip(idx, clean_np, worst, worst_by))
        self._corruptions(p, idx, x, y, clean_np, outcomes, costs)
        return outcomes, costs

    def _corruptions(self, p: Prepared, idx: np.ndarray, x: torch.Tensor, y: torch.Tensor, clean_np: np.ndarray,
                     outcomes: list[Outcome], costs: list[Cost]) -> None:
        """Accuracy under each corruption and severity, on every example (not only clean-correct ones:
        corruption accuracy is plain accuracy on corrupted images). Each severity is its own outcome
        series (`corruption:NAME@S`), since severities do not nest the way eps-balls do. Random draws are
        seeded per (run seed, corruption, severity, batch), and batches are fixed by the batch size."""
        if not self.spec.corruptions:
            return
        from attacks.corruptions import corrupt
        from leaderboards.store import series_key
        model = p.model.module
        xc_in = x.contiguous()
        for name in self.spec.corruptions:
            label = corruption_label(name)
            for sev in self.spec.severities:
                t0 = time.perf_counter()
                if p.corrupted is not None:
                    xc = p.corrupted.batch(name, sev, idx).to(self.device)
                else:
                    g = torch.Generator().manual_seed(int(example_seeds(self.spec.seed, label, float(sev), idx[:1])[0]))
                    xc = corrupt(xc_in, name, sev, generator=g, preset=self.spec.corruption_preset)
                if self.spec.channels_last and xc.dim() == 4:
                    xc = xc.contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    ok = (model(xc).argmax(1) == y).cpu().numpy()
                costs.append(Cost(label, float(sev), time.perf_counter() - t0, len(idx), 0))
                key = series_key(label, float(sev))
                outcomes.extend(Outcome(key, int(i), bool(c), None if k else 0.0)
                                for i, c, k in zip(idx, clean_np, ok))

    def _check_contract(self, label: str, x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
        """An attack's output must be a valid point of the threat model, or no number is reported."""
        what = threat_model_excess(x, x_adv, eps, self.norm)
        if what is not None:
            raise ThreatModelViolation(label, eps, self.norm, what)

    def _finish(self, run_id: str, prepared: Sequence[Prepared]) -> list[ThreatResult]:
        results = []
        for p in prepared:
            for eps in p.eps:
                per_attack = []
                for label, attack in self.attacks:
                    params = asdict(attack) if dataclasses.is_dataclass(attack) else {}
                    per_attack.append(self.store.recompute(run_id, p.label, label, eps, dataset=p.dataset_name,
                                                           norm=self.norm, params=params))
                results.extend(per_attack)
                if len(self.attacks) > 1:
                    worst = self.store.recompute(run_id, p.label, WORST_CASE, eps, dataset=p.dataset_name,
                                                 norm=self.norm, params={"attacks": [a for a, _ in self.attacks]})
                    results.append(dataclasses.replace(
                        worst, seconds=sum(r.seconds for r in per_attack),
                        forward=sum(r.forward for r in per_attack), backward=sum(r.backward for r in per_attack)))
            for name in self.spec.corruptions:
                for sev in self.spec.severities:
                    params: dict[str, Any] = {"severity": sev, "preset": self.spec.corruption_preset}
                    if name == "frost" and p.corrupted is None:
                        # the photographs or the procedural stand-in: the numbers differ, so say which
                        from attacks.corruptions import frost_source
                        params["frost_source"] = frost_source()
                    results.append(self.store.recompute(
                        run_id, p.label, corruption_label(name), float(sev), dataset=p.dataset_name,
                        norm="corruption", params=params))
        warnings = self._checks(prepared, results)
        self.store.finish_run(run_id, results, warnings)
        return [dataclasses.replace(r, per_example=None) for r in results], warnings

    def _checks(self, prepared: Sequence[Prepared], results: Sequence[ThreatResult]) -> list[dict[str, Any]]:
        """Every run's findings: the model checks from preparation, the checks across results, and what
        composite attacks reported about themselves (sub-attacks skipped, the package's own warnings,
        Square breaking what the gradient attacks missed)."""
        from attacks import Finding, result_checks
        from attacks.sanity import details_checks
        info = {p.label: p for p in prepared}
        rows = []
        reported: list[Any] = []
        seen: set[tuple[str, str, str]] = set()
        for r in results:
            if r.norm == "corruption":
                continue
            p = info[r.model]
            c, (h, w) = p.data.info.channels, (p.data.info.image_size or (0, 0))
            rows.append({"model": r.model, "attack": r.attack, "eps": r.eps, "accuracy": r.accuracy, "n": r.n,
                         "norm": r.norm, "params": r.params, "n_classes": p.data.info.num_classes,
                         "input_dim": c * h * w or None})
            b = r.breakdown or {}
            for s in b.get("skipped") or []:
                key = ("skip", r.model, f"{r.attack}/{s.get('name')}")
                if key not in seen:
                    seen.add(key)
                    reported.append(Finding("sub_attack_skipped", f"{r.attack} ran without {s.get('name')}: "
                                            f"{s.get('reason')}; the row is weaker than the full {r.attack}",
                                            model=r.model, attack=r.attack))
            for text in b.get("package_warnings") or []:
                key = ("pkg", r.model, f"{r.attack}/{text}")
                if key not in seen:
                    seen.add(key)
                    reported.append(Finding("package_warning", f"the reference package said: {text}",
                                            model=r.model, attack=r.attack))
            if r.attack != WORST_CASE and b.get("sub_attacks"):
                reported.extend(details_checks(b, r.n, model=r.model, attack=r.attack, eps=r.eps))
        findings = [f for p in prepared for f in p.findings] + result_checks(rows) + reported
        return [f.to_json() for f in findings]


def export_json(outcome: RunOutcome, store: ResultStore, path: str | Path,
                extra: dict[str, Any] | None = None) -> None:
    """The run's metadata and every result with its per-example outcomes, accuracies as fractions."""
    results = [dataclasses.replace(r, per_example=store.recompute(r.run_id, r.model, r.attack, r.eps).per_example
                                   ).to_json() for r in outcome.results]
    doc = {"run": {"run_id": outcome.run_id, **outcome.metadata, "spec": outcome.spec}, "results": results,
           "warnings": list(outcome.warnings), **(extra or {})}
    Path(path).write_text(json.dumps(doc, indent=1, default=str))
