"""Benchmark (not a test): the leaderboard from a store of 100 models x 20 threats x 10,000 examples.

    .venv/bin/python benchmarks/bench_leaderboard.py [--db /tmp/bench-leaderboard.db] [--repeat 5]

Builds the synthetic store once (10 runs of 10 models, 4 attacks x 5 eps, 10,000 examples each: 4 million
per-example rows, through the normal store API), then times the leaderboard: in-process (select the runs,
build the board, render each format), in a fresh process importing only `leaderboards`, and end to end
(`robust-bench leaderboard` in a fresh process, including interpreter start-up and the CLI's imports).
Target: under 2 seconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leaderboards import ResultStore  # noqa: E402
from leaderboards.board import build_board  # noqa: E402
from leaderboards.synthetic import add_synthetic_run  # noqa: E402
from leaderboards.tables import FORMATS, render  # noqa: E402

MODELS, RUNS, ATTACKS, EPS, N = 100, 10, ("fgsm", "pgd", "apgd-ce", "square"), (1, 2, 4, 8, 16), 10_000


def build(path: Path) -> float:
    t0 = time.perf_counter()
    with ResultStore(path) as store:
        per_run = MODELS // RUNS
        for run in range(RUNS):
            models = {f"model-{run * per_run + i:03d}": ((run * per_run + i) * 37 % MODELS) / MODELS
                      for i in range(per_run)}
            add_synthetic_run(store, models=models, attacks=ATTACKS, eps=[e / 255 for e in EPS], n=N,
                              dataset="cifar10", seed=run, tag=f"bench-{run}",
                              info={m: {"model": {"name": m, "arch": "WideResNet-28-10",
                                                  "extra": {"extra_data": run % 2 == 0}}} for m in models})
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="/tmp/bench-leaderboard.db")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the store even if it exists")
    args = ap.parse_args()
    db = Path(args.db)
    if args.rebuild and db.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    if not db.exists():
        print(f"building {db} ({MODELS} models x {len(ATTACKS) * len(EPS)} threats x {N:,} examples) ...",
              flush=True)
        print(f"  built in {build(db):.1f} s, {db.stat().st_size / 1e6:.0f} MB")
    with ResultStore(db) as store:
        n_out = store._db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0]
        n_res = store._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    print(f"store: {n_out:,} per-example rows, {n_res:,} result aggregates")

    timings: dict[str, list[float]] = {"build_board": []}
    timings.update({f"build_board + {f}": [] for f in FORMATS})
    for _ in range(args.repeat):
        with ResultStore(db) as store:
            t0 = time.perf_counter()
            board = build_board(store)
            timings["build_board"].append(time.perf_counter() - t0)
            assert len(board.rows) == MODELS and len(board.threats) == len(ATTACKS) * len(EPS)
            for f in FORMATS:
                t1 = time.perf_counter()
                render(build_board(store), f)
                timings[f"build_board + {f}"].append(time.perf_counter() - t1)
    cli = [str(ROOT / ".venv" / "bin" / "robust-bench"), "leaderboard", "--db", str(db), "--format", "md",
           "--out", os.devnull]
    if not Path(cli[0]).exists():
        cli = [sys.executable, "-m", "robustness"] + cli[1:]
    timings["CLI end to end (md)"] = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run(cli, check=True, cwd=ROOT)
        timings["CLI end to end (md)"].append(time.perf_counter() - t0)
    lib = [sys.executable, "-c", "import sys; from leaderboards import ResultStore, build_board, render; "
           "sys.stdout.write(render(build_board(ResultStore(sys.argv[1])), 'md')[:0])", str(db)]
    timings["fresh process, leaderboards only (md)"] = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run(lib, check=True, cwd=ROOT)
        timings["fresh process, leaderboards only (md)"].append(time.perf_counter() - t0)
    imports = [sys.executable, "-c", "import robustness.cli; robustness.cli.build_parser()"]
    timings["of which: CLI start-up (imports, parser)"] = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run(imports, check=True, cwd=ROOT)
        timings["of which: CLI start-up (imports, parser)"].append(time.perf_counter() - t0)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.platform()}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':<42} {'median s':>9} {'min s':>7} {'max s':>7}")
    for k, v in timings.items():
        print(f"{k:<42} {statistics.median(v):>9.3f} {min(v):>7.3f} {max(v):>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
