"""The runner: a RunSpec against a results store, batch by batch, over one or many processes.

It owns what the pure cascade (robustness/cascade.py) does not: the store (each batch committed with all
its outcomes in one transaction), resume (the same arguments find their unfinished run and end with
exactly the uninterrupted result), reuse of a complete run, sharding over ranks (rank 0 alone opens the
store), the aggregates and the checks' findings at the end, and what happens on failure: a run that
cannot be trusted (NaN logits, an attack outside its threat model) is deleted; a batch that failed for
an outside reason (the model raised, an unreadable image, out of memory) leaves the run resumable."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from attacks import progress as attack_progress
from attacks.errors import AttackError
from leaderboards import ResultStore, ThreatResult
from leaderboards.threats import COMBINED, CORRUPTION

from .adaptive import attack_params, review, suggestion
from .cascade import BatchResult, cascade, corruption_pass, min_norm_stage
from .data import LoadedDataset, indices_sha256
from .distributed import World
from .errors import UserError
from .models import LoadedModel
from .preparation import (Prepared, batches_of, check_corruptions, loader, prepare, resolve_attacks,
                          resolve_device, to_device)
from .provenance import environment
from .specs import WORST_CASE, RunSpec, corruption_label

__all__ = ["BatchFailed", "Evaluator", "RunOutcome", "export_json"]


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    resumed: bool
    reused: bool
    results: tuple[ThreatResult, ...]
    metadata: dict[str, Any]
    spec: dict[str, Any]
    warnings: tuple[dict[str, Any], ...] = ()


class BatchFailed(UserError):
    """A batch failed for a reason outside the engine (the model raised, an image is unreadable, the
    device ran out of memory): one line for the user, and unlike other errors the run is kept, so the
    same command resumes it once the cause is fixed."""


class _BatchProgress(attack_progress.Listener):
    """One batch in flight: what its composite attacks are doing (the progress bar's postfix, or a log line
    per finished sub-attack when there is no bar), and each finished sub-attack kept in the store (rank 0,
    its only writer) so that an interrupted batch resumes after the last finished one instead of redoing
    them; the kept parts are deleted when the batch commits (ResultStore.write_batch)."""

    def __init__(self, ev: "Evaluator", run_id: str, p: Prepared, batch: int, n_batches: int, bar: Any) -> None:
        self.ev, self.run_id, self.label, self.bar = ev, run_id, p.label, bar
        self.batch, self.n_batches = batch, n_batches
        self.writes = ev.world.main and ev.store is not None
        self.stored = ev.store.kept_steps(run_id, p.label, batch) if self.writes else {}

    def event(self, e: attack_progress.Event) -> None:
        from leaderboards.threats import format_eps
        where = f"{e.attack} {e.part} ({e.index}/{e.total}) at eps={format_eps(e.eps, self.ev.norm)}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{where}: {e.examples} examples" if e.stage == "start" else
                                     f"{where}: {e.fooled} of {e.examples} broken", refresh=True)
        elif e.stage != "start":
            how = " (kept from the interrupted run)" if e.stage == "kept" else f" in {e.seconds:.1f} s"
            self.ev.log(f"{self.label} batch {self.batch + 1}/{self.n_batches}: {where}: {e.fooled} of {e.examples} "
                        f"broken{how}")

    def recall(self, key: str) -> dict[str, Any] | None:
        blob = self.stored.get(key)
        return None if blob is None else torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)

    def keep(self, key: str, state: dict[str, Any]) -> None:
        if self.writes:
            buf = io.BytesIO()
            torch.save(state, buf)
            self.ev.store.keep_step(self.run_id, self.label, self.batch, key, buf.getvalue())


def commit_round(world: Any, payload: Any, write: Callable[..., Any], bar: Any, label: str, n_done: int) -> int:
    """Rank 0 commits what every rank computed in one round (`write(*payload)` for each, in rank order) and
    returns the count of completed batches; the first error on any rank ends the run on all of them, a
    refusal (bad input) as UserError before any failure, a failure as BatchFailed naming what is kept."""
    stop = None
    for item in world.gather(payload) or ():
        if item is None:
            continue
        if item[0] == "error":
            stop = stop if stop and stop[0] == "refused" else item[1:]
            continue
        write(*item)
        n_done += 1
    stop = world.broadcast(stop) if world.active else stop
    if stop:
        if bar is not None:
            bar.close()
        kind, message = stop
        if kind == "refused":
            raise UserError(message)
        raise BatchFailed(f"{message}; the {n_done} completed batches of {label} are kept: fix the cause and "
                          f"rerun the same command to resume")
    return n_done


def _failure(model: str, b: int, n_batches: int, idx: np.ndarray, e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    hint = " (try a smaller --batch-size)" if "out of memory" in first.lower() else ""
    span = f"examples {int(idx.min())}..{int(idx.max())}" if len(idx) else "no examples"
    return f"{model}: batch {b + 1} of {n_batches} ({span}) failed: {text}{hint}"


class Evaluator:
    """Runs a RunSpec against a store: `prepare()` loads and checks everything (no store needed), then
    `run(store, prepared)`; `log` receives one-line notes. `models`/`data` given as objects (the Python
    API: any nn.Module wrapped as a LoadedModel, tensors as a LoadedDataset) replace the spec's names."""

    def __init__(self, spec: RunSpec, store: ResultStore | None = None, *,
                 log: Callable[[str], None] = lambda s: None, progress: bool = False,
                 world: World | None = None, models: Sequence[LoadedModel] | None = None,
                 data: LoadedDataset | None = None, argv: Sequence[str] | None = None,
                 adaptive: Any = None) -> None:
        self.store, self.log, self.progress = store, log, progress
        self.adaptive = adaptive   # robustness.adaptive.Adaptive: add adaptive attacks where a model check fires
        self.world = world or World()
        spec.check()
        self.spec, self.attacks = resolve_attacks(spec)
        self.norm = self.spec.norm
        self.device = resolve_device(self.world.device_name(spec.device))
        check_corruptions(self.spec)
        self.min_norm = min_norm_stage(self.spec.min_norm, self.norm)   # None, or FMN run once per batch first
        self._models, self._data, self.argv = models, data, argv
        self.batch_size: int | None = None if spec.batch_size == "auto" else int(spec.batch_size)

    # ---- preparation: everything that can fail on bad input happens before the store is touched ----
    def prepare(self) -> list[Prepared]:
        prepared, self.batch_size = prepare(self.spec, self.attacks, self.device, world=self.world, log=self.log,
                                            models=self._models, data=self._data)
        if self.adaptive is not None:
            from .adaptive import expand
            self.spec, self.attacks = expand(self.spec, prepared, self.adaptive, self.log) or (self.spec, self.attacks)
        self._honest_quantized(prepared)
        return prepared

    def _honest_quantized(self, prepared: Sequence[Prepared]) -> None:
        """An int8 model's gradients pass straight through its twin; its worst case also needs the float
        model's adversarial examples transferred (robustness/compression.py), added here as rows of their own."""
        from .compression import honest_attacks, is_quantized
        quantized = [p for p in prepared if is_quantized(p.model.info)]
        if not quantized or not self.spec.attacks:
            return
        if len(prepared) > 1:
            raise UserError(f"evaluate the quantized model {quantized[0].label} on its own: its worst case adds "
                            f"transfers from its own float model, which the other models do not share")
        p = quantized[0]
        more = honest_attacks(p.model, list(self.spec.attacks))
        have = {a.shown for a in self.spec.attacks}
        added = tuple(a for a in more[len(self.spec.attacks):] if a.shown not in have)
        if added:
            self.log(f"{p.label} is int8: adding {', '.join(a.shown for a in added)} (transfers from its float model)")
            self.spec, self.attacks = resolve_attacks(dataclasses.replace(self.spec, attacks=self.spec.attacks + added))

    def _batches(self, p: Prepared) -> list[np.ndarray]:
        assert self.batch_size is not None, "prepare() first"
        return batches_of(p.indices, self.batch_size)

    # ---- the run ----
    def run_key(self, prepared: Sequence[Prepared]) -> str:
        spec = self.spec if self.batch_size is None else dataclasses.replace(self.spec, batch_size=self.batch_size)
        facts = {"spec": spec.to_json(),
                 "models": [{"label": p.label, "weights": p.model.info.weights_sha256, "dataset": p.dataset_name,
                             "indices": indices_sha256(p.indices), "eps": p.eps} for p in prepared]}
        facts["spec"].pop("device", None)
        facts["device"] = self.device.type
        if "frost" in self.spec.corruptions:   # a resume must not mix photographs and the procedural frost
            from attacks.corruptions import provenance
            facts["frost_source"] = provenance("frost")["frost_source"]
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

    def _stored_spec(self) -> RunSpec:
        return self.spec if self.batch_size is None else dataclasses.replace(self.spec, batch_size=self.batch_size)

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
        spec_json = self._stored_spec().to_json()
        if existing is not None:
            run_id, resumed, metadata = existing.run_id, True, existing.metadata
            self.log(f"resuming run {run_id}")
        else:
            metadata = environment(self.device, list(self.argv) if self.argv is not None else None)
            metadata.update(seed=self.spec.seed, tag=self.spec.tag, world_size=self.world.size,
                            models={p.label: {"weights_sha256": p.model.info.weights_sha256,
                                              "file_sha256": p.model.info.extra.get("file_sha256"),
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
        it = iter(loader(p.data, [batches[i] for i in mine])) if mine else iter(())
        n_done = len(batches) - len(pending)
        for r in range(rounds):
            payload: Any = None
            if r < len(mine):
                b = mine[r]
                try:
                    x, y = next(it)
                    with attack_progress.listening(_BatchProgress(self, run_id, p, b, len(batches), bar)):
                        res = self.evaluate_batch(p, batches[b], x, y)
                    payload = (b, res.outcomes, res.costs)
                except (UserError, AttackError) as e:
                    payload = ("error", "refused", str(e))
                except Exception as e:  # noqa: BLE001 - a model, data file or device failing mid-run
                    message = _failure(p.label, b, len(batches), batches[b], e)
                    if len(batches[b]) != len(batches[0]):
                        message += (f" (this batch has {len(batches[b])} examples, the others {len(batches[0])}: a "
                                    f"model that takes only fixed batch sizes needs a --batch-size that divides the "
                                    f"number of examples)")
                    payload = ("error", "failed", message)
            n_done = commit_round(w, payload, lambda b, outcomes, costs: (
                self.store.write_batch(run_id, p.label, b, outcomes, costs), bar is not None and bar.update(1)),
                bar, p.label, n_done)
        if bar is not None:
            bar.close()

    def evaluate_batch(self, p: Prepared, idx: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> BatchResult:
        """One batch through the cascade (and the corruptions): per-example outcomes and costs."""
        model = p.model.module
        x, y = to_device(x, y, self.device, self.spec.channels_last)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(x)
        if not torch.isfinite(logits).all():
            raise UserError(f"model {p.label} produced NaN or infinite logits on data set {p.dataset_name}")
        clean = (logits.argmax(1) == y).cpu().numpy()
        res = cascade(model, x, y, idx, self.attacks, p.eps, seed=self.spec.seed, norm=self.norm,
                      model_label=p.label, clean=clean, clean_seconds=time.perf_counter() - t0,
                      min_norm=self.min_norm)
        if not self.spec.corruptions:
            return res
        more = corruption_pass(model, x, y, idx, clean, self.spec.corruptions, self.spec.severities,
                               seed=self.spec.seed, preset=self.spec.corruption_preset, precomputed=p.corrupted,
                               channels_last=self.spec.channels_last, model_label=p.label)
        return BatchResult(res.outcomes + more.outcomes, res.costs + more.costs)

    def _finish(self, run_id: str, prepared: Sequence[Prepared]) -> tuple[list[ThreatResult], list[dict[str, Any]]]:
        results = []
        for p in prepared:
            for eps in p.eps:
                per_attack = []
                for label, attack in self.attacks:
                    params = attack_params(attack)
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
                    if p.corrupted is None:
                        # what else changes the numbers (frost: the photographs, by digest, or the
                        # procedural stand-in, by version): stored with the result
                        from attacks.corruptions import provenance
                        params.update(provenance(name))
                    results.append(self.store.recompute(
                        run_id, p.label, corruption_label(name), float(sev), dataset=p.dataset_name,
                        norm="corruption", params=params))
        # a worst case moved by adaptive rows marks the others unreliable (robustness/adaptive.py)
        results, unreliable = review(results, lambda m, a, e: self.store.threat_outcomes(run_id, m, a, e)[2],
                                     [a for a, _ in self.attacks])
        warnings = self._checks(prepared, results) + [f.to_json() for f in unreliable]
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
            if r.kind == CORRUPTION:
                continue
            p = info[r.model]
            c, (h, w) = p.data.info.channels, (p.data.info.image_size or (0, 0))
            rows.append({"model": r.model, "attack": r.attack, "eps": r.eps, "accuracy": r.accuracy, "n": r.n,
                         "norm": r.norm, "params": r.params, "n_classes": p.data.info.num_classes,
                         "input_dim": c * h * w or None, "kind": r.kind, "clean_accuracy": r.clean_accuracy,
                         "recorded": p.model.info.extra.get("recorded_accuracy")})
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
            if r.kind != COMBINED and b.get("sub_attacks"):
                reported.extend(details_checks(b, r.n, model=r.model, attack=r.attack, eps=r.eps))
        model_findings = suggestion([f for p in prepared for f in p.findings], self.argv, self.spec, self.adaptive)
        findings = model_findings + result_checks(rows) + reported
        return [f.to_json() for f in findings]


def export_json(outcome: RunOutcome, store: ResultStore, path: str | Path,
                extra: dict[str, Any] | None = None) -> None:
    """The run's metadata and every result with its per-example outcomes, accuracies as fractions."""
    Path(path).write_text(json.dumps(run_document(outcome, store, extra), indent=1, default=str))


def run_document(outcome: RunOutcome, store: ResultStore, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    results = [dataclasses.replace(r, per_example=store.recompute(r.run_id, r.model, r.attack, r.eps).per_example
                                   ).to_json() for r in outcome.results]
    return {"run": {"run_id": outcome.run_id, **outcome.metadata, "spec": outcome.spec}, "results": results,
            "warnings": list(outcome.warnings), **(extra or {})}
