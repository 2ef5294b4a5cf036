"""The compression report: a base model and its compressed variants (pruned, quantized, distilled) in one
table (size, latency, clean accuracy, each attack, worst case, corruption mean) and one plot (robust accuracy
against size, with the Pareto front: the variants no other variant beats on both).

What each model is comes from the metadata the run stored (`robust-bench compress` checkpoints record their
compression steps, with size, parameters, sparsity, bit width and CPU latency measured at save time, and the
base model's figures measured the same way); accuracies come from the store, the latest run of each model.
The base is the model the variants name as their base (or the one given).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .threats import COMBINED, CORRUPTION, threat_kind

REPORT_FORMATS = ("md", "csv", "html", "json")


@dataclass(frozen=True)
class CompressionRow:
    model: str
    run_id: str
    method: str                          # base, prune, quantize, distill (the last step applied)
    detail: str                          # "unstructured 90%, pgd fine-tune", "int8 static", "student small-cnn"
    size_bytes: int | None
    gzip_bytes: int | None
    parameters: int | None
    sparsity: float | None
    bits: int | None
    latency_ms: float | None
    compiled_ms: float | None
    n: int
    clean: float
    attacks: Mapping[str, float] = field(default_factory=dict)      # "pgd@2/255" -> accuracy
    worst: Mapping[str, float] = field(default_factory=dict)        # eps label -> worst-case accuracy
    corruption_mean: float | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["attacks"], d["worst"] = dict(self.attacks), dict(self.worst)
        return d


@dataclass(frozen=True)
class CompressionReport:
    base: str
    rows: tuple[CompressionRow, ...]
    attack_columns: tuple[str, ...]
    eps_columns: tuple[str, ...]

    def robust(self, row: CompressionRow) -> float | None:
        """The plot's robust accuracy: the worst case at the largest eps (else the clean accuracy)."""
        if self.eps_columns and self.eps_columns[-1] in row.worst:
            return row.worst[self.eps_columns[-1]]
        return None

    def pareto(self) -> tuple[str, ...]:
        """Models no other model beats on size (gzip bytes) and robust accuracy at once."""
        pts = [(r.model, r.gzip_bytes, self.robust(r)) for r in self.rows if r.gzip_bytes and self.robust(r) is not None]
        front = []
        for m, s, a in pts:
            if not any((s2 <= s and a2 >= a) and (s2 < s or a2 > a) for _, s2, a2 in pts):
                front.append(m)
        return tuple(front)

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "attack_columns": list(self.attack_columns), "eps_columns": list(self.eps_columns),
                "pareto": list(self.pareto()), "rows": [r.to_json() for r in self.rows]}


