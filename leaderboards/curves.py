"""Plots of stored results (matplotlib, Agg backend: no display needed).

  eps          accuracy against eps, one panel per (data set, attack), a line per model with its 95%
               interval band; eps 0 is the clean accuracy. `overlay`: one panel per data set and norm with
               every attack in it (colour: model; line style and marker: attack).
  severity     accuracy against corruption severity, one panel per model, a line per corruption plus
               the mean over corruptions; severity 0 is the clean accuracy.
  corruptions  a corruption-by-severity heatmap of accuracy, one panel per model.
  radius       certified accuracy against L2 radius (randomized smoothing, `robust-bench certify`), one
               panel per data set, a step curve per smoothed model from its per-example certified radii,
               with the stored radii marked and their 95% Wilson intervals.

Corruption results follow the store's convention: attacks named `corruption:NAME`, eps = severity.
The results plotted are those a leaderboard would show (newest complete run per model and threat).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .board import Filters, Selection, board_from_selection, select
from .protocols import Protocol
from .records import ThreatResult
from .stats import wilson_interval
from .store import ResultStore
from .threats import corruption_name, format_eps

KINDS = ("eps", "severity", "corruptions", "radius")
CERTIFIED = "smoothing-certified"   # robustness/certify.py names its rows so
DPI = 100
MAX_MODELS = 10


class NothingToPlot(ValueError):
    """The store holds no results of the kind asked for (after filters)."""


@dataclass(frozen=True)
class PlotResult:
    path: Path
    kind: str
    panels: int
    models: tuple[str, ...]
    note: str = ""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or robust-bench[dev])") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _ranked_models(sel: Selection, protocol: Protocol | None) -> list[tuple[str, str]]:
    """(model, data set) in leaderboard order, best worst case first."""
    return [(r.model, r.dataset) for r in board_from_selection(sel, protocol).rows]


def _grid(k: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, max(1, k))
    return math.ceil(k / cols), cols


def _figure(plt, k: int, size: tuple[int, int] | None, panel: tuple[float, float], extra_w: float = 0.0,
            max_cols: int = 3):
    rows, cols = _grid(k, max_cols)
    if size is None:
        w, h = cols * panel[0] + extra_w, rows * panel[1] + 0.6
    else:
        w, h = size[0] / DPI, size[1] / DPI
    fig, axes = plt.subplots(rows, cols, figsize=(w, h), dpi=DPI, squeeze=False, layout="constrained")
    flat = [a for row in axes for a in row]
    for a in flat[k:]:
        a.set_visible(False)
    return fig, flat[:k]


def _save(fig, plt, out: Path) -> None:
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        plt.close(fig)
        raise ValueError(f"plots are written as .png or .svg, not {out.name!r}")
    if not out.parent.is_dir():   # a mistyped path is an error, not a new folder tree
        plt.close(fig)
        raise FileNotFoundError(f"folder {out.parent} does not exist")
    # fixed metadata: the same results give the same file (no creation date, no software stamp)
    meta = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    fig.savefig(out, dpi=DPI, format=fmt, metadata=meta)
    plt.close(fig)


def _colors(plt, names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _model_label(model: str, dataset: str, multi_ds: bool) -> str:
    return f"{model} ({dataset})" if multi_ds else model


def plot_eps(sel: Selection, ranked: list[tuple[str, str]], out: Path, *, size: tuple[int, int] | None = None,
             max_models: int = MAX_MODELS, overlay: bool = False) -> PlotResult:
    """A panel per (data set, norm, attack); `overlay`: a panel per (data set, norm) with every attack in it
    (colour: model, line style and marker: attack), the layout of a paper's figure."""
    series: dict[tuple[str, str, str], dict[tuple[str, str], list[ThreatResult]]] = {}
    for (model, dataset, threat), r in sel.chosen.items():
        if threat.corruption:
            continue
        series.setdefault((dataset, threat.norm, threat.attack), {}).setdefault((model, dataset), []).append(r)
    if not series:
        raise NothingToPlot("no attack results to plot against eps (corruption results: --kind severity)")
    shown = [m for m in ranked if any(m in s for s in series.values())]
    note = ""
    if len(shown) > max_models:
        note = f"the {max_models} best of {len(shown)} models by worst case"
        shown = shown[:max_models]
    multi_ds = len({d for _, d in shown}) > 1
    plt = _pyplot()
    keys = sorted(k for k, s in series.items() if any(m in s for m in shown))
    panels = sorted({k[:2] for k in keys}) if overlay else keys
    attacks = sorted({k[2] for k in keys}, key=lambda a: (a == "worst-case", a))
    fig, axes = _figure(plt, len(panels), size, (5.2 if overlay else 4.6, 3.8 if overlay else 3.6),
                        extra_w=2.6 if overlay else 2.2)
    colors = _colors(plt, [f"{m}\0{d}" for m, d in shown])
    styles = {a: (_STYLES[i % len(_STYLES)], _MARKERS[i % len(_MARKERS)]) for i, a in enumerate(attacks)}
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes, panels):
        dataset, norm = panel[0], panel[1]
        eps_ticks: set[float] = {0.0}
        for attack in ([a for a in attacks if (dataset, norm, a) in series] if overlay else [panel[2]]):
            key = (dataset, norm, attack)
            ls, marker = styles[attack] if overlay else ("-", "o")
            for model, ds in shown:
                rs = sorted(series[key].get((model, ds), []), key=lambda r: r.eps)
                if not rs:
                    continue
                newest = max(rs, key=lambda r: sel.order[r.run_id])
                k = round(newest.clean_accuracy * newest.n)
                clo, chi = wilson_interval(k, newest.n)
                xs = [0.0] + [r.eps for r in rs]
                ys = [100 * newest.clean_accuracy] + [100 * r.accuracy for r in rs]
                lo = [100 * clo] + [100 * r.ci95[0] for r in rs]
                hi = [100 * chi] + [100 * r.ci95[1] for r in rs]
                c = colors[f"{model}\0{ds}"]
                (line,) = ax.plot(xs, ys, marker=marker, ms=4, lw=1.6 if overlay else 1.8, ls=ls, color=c)
                ax.fill_between(xs, lo, hi, color=c, alpha=0.08 if overlay else 0.18, lw=0)
                if overlay:   # the model legend shows colours; the attack legend the line styles
                    from matplotlib.lines import Line2D
                    line = Line2D([], [], color=c, lw=2)
                handles.setdefault(_model_label(model, ds, multi_ds), line)
                eps_ticks.update(xs)
        unit = _eps_ticks(ax, sorted(eps_ticks), norm)
        ax.set_ylim(0, 100)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        what = "" if overlay else f"{panel[2]} "
        ax.set_title(f"{what}({_norm_name(norm)}), {dataset}" if what else f"{_norm_name(norm)}, {dataset}",
                     fontsize=11)
        ax.set_xlabel(f"eps ({_norm_name(norm)}{unit}); 0 = clean", fontsize=10)
        ax.set_ylabel("accuracy (%)", fontsize=10)
    # one panel (overlay): a short title, so the legends beside the panel do not run into it
    title = "Robust accuracy against perturbation size" + (
        "\n(bands: 95% Wilson intervals)" if overlay and len(panels) == 1 else " (bands: 95% Wilson intervals)")
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=12)
    legend = fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", title="model",
                        fontsize=9, title_fontsize=9)
    if overlay:
        from matplotlib.lines import Line2D
        fig.add_artist(legend)
        fig.legend([Line2D([], [], color="black", ls=styles[a][0], marker=styles[a][1], ms=4) for a in attacks],
                   attacks, loc="outside right lower", title="attack", fontsize=9, title_fontsize=9)
    _readable_ticks(fig, axes)
    _save(fig, plt, out)
    return PlotResult(out, "eps", len(panels), tuple(m for m, _ in shown), note)


