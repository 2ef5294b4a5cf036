"""What a run looks like in text: the robust-accuracy table (with the split of composite attacks), the
corruption table with mean accuracy, CE and mCE, and the warnings. The CLI prints exactly these; the
Python API's `Evaluation.table()` returns them. No torch: this module reads result records only."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from leaderboards.threats import CORRUPTION

from .errors import UserError

if TYPE_CHECKING:
    from leaderboards import ResultStore, ThreatResult
    from leaderboards.corruption_metrics import CorruptionSummary

__all__ = ["corruption_summaries", "format_corruptions", "format_report", "format_split", "format_table",
           "format_warnings"]


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}"


def format_table(results: Sequence["ThreatResult"]) -> str:
    """Rows per (model, attack), a column per eps: robust accuracy % and its 95% Wilson interval."""
    if not results:
        return "(no results)"
    by_row: dict[tuple[str, str], dict[float, ThreatResult]] = defaultdict(dict)
    meta: dict[str, ThreatResult] = {}
    for r in results:
        by_row[(r.model, r.attack)][r.eps] = r
        meta.setdefault(r.model, r)
    eps_all = sorted({r.eps for r in results})
    norm = results[0].norm

    from leaderboards.threats import format_eps

    def eps_label(e: float) -> str:
        return format_eps(e, norm)

    header = ["model", "data", "n", "clean %", "attack"] + [f"eps={eps_label(e)}" for e in eps_all] + \
        ["passes/ex fwd+bwd"]
    rows = []
    for (model, attack), cells in by_row.items():
        m = meta[model]
        clean_k = round(m.clean_accuracy * m.n)
        from leaderboards import wilson_interval
        lo, hi = wilson_interval(clean_k, m.n)
        row = [model, m.dataset, str(m.n), f"{_pct(m.clean_accuracy)} [{_pct(lo).strip()}-{_pct(hi).strip()}]",
               attack]
        for e in eps_all:
            r = cells.get(e)
            # "*": unreliable, an adaptive attack of the run broke beyond noise more (robustness/adaptive.py)
            mark = "*" if r is not None and (r.params or {}).get("unreliable") else ""
            row.append("" if r is None else
                       f"{_pct(r.accuracy)} [{_pct(r.ci95[0]).strip()}-{_pct(r.ci95[1]).strip()}]{mark}")
        n = max(m.n, 1)
        fwd, bwd = sum(c.forward for c in cells.values()) / n, sum(c.backward for c in cells.values()) / n
        row.append(f"{fwd:.1f}+{bwd:.1f}")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [f"robust accuracy % [95% Wilson interval], {norm}"] + [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    if any((r.params or {}).get("unreliable") for r in results):
        out.append("* unreliable: the run's adaptive attacks (eot:, bpda:, transfer:) broke beyond noise more "
                   "(adaptive_attack_stronger)")
    out += format_split(results, eps_label)
    return "\n".join(out)


def format_split(results: Sequence["ThreatResult"], eps_label) -> list[str]:
    """Lines saying which part of a composite attack (AutoAttack's sub-attacks; the attacks of the worst
    case) broke how many examples, cumulative up to each eps."""
    by_row: dict[tuple[str, str], list] = defaultdict(list)
    for r in results:
        if r.breakdown and r.breakdown.get("broken_by") is not None:
            by_row[(r.model, r.attack)].append(r)
    lines = []
    for (model, attack), rs in by_row.items():
        order = [s["name"] for s in rs[0].breakdown.get("sub_attacks") or []]
        cells = []
        for r in sorted(rs, key=lambda r: r.eps):
            counts = dict(r.breakdown["broken_by"])
            names = order + sorted(k for k in counts if k not in order)
            cells.append(f"eps={eps_label(r.eps)}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in names))
        if cells:
            lines.append(f"  {model}/{attack} split (examples broken by each part, up to each eps): "
                         + "; ".join(cells))
    return ["", "which part broke each example:"] + lines if lines else []


def _by_corruption(rows: Sequence["ThreatResult"]) -> dict[str, dict[int, float]]:
    acc: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        acc[r.attack.split(":", 1)[1]][int(r.eps)] = r.accuracy
    return acc


def corruption_summaries(rows: Sequence["ThreatResult"], baseline: str | None, store) -> dict:
    """Per model: mean corruption accuracy, and CE / mCE / relative mCE against the baseline."""
    from leaderboards.corruption_metrics import ALEXNET, baseline_from_accuracy, summarize_corruptions
    base = None
    if baseline and baseline.lower() == "alexnet":
        base = ALEXNET
    elif baseline:
        from leaderboards import StoreError
        try:
            run = store.get_run(baseline)
        except StoreError as e:
            raise UserError(str(e)) from None
        ref = [r for r in store.results(run.run_id) if r.kind == CORRUPTION]
        if not ref:
            raise UserError(f"baseline run {baseline} has no corruption results")
        base = baseline_from_accuracy(f"{ref[0].model} (run {run.run_id})", _by_corruption(ref), ref[0].clean_accuracy)
    out = {}
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        b = base
        if b is None and max(_image_side(store, r) for r in mine[:1]) >= 128:
            b = ALEXNET
        out[model] = summarize_corruptions(_by_corruption(mine), mine[0].clean_accuracy, b)
    return out


def _image_side(store, r: "ThreatResult") -> int:
    for row in store.model_rows(r.run_id):
        if row["model"] == r.model:
            size = (row["info"].get("dataset") or {}).get("image_size") or [0]
            return max(size)
    return 0


def format_corruptions(rows: Sequence["ThreatResult"], summaries: dict) -> str:
    """A block per model: a row per corruption, a column per severity, then the summary line."""
    sevs = sorted({int(r.eps) for r in rows})
    out = ["accuracy % under common corruptions"]
    for model, summ in summaries.items():
        acc = _by_corruption([r for r in rows if r.model == model])
        header = ["model", "corruption"] + [f"s{s}" for s in sevs] + ["mean"] + (["CE"] if summ.ce else [])
        body = []
        for c, by_s in acc.items():
            cells = [f"{100 * by_s[s]:.1f}" if s in by_s else "" for s in sevs]
            mean = sum(by_s.values()) / len(by_s)
            body.append([model, c] + cells + [f"{100 * mean:.1f}"] +
                        ([f"{100 * summ.ce[c]:.1f}" if c in summ.ce else "-"] if summ.ce else []))
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
        line = lambda cells: "  ".join(v.ljust(w) for v, w in zip(cells, widths)).rstrip()  # noqa: E731
        out += [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]
        text = (f"{model}: clean {100 * summ.clean_accuracy:.1f}%, mean corruption accuracy "
                f"{100 * summ.mean_accuracy:.1f}% (corruption error {100 * (1 - summ.mean_accuracy):.1f}%)")
        if summ.mce is not None:
            text += f", mCE {100 * summ.mce:.1f}%"
        if summ.relative_mce is not None:
            text += f", relative mCE {100 * summ.relative_mce:.1f}%"
        if summ.baseline:
            text += f" vs {summ.baseline}"
        out += [text, ""]
    return "\n".join(out).rstrip()


def format_warnings(warnings: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for w in warnings:
        where = ", ".join(f"{k}={w[k]:g}" if k == "eps" else f"{k}={w[k]}"
                          for k in ("model", "attack", "eps") if w.get(k) is not None)
        lines.append(f"WARNING [{w['code']}] {where}: {w['message']} (see docs/CHECKS.md)")
    return lines


def format_report(results: Sequence["ThreatResult"], warnings: Sequence[Mapping[str, Any]],
                  summaries: Mapping[str, "CorruptionSummary"] | None = None) -> str:
    """The whole printout of a run: attack table, corruption table, warnings."""
    attack_rows = [r for r in results if r.kind != CORRUPTION]
    corruption_rows = [r for r in results if r.kind == CORRUPTION]
    parts = []
    if attack_rows:
        parts.append(format_table(attack_rows))
    if corruption_rows:
        parts.append(format_corruptions(corruption_rows, summaries or {}))
    parts.extend(format_warnings(warnings))
    return "\n".join(parts)


def union_over_norms(series: Mapping[str, Sequence[tuple[float, Any, Any]]]) -> list[tuple[tuple[tuple[str, float], ...],
                                                                                             int, int]]:
    """Robust accuracy against the union of several threat models (Maini, Wong & Kolter 2020: an example
    counts only if it survived every norm's attacks). `series`: norm -> [(eps, index, correct)] in eps
    order, the same examples for every norm; the i-th eps of each norm are paired. Returns, per pair,
    ((norm, eps), ...), robust count, n. Empty when the norms have different numbers of eps."""
    import numpy as np
    lists = list(series.values())
    if not lists or len({len(v) for v in lists}) != 1:
        return []
    out = []
    for i in range(len(lists[0])):
        idx0 = np.asarray(lists[0][i][1])
        ok = np.ones(len(idx0), dtype=bool)
        for v in lists:
            idx, correct = np.asarray(v[i][1]), np.asarray(v[i][2], dtype=bool)
            if not np.array_equal(idx, idx0):
                return []
            ok &= correct
        out.append((tuple((norm, float(v[i][0])) for norm, v in series.items()), int(ok.sum()), int(len(idx0))))
    return out


def format_union(rows: Mapping[str, list[tuple[tuple[tuple[str, float], ...], int, int]]]) -> str:
    """Per model, the union-of-norms rows with 95% Wilson intervals."""
    from leaderboards import wilson_interval
    from leaderboards.threats import format_eps
    lines = ["", "robust accuracy % against the union of the norms (survived every norm's attacks):"]
    for model, items in rows.items():
        for pairs, k, n in items:
            lo, hi = wilson_interval(k, n)
            what = " + ".join(f"{norm} {format_eps(e, norm)}" for norm, e in pairs)
            lines.append(f"  {model}  {what}: {_pct(k / n if n else 0).strip()} [{_pct(lo).strip()}-{_pct(hi).strip()}]")
    return "\n".join(lines) if any(rows.values()) else ""
