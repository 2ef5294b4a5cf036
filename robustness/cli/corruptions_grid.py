"""`robust-bench corruptions-grid`: one image under every corruption and severity, for people."""
from __future__ import annotations

import argparse

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corruptions-grid", help="picture one image under every corruption and severity",
                       description="Save a grid: a row per corruption, a column per severity.")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--dataset", default="digits", help="data set or image folder to take the image from")
    p.add_argument("--data-dir", help="root of a named data set")
    p.add_argument("--index", type=int, default=0, help="which example (default: 0)")
    p.add_argument("--corruptions", default="all19", help="all15, all19 (default) or a comma list")
    p.add_argument("--preset", choices=("imagenet-c", "cifar10-c"), help="parameter table (default: by size)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from attacks.corruptions.grid import save_grid

    from ..data import load_dataset
    from .run import parse_corruptions
    from pathlib import Path
    if not Path(args.out).resolve().parent.is_dir():
        raise UserError(f"cannot write {args.out}: its folder does not exist")
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    if not 0 <= args.index < len(data):
        raise UserError(f"--index {args.index} is outside the data set's {len(data)} examples")
    image, _ = data.dataset[args.index]
    names = parse_corruptions(args.corruptions)
    try:
        save_grid(image, args.out, names=names, generator=torch.Generator().manual_seed(args.seed),
                  preset=args.preset)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {args.out}")
    return 0
