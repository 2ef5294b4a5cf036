"""`robust-bench compress`: prune, quantize or distill a model `run` loads, and write a checkpoint that records
what was done and what it costs (size, parameters, sparsity or bit width, CPU latency measured at save time), so
`robust-bench run --model OUT` needs no other flag. The work is `robustness.compress` (robustness/compress.py);
this module parses options and prints. See docs/COMPRESSION.md.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..errors import UserError
from .options import parse_channels, parse_kv, parse_number, positive_int

EXAMPLES = """examples:
  robust-bench compress --model robustness/archs.py:resnet20 --weights resnet20.th --mean 0.485,0.456,0.406 \\
      --std 0.229,0.224,0.225 --dataset ../shared/data/cifar10/train --method prune --sparsity 0.5,0.9 --out r20.pt
      (writes r20-s50.pt and r20-s90.pt)
  robust-bench compress --model r20-s90.pt --method prune --sparsity 0.9 --epochs 2 --defense pgd --eps 2/255 --out ft.pt
  robust-bench compress --model r20.pt --method quantize --calibration 512 --out r20-int8.pt
  robust-bench compress --model r20.pt --method distill --arch small-cnn --arch-args hidden=32 --epochs 10 --out s.pt
  robust-bench run --model r20-int8.pt --attack pgd   # the int8 model: gradients through its straight-through twin
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="prune, quantize or distill a model; records size, latency, sparsity",
                       description="Compress any model `run` loads and write a self-describing checkpoint: "
                       "--method prune (global magnitude, or channels), quantize (int8, PT2E), distill (a smaller "
                       "student; with an adversarial --defense the robust RSLAD variant).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="any model `run --model` takes")
    p.add_argument("--weights", help="weights for --model (file.py:factory, timm:, torchvision)")
    p.add_argument("--mean", help="per-channel normalization mean (folded into the model)")
    p.add_argument("--std", help="per-channel normalization std")
    p.add_argument("--num-classes", type=positive_int)
    p.add_argument("--unsafe-load", action="store_true", help="allow checkpoints that need full unpickling")
    p.add_argument("--method", required=True, choices=("prune", "quantize", "distill"))
    p.add_argument("--out", help="the checkpoint to write; with several --sparsity values, -sNN is added before "
                                 "the suffix (or put {sparsity} in the name)")
    d = p.add_argument_group("data (calibration, fine-tuning, distillation)")
    d.add_argument("--dataset", help="training data (default: the model's own data set, train split)")
    d.add_argument("--data-dir")
    d.add_argument("--n-train", type=positive_int, help="training examples (default: all)")
    d.add_argument("--val-size", type=int, default=500, help="held-out examples for validation (default 500)")
    g = p.add_argument_group("prune")
    g.add_argument("--sparsity", help="fraction(s) removed, strictly between 0 and 1: 0.5 or 0.5,0.9")
    g.add_argument("--structure", default="unstructured", choices=("unstructured", "channel"),
                   help="unstructured: global L1 magnitude over every Conv/Linear weight; channel: output channels "
                        "(torch-pruning)")
    t = p.add_argument_group("training (after pruning; the student)")
    t.add_argument("--epochs", type=int, help="fine-tuning epochs after pruning (default 0) or the student's (10)")
    t.add_argument("--defense", default="standard", choices=("standard", "fgsm", "pgd", "trades"))
    t.add_argument("--eps", help="adversarial budget (default: the data set's smallest standard L-inf one)")
    t.add_argument("--steps", type=positive_int, help="inner attack steps")
    t.add_argument("--batch-size", type=positive_int, default=128)
    t.add_argument("--lr", help="peak learning rate (default 0.01 fine-tuning, 0.1 a student)")
    q = p.add_argument_group("quantize")
    q.add_argument("--calibration", type=positive_int, default=256, help="calibration images (default 256)")
    q.add_argument("--mode", default="static", choices=("static", "dynamic"),
                   help="static: int8 weights and activations (calibrated); dynamic: Linear layers only")
    s = p.add_argument_group("distill")
    s.add_argument("--arch", help="the student's architecture (registry name, e.g. small-cnn, resnet20)")
    s.add_argument("--arch-args", help="student options, key=value,... (e.g. hidden=32)")
    s.add_argument("--temperature", type=float, default=4.0)
    s.add_argument("--alpha", type=float, default=0.9, help="soft-label weight (plain distillation)")
    e = p.add_argument_group("measurement and engine")
    e.add_argument("--latency-repeats", type=positive_int, default=50)
    e.add_argument("--compile-latency", choices=("auto", "yes", "no"), default="auto",
                   help="also time the model under torch.compile (auto: for quantize, where int8 kernels need it)")
    e.add_argument("--device", default="cpu", help="device for fine-tuning and distillation (quantization: cpu)")
    e.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _sparsities(text: str | None) -> list[float | None]:
    if text is None:
        return [None]
    values = [parse_number(s, "--sparsity") for s in text.split(",") if s.strip()]
    if not values:
        raise UserError("--sparsity needs at least one value")
    for v in values:
        if not 0 < v < 1:
            raise UserError(f"--sparsity must lie strictly between 0 and 1 (the fraction removed), got {v:g}")
    return values


