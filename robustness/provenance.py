"""Where a number came from: package versions, the git commit, the device, the date. Stored with every
run (and exported with it) so a result can be traced and reproduced."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, argv: list[str] | None = None) -> dict[str, Any]:
    """Versions, commit, device and date; `argv` the command line when there was one (the CLI passes
    it; a library call records none)."""
    import importlib.metadata as md
    versions = {"python": platform.python_version()}
    for pkg in ("robust-bench", "torch", "torchvision", "numpy", "torchattacks", "robustbench", "pyautoattack"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    if device.type == "cuda":
        dev = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        dev = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"versions": versions, "git_commit": git_commit(), "device": dev, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv) if argv is not None else None}


__all__ = ["environment", "git_commit"]
