"""`robust-bench list models|datasets|attacks` without importing torch: the text this exact installation
prints, recorded the first time and replayed after.

Why: the registries live in modules that import torch (about 2 s of CPU before anything is printed), and
the text they produce changes only with the code or the installed packages. The key covers both: the
Python and package versions (torch, torchvision, torchattacks, robustbench, timm) and the bytes of every
source file of the packages that register models, data sets and attacks. Any change gives a new key, so a
replay is always what a live listing would print. In a process that has already imported `attacks`
(a program, a test), something may have been registered at run time, so the listing is computed live.
The recordings go to $ROBUST_BENCH_CACHE (default: $XDG_CACHE_HOME/robust-bench or ~/.cache/robust-bench);
where that cannot be written, nothing is recorded and nothing fails.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

_ROOT = Path(__file__).resolve().parents[2]
_SOURCES = ("attacks", "robustness", "defenses", "leaderboards")
_PACKAGES = ("torch", "torchvision", "torchattacks", "robustbench", "timm", "robust-bench")


def cache_dir() -> Path:
    if os.environ.get("ROBUST_BENCH_CACHE"):
        return Path(os.environ["ROBUST_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robust-bench"


def key(what: str) -> str:
    h = hashlib.sha256(f"{what}|{sys.version}".encode())
    for name in _PACKAGES:
        try:
            h.update(f"|{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"|{name}=-".encode())
    for pkg in _SOURCES:
        for path in sorted((_ROOT / pkg).rglob("*.py")):
            h.update(str(path.relative_to(_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:32]


def cached_output(what: str, produce: Callable[[], int]) -> int:
    """Print the recorded listing for `what` if there is one for this installation; otherwise run
    `produce` (which prints it), record what it printed, and return its exit code."""
    if "attacks" in sys.modules:
        return produce()
    try:
        path = cache_dir() / f"list-{what}-{key(what)}.txt"
        if path.is_file():
            sys.stdout.write(path.read_text())
            return 0
    except OSError:
        path = None
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = produce()
    text = buf.getvalue()
    sys.stdout.write(text)
    if code == 0 and path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        except OSError:
            pass
    return code