def eps_text(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and 1 <= round(k) < 255 else f"{eps:g}"


def _step_of(info: Mapping[str, Any]) -> Mapping[str, Any] | None:
    model = info.get("model") if isinstance(info.get("model"), Mapping) else info   # the run stores {"model": ...}
    steps = (model.get("extra") or {}).get("compression") or []
    return steps[-1] if steps and isinstance(steps[-1], Mapping) else None


def _detail(step: Mapping[str, Any] | None) -> tuple[str, str]:
    if step is None:
        return "base", ""
    method = str(step.get("method"))
    if method == "prune":
        text = f"{step.get('structure', 'unstructured')} {100 * float(step.get('sparsity_asked') or 0):g}%"
        ft = step.get("finetune")
        if ft:
            text += f", {ft.get('defense')} fine-tune {ft.get('epochs')} ep"
        return method, text
    if method == "quantize":
        return method, f"int{step.get('bits', 8)} {step.get('mode', 'static')}"
    if method == "distill":
        rec = step.get("recipe") or {}
        return method, f"student {step.get('student')} ({rec.get('defense', 'distill')})"
    return method, ""


def _latest_runs(store, models: Sequence[str] | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """model -> (run id, stored model info) of its latest finished run."""
    finished = {r.run_id for r in store.runs()}
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for row in store.model_infos():
        if row["run_id"] in finished and (models is None or row["model"] in models):
            out[row["model"]] = (row["run_id"], row["info"])       # later rows replace earlier ones
    return out


def _base_of(info: Mapping[str, Any]) -> str | None:
    step = _step_of(info)
    return str(step.get("base_model")) if step and step.get("base_model") else None


def build_report(store, *, base: str | None = None, models: Sequence[str] | None = None) -> CompressionReport:
    """The report over `models` (default: every model in the store) for `base` (default: the model most
    variants name as their base). ValueError when there is nothing to compare."""
    latest = _latest_runs(store, models)
    if not latest:
        raise ValueError("no stored runs for these models")
    variants = {m: v for m, v in latest.items() if _step_of(v[1]) is not None}
    if base is None:
        named = [_base_of(v[1]) for v in variants.values()]
        candidates = [m for m in latest if m not in variants and any(_matches(m, b) for b in named if b)]
        if len(candidates) != 1:
            raise ValueError("name the base model (base=...): " + (
                f"candidates {', '.join(sorted(candidates))}" if candidates else "no stored run of an uncompressed "
                "model that the variants name as their base"))
        base = candidates[0]
    if base not in latest:
        raise ValueError(f"no stored run of base model {base!r}")
    # the base as each compression measured it; a field one measurement lacks (compiled latency) from another
    base_stats: dict[str, Any] = {}
    for v in variants.values():
        for k, x in (_step_of(v[1]).get("base") or {}).items():
            if base_stats.get(k) is None:
                base_stats[k] = x
    rows, attack_cols, eps_cols = [], [], []
    for model in [base] + sorted(m for m in variants if m != base):
        run_id, info = latest[model]
        step = _step_of(info)
        stats = dict(step.get("stats") or {}) if step else base_stats
        method, detail = _detail(step)
        results = store.results(run_id, model=model)
        if not results:
            continue
        clean = results[0].clean_accuracy
        n = results[0].n
        attacks, worst, corr = {}, {}, []
        for r in results:
            kind = threat_kind(r.attack)
            if kind == CORRUPTION:
                corr.append(r.accuracy)
                continue
            label = eps_text(r.eps)
            if kind == COMBINED:
                worst[label] = r.accuracy
                if label not in eps_cols:
                    eps_cols.append(label)
                continue
            col = f"{_short(r.attack)}@{label}"
            attacks[col] = r.accuracy
            if col not in attack_cols:
                attack_cols.append(col)
        for label in {c.rsplit("@", 1)[1] for c in attacks} - set(worst):
            only = [v for c, v in attacks.items() if c.rsplit("@", 1)[1] == label]
            if len(only) == 1:            # one attack at this eps: it is the worst case
                worst[label] = only[0]
                if label not in eps_cols:
                    eps_cols.append(label)
        rows.append(CompressionRow(model=model, run_id=run_id, method=method, detail=detail,
                                   size_bytes=stats.get("size_bytes"), gzip_bytes=stats.get("gzip_bytes"),
                                   parameters=stats.get("parameters"), sparsity=stats.get("sparsity"),
                                   bits=stats.get("bits"), latency_ms=stats.get("latency_ms"),
                                   compiled_ms=stats.get("compiled_ms"), n=n, clean=clean, attacks=attacks,
                                   worst=worst, corruption_mean=sum(corr) / len(corr) if corr else None))
    eps_cols.sort(key=_eps_value)
    return CompressionReport(base, tuple(rows), tuple(attack_cols), tuple(eps_cols))


def _eps_value(label: str) -> float:
    if "/" in label:
        a, b = label.split("/")
        return float(a) / float(b)
    return float(label)


def _short(attack: str) -> str:
    """transfer:float:/long/path/model.pt:pgd -> transfer:float:pgd (the path is in the run)."""
    if attack.startswith("transfer:float:"):
        return "transfer:float:" + attack.rsplit(":", 1)[-1]
    return attack


def _matches(model: str, base_spec: str) -> bool:
    """Is the stored model name the one `run` gives the spec a variant names as its base?"""
    head, sep, tail = base_spec.rpartition(":")
    if sep and head.endswith(".py"):
        return model == f"{Path(head).stem}:{tail}"
    if "/" in base_spec or Path(base_spec).suffix:
        return model == Path(base_spec).name
    return model == base_spec


# ---- rendering ----

def _columns(report: CompressionReport) -> list[tuple[str, str]]:
    cols = [("model", "Model"), ("what", "Compression"), ("size", "Size (KiB)"), ("gzip", "gzip (KiB)"),
            ("params", "Parameters"), ("sparsity", "Sparsity"), ("bits", "Bits"), ("latency", "Latency (ms)"),
            ("compiled", "Compiled (ms)"), ("clean", "Clean")]
    cols += [(f"a:{c}", c) for c in report.attack_columns]
    cols += [(f"w:{e}", f"Worst case @{e}") for e in report.eps_columns]
    cols.append(("corr", "Corruption mean"))
    return cols


def _cell(report: CompressionReport, r: CompressionRow, key: str) -> str:
    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.1f}"
    if key == "model":
        return r.model + (" *" if r.model in report.pareto() else "")
    if key == "what":
        return r.detail or r.method
    if key == "size":
        return "" if r.size_bytes is None else f"{r.size_bytes / 1024:.0f}"
    if key == "gzip":
        return "" if r.gzip_bytes is None else f"{r.gzip_bytes / 1024:.0f}"
    if key == "params":
        return "" if r.parameters is None else f"{r.parameters:,}"
    if key == "sparsity":
        return pct(r.sparsity)
    if key == "bits":
        return "" if r.bits is None else str(r.bits)
    if key == "latency":
        return "" if r.latency_ms is None else f"{r.latency_ms:.2f}"
    if key == "compiled":
        return "" if r.compiled_ms is None else f"{r.compiled_ms:.2f}"
    if key == "clean":
        return pct(r.clean)
    if key == "corr":
        return pct(r.corruption_mean)
    if key.startswith("a:"):
        return pct(r.attacks.get(key[2:]))
    return pct(r.worst.get(key[2:]))


def render_report(report: CompressionReport, fmt: str = "md") -> str:
    """The table in Markdown, CSV, HTML or JSON (accuracies in %, one decimal; JSON keeps fractions)."""
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(REPORT_FORMATS)}")
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2, sort_keys=True)
    cols = _columns(report)
    cells = [[_cell(report, r, k) for k, _ in cols] for r in report.rows]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([t for _, t in cols])
        for row in cells:
            w.writerow([_csv_safe(c) for c in row])
        return buf.getvalue()
    if fmt == "html":
        head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
        return (f"<table class=\"compression\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"
                f"<p>Base: {html.escape(report.base)}. * on the Pareto front (size, worst case at the largest eps). "
                f"n = {report.rows[0].n if report.rows else 0} examples.</p>\n")
    lines = ["| " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    lines.append("")
    lines.append(f"Base: {report.base}. * on the Pareto front (gzip size, worst case at "
                 f"{report.eps_columns[-1] if report.eps_columns else '-'}). Accuracies in % of "
                 f"{report.rows[0].n if report.rows else 0} examples.")
    return "\n".join(lines) + "\n"


def _csv_safe(cell: str) -> str:
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r", "\n") and not _is_number(cell) else cell


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text.replace(",", "")))
    except ValueError:
        return False


