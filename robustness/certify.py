"""Certified robustness by randomized smoothing (`robust-bench certify`): a CertifySpec against a results
store, batch by batch, over one or many processes, the way robustness/runner.py runs attacks.

The smoothed classifier g of a model (Cohen, Rosenfeld & Kolter 2019; the procedures are in
defenses/smoothing.py) is a model of its own: it is stored under the label `MODEL+smoothing(sigma=S)`, so
a leaderboard shows it as its own row and never mixes its certified accuracies with the base model's
empirical ones. Per example the store keeps CERTIFY's class (or abstain) and certified L2 radius
(`certificates`), PREDICT's answers (`smoothed_predictions`), and, for tables, comparisons and the
leaderboard, one outcome series per reported radius:

  smoothing-certified@r   CERTIFY said the label with a radius >= r (abstaining counts as wrong)
  smoothing-predict@0     PREDICT said the label on the clean input (with --predict)
  smoothing-pgd@r         CERTIFY said the label and PREDICT still says it after an L2 attack of radius r
                          on g (`smoothed_pgd`, with --attack-radii); examples CERTIFY got wrong are not
                          attacked and count as broken

Noise is drawn per example from its own seed (run seed, sigma, example), so a resumed run, any number of
processes and any grouping of examples give the same certificates example for example. The check at
the end: an example certified at radius >= r whose attacked copy within r PREDICT assigns to another
class contradicts the certificate (each procedure errs with probability <= alpha); more such examples
than chance allows is the stored warning `empirical_below_certified` (docs/CHECKS.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from leaderboards import Cost, Outcome, ResultStore, ThreatResult
from leaderboards.store import Certified, SmoothedPrediction, series_key

from .cascade import example_seeds, threat_model_excess
from .data import LoadedDataset, indices_sha256
from .distributed import World
from .errors import UserError
from .models import LoadedModel
from .models.sources import ModelOptions
from .preparation import (Prepared, auto_batch_size, batches_of, loader, prepare, resolve_device,
                          to_device)
from .provenance import environment
from .runner import BatchFailed, _failure, commit_round
from .specs import RunSpec, check_sampling

__all__ = ["CERTIFIED", "EMPIRICAL", "PREDICTED", "RADII", "CertifyOutcome", "CertifySpec", "Certifier", "certify",
           "certified_accuracy", "consistency_findings", "export_json", "smoothed_label"]

CERTIFIED, PREDICTED, EMPIRICAL = "smoothing-certified", "smoothing-predict", "smoothing-pgd"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
CONSISTENCY_CODE = "empirical_below_certified"
# the warning fires when this many contradictions have probability below this under 2 * alpha per example
CONSISTENCY_LEVEL = 0.01


def smoothed_label(model: str, sigma: float) -> str:
    """How the smoothed classifier of `model` is named in the store and on the leaderboard."""
    return f"{model}+smoothing(sigma={sigma:g})"


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass(frozen=True)
class CertifySpec:
    """Everything that determines a certification's numbers. `batch_size` counts noisy copies per forward
    pass (or "auto": what fits the GPU); `examples_per_batch` how many examples are committed together
    (the unit of resume and of sharding; it changes no number)."""
    models: tuple[str, ...] = ()
    dataset: str | None = None
    data_dir: str | None = None
    split: str = "test"
    n_examples: int | None = None
    subset: str = "random"
    seed: int = 0
    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    radii: tuple[float, ...] = RADII
    predict: bool = False
    attack_radii: tuple[float, ...] = ()
    attack_steps: int = 20
    attack_samples: int = 16
    batch_size: int | str = 1000
    examples_per_batch: int = 10
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    model_options: ModelOptions = field(default_factory=ModelOptions)
    tag: str | None = None

    def __post_init__(self) -> None:
        for name in ("models", "radii", "attack_radii"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        for name in ("radii", "attack_radii"):
            v = getattr(self, name)
            if all(_number(r) for r in v):
                object.__setattr__(self, name, tuple(sorted(float(r) for r in v)))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = "certify"
        return d

    def check(self) -> "CertifySpec":
        """Refuse values the procedures cannot use, one line each (UserError)."""
        if not self.models:
            raise UserError("no model to certify")
        if not (_number(self.sigma) and self.sigma > 0):
            raise UserError(f"--sigma must be a finite number > 0, got {self.sigma!r}")
        if not (_number(self.alpha) and 0 < self.alpha < 1):
            raise UserError(f"--alpha must lie strictly between 0 and 1, got {self.alpha!r}")
        for name in ("n0", "n", "attack_steps", "attack_samples", "examples_per_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                          or self.batch_size < 1):
            raise UserError(f"--batch-size must be a number >= 1 or auto, got {self.batch_size!r}")
        for name, minimum in (("radii", 0.0), ("attack_radii", None)):
            values = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            if name == "radii" and not values:
                raise UserError("--radii needs at least one radius")
            for r in values:
                if not _number(r) or r < 0 or (minimum is None and r == 0):
                    raise UserError(f"{flag}: radii must be finite numbers {'>= 0' if minimum == 0 else '> 0'}, "
                                    f"got {r!r}")
            if len({f"{r:g}" for r in values}) < len(values):
                raise UserError(f"{flag}: two radii print alike ({', '.join(f'{r:g}' for r in values)})")
        if self.predict is not True and self.predict is not False:
            raise UserError(f"predict must be true or false, got {self.predict!r}")
        check_sampling(self)
        return self

    def max_radius(self) -> float:
        """The largest radius n samples can certify (all n votes for the class): sigma * Phi^-1(alpha^(1/n))."""
        from scipy.stats import norm
        return float(self.sigma * norm.ppf(self.alpha ** (1.0 / self.n)))

    def run_spec(self) -> RunSpec:
        """The evaluation spec that loads and probes the models and data (no attacks)."""
        return RunSpec(models=self.models, dataset=self.dataset, data_dir=self.data_dir, split=self.split,
                       attacks=(), norm="l2", eps=None, n_examples=self.n_examples, subset=self.subset,
                       seed=self.seed, batch_size=self.examples_per_batch, device=self.device,
                       precision=self.precision, channels_last=self.channels_last,
                       model_options=self.model_options, tag=self.tag)


@dataclass(frozen=True)
class CertifyOutcome:
    """What a certification produced: the stored aggregates (certified accuracy per radius, PREDICT and
    attack rows), the warnings, and per smoothed model `summary[label]` = {"examples", "abstained", and
    CERTIFY's own "seconds", "images_per_second", "seconds_per_image", "samples_per_second"}."""
    run_id: str
    resumed: bool
    reused: bool
    results: tuple[ThreatResult, ...]
    metadata: dict[str, Any]
    spec: dict[str, Any]
    warnings: tuple[dict[str, Any], ...] = ()
    summary: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Batch:
    outcomes: tuple[Outcome, ...]
    costs: tuple[Cost, ...]
    certificates: tuple[Certified, ...]
    predictions: tuple[SmoothedPrediction, ...]


def certified_accuracy(certificates: Sequence[Certified], radius: float) -> float:
    """Fraction of examples CERTIFY got right with a radius >= `radius` (abstentions count as wrong)."""
    if not certificates:
        return 0.0
    return sum(1 for c in certificates if c.prediction == c.label and c.radius is not None and c.radius >= radius) \
        / len(certificates)


def consistency_findings(model: str, certificates: Sequence[Certified], attacked: Sequence[SmoothedPrediction],
                         alpha: float) -> list[dict[str, Any]]:
    """Per attack radius r: the examples certified (correctly) at radius >= r whose attacked copy within r
    PREDICT gives to another class. Each such example means a certificate or PREDICT erred, which each
    does with probability <= alpha; a count that 2 * alpha per example makes improbable (binomial tail
    < CONSISTENCY_LEVEL) is a finding. Abstaining on the attacked copy contradicts nothing."""
    from scipy.stats import binom
    certs = {c.idx: c for c in certificates}
    out = []
    for r in sorted({p.radius for p in attacked}):
        held = [c for c in certificates if c.prediction == c.label and c.radius is not None and c.radius >= r]
        held_idx = {c.idx for c in held}
        bad = [p for p in attacked if p.radius == r and p.idx in held_idx and p.prediction is not None
               and p.prediction != certs[p.idx].label]
        m, k = len(held), len(bad)
        if k == 0:
            continue
        tail = float(binom.sf(k - 1, m, min(1.0, 2 * alpha)))
        if tail >= CONSISTENCY_LEVEL:
            continue
        emp = 1.0 - k / m
        out.append({"code": CONSISTENCY_CODE, "model": model, "attack": EMPIRICAL, "eps": float(r),
                    "message": (f"the L2 attack at radius {r:g} made the smoothed classifier say a wrong class on "
                                f"{k} of the {m} examples certified at radius >= {r:g} (examples "
                                f"{', '.join(str(p.idx) for p in bad[:5])}{', ...' if k > 5 else ''}); with "
                                f"alpha {alpha:g} chance explains so many with probability {tail:.2g}: the "
                                f"certificates (or the noise, sigma, or model used for them) are wrong, and "
                                f"certified accuracy there exceeds what the attack leaves ({100 * emp:.1f}% of "
                                f"the certified)")})
    return out


class Certifier:
    """Certifies a CertifySpec into a store: `prepare()` loads and checks everything (no store needed),
    then `run(store, prepared)`. `models`/`data` given as objects replace the spec's names."""

    def __init__(self, spec: CertifySpec, store: ResultStore | None = None, *,
                 log: Callable[[str], None] = lambda s: None, progress: bool = False, world: World | None = None,
                 models: Sequence[LoadedModel] | None = None, data: LoadedDataset | None = None,
                 argv: Sequence[str] | None = None) -> None:
        self.store, self.log, self.progress = store, log, progress
        self.world = world or World()
        self.spec = spec.check()
        self.device = resolve_device(self.world.device_name(spec.device))
        self._models, self._data, self.argv = models, data, argv
        self.batch_size: int | None = None if spec.batch_size == "auto" else int(spec.batch_size)

    def prepare(self) -> list[Prepared]:
        prepared, _ = prepare(self.spec.run_spec(), [], self.device, world=self.world, log=self.log,
                              models=self._models, data=self._data)
        if self.batch_size is None:
            p = prepared[0]
            size = auto_batch_size(p.model.module, p.data, self.device, max(self.spec.n0, self.spec.n),
                                   self.spec.channels_last, cap=4096)
            self.batch_size = self.world.broadcast(size) if self.world.active else size
            self.log(f"--batch-size auto: {self.batch_size} noisy copies per forward pass")
        for p in prepared:   # certificates stay valid under another sigma, but they are weak: say why
            recipe = (p.model.info.extra or {}).get("recipe") or {}
            if recipe.get("defense") == "gaussian" and recipe.get("sigma") != self.spec.sigma:
                self.log(f"note: {p.label} was trained with Gaussian noise of sigma {recipe.get('sigma')}, certified "
                         f"here at sigma {self.spec.sigma:g}")
            elif recipe.get("defense") not in (None, "gaussian"):
                self.log(f"note: {p.label} was trained with --defense {recipe.get('defense')}, not with Gaussian "
                         f"noise: its smoothed classifier may abstain on most inputs (train --defense gaussian)")
        top = self.spec.max_radius()
        if any(r > top for r in self.spec.radii):
            self.log(f"note: with n={self.spec.n} and alpha={self.spec.alpha:g} no radius above {top:.3g} can be "
                     f"certified (sigma * Phi^-1(alpha^(1/n))): certified accuracy there is 0 by construction")
        return [dataclasses.replace(p, label=smoothed_label(p.label, self.spec.sigma)) for p in prepared]

    def run_key(self, prepared: Sequence[Prepared]) -> str:
        spec = dataclasses.replace(self.spec, batch_size=self.batch_size) if self.batch_size else self.spec
        facts = {"spec": spec.to_json(),
                 "models": [{"label": p.label, "weights": p.model.info.weights_sha256, "dataset": p.dataset_name,
                             "indices": indices_sha256(p.indices)} for p in prepared], "device": self.device.type}
        facts["spec"].pop("device", None)
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()

    def run(self, store: ResultStore | None = None, prepared: Sequence[Prepared] | None = None) -> CertifyOutcome:
        self.store = store or self.store
        if self.store is None and self.world.main:
            raise ValueError("Certifier.run needs a ResultStore")
        prepared = list(prepared) if prepared is not None else self.prepare()
        key = self.run_key(prepared)
        decision = self._open_run(key, prepared) if self.world.main else None
        decision = self.world.broadcast(decision)
        run_id = decision["run_id"]
        if not decision["reused"]:
            try:
                for p in prepared:
                    self._certify_model(run_id, p, set(decision["done"].get(p.label, ())))
            except BatchFailed:
                raise
            except UserError:
                if self.world.main:
                    self.store.delete_run(run_id)
                raise
            done = self._finish(run_id, prepared) if self.world.main else None
            results, warnings = self.world.broadcast(done)
        else:
            results, warnings = decision["results"], decision["warnings"]
        summary = self.world.broadcast(self._summary(run_id, prepared) if self.world.main else None)
        return CertifyOutcome(run_id, decision["resumed"], decision["reused"], tuple(results), decision["metadata"],
                              decision["spec"], tuple(warnings), summary)

    def _open_run(self, key: str, prepared: Sequence[Prepared]) -> dict[str, Any]:
        existing = self.store.find_run(key)
        if existing is not None and existing.status == "complete":
            self.log(f"run {existing.run_id} with these arguments is already complete in {self.store.path}; showing it")
            return {"run_id": existing.run_id, "reused": True, "resumed": False,
                    "results": [dataclasses.replace(r, per_example=None) for r in self.store.results(existing.run_id)],
                    "metadata": existing.metadata, "spec": existing.spec, "warnings": self.store.warnings(existing.run_id)}
        spec_json = dataclasses.replace(self.spec, batch_size=self.batch_size).to_json()
        if existing is not None:
            run_id, resumed, metadata = existing.run_id, True, existing.metadata
            self.log(f"resuming run {run_id}")
        else:
            metadata = environment(self.device, list(self.argv) if self.argv is not None else None)
            metadata.update(seed=self.spec.seed, tag=self.spec.tag, world_size=self.world.size, kind="certify",
                            models={p.label: {"weights_sha256": p.model.info.weights_sha256,
                                              "indices_sha256": indices_sha256(p.indices),
                                              "dataset": p.dataset_name, "n": int(len(p.indices)),
                                              "base_model": p.model.info.name} for p in prepared})
            run_id, resumed = self.store.create_run(key, spec_json, metadata, self.spec.tag), False
        for p in prepared:
            self.store.register_model(run_id, p.label, p.dataset_name,
                                      {"model": p.model.info.to_json(), "dataset": p.data.info.to_json(),
                                       "eps": list(self.spec.radii), "norm": "l2",
                                       "smoothing": {"sigma": self.spec.sigma, "base_model": p.model.info.name}},
                                      p.indices.tolist())
        done = {p.label: sorted(self.store.done_batches(run_id, p.label)) for p in prepared}
        return {"run_id": run_id, "reused": False, "resumed": resumed, "metadata": metadata, "spec": spec_json,
                "done": done}

    def _certify_model(self, run_id: str, p: Prepared, done: set[int]) -> None:
        """Pending batches round-robin over the ranks; after each round rank 0 commits them (runner.py's scheme)."""
        batches = batches_of(p.indices, self.spec.examples_per_batch)
        pending = [i for i in range(len(batches)) if i not in done]
        if not pending:
            return
        w = self.world
        mine = pending[w.rank::w.size]
        bar = None
        if self.progress and w.main:
            from tqdm import tqdm
            bar = tqdm(total=len(p.indices), initial=sum(len(batches[i]) for i in range(len(batches)) if i in done),
                       desc=p.label, unit="img", file=sys.stderr, leave=False)
        it = iter(loader(p.data, [batches[i] for i in mine])) if mine else iter(())
        n_done = len(batches) - len(pending)
        for r in range(math.ceil(len(pending) / w.size)):
            payload: Any = None
            if r < len(mine):
                b = mine[r]
                try:
                    x, y = next(it)
                    payload = (b, self.certify_batch(p, batches[b], x, y))
                except UserError as e:
                    payload = ("error", "refused", str(e))
                except Exception as e:  # noqa: BLE001 - a model, data file or device failing mid-run
                    payload = ("error", "failed", _failure(p.label, b, len(batches), batches[b], e))
            n_done = commit_round(w, payload, lambda b, res: (
                self.store.write_batch(run_id, p.label, b, res.outcomes, res.costs, certificates=res.certificates,
                                       predictions=res.predictions), bar is not None and bar.update(len(batches[b]))),
                bar, p.label, n_done)
        if bar is not None:
            bar.close()

    def certify_batch(self, p: Prepared, idx: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> _Batch:
        """CERTIFY (and PREDICT, and the attacks) on each example of one batch: per-example records,
        outcome series and costs."""
        from defenses.smoothing import PREDICTION, certify, predict, smoothed_pgd
        s, model, k = self.spec, p.model.module, p.data.info.num_classes
        x, y = to_device(x, y, self.device, False)
        seeds = [int(v) for v in example_seeds(s.seed, "smoothing", s.sigma, idx)]
        labels = [int(v) for v in y.cpu()]
        bs = int(self.batch_size or 1)
        common = dict(sigma=s.sigma, batch_size=bs, num_classes=k)
        certs: list[Certified] = []
        preds: list[SmoothedPrediction] = []
        costs: list[Cost] = []
        try:
            t0 = time.perf_counter()
            for j in range(len(idx)):
                c = certify(model, x[j], n0=s.n0, n=s.n, alpha=s.alpha, seed=seeds[j], **common)
                certs.append(Certified(int(idx[j]), labels[j], c.prediction, c.radius, c.p_lower, c.count, c.n))
            costs.append(Cost(CERTIFIED, s.radii[0], time.perf_counter() - t0, (s.n0 + s.n) * len(idx), 0))
            if s.predict:
                t0 = time.perf_counter()
                for j in range(len(idx)):
                    preds.append(self._predicted(model, x[j], labels[j], int(idx[j]), 0.0, seeds[j], PREDICTION,
                                                 predict, common))
                costs.append(Cost(PREDICTED, 0.0, time.perf_counter() - t0, s.n * len(idx), 0))
            right = [j for j, c in enumerate(certs) if c.prediction == c.label]
            for r in s.attack_radii:
                t0 = time.perf_counter()
                if right:
                    sel = torch.as_tensor(right, device=x.device)
                    x_adv = smoothed_pgd(model, x[sel], y[sel], [seeds[j] for j in right], sigma=s.sigma, radius=r,
                                         steps=s.attack_steps, samples=s.attack_samples)
                    what = threat_model_excess(x[sel], x_adv, r, "l2")
                    if what is not None:
                        raise UserError(f"the attack on the smoothed classifier left the L2 ball of radius {r:g}: "
                                        f"{what}")
                    for a, j in enumerate(right):
                        preds.append(self._predicted(model, x_adv[a], labels[j], int(idx[j]), r, seeds[j],
                                                     f"{PREDICTION}|attack@{r!r}", predict, common))
                passes = s.attack_steps * s.attack_samples * len(right)
                costs.append(Cost(EMPIRICAL, r, time.perf_counter() - t0, passes + s.n * len(right), passes))
        except ValueError as e:   # non-finite logits, a model that returns the wrong shape under noise
            raise UserError(f"model {p.label}: {e}") from None
        return _Batch(tuple(_series(certs, preds, s)), tuple(costs), tuple(certs), tuple(preds))

    def _predicted(self, model, x, label, idx, radius, seed, phase, predict, common) -> SmoothedPrediction:
        q = predict(model, x, n=self.spec.n, alpha=self.spec.alpha, seed=seed, phase=phase, **common)
        return SmoothedPrediction(idx, label, float(radius), q.prediction, q.count_top, q.count_second, q.p_value, q.n)

    def _finish(self, run_id: str, prepared: Sequence[Prepared]) -> tuple[list[ThreatResult], list[dict[str, Any]]]:
        s = self.spec
        base = {"sigma": s.sigma, "n0": s.n0, "n": s.n, "alpha": s.alpha}
        results = []
        for p in prepared:
            rows = [(CERTIFIED, r, {**base, "certified": True}) for r in s.radii]
            if s.predict:
                rows.append((PREDICTED, 0.0, {**base, "certified": False}))
            rows += [(EMPIRICAL, r, {**base, "certified": False, "steps": s.attack_steps, "samples": s.attack_samples})
                     for r in s.attack_radii]
            for attack, r, params in rows:
                results.append(self.store.recompute(run_id, p.label, attack, r, dataset=p.dataset_name, norm="l2",
                                                    params={**params, "base_model": p.model.info.name}))
        warnings = [dict(f.to_json(), model=smoothed_label(f.model, s.sigma) if f.model else f.model)
                    for p in prepared for f in p.findings]
        for p in prepared:
            attacked = [q for q in self.store.smoothed_predictions(run_id, p.label) if q.radius > 0]
            warnings += consistency_findings(p.label, self.store.certificates(run_id, p.label), attacked, s.alpha)
        self.store.finish_run(run_id, results, warnings)
        return [dataclasses.replace(r, per_example=None) for r in results], warnings

    def _summary(self, run_id: str, prepared: Sequence[Prepared]) -> dict[str, dict[str, float]]:
        out = {}
        for p in prepared:
            seconds, fwd, _ = self.store.cost(run_id, p.label, CERTIFIED, self.spec.radii[0])
            n = len(p.indices)
            abstained = sum(1 for c in self.store.certificates(run_id, p.label) if c.prediction is None)
            out[p.label] = {"examples": n, "abstained": abstained, "seconds": seconds,
                            "images_per_second": n / seconds if seconds > 0 else float("inf"),
                            "seconds_per_image": seconds / n if n else 0.0,
                            "samples_per_second": fwd / seconds if seconds > 0 else float("inf")}
        return out


def certify(spec: CertifySpec, db: str | Path | ResultStore = "results.db", *,
            models: Sequence[LoadedModel] | None = None, data: LoadedDataset | None = None,
            log: Callable[[str], None] = lambda s: None, progress: bool = False) -> CertifyOutcome:
    """Certify `spec` into the store `db` (a path or an open ResultStore) in this process: the Python
    form of `robust-bench certify`. `models` (any nn.Module wrapped as a LoadedModel) and `data` replace
    the spec's names; the same call again resumes an interrupted run or shows the complete one."""
    certifier = Certifier(spec, log=log, progress=progress, models=models, data=data)
    prepared = certifier.prepare()
    if isinstance(db, ResultStore):
        return certifier.run(db, prepared)
    with ResultStore(db) as store:
        return certifier.run(store, prepared)


def _series(certs: Sequence[Certified], preds: Sequence[SmoothedPrediction], s: CertifySpec) -> list[Outcome]:
    """The outcome series of one batch: certified at each radius, PREDICT on clean inputs, the attacks.
    Each is a per-strength series (`ATTACK@r`, correct = broken_eps NULL), since certificates at
    different radii are not produced by one nested attack."""
    out = []
    for r in s.radii:
        key = series_key(CERTIFIED, r)
        for c in certs:
            right = c.prediction == c.label
            ok = right and c.radius is not None and c.radius >= r
            out.append(Outcome(key, c.idx, right, None if ok else float(r)))
    right = {c.idx: c.prediction == c.label for c in certs}
    if s.predict:
        key = series_key(PREDICTED, 0.0)
        for q in preds:
            if q.radius == 0:
                out.append(Outcome(key, q.idx, right[q.idx], None if q.prediction == q.label else 0.0))
    for r in s.attack_radii:
        key = series_key(EMPIRICAL, r)
        attacked = {q.idx: q for q in preds if q.radius == r}
        for c in certs:
            q = attacked.get(c.idx)
            ok = q is not None and q.prediction == q.label
            out.append(Outcome(key, c.idx, right[c.idx], None if ok else float(r)))
    return out


def export_json(outcome: CertifyOutcome, store: ResultStore, path: str | Path) -> None:
    """The run, its aggregates and every example's certificate and smoothed predictions."""
    doc = {"run": {"run_id": outcome.run_id, **outcome.metadata, "spec": outcome.spec},
           "results": [r.to_json() for r in outcome.results], "warnings": list(outcome.warnings),
           "summary": outcome.summary, "certificates": {}, "predictions": {}}
    for model in dict.fromkeys(r.model for r in outcome.results):
        doc["certificates"][model] = [dataclasses.asdict(c) for c in store.certificates(outcome.run_id, model)]
        doc["predictions"][model] = [dataclasses.asdict(q) for q in store.smoothed_predictions(outcome.run_id, model)]
    Path(path).write_text(json.dumps(doc, indent=1, default=str))


certify_smoothed = certify   # the name the package exports (`robustness.certify` is this module)
