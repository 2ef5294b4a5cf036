"""Start-up: `robust-bench --help`, `robust-bench list ...` and the default run (built-in digits), each a
fresh process as a user starts it, wall and CPU seconds, medians of interleaved repeats.

    python benchmarks/bench_startup.py [--repeats 5] [--importtime]

Targets (issue 14): --help and list under 1 s; the default run under 10 s on 2 cores, start-up included.
`list` is measured twice: its first call in a fresh cache (it imports torch and records the text) and the
calls after (replayed, robustness/cli/_listing_cache.py). The default run is measured as shipped (the CLI
sets OMP_WAIT_POLICY=PASSIVE) and with OMP_WAIT_POLICY=ACTIVE (spinning OpenMP waits, as before).
`--importtime` also prints the slowest imports of the default run (`python -X importtime`).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = [sys.executable, "-m", "robustness"]


# the CLI as before this change: torch loaded before main() could set OMP_WAIT_POLICY
EXE_TORCH_FIRST = [sys.executable, "-c", "import sys, torch; from robustness.cli import main; sys.exit(main())"]


def timed(args: list[str], env: dict[str, str], exe: list[str] = EXE) -> tuple[float, float]:
    """(wall, CPU of the child: user + system) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(exe + args, cwd=env["WORK"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {r.stderr[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--importtime", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rb-startup-"))
    base = {**os.environ, "WORK": str(work), "PYTHONPATH": str(ROOT)}
    base.pop("OMP_WAIT_POLICY", None)
    base.pop("OMP_NUM_THREADS", None)
    cache = work / "cache"
    env = {**base, "ROBUST_BENCH_CACHE": str(cache)}
    cases = {
        "--help": (["--help"], env),
        "list models": (["list", "models"], env),
        "list datasets": (["list", "datasets"], env),
        "list attacks": (["list", "attacks"], env),
        "default run (as shipped: OMP_WAIT_POLICY=PASSIVE)": (["run", "--quiet"], env),
        "default run, OpenMP's default wait (torch imported before the CLI sets it)": (["run", "--quiet"], env),
        "default run, OMP_WAIT_POLICY=ACTIVE (spinning waits)": (["run", "--quiet"], {**env, "OMP_WAIT_POLICY": "ACTIVE"}),
    }
    load = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {platform.machine()}, {os.cpu_count()} CPUs; "
          f"Python {platform.python_version()}; {args.repeats} interleaved repeats, medians")
    print(f"# load at start: {load()}", flush=True)
    first = {}
    for what in ("models", "datasets", "attacks"):   # the recording call, fresh cache
        first[what] = timed(["list", what], env)
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            cmd, e = cases[k]
            if cmd[0] == "run":
                db = work / f"r{r}-{len(res[k])}.db"
                cmd = cmd + ["--db", str(db)]
            res[k].append(timed(cmd, e, EXE_TORCH_FIRST if "torch imported" in k else EXE))
    print(f"# load at end: {load()}")
    print("| command | median wall s | median CPU s | walls |")
    print("|---|---:|---:|---|")
    for what, (w, c) in first.items():
        print(f"| list {what}, first call (records) | {w:.2f} | {c:.2f} | |")
    for k in names:
        ws, cs = [v[0] for v in res[k]], [v[1] for v in res[k]]
        print(f"| {k} | {statistics.median(ws):.2f} | {statistics.median(cs):.2f} | "
              f"{', '.join(f'{v:.1f}' for v in ws)} |", flush=True)
    if args.importtime:
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "robustness", "run", "--quiet", "--db",
                            str(work / "imp.db")], cwd=work, env=env, capture_output=True, text=True)
        rows = []
        for line in r.stderr.splitlines():
            parts = line[len("import time:"):].split("|") if line.startswith("import time:") else []
            if len(parts) != 3 or not parts[1].strip().isdigit():
                continue
            name = parts[2].rstrip()
            depth = (len(name) - len(name.lstrip())) // 2
            rows.append((int(parts[1]), name.strip(), depth))
        print("\nslowest imports of the default run (cumulative ms, top-level and two levels in):")
        for cum, name, depth in sorted((r for r in rows if r[2] <= 2), reverse=True)[:15]:
            print(f"  {cum / 1000:8.1f}  {'  ' * depth}{name}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