_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _eps_ticks(ax, ticks: list[float], norm: str) -> str:
    """Ticks at the measured eps. L-inf budgets that are all whole 255ths are labelled by their numerator
    (the axis says the unit): `8` rather than `8/255`, which crowd near 0. Returns the unit's text."""
    ax.set_xticks(ticks)
    whole = norm == "linf" and len(ticks) > 1 and all(
        abs(t * 255 - round(t * 255)) < 1e-6 and 1 <= round(t * 255) <= 255 for t in ticks[1:])
    if whole:
        ax.set_xticklabels(["0"] + [str(round(t * 255)) for t in ticks[1:]], fontsize=9)
        return ", in 1/255"
    ax.set_xticklabels(["0"] + [format_eps(t, norm) for t in ticks[1:]], fontsize=9)
    return ""


def _readable_ticks(fig, axes, pad: float = 3.0) -> None:
    """Hide x tick labels that would overlap the one before them (the largest eps is kept)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        kept: list[int] = []
        for i, box in enumerate(boxes):
            if kept and box.x0 < boxes[kept[-1]].x1 + pad:
                if i == len(boxes) - 1 and len(kept) > 1:   # the largest eps wins over its neighbour
                    labels[kept.pop()].set_visible(False)
                else:
                    labels[i].set_visible(False)
                    continue
            kept.append(i)


def _norm_name(norm: str) -> str:
    return {"linf": "L-inf", "l2": "L2"}.get(norm, norm or "-")


def _corruption_data(sel: Selection, ranked: list[tuple[str, str]]):
    data: dict[tuple[str, str], dict[str, dict[int, ThreatResult]]] = {}
    for (model, dataset, threat), r in sel.chosen.items():
        if not threat.corruption:
            continue
        sev = int(round(threat.eps))
        data.setdefault((model, dataset), {}).setdefault(corruption_name(threat.attack), {})[sev] = r
    if not data:
        raise NothingToPlot("no corruption results (attacks named corruption:NAME, eps = severity) to plot")
    shown = [m for m in ranked if m in data]
    return data, shown


def plot_severity(sel: Selection, ranked: list[tuple[str, str]], out: Path, *,
                  size: tuple[int, int] | None = None, max_models: int = MAX_MODELS) -> PlotResult:
    data, shown = _corruption_data(sel, ranked)
    note = ""
    if len(shown) > max_models:
        note = f"the {max_models} best of {len(shown)} models by worst case"
        shown = shown[:max_models]
    multi_ds = len({d for _, d in shown}) > 1
    names = sorted({c for m in shown for c in data[m]})
    plt = _pyplot()
    fig, axes = _figure(plt, len(shown), size, (4.8, 3.8), extra_w=2.6, max_cols=2)
    cmap = plt.get_cmap("tab20")
    colors = {c: cmap(i % 20) for i, c in enumerate(names)}
    handles: dict[str, Any] = {}
    for ax, m in zip(axes, shown):
        per = data[m]
        clean = next(iter(next(iter(per.values())).values())).clean_accuracy
        sevs_all: set[int] = set()
        for c in names:
            pts = sorted(per.get(c, {}).items())
            if not pts:
                continue
            xs = [0] + [s for s, _ in pts]
            ys = [100 * clean] + [100 * r.accuracy for _, r in pts]
            (line,) = ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=colors[c])
            ax.fill_between(xs[1:], [100 * r.ci95[0] for _, r in pts], [100 * r.ci95[1] for _, r in pts],
                            color=colors[c], alpha=0.08, lw=0)
            handles.setdefault(c, line)
            sevs_all.update(s for s, _ in pts)
        sevs = sorted(sevs_all)
        mean = [100 * sum(per[c][s].accuracy for c in per if s in per[c]) / sum(1 for c in per if s in per[c])
                for s in sevs]
        (mline,) = ax.plot([0] + sevs, [100 * clean] + mean, color="black", lw=2.8, ls="--", marker="s", ms=4)
        handles.setdefault("mean over corruptions", mline)
        ax.set_xticks([0] + sevs)
        ax.set_xticklabels(["clean"] + [str(s) for s in sevs])
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(_model_label(*m, multi_ds), fontsize=11)
        ax.set_xlabel("corruption severity")
        ax.set_ylabel("accuracy (%)")
    fig.suptitle("Accuracy against corruption severity" + (f"\n{note}" if note else ""), fontsize=12)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", title="corruption",
               fontsize=8, title_fontsize=9)
    _save(fig, plt, out)
    return PlotResult(out, "severity", len(shown), tuple(m for m, _ in shown), note)


def plot_corruption_heatmap(sel: Selection, ranked: list[tuple[str, str]], out: Path, *,
                            size: tuple[int, int] | None = None, max_models: int = MAX_MODELS) -> PlotResult:
    data, shown = _corruption_data(sel, ranked)
    note = ""
    if len(shown) > max_models:
        note = f"the {max_models} best of {len(shown)} models by worst case"
        shown = shown[:max_models]
    multi_ds = len({d for _, d in shown}) > 1
    names = sorted({c for m in shown for c in data[m]})
    sevs = sorted({s for m in shown for c in data[m].values() for s in c})
    plt = _pyplot()
    rows = names + ["mean"]
    panel_h = max(2.6, 0.3 * len(rows) + 1.2)
    fig, axes = _figure(plt, len(shown), size, (0.6 * len(sevs) + 2.4, panel_h), extra_w=1.0,
                        max_cols=2 if len(shown) <= 4 else 3)
    image = None
    for ax, m in zip(axes, shown):
        per = data[m]
        grid = [[(100 * per[c][s].accuracy if s in per.get(c, {}) else float("nan")) for s in sevs] for c in names]
        cols = [[v for v in col if v == v] for col in zip(*grid)]
        grid.append([sum(col) / len(col) if col else float("nan") for col in cols])
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto", interpolation="nearest")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:  # not NaN
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 60 else "white")
        ax.set_xticks(range(len(sevs)))
        ax.set_xticklabels([str(s) for s in sevs])
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=8)
        ax.get_yticklabels()[-1].set_fontweight("bold")
        ax.axhline(len(names) - 0.5, color="white", lw=2)
        ax.set_xlabel("severity")
        ax.set_title(_model_label(*m, multi_ds), fontsize=11)
    if image is not None:
        fig.colorbar(image, ax=axes, label="accuracy (%)", shrink=0.9)
    fig.suptitle("Accuracy (%) per corruption and severity" + (f"\n{note}" if note else ""), fontsize=12)
    _save(fig, plt, out)
    return PlotResult(out, "corruptions", len(shown), tuple(m for m, _ in shown), note)


def radius_curves(store: ResultStore, filters: Filters = Filters(), sel: Selection | None = None,
                  ) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """Per (smoothed model, data set) of the leaderboard's choice (newest complete run): the radii where
    certified accuracy changes (0 and each certified radius) and the fraction certified correctly with a
    radius >= each, from the stored per-example certificates."""
    sel = sel if sel is not None else select(store, filters)
    runs: dict[tuple[str, str], str] = {}
    for (model, dataset, threat), r in sel.chosen.items():
        if threat.attack == CERTIFIED:
            old = runs.get((model, dataset))
            if old is None or sel.order[r.run_id] > sel.order[old]:
                runs[(model, dataset)] = r.run_id
    out = {}
    for (model, dataset), run_id in runs.items():
        certs = store.certificates(run_id, sel.row(model, dataset).label)   # the stored name, not the shown one
        if not certs:
            continue
        radii = sorted(c.radius for c in certs if c.prediction == c.label and c.radius is not None)
        xs = sorted({0.0, *radii})
        n = len(certs)
        ys = [sum(1 for r in radii if r >= x) / n for x in xs]
        out[(model, dataset)] = (xs, ys)
    return out


def plot_radius(store: ResultStore, sel: Selection, ranked: list[tuple[str, str]], out: Path, *,
                size: tuple[int, int] | None = None, max_models: int = MAX_MODELS) -> PlotResult:
    curves = radius_curves(store, sel=sel)
    if not curves:
        raise NothingToPlot("no certified results to plot (robust-bench certify stores them)")
    order = {m: i for i, m in enumerate(ranked)}
    shown = sorted(curves, key=lambda m: (order.get(m, len(order)), m))
    note = ""
    if len(shown) > max_models:
        note = f"the {max_models} best of {len(shown)} models by worst case"
        shown = shown[:max_models]
    datasets = sorted({d for _, d in shown})
    plt = _pyplot()
    fig, axes = _figure(plt, len(datasets), size, (5.6, 4.0))
    colors = _colors(plt, [f"{m}\0{d}" for m, d in shown])
    for ax, dataset in zip(axes, datasets):
        top = 0.0
        for model, ds in shown:
            if ds != dataset:
                continue
            xs, ys = curves[(model, ds)]
            c = colors[f"{model}\0{ds}"]
            # accuracy at r counts radii >= r: on (x_i-1, x_i] the curve is ys[i], 0 after the largest radius
            (line,) = ax.step(xs + [xs[-1] * 1.05 + 1e-3], [100 * y for y in ys] + [0.0], where="pre", lw=1.8,
                              color=c)
            marks = sorted((r for (m, d, t), r in sel.chosen.items() if m == model and d == ds
                            and t.attack == CERTIFIED), key=lambda r: r.eps)
            if marks:
                ax.errorbar([r.eps for r in marks], [100 * r.accuracy for r in marks],
                            yerr=[[max(0.0, 100 * (r.accuracy - r.ci95[0])) for r in marks],
                                  [max(0.0, 100 * (r.ci95[1] - r.accuracy)) for r in marks]],
                            fmt="o", ms=4, color=c, capsize=3, lw=1)
            line.set_label(model)
            top = max(top, xs[-1] * 1.05 + 1e-3, *(r.eps for r in marks))
        ax.set_xlim(0, top or 1.0)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(f"certified accuracy (L2), {dataset}", fontsize=11)
        ax.set_xlabel("L2 radius")
        ax.set_ylabel("certified accuracy (%)")
        ax.legend(loc="upper right", fontsize=8, title="smoothed model", title_fontsize=8)   # curves fall to the right
    fig.suptitle("Certified accuracy against L2 radius\n(randomized smoothing; points: stored radii, 95% Wilson)"
                 + (f"\n{note}" if note else ""), fontsize=11)
    _save(fig, plt, out)
    return PlotResult(out, "radius", len(datasets), tuple(m for m, _ in shown), note)


def plot(store: ResultStore, kind: str, out: str | Path, *, filters: Filters = Filters(),
         protocol: Protocol | None = None, size: tuple[int, int] | None = None,
         max_models: int = MAX_MODELS, overlay: bool = False) -> PlotResult:
    """Draw `kind` (eps, severity, corruptions, radius) from the store into `out` (.png or .svg)."""
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; use one of {', '.join(KINDS)}")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"plots are written as .png or .svg, not {out.name!r}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {out.parent} does not exist")
    sel = select(store, filters, protocol)
    ranked = _ranked_models(sel, protocol)
    if kind == "radius":
        return plot_radius(store, sel, ranked, out, size=size, max_models=max_models)
    if overlay and kind != "eps":
        raise ValueError("overlay draws the attacks of --kind eps in one panel; the other kinds have no attacks to "
                         "overlay")
    if kind == "eps":
        return plot_eps(sel, ranked, out, size=size, max_models=max_models, overlay=overlay)
    fn = {"severity": plot_severity, "corruptions": plot_corruption_heatmap}[kind]
    return fn(sel, ranked, out, size=size, max_models=max_models)
