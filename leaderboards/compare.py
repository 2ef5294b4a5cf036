"""Compare two runs on the same examples: a regression gate for model updates.

For every threat (and clean accuracy) both runs measured, on per-example outcomes:
  - the change in accuracy, candidate minus baseline, in percentage points;
  - a 95% interval for that paired difference (Tango's score interval for paired proportions, Tango 1998,
    Stat. Med. 17:891; it stays inside [-1, 1] and behaves at 0 and n);
  - the exact McNemar test: under "no difference" the discordant examples (right in one run, wrong in
    the other) split like fair coin flips, so the two-sided p-value is a binomial tail.

The gate (`max_drop`) fails a threat only when the candidate is worse by more than `max_drop` points AND
the McNemar test rejects "no difference" at `alpha`: a large drop on few examples that could be noise,
and a significant but tolerated small drop, both pass.

Runs are comparable only when they share the data set, the example indices, and the attacks with the
same settings (norm, eps, parameters); anything else raises `NotComparable`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from xml.sax.saxutils import escape as xml_escape, quoteattr

import numpy as np

from .store import ResultStore, StoreError
from .threats import Threat, same_eps, threat_labels

CLEAN = Threat("clean", "", 0.0)


class NotComparable(ValueError):
    """The two runs cannot be compared (other examples, data set or attack settings)."""


class RunNotFound(ValueError):
    pass


# ---- statistics ----

def mcnemar_exact(losses: int, gains: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: P(X <= min) * 2 under Bin(m, 1/2)."""
    if losses < 0 or gains < 0:
        raise ValueError("counts must be >= 0")
    m = losses + gains
    if m == 0:
        return 1.0
    k = min(losses, gains)
    if 2 * k == m:
        return 1.0
    tail, term = 0, 1  # C(m, 0)
    for i in range(k + 1):
        tail += term
        term = term * (m - i) // (i + 1)
    return min(1.0, 2 * tail / (1 << m))


