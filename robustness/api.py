"""The Python API: what `robust-bench run` does, for notebooks and scripts.

    import robustness as rb
    model = rb.load_model("digits-cnn-at")                       # a name, or any nn.Module (+ mean/std)
    data = rb.load_dataset("digits")                             # a name, (x, y) tensors, or a Dataset
    ev = rb.evaluate(model, data, attacks=["fgsm", rb.attacks.PGD(steps=20)], eps=[0.05, 0.1])
    print(ev.table())                                            # the table the CLI prints
    ev.results, ev.warnings, ev.per_example, ev.to_frame()

`evaluate` builds the same RunSpec the CLI builds from the same arguments, so a run started from one is
found (resumed, or reused when complete) by the other in the same store. Without `store` the results
live in an in-memory store for the lifetime of the call.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from leaderboards import PerExample, ResultStore, StoreError, ThreatResult

from .data import DatasetInfo, LoadedDataset, TensorImages
from .data import load_dataset as _load_named_dataset
from .errors import UserError
from leaderboards.threats import CORRUPTION
from .models import LoadedModel, ModelInfo, ModelOptions, Normalized, create_model, state_dict_sha256
from .specs import SEVERITIES, AttackSpec, RunSpec

__all__ = ["Evaluation", "ExampleOutcomes", "evaluate", "load_dataset", "load_model"]


def load_model(source: str | nn.Module | LoadedModel, *, weights: str | os.PathLike[str] | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               num_classes: int | None = None, name: str | None = None, dataset: str | None = None,
               unsafe_load: bool = False, threat: str = "Linf") -> LoadedModel:
    """A model that takes [0, 1] pixels, with its metadata: from a name `robust-bench run --model` takes
    (built-in, torchvision, robustbench:..., file.py:factory, checkpoint), or from any nn.Module (its
    normalization folded in from `mean`/`std`; named `name` or by its class)."""
    if isinstance(source, LoadedModel):
        if any(v is not None for v in (weights, mean, std, num_classes)):
            raise UserError("a LoadedModel is already loaded: pass weights/mean/std/num_classes to load_model "
                            "with a name or a module instead")
        return source
    if isinstance(source, (str, os.PathLike)):
        opts = ModelOptions(weights=None if weights is None else str(weights),
                            mean=None if mean is None else tuple(float(v) for v in mean),
                            std=None if std is None else tuple(float(v) for v in std),
                            num_classes=num_classes, allow_unsafe=unsafe_load, threat=threat)
        loaded = create_model(str(source), opts)
        return loaded if name is None else LoadedModel(loaded.module, loaded.info.with_(name=name))
    if not isinstance(source, nn.Module):
        raise UserError(f"load_model takes a name or an nn.Module, not {type(source).__name__}")
    if weights is not None:
        from .models.checkpoints import extract_state_dict, load_file, load_into
        load_into(source, extract_state_dict(load_file(weights, allow_unsafe=unsafe_load), str(weights)), str(weights))
    if (mean is None) != (std is None):
        raise UserError("give both mean and std (or neither)")
    module = source if mean is None else Normalized(source, tuple(mean), tuple(std))  # type: ignore[arg-type]
    module.eval()
    info = ModelInfo(name=name or type(source).__name__, source="python", arch=type(source).__name__,
                     num_classes=num_classes, mean=None if mean is None else tuple(float(v) for v in mean),
                     std=None if std is None else tuple(float(v) for v in std), dataset=dataset,
                     weights_sha256=state_dict_sha256(module),
                     weights_path=None if weights is None else str(weights))
    return LoadedModel(module, info)


def load_dataset(source: str | os.PathLike[str] | Dataset | LoadedDataset | tuple[Any, Any], *,
                 data_dir: str | None = None, split: str = "test", name: str | None = None,
                 num_classes: int | None = None) -> LoadedDataset:
    """A data set of [0, 1] images with labels: a name `robust-bench run --dataset` takes (cifar10,
    imagenet, a folder, an .npz file, digits, ...), (x, y) tensors or arrays (x float NCHW in [0, 1],
    or uint8 NHWC), or any torch Dataset of (image, label) pairs."""
    if isinstance(source, LoadedDataset):
        return source
    if isinstance(source, (str, os.PathLike)):   # `name`: an image folder's / array file's, before its digest
        return _load_named_dataset(str(source), data_dir=data_dir, split=split, name=name)
    if isinstance(source, tuple) and len(source) == 2:
        x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in source)
        if x.dtype == torch.uint8:
            x = (x.permute(0, 3, 1, 2) if x.dim() == 4 and x.shape[-1] in (1, 3) else x).float() / 255
        if x.dim() != 4 or not x.is_floating_point():
            raise UserError(f"images must be a float (N, C, H, W) tensor in [0, 1] or uint8 (N, H, W, C), "
                            f"got {tuple(x.shape)} {x.dtype}")
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise UserError("images must be in [0, 1] (normalization belongs inside the model)")
        y = y.reshape(-1)
        if y.is_floating_point() and not bool((y == y.round()).all()):
            raise UserError("labels must be whole numbers")
        y = y.long()
        if len(y) != len(x):
            raise UserError(f"{len(x)} images but {len(y)} labels")
        k = num_classes or (int(y.max()) + 1 if len(y) else 0)
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise UserError(f"labels must be in [0, {k}), got {int(y.min())}..{int(y.max())}")
        digest = hashlib.sha256(x.contiguous().numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:12]
        info = DatasetInfo(name=f"{name}#{digest[:8]}" if name else f"tensors-{digest}", num_classes=k,
                           channels=int(x.shape[1]),
                           image_size=(int(x.shape[2]), int(x.shape[3])), default_eps=_guess_eps(x.shape[2:]))
        return LoadedDataset(TensorImages(x.float(), y), info)
    if isinstance(source, Dataset):
        x0, _ = source[0]
        x0 = torch.as_tensor(x0)
        if num_classes is None:
            targets = getattr(source, "targets", None)
            if targets is None:
                raise UserError("pass num_classes= for a Dataset without a `targets` attribute")
            num_classes = int(max(targets)) + 1
        info = DatasetInfo(name=name or type(source).__name__, num_classes=num_classes, channels=int(x0.shape[0]),
                           image_size=(int(x0.shape[1]), int(x0.shape[2])), default_eps=_guess_eps(x0.shape[1:]))
        return LoadedDataset(source, info)
    raise UserError(f"load_dataset takes a name, (x, y) tensors or a Dataset, not {type(source).__name__}")


def _guess_eps(size: Sequence[int]) -> dict[str, tuple[float, ...]]:
    from .data import _guess_eps as guess
    return guess(tuple(int(s) for s in size))


@dataclass(frozen=True)
class ExampleOutcomes:
    """One model under one threat, per example: the smallest tested eps that broke each (None: none
    did; 0: wrong when clean), and which part of a composite attack did."""
    model: str
    attack: str
    index: tuple[int, ...]
    clean_correct: tuple[bool, ...]
    broken_eps: tuple[float | None, ...] | None
    broken_by: tuple[str | None, ...] | None = None


@dataclass(frozen=True)
class Evaluation:
    """A finished run: its results (per example kept), the checks' findings, the corruption summary
    (mean accuracy, CE, mCE per model), and the metadata that makes it reproducible."""
    run_id: str
    spec: RunSpec
    results: tuple[ThreatResult, ...]
    warnings: tuple[Any, ...]                       # attacks.Finding
    corruption_summary: Mapping[str, Any] = field(default_factory=dict)   # model -> CorruptionSummary
    metadata: Mapping[str, Any] = field(default_factory=dict)
    resumed: bool = False
    reused: bool = False
    document: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def table(self) -> str:
        """The table `robust-bench run` prints for this run."""
        from .report import format_report
        return format_report(self.results, [w.to_json() for w in self.warnings], self.corruption_summary)

    def result(self, model: str, attack: str, eps: float) -> ThreatResult:
        for r in self.results:
            if r.model == model and r.attack == attack and abs(r.eps - eps) < 1e-12:
                return r
        raise KeyError((model, attack, eps))

    @property
    def per_example(self) -> tuple[ExampleOutcomes, ...]:
        out, seen = [], set()
        for r in self.results:
            key = (r.model, r.attack if r.kind != CORRUPTION else f"{r.attack}@{r.eps:g}")
            if key in seen or r.per_example is None:
                continue
            seen.add(key)
            pe: PerExample = r.per_example
            out.append(ExampleOutcomes(key[0], key[1], pe.index, pe.clean_correct,
                                       pe.broken_eps if r.kind != CORRUPTION else
                                       tuple(None if c else 0.0 for c in pe.correct), pe.broken_by))
        return tuple(out)

    def to_frame(self) -> Any:
        """One row per (model, threat, eps), accuracies as fractions (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Evaluation.to_frame needs pandas: pip install pandas") from None
        rows = [{"run_id": r.run_id, "model": r.model, "dataset": r.dataset, "attack": r.attack, "norm": r.norm,
                 "eps": r.eps, "n": r.n, "clean_accuracy": r.clean_accuracy, "accuracy": r.accuracy,
                 "ci_low": r.ci95[0], "ci_high": r.ci95[1], "seconds": r.seconds, "forward": r.forward,
                 "backward": r.backward} for r in self.results]
        return pd.DataFrame(rows)

    def to_json(self) -> dict[str, Any]:
        """The document `robust-bench run --json` writes."""
        return dict(self.document)


def _open_store(store: Any) -> tuple[ResultStore, bool]:
    if isinstance(store, ResultStore):
        return store, False
    try:
        return ResultStore(":memory:" if store is None else Path(store)), True
    except StoreError as e:
        raise UserError(str(e)) from None


def evaluate(model: Any, data: Any = None, *, attacks: Sequence[Any] = ("fgsm", "pgd"),
             eps: Sequence[float] | float | None = None, norm: str = "linf", n_examples: int | None = None,
             subset: str = "random", seed: int = 0, batch_size: int | str = 256, device: str = "auto",
             precision: str = "fp32", channels_last: bool = False, corruptions: Sequence[str] = (),
             severities: Sequence[int] = SEVERITIES, corruption_preset: str | None = None,
             baseline: str | None = None, store: Any = None, tag: str | None = None, split: str = "test",
             data_dir: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             num_classes: int | None = None, weights: str | None = None, name: str | None = None,
             log: Callable[[str], None] | None = None, progress: bool = False,
             dataset_name: str | None = None, adaptive: Any = None, fold_bn: bool = False,
             compile: bool = False) -> Evaluation:
    """Evaluate one or several models (names, nn.Modules or LoadedModels; or a whole RunSpec) on a data
    set (a name, tensors, a Dataset; None: each model's own) under `attacks` (names, AttackSpecs or
    attack objects such as `attacks.PGD(steps=50)`) at each eps, and the common `corruptions`.
    `adaptive=True` (or a `robustness.adaptive.Adaptive`) adds EOT, BPDA and transfer rows when the
    model checks find a randomized forward pass or masked gradients, as `run --adaptive` does."""
    from .distributed import World
    from .runner import Evaluator, run_document
    objects: list[LoadedModel] | None = None
    loaded_data: LoadedDataset | None = None
    if isinstance(model, RunSpec):
        spec = model
    else:
        sources = list(model) if isinstance(model, (list, tuple)) else [model]
        names: list[str] = []
        if all(isinstance(m, (str, os.PathLike)) for m in sources):
            names = [str(m) for m in sources]
            if name is not None:
                raise UserError("name= renames a module; models given by name keep their names")
        else:
            objects = [load_model(m, mean=mean, std=std, num_classes=num_classes, weights=weights,
                                  name=name if len(sources) == 1 else None) for m in sources]
            names = [m.info.name for m in objects]
            mean = std = weights = None
        data_path = None
        if data is not None and not isinstance(data, (str, os.PathLike)):
            loaded_data = load_dataset(data, num_classes=num_classes, name=dataset_name)
            data_path, dataset_name = loaded_data.info.name, None
        elif data is not None:
            data_path = str(data)
        eps_t = None if eps is None else tuple(float(e) for e in ((eps,) if isinstance(eps, (int, float)) else eps))
        opts = ModelOptions(weights=weights, mean=None if mean is None else tuple(float(v) for v in mean),
                            std=None if std is None else tuple(float(v) for v in std), num_classes=num_classes,
                            threat={"linf": "Linf", "l2": "L2"}.get(str(norm).lower(), str(norm)))
        spec = RunSpec(models=tuple(names), dataset=data_path, dataset_name=dataset_name, data_dir=data_dir,
                       split=split,
                       attacks=_attack_specs(attacks, norm), norm=norm, eps=eps_t,
                       n_examples=n_examples, subset=subset, seed=seed, batch_size=batch_size, device=device,
                       precision=precision, channels_last=channels_last, fold_bn=fold_bn, compile=compile,
                       model_options=opts, tag=tag,
                       corruptions=tuple(corruptions), severities=tuple(severities),
                       corruption_preset=corruption_preset)
    if adaptive is True:
        from .adaptive import Adaptive
        adaptive = Adaptive()
    evaluator = Evaluator(spec, log=log or (lambda s: None), progress=progress, world=World(), models=objects,
                          data=loaded_data, adaptive=adaptive or None)
    prepared = evaluator.prepare()
    db, owned = _open_store(store)
    try:
        outcome = evaluator.run(db, prepared)
        from .report import corruption_summaries
        summaries = corruption_summaries([r for r in outcome.results if r.kind == CORRUPTION], baseline, db)
        doc = run_document(outcome, db, {"corruption_summary": {m: v.to_json() for m, v in summaries.items()}}
                           if summaries else None)
        results = tuple(db.recompute(r.run_id, r.model, r.attack, r.eps, dataset=r.dataset, norm=r.norm,
                                     params=r.params) for r in outcome.results)
        # the stored aggregates keep what recompute cannot know (the worst case's summed seconds)
        results = tuple(_with_costs(a, b) for a, b in zip(results, outcome.results))
    finally:
        if owned:
            db.close()
    from attacks import Finding
    return Evaluation(outcome.run_id, evaluator.spec, results, tuple(Finding(**w) for w in outcome.warnings),
                      summaries, dict(outcome.metadata), outcome.resumed, outcome.reused, doc)


def _attack_specs(attacks: Sequence[Any], norm: str) -> tuple[AttackSpec, ...]:
    """AttackSpecs for names, specs and attack objects; a second attack of the same name (PGD with
    other settings) is labelled by its settings, e.g. `pgd(steps=50)`."""
    from attacks import canonical_norm
    if isinstance(attacks, (str, AttackSpec)) or not isinstance(attacks, (list, tuple)):
        attacks = [attacks]
    want = canonical_norm(norm)
    out: list[AttackSpec] = []
    for a in attacks:
        own = getattr(a, "norm", None)
        if not isinstance(a, (str, AttackSpec)) and own is not None and canonical_norm(own) != want:
            raise UserError(f"attack {a!r} is set up for {own}, but the run evaluates {norm}: pass norm={own!r} "
                            f"or build the attack for {norm}")
        spec = AttackSpec.of(a)
        if any(o.name == spec.name and o.params == spec.params for o in out):
            raise UserError(f"attack {spec.shown!r} is listed twice (with the same settings)")
        if any(o.shown == spec.shown for o in out) and spec.label is None:
            settings = ",".join(f"{k}={v}" for k, v in spec.params) or "default"
            spec = AttackSpec(spec.name, spec.params, f"{spec.name}({settings})")
        out.append(spec)
    return tuple(out)


def _with_costs(fresh: ThreatResult, stored: ThreatResult) -> ThreatResult:
    from dataclasses import replace
    return replace(fresh, seconds=stored.seconds, forward=stored.forward, backward=stored.backward,
                   params=stored.params)