def plot_report(report: CompressionReport, path: str | Path) -> Path:
    """Robust accuracy (worst case at the largest eps) against gzip size, log scale, Pareto front joined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = [(r, r.gzip_bytes, report.robust(r)) for r in report.rows if r.gzip_bytes and report.robust(r) is not None]
    if not pts:
        raise ValueError("no model has both a size and a worst-case accuracy to plot")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = {"base": "*", "prune": "o", "quantize": "s", "distill": "^"}
    colors = {"base": "C0", "prune": "C1", "quantize": "C2", "distill": "C3"}
    for r, s, a in pts:
        ax.scatter(s / 1024, 100 * a, marker=markers.get(r.method, "o"), s=90 if r.method == "base" else 45,
                   zorder=3, label=r.method, color=colors.get(r.method, "C4"))
        ax.annotate(r.model, (s / 1024, 100 * a), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((s, a) for r, s, a in pts if r.model in report.pareto())
    if len(front) > 1:
        ax.plot([s / 1024 for s, _ in front], [100 * a for _, a in front], "--", color="grey", zorder=2,
                label="Pareto front")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("size to ship (gzip KiB, log scale)")
    ax.set_ylabel(f"worst-case accuracy at {report.eps_columns[-1]} (%)")
    ax.set_title(f"Compression vs robustness (base {report.base})", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path




def site_report(store) -> CompressionReport | None:
    """The report a site shows: when the store holds compressed variants and their base (else None)."""
    try:
        return build_report(store)
    except ValueError:
        return None


__all__ = ["CompressionReport", "CompressionRow", "REPORT_FORMATS", "build_report", "plot_report", "render_report",
           "site_report"]
