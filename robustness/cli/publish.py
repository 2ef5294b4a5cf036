"""`robust-bench leaderboard | plot | site | compare`: publish stored results. A thin layer over
`leaderboards` (tables, curves, site, compare, protocols); also the `run --protocol` option."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from leaderboards import ResultStore, StoreError
from leaderboards.board import Board, Filters, build_boards
from leaderboards.protocols import Protocol, ProtocolError, load_protocol, protocol_names

from ..errors import UserError
from .options import parse_eps_list, parse_list, positive_int


# ---- shared options ----

def _add_source(p: argparse.ArgumentParser, *, protocol: bool = True) -> None:
    p.add_argument("--db", default="results.db", help="SQLite results store (default: ./results.db)")
    f = p.add_argument_group("which results (comma-separated lists)")
    f.add_argument("--dataset", help="only these data sets (a folder's name, with or without its #digest)")
    f.add_argument("--attack", help="only these attacks (corruptions: corruption:NAME)")
    f.add_argument("--eps", help="only these eps, fractions accepted: 4/255,8/255 (corruptions: severities)")
    f.add_argument("--norm", help="only these norms (linf, l2)")
    f.add_argument("--model", help="only these models")
    if protocol:
        f.add_argument("--protocol", help="only runs that follow this protocol (a name: "
                       f"{', '.join(protocol_names())}; or a .yaml path); says which runs it left out and why")


def _filters(args: argparse.Namespace) -> Filters:
    lst = lambda v: parse_list(v) if v is not None else None  # noqa: E731   (--model= is an error)
    return Filters(datasets=lst(args.dataset), attacks=lst(args.attack),
                   eps=parse_eps_list(args.eps) if args.eps is not None else None,
                   norms=tuple(n.lower() for n in parse_list(args.norm)) if args.norm is not None else None,
                   models=lst(args.model))


def _protocol(name: str | None) -> Protocol | None:
    if not name:
        return None
    try:
        return load_protocol(name)
    except ProtocolError as e:
        raise UserError(str(e)) from None


def _open(db: str) -> ResultStore:
    """Read-only (publishing never writes the store); a store of an older schema is upgraded in place when
    the user may write it, as any open did before."""
    from leaderboards.store import OlderSchema
    if not Path(db).exists():
        raise UserError(f"no results database at {db} (run `robust-bench run --db {db}` first, or pass --db)")
    try:
        try:
            return ResultStore(db, create=False, read_only=True)
        except OlderSchema:
            if not (os.access(db, os.W_OK) and os.access(Path(db).resolve().parent, os.W_OK)):
                raise
            return ResultStore(db, create=False)
    except StoreError as e:
        raise UserError(str(e)) from None


def _boards(args: argparse.Namespace) -> tuple[Board, ...]:
    """One board per data set (ranks never compare models measured on different images)."""
    protocol = _protocol(getattr(args, "protocol", None))
    filters = _filters(args)
    with _open(args.db) as store:
        boards = build_boards(store, filters, protocol)
    first = boards[0]
    for x in first.left_out:
        print(f"left out run {x.run_id} ({x.model}): {x.reason}", file=sys.stderr)
    if first.unfinished_runs:
        print(f"ignored {first.unfinished_runs} unfinished run(s); only complete runs are shown", file=sys.stderr)
    if not any(b.rows for b in boards):
        what = f" following protocol {protocol.name}" if protocol else ""
        raise UserError(f"no complete results{what} in {args.db} match the filters")
    return boards


def _output_path(out: str) -> Path:
    """A file the user named for output: its folder must exist (none is created), and it must not be a
    folder or a SQLite file (a results store given by mistake would be overwritten)."""
    path = Path(out)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: folder {parent} does not exist")
    if path.is_dir():
        raise UserError(f"cannot write {out}: it is a folder; name a file")
    if path.is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror or e}") from None
        if head == b"SQLite format 3\0":
            raise UserError(f"refusing to overwrite {out}: it is an SQLite database (a results store?)")
    return path


def _write(text: str, out: str | None, *, append: bool = False) -> None:
    if out:
        path = _output_path(out)
        try:
            with open(path, "a" if append else "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    else:
        sys.stdout.write(text)


def _size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"bad --size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1200x800") from None
    if not (100 <= w <= 10000 and 100 <= h <= 10000):
        raise UserError(f"bad --size {text!r}: each side must be 100..10000 pixels")
    return w, h


# ---- leaderboard ----

def cmd_leaderboard(args: argparse.Namespace) -> int:
    from leaderboards.tables import NeedsOneDataset, render_boards
    if getattr(args, "compression", None):
        return _compression_report(args)
    boards = _boards(args)
    try:
        text = render_boards(boards, args.format)
    except NeedsOneDataset as e:
        raise UserError(str(e)) from None
    _write(text, args.out)
    return 0


def _compression_report(args: argparse.Namespace) -> int:
    """`leaderboard --compression [BASE]`: the base model and its compressed variants (leaderboards/compression.py)."""
    from leaderboards.compression import REPORT_FORMATS, build_report, render_report
    if args.format not in REPORT_FORMATS:
        raise UserError(f"--compression: the report comes as {', '.join(REPORT_FORMATS)}, not {args.format}")
    models = [m.strip() for m in args.model.split(",")] if getattr(args, "model", None) else None
    with _open(args.db) as store:
        try:
            report = build_report(store, base=None if args.compression == "auto" else args.compression, models=models)
        except ValueError as e:
            raise UserError(f"compression report: {e}") from None
    _write(render_report(report, args.format), args.out)
    return 0


# ---- plot ----

def cmd_plot(args: argparse.Namespace) -> int:
    from leaderboards.curves import NothingToPlot, plot
    if Path(args.out).suffix.lower() not in (".png", ".svg"):
        raise UserError(f"--out must end in .png or .svg, got {args.out!r}")
    _output_path(args.out)
    if args.kind == "compression":     # robust accuracy against size (leaderboards/compression.py)
        from leaderboards.compression import build_report, plot_report
        with _open(args.db) as store:
            try:
                path = plot_report(build_report(store), args.out)
            except ValueError as e:
                raise UserError(f"compression plot: {e}") from None
        print(f"wrote {path}", file=sys.stderr)
        return 0
    size = _size(args.size)
    protocol = _protocol(args.protocol)
    with _open(args.db) as store:
        try:
            res = plot(store, args.kind, args.out, filters=_filters(args), protocol=protocol, size=size,
                       max_models=args.max_models, overlay=args.overlay)
        except (NothingToPlot, ValueError) as e:
            raise UserError(str(e)) from None
        except ImportError as e:
            raise UserError(str(e)) from None
        except OSError as e:
            raise UserError(f"cannot write {args.out}: {e.strerror or e}") from None
    print(f"wrote {res.path} ({res.panels} panel(s), {len(res.models)} model(s)"
          + (f"; {res.note}" if res.note else "") + ")", file=sys.stderr)
    return 0


# ---- site ----

def cmd_site(args: argparse.Namespace) -> int:
    from leaderboards.site import SiteError, build_site
    protocol = _protocol(args.protocol)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    with _open(args.db) as store:
        try:
            res = build_site(store, out, filters=_filters(args), protocol=protocol, plot_format=args.plot_format,
                             plots=args.plots, max_models=args.max_models, site_title=args.title)
        except (ImportError, SiteError) as e:
            raise UserError(str(e)) from None
        except OSError as e:
            raise UserError(f"cannot write the site to {args.out}: {e.strerror or e}"
                            + (f" ({e.filename})" if e.filename else "")) from None
    if not res.rows:
        print("warning: no complete results match; the site has an empty table", file=sys.stderr)
    print(f"wrote {res.index} ({res.rows} models, {len(res.plots)} plot(s)); open it in a browser, no server needed",
          file=sys.stderr)
    return 0


# ---- compare ----

def cmd_compare(args: argparse.Namespace) -> int:
    from leaderboards.compare import NotComparable, RunNotFound, compare, load_run, to_junit, to_markdown
    if args.max_drop is not None and not (math.isfinite(args.max_drop) and args.max_drop >= 0):
        raise UserError(f"--max-drop must be a finite number >= 0 (points of accuracy), got {args.max_drop}")
    if not 0 < args.alpha < 1:
        raise UserError("--alpha must be between 0 and 1")
    for out in (args.summary, args.junit):   # checked before anything is computed or written
        if out:
            _output_path(out)
    try:
        base = load_run(args.baseline, args.db)
        cand = load_run(args.candidate, args.db)
        cmp = compare(base, cand, baseline_model=args.baseline_model, candidate_model=args.candidate_model,
                      max_drop=args.max_drop, alpha=args.alpha)
    except (RunNotFound, StoreError) as e:
        raise UserError(str(e)) from None
    except NotComparable as e:
        raise UserError(f"the runs are not comparable: {e}") from None
    md = to_markdown(cmp)
    sys.stdout.write(md)
    if args.summary:
        _write(md + "\n", args.summary, append=True)
    if args.junit:
        _write(to_junit(cmp), args.junit)
    if cmp.failed:
        bad = ", ".join(f"{r.candidate_model} {r.label} ({100 * r.change:+.1f} pp, p={r.p_value:.2g})"
                        for r in cmp.rows if r.failed)
        print(f"regression: {bad}", file=sys.stderr)
        return 1
    return 0


# ---- registration ----

def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("leaderboard", help="a table of models by robust accuracy (md, csv, latex, html, json)",
                       formatter_class=fmt, description=(
                           "A table per data set (ranks compare models on the same images only): a row per model, "
                           "a column per threat (attack@eps) with 95% Wilson intervals, sorted by the worst case "
                           "(lowest accuracy over the threats shown, or a stored `worst-case` attack). A row is one "
                           "set of weights: two checkpoints evaluated under one name are two rows, the name "
                           "followed by the run's tag or the short weights hash. Only complete runs; per (model, "
                           "data set, threat) the newest run wins. CSV holds one table: pick a data set with "
                           "--dataset when the store has several."),
                       epilog="examples:\n  robust-bench leaderboard --protocol digits-linf\n"
                              "  robust-bench leaderboard --dataset cifar10 --eps 8/255 --format latex --out table.tex")
    _add_source(p)
    p.add_argument("--format", default="md", choices=("md", "csv", "latex", "html", "json"),
                   help="output format (default: md)")
    p.add_argument("--compression", nargs="?", const="auto", metavar="BASE",
                   help="the compression report instead: the base model (default: the one the variants name) and "
                        "its compressed variants with size, latency, clean, each attack, worst case, corruption mean")
    p.add_argument("--out", help="write to this file (default: standard output)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("plot", help="plot accuracy against eps, corruption severity, or a corruption heatmap",
                       formatter_class=fmt, description=(
                           "eps: accuracy against eps per model with 95% interval bands (eps 0 = clean). "
                           "severity: accuracy against severity per corruption (results of attacks named "
                           "corruption:NAME, eps = severity). corruptions: a corruption-by-severity heatmap. radius: "
                           "certified accuracy against L2 radius from the per-example certificates."),
                       epilog="examples:\n  robust-bench plot --kind eps --out eps.png --dataset digits\n"
                              "  robust-bench plot --kind eps --overlay --out figure.svg --dataset cifar10")
    p.add_argument("--kind", required=True, choices=("eps", "severity", "corruptions", "radius", "compression"),
                   help="radius: certified accuracy against L2 radius (results of robust-bench certify); compression: "
                        "worst-case accuracy against size of a base model and its compressed variants, Pareto front")
    p.add_argument("--out", required=True, help="image file, .png or .svg")
    p.add_argument("--size", help="image size in pixels, WIDTHxHEIGHT (default: fits the panels)")
    p.add_argument("--overlay", action="store_true",
                   help="--kind eps: every attack in one panel per data set and norm (colour: model; line style and "
                        "marker: attack), as a paper's figure")
    p.add_argument("--max-models", type=positive_int, default=10,
                   help="plot at most this many models, the best by worst case (default: 10)")
    _add_source(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("site", help="a static HTML leaderboard (opens from disk, no server)",
                       formatter_class=fmt, description=(
                           "Write DIR/index.html (sortable, searchable table and plots), DIR/plots/, a page per "
                           "model under DIR/models/ and DIR/leaderboard.json. No network access is needed to "
                           "view it."),
                       epilog="example:\n  robust-bench site --out site/ && xdg-open site/index.html")
    p.add_argument("--out", required=True, help="output folder: new, empty, or an earlier site's (only the files "
                   "that site wrote are replaced; any other file there is never touched)")
    p.add_argument("--title", help="page title (default: the protocol's title or the data sets)")
    p.add_argument("--plot-format", default="png", choices=("png", "svg"))
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="draw plots (default: yes)")
    p.add_argument("--max-models", type=positive_int, default=10, help="models per plot (default: 10)")
    _add_source(p)
    p.set_defaults(func=cmd_site)

    p = sub.add_parser("compare", help="compare two runs on the same examples; a regression gate for CI",
                       formatter_class=fmt, description=(
                           "Per threat: the change in accuracy (candidate - baseline), a 95% interval for the "
                           "paired difference, and an exact McNemar test on the per-example outcomes. Exit 0: "
                           "no regression; 1: a threat dropped by more than --max-drop points AND significantly "
                           "(p < --alpha); 2: the runs are not comparable (other examples, data set, attacks)."),
                       epilog="examples:\n  robust-bench compare 3f2a 9c1b --db results.db --max-drop 2\n"
                              "  robust-bench compare base.json cand.json --max-drop 1 --junit compare.xml "
                              "--summary \"$GITHUB_STEP_SUMMARY\"\nsee docs/REGRESSION_GATE.md")
    p.add_argument("baseline", help="run id (or unique prefix) in --db, or a JSON export (`run --json`)")
    p.add_argument("candidate", help="run id (or unique prefix) in --db, or a JSON export")
    p.add_argument("--db", default="results.db", help="results store for run ids (default: ./results.db)")
    p.add_argument("--baseline-model", help="the model to take from the baseline run (when it holds several)")
    p.add_argument("--candidate-model", help="the model to take from the candidate run (when it holds several)")
    p.add_argument("--max-drop", type=float, help="fail (exit 1) when accuracy drops by more than this many "
                   "percentage points, significantly (default: report only)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the McNemar test (0.05)")
    p.add_argument("--junit", help="also write JUnit XML here (one testcase per threat)")
    p.add_argument("--summary", help="also append the Markdown report to this file, e.g. $GITHUB_STEP_SUMMARY")
    p.set_defaults(func=cmd_compare)


# ---- `run --protocol` ----
# The protocol fills these `run` options; a value the user typed for any of them is a conflict. Defaults are
# marked (a str/int subclass equal to the default) so a typed value, even one equal to the default, is seen.

_PROTOCOL_FLAGS = {"dataset": "--dataset", "split": "--split", "n_examples": "--n-examples", "subset": "--subset",
                   "norm": "--norm", "eps": "--eps", "attack": "--attack", "steps": "--steps",
                   "step_size": "--step-size", "restarts": "--restarts", "random_start": "--random-start",
                   "loss": "--loss", "attack_args": "--attack-args"}


class _DefaultStr(str):
    pass


class _DefaultInt(int):
    pass


def add_protocol_option(p: argparse.ArgumentParser) -> None:
    """Add `--protocol` to the `run` parser and mark the defaults of the options it fills."""
    p.add_argument("--protocol", help="evaluate by a leaderboard protocol (a name: "
                   f"{', '.join(protocol_names())}; or a .yaml path): it sets the data set, examples, norm, eps "
                   "and attacks, so those options cannot be given with it")
    for action in p._actions:
        if action.dest in _PROTOCOL_FLAGS or action.dest == "seed":
            if isinstance(action.default, str):
                action.default = _DefaultStr(action.default)
            elif isinstance(action.default, int) and not isinstance(action.default, bool):
                action.default = _DefaultInt(action.default)


def _given(value: Any) -> bool:
    return value is not None and not isinstance(value, (_DefaultStr, _DefaultInt))


def check_protocol_flags(args: argparse.Namespace) -> None:
    """A protocol fixes the data set, examples, norm, eps and attacks: a value the user typed for any of
    them is a conflict (a typed value equal to the default too)."""
    protocol = _protocol(args.protocol)
    assert protocol is not None
    flags = dict(_PROTOCOL_FLAGS)
    if protocol.subset == "random":
        flags["seed"] = "--seed"
    clash = [flag for dest, flag in flags.items() if _given(getattr(args, dest, None))]
    if clash:
        raise UserError(f"--protocol {protocol.name} sets the data set, examples, norm, eps and attacks; "
                        f"drop {', '.join(clash)} (or run without --protocol)")