def _out_for(out: str | None, sparsity: float | None, several: bool) -> str | None:
    if out is None or sparsity is None:
        return out
    tag = f"{round(100 * sparsity):d}" if abs(100 * sparsity - round(100 * sparsity)) < 1e-9 else f"{100 * sparsity:g}"
    if "{sparsity}" in out:
        return out.replace("{sparsity}", tag)
    if not several:
        return out
    p = Path(out)
    return str(p.with_name(f"{p.stem}-s{tag}{p.suffix or '.pt'}"))


def run(args: argparse.Namespace) -> int:
    from ..compression import CompressSpec, compress
    sparsities = _sparsities(args.sparsity)
    base = dict(model=args.model, method=args.method, weights=args.weights,
                mean=parse_channels(args.mean, "--mean"), std=parse_channels(args.std, "--std"),
                num_classes=args.num_classes, unsafe_load=args.unsafe_load, dataset=args.dataset,
                data_dir=args.data_dir, n_train=args.n_train, val_size=args.val_size, structure=args.structure,
                epochs=args.epochs, defense=args.defense, eps=parse_number(args.eps, "--eps") if args.eps else None,
                steps=args.steps, batch_size=args.batch_size, lr=parse_number(args.lr, "--lr") if args.lr else None,
                calibration=args.calibration, mode=args.mode, arch=args.arch, arch_args=parse_kv(args.arch_args),
                temperature=args.temperature, alpha=args.alpha, latency_repeats=args.latency_repeats,
                latency_compile={"auto": None, "yes": True, "no": False}[args.compile_latency], device=args.device,
                seed=args.seed)
    specs = [CompressSpec(**base, sparsity=s, out=_out_for(args.out, s, len(sparsities) > 1)) for s in sparsities]
    for spec in specs:          # every spec's own checks before the first one runs
        spec.check()
    if args.out and len({s.out for s in specs}) != len(specs):
        raise UserError("--out names the same file for several --sparsity values; put {sparsity} in it")
    command = "robust-bench " + shlex.join(getattr(args, "argv", []) or [])
    for spec in specs:
        out = compress(spec, log=print, command=command)
        st, b = out.stats, out.base
        print(f"{spec.method}{f' {spec.structure} {spec.sparsity:g}' if spec.sparsity else ''}: "
              f"size {b.size_bytes:,} -> {st.size_bytes:,} bytes (gzip {b.gzip_bytes:,} -> {st.gzip_bytes:,}), "
              f"parameters {b.parameters:,} -> {st.parameters:,} ({st.nonzero:,} nonzero), "
              f"weight sparsity {100 * st.sparsity:.2f}%, {st.bits}-bit, latency {b.latency_ms:.3f} -> "
              f"{st.latency_ms:.3f} ms/image" + (f" (compiled {b.compiled_ms} -> {st.compiled_ms} ms)"
                                                 if st.compiled_ms is not None else "")
              + f" [{st.threads} thread(s), load {st.load}]")
        if out.checkpoint is None:
            print("note: no --out given; nothing written")
    return 0
