"""Evaluation throughput against the number of processes, through torchrun (gloo on CPUs, NCCL on GPUs).

    python benchmarks/bench_scaling.py [--procs 1,2] [--n 256] [--device cpu|cuda] [--threads-per-proc 1]

Each configuration runs the same command (the shared ResNet-20, PGD-10 at 2/255 on the first n shared
CIFAR-10 test images) into a fresh store, checks that every configuration gives the same per-example
outcomes as the first, and prints images per second and the speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads-per-proc", type=int, default=1)
    args = ap.parse_args()
    arch = ROOT / "robustness" / "archs.py"
    run_args = ["run", "--model", f"{arch}:resnet20", "--weights", str(SHARED / "models" / "resnet20-12fca82f.th"),
                "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--dataset",
                str(SHARED / "cifar10" / "test"), "--n-examples", str(args.n), "--subset", "first",
                "--attack", "pgd", "--eps", "2/255", "--batch-size", str(args.batch_size), "--device", args.device,
                "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads_per_proc), PYTHONPATH=str(ROOT))
    if args.device == "cpu":
        env["ROBUST_BENCH_BACKEND"] = "gloo"
    print(f"# {args.n} images, ResNet-20, PGD-10 eps 2/255, batch {args.batch_size}, device {args.device}, "
          f"{args.threads_per_proc} thread(s) per process")
    print("| processes | seconds | images/s | speed-up | same outcomes as 1 process |")
    print("|---|---|---|---|---|")
    first = None
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(v) for v in args.procs.split(",")]:
            out = Path(tmp) / f"{n}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                   "--master-port", str(29700 + n), "-m", "robustness", *run_args,
                   "--db", str(Path(tmp) / f"{n}.db"), "--json", str(out)]
            t = time.perf_counter()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - t
            if res.returncode != 0:
                sys.exit(res.stderr[-3000:])
            outcomes = [r["per_example"] for r in json.loads(out.read_text())["results"]]
            first = first or outcomes
            base = base or seconds
            print(f"| {n} | {seconds:.1f} | {args.n / seconds:.1f} | {base / seconds:.2f}x | "
                  f"{'yes' if outcomes == first else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