def _tango_z(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for H0: p1 - p2 = delta, with b = 1-only and c = 2-only discordant counts."""
    a_ = 2 * n
    b_ = -b - c + (2 * n - b + c) * delta
    c_ = -c * delta * (1 - delta)
    q21 = (math.sqrt(max(0.0, b_ * b_ - 4 * a_ * c_)) - b_) / (2 * a_)   # constrained MLE of P(2-only)
    var = n * (2 * q21 + delta * (1 - delta))
    num = b - c - n * delta
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def paired_difference_ci(both: int, base_only: int, cand_only: int, neither: int,
                         z: float = 1.959963984540054) -> tuple[float, float]:
    """95% interval for p_candidate - p_baseline from paired outcomes: Tango's score interval (Tango 1998,
    Stat. Med. 17:891), which stays inside [-1, 1] and does not collapse to a point when no example
    changed (unlike Wald or Newcombe's hybrid intervals)."""
    n = both + base_only + cand_only + neither
    if n == 0:
        return (-1.0, 1.0)
    b, c = cand_only, base_only
    est = (b - c) / n

    def solve(lo: float, hi: float, target: float) -> float:
        # Z decreases in delta: find Z(delta) = target on [lo, hi]
        for _ in range(80):
            mid = (lo + hi) / 2
            if _tango_z(b, c, n, mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2
    edge = 1 - 1e-12
    lower = -1.0 if _tango_z(b, c, n, -edge) <= z else solve(-edge, est, z)
    upper = 1.0 if _tango_z(b, c, n, edge) >= -z else solve(est, edge, -z)
    return (max(-1.0, min(lower, est)), min(1.0, max(upper, est)))


# ---- loading per-example outcomes ----

@dataclass(frozen=True)
class ThreatOutcomes:
    threat: Threat
    params: Mapping[str, Any]
    index: np.ndarray
    correct: np.ndarray


@dataclass(frozen=True)
class ModelOutcomes:
    model: str
    dataset: str
    index: np.ndarray
    clean: np.ndarray
    threats: Mapping[Threat, ThreatOutcomes]


@dataclass(frozen=True)
class RunOutcomes:
    ref: str                 # what the user passed
    run_id: str
    models: Mapping[str, ModelOutcomes]


def _is_file_ref(ref: str) -> bool:
    p = Path(ref)
    return p.suffix.lower() == ".json" or p.is_file()


def load_run(ref: str, db: str | Path | None = None) -> RunOutcomes:
    """A run from a JSON export (a path) or from the store (a run id or unique prefix)."""
    if _is_file_ref(ref):
        return _from_json(ref)
    if db is None:
        raise RunNotFound(f"{ref!r} is not a JSON file and no --db was given")
    if not Path(db).exists():
        raise RunNotFound(f"{ref!r} is not a JSON file, and there is no results database at {db}")
    from .store import OlderSchema
    try:
        store = ResultStore(db, create=False, read_only=True)   # comparing never writes
    except OlderSchema:
        store = ResultStore(db, create=False)                    # upgraded in place, as before
    with store:
        try:
            run = store.get_run(ref)
        except StoreError as e:
            raise RunNotFound(str(e)) from None
        if run.status != "complete":
            raise RunNotFound(f"run {run.run_id} is not complete")
        models: dict[str, ModelOutcomes] = {}
        results = store.results(run.run_id)
        for m in store.model_rows(run.run_id):
            mine = [r for r in results if r.model == m["model"]]
            index = clean = None
            threats: dict[Threat, ThreatOutcomes] = {}
            for r in mine:
                idx, cl, correct = store.threat_outcomes(run.run_id, m["model"], r.attack, r.eps)
                index, clean = idx, cl
                t = Threat(r.attack, r.norm, float(r.eps))
                threats[t] = ThreatOutcomes(t, r.params, idx, correct)
            if index is None:
                continue
            models[m["model"]] = ModelOutcomes(m["model"], m["dataset"], index, clean, threats)
    return RunOutcomes(ref, run.run_id, models)


def _from_json(path: str) -> RunOutcomes:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunNotFound(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunNotFound(f"cannot read {path} as a run export: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise RunNotFound(f"{path} is not a robust-bench run export (no `results` list)")
    run_id = str((doc.get("run") or {}).get("run_id") or Path(path).stem)
    by_model: dict[str, dict[str, Any]] = {}
    for r in doc["results"]:
        per = r.get("per_example")
        if not per:
            raise RunNotFound(f"{path}: result {r.get('model')}/{r.get('attack')} has no per-example outcomes")
        m = by_model.setdefault(r["model"], {"dataset": r.get("dataset", ""), "index": None, "clean": None,
                                             "threats": {}})
        idx = np.asarray(per["index"], dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        clean = np.asarray(per["clean_correct"], dtype=bool)[order]
        correct = np.asarray(per["correct"], dtype=bool)[order]
        m["index"], m["clean"] = idx, clean
        t = Threat(r["attack"], r.get("norm", ""), float(r["eps"]))
        m["threats"][t] = ThreatOutcomes(t, r.get("params") or {}, idx, correct)
    models = {k: ModelOutcomes(k, v["dataset"], v["index"], v["clean"], v["threats"]) for k, v in by_model.items()}
    return RunOutcomes(path, run_id, models)


# ---- the comparison ----

@dataclass(frozen=True)
class Row:
    baseline_model: str
    candidate_model: str
    threat: Threat
    label: str
    n: int
    baseline: float
    candidate: float
    ci95: tuple[float, float]     # of candidate - baseline
    gains: int                    # wrong in baseline, right in candidate
    losses: int                   # right in baseline, wrong in candidate
    p_value: float
    failed: bool = False

    @property
    def change(self) -> float:
        return self.candidate - self.baseline


@dataclass(frozen=True)
class Comparison:
    baseline: str
    candidate: str
    rows: tuple[Row, ...]
    n: int
    dataset: str
    max_drop: float | None = None     # percentage points
    alpha: float = 0.05
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.rows)


def _pair_models(base: RunOutcomes, cand: RunOutcomes, baseline_model: str | None,
                 candidate_model: str | None) -> list[tuple[ModelOutcomes, ModelOutcomes]]:
    def pick(run: RunOutcomes, name: str | None, side: str) -> list[str]:
        if name is None:
            return list(run.models)
        if name not in run.models:
            raise NotComparable(f"the {side} run {run.run_id} has no model {name!r} "
                                f"(it has {', '.join(sorted(run.models)) or 'none'})")
        return [name]
    bnames, cnames = pick(base, baseline_model, "baseline"), pick(cand, candidate_model, "candidate")
    if not bnames or not cnames:
        raise NotComparable("a run holds no results")
    if len(bnames) == 1 and len(cnames) == 1:
        return [(base.models[bnames[0]], cand.models[cnames[0]])]
    common = [m for m in bnames if m in cnames]
    if not common or set(bnames) != set(cnames):
        raise NotComparable(f"the runs hold different models (baseline: {', '.join(sorted(bnames))}; candidate: "
                            f"{', '.join(sorted(cnames))}): pass --baseline-model and --candidate-model")
    return [(base.models[m], cand.models[m]) for m in common]


def _same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, float) or isinstance(y, float):
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and same_eps(float(x), float(y)):
                continue
        elif x == y:
            continue
        diffs.append(f"{k}={x!r} vs {y!r}")
    return diffs


def _check(b: ModelOutcomes, c: ModelOutcomes) -> None:
    who = b.model if b.model == c.model else f"{b.model} vs {c.model}"
    if b.dataset != c.dataset:
        raise NotComparable(f"{who}: data set {b.dataset!r} vs {c.dataset!r}")
    if b.index.shape != c.index.shape or not np.array_equal(b.index, c.index):
        only_b = len(np.setdiff1d(b.index, c.index))
        only_c = len(np.setdiff1d(c.index, b.index))
        raise NotComparable(f"{who}: other examples ({len(b.index)} vs {len(c.index)} examples; {only_b} only in "
                            f"the baseline, {only_c} only in the candidate)")
    tb, tc = set(b.threats), set(c.threats)
    if tb != tc:
        fmt = lambda ts: ", ".join(t.label(True) for t in sorted(ts)) or "none"  # noqa: E731
        raise NotComparable(f"{who}: other threats (only in the baseline: {fmt(tb - tc)}; only in the candidate: "
                            f"{fmt(tc - tb)})")
    for t in sorted(tb):
        diffs = _same_params(b.threats[t].params, c.threats[t].params)
        if diffs:
            raise NotComparable(f"{who}: attack {t.attack} ran with other settings ({'; '.join(diffs)})")


def compare(base: RunOutcomes, cand: RunOutcomes, *, baseline_model: str | None = None,
            candidate_model: str | None = None, max_drop: float | None = None, alpha: float = 0.05) -> Comparison:
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        raise ValueError("max_drop must be a finite number >= 0 (NaN or infinity would turn the gate off)")
    pairs = _pair_models(base, cand, baseline_model, candidate_model)
    for b, c in pairs:
        _check(b, c)
    rows: list[Row] = []
    for b, c in pairs:
        threats = sorted(b.threats, key=lambda t: (t.corruption, t.norm, t.attack, t.eps))
        labels = threat_labels(threats)
        vectors = [(CLEAN, "clean", b.clean, c.clean)] + \
            [(t, labels[t], b.threats[t].correct, c.threats[t].correct) for t in threats]
        for t, label, vb, vc in vectors:
            both = int(np.sum(vb & vc))
            base_only = int(np.sum(vb & ~vc))
            cand_only = int(np.sum(~vb & vc))
            neither = int(vb.size - both - base_only - cand_only)
            n = int(vb.size)
            p = mcnemar_exact(base_only, cand_only)
            pb, pc = (both + base_only) / n if n else 0.0, (both + cand_only) / n if n else 0.0
            failed = (max_drop is not None and 100 * (pb - pc) > max_drop and p < alpha)
            rows.append(Row(b.model, c.model, t, label, n, pb, pc,
                            paired_difference_ci(both, base_only, cand_only, neither), cand_only, base_only, p,
                            failed))
    b0 = pairs[0][0]
    return Comparison(base.run_id, cand.run_id, tuple(rows), int(b0.index.size), b0.dataset, max_drop, alpha)


# ---- reports ----

def _pp(v: float) -> str:
    return f"{100 * v:+.1f}"


def _p(v: float) -> str:
    return "1" if v >= 1 else (f"{v:.3g}" if v >= 1e-4 else f"{v:.1e}")


def _md(text: str) -> str:
    from .tables import md_escape
    return md_escape(text)


def verdict(row: Row, cmp: Comparison) -> str:
    if row.failed:
        return "FAIL"
    if cmp.max_drop is None:
        return "worse" if row.change < 0 and row.p_value < cmp.alpha else \
            ("better" if row.change > 0 and row.p_value < cmp.alpha else "no significant change")
    if -100 * row.change > cmp.max_drop:
        return "pass (drop not significant)"
    if row.change < 0 and row.p_value < cmp.alpha:
        return "pass (significant drop within tolerance)"
    return "pass"


def to_markdown(cmp: Comparison) -> str:
    multi = len({(r.baseline_model, r.candidate_model) for r in cmp.rows}) > 1 or \
        any(r.baseline_model != r.candidate_model for r in cmp.rows)
    gate = (f"fails a threat that drops by more than {cmp.max_drop:g} points with McNemar p < {cmp.alpha:g}"
            if cmp.max_drop is not None else "off (report only; pass --max-drop to gate)")
    status = "❌ regression" if cmp.failed else "✅ no regression" if cmp.max_drop is not None else "ℹ️ report"
    lines = [f"### robust-bench compare: {status}", "",
             f"Baseline `{_code(cmp.baseline)}` vs candidate `{_code(cmp.candidate)}` on the same "
             f"{cmp.n} examples of {_md(cmp.dataset)}. Gate: {gate}.", ""]
    head = (["Baseline model", "Candidate model"] if multi else ["Model"]) + \
        ["Threat", "Baseline %", "Candidate %", "Change (pp)", "95% CI (pp)", "Gains / losses", "McNemar p", "Result"]
    align = [":---"] * (len(head) - 7) + ["---:"] * 6 + [":---"]
    lines += ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for r in cmp.rows:
        models = [_md(r.baseline_model), _md(r.candidate_model)] if multi else [_md(r.candidate_model)]
        res = verdict(r, cmp)
        lines.append("| " + " | ".join(models + [
            _md(r.label), f"{100 * r.baseline:.1f}", f"{100 * r.candidate:.1f}", _pp(r.change),
            f"[{_pp(r.ci95[0])}, {_pp(r.ci95[1])}]", f"{r.gains} / {r.losses}", _p(r.p_value),
            f"**{res}**" if r.failed else res]) + " |")
    lines += ["", "Change = candidate − baseline. Gains: examples only the candidate gets right; losses: only the "
              "baseline. p: exact two-sided McNemar test on those discordant examples."]
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    return str(text).replace("`", "'").replace("\n", " ")


def to_junit(cmp: Comparison) -> str:
    """JUnit XML: one testcase per (model, threat); a failed gate is a <failure>."""
    cases = []
    pairs = {(r.baseline_model, r.candidate_model) for r in cmp.rows}
    for r in cmp.rows:
        name = r.label if len(pairs) == 1 else f"{r.baseline_model} -> {r.candidate_model}: {r.label}"
        summary = (f"{100 * r.baseline:.1f}% -> {100 * r.candidate:.1f}% ({_pp(r.change)} pp, 95% CI "
                   f"[{_pp(r.ci95[0])}, {_pp(r.ci95[1])}], McNemar p={_p(r.p_value)}, n={r.n})")
        body = f"<system-out>{xml_escape(summary)}</system-out>"
        if r.failed:
            msg = f"accuracy dropped by {-100 * r.change:.1f} points (> {cmp.max_drop:g}, p < {cmp.alpha:g})"
            body = f"<failure message={quoteattr(msg)} type=\"regression\">{xml_escape(summary)}</failure>" + body
        cases.append(f"  <testcase classname={quoteattr('robust-bench.compare.' + r.candidate_model)} "
                     f"name={quoteattr(name)} time=\"0\">{body}</testcase>")
    failures = sum(r.failed for r in cmp.rows)
    suite = quoteattr(f"robust-bench compare {cmp.baseline} -> {cmp.candidate}")
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            f"<testsuites tests=\"{len(cmp.rows)}\" failures=\"{failures}\">\n"
            f" <testsuite name={suite} tests=\"{len(cmp.rows)}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">\n"
            + "\n".join(cases) + "\n </testsuite>\n</testsuites>\n")


def compare_refs(baseline: str, candidate: str, *, db: str | Path | None = None,
                 **kwargs: Any) -> Comparison:
    return compare(load_run(baseline, db), load_run(candidate, db), **kwargs)


__all__: Sequence[str] = ("CLEAN", "Comparison", "NotComparable", "Row", "RunNotFound", "compare", "compare_refs",
                          "load_run", "mcnemar_exact", "paired_difference_ci", "to_junit", "to_markdown")
