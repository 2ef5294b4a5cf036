"""`robust-bench list models|datasets|attacks`."""
from __future__ import annotations

import argparse

# attacks seeded once per batch (third-party code): the same examples can give other outcomes at
# another --batch-size, so the run key holds the batch size
BATCH_NOTE = " (batch-dependent: results depend on --batch-size)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list models, data sets or attacks",
                       description="List what `robust-bench run` can evaluate.")
    p.add_argument("what", choices=("models", "datasets", "attacks", "recipes"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.what == "recipes":     # the training recipes (robustness/cli/train.py owns their listing)
        from .train import list_recipes
        return list_recipes()
    from ._listing_cache import cached_output   # replayed without importing torch (start-up, issue 14)
    return cached_output(args.what, lambda: _listing(args))


def _listing(args: argparse.Namespace) -> int:
    from attacks import attack_names, get_attack_entry

    from ..data import registered_datasets
    from ..models import registered_models, torchvision_names
    if args.what == "models":
        print("built-in:")
        for m in registered_models():
            print(f"  {m.name:<16} {m.description}")
        print("torchvision (ImageNet, DEFAULT weights; hub cache or --weights):")
        names = torchvision_names()
        for i in range(0, len(names), 6):
            print("  " + "  ".join(names[i:i + 6]))
        print("other sources:")
        print("  robustbench:NAME or robustbench:DATASET/THREAT/NAME   RobustBench model zoo (pip install 'robust-bench[zoo]')")
        print("  timm:NAME[.TAG][:KEY=VALUE,...]   timm's registry (vit_*, deit_*, convnext_*, ...; HF cache or --weights;"
              " timm.list_models() names them)")
        print("  float:PATH   the float model inside a quantized checkpoint (robust-bench compress)")
        print("  path/to/file.py:factory [--weights CKPT --mean M --std S]   your own architecture")
        print("  path/to/model.pt   a robust-bench checkpoint, TorchScript or torch.export archive")
    elif args.what == "datasets":
        for d in registered_datasets():
            print(f"  {d.name:<14} {d.description}")
        print("  DIR            an image folder (one sub-folder per class)")
        print("  FILE.npz|.npy  arrays: x (uint8 NHWC or float NCHW in [0, 1]) and y / labels.npy")
    else:
        for name in attack_names():
            e = get_attack_entry(name)
            params = ", ".join(f"{k}={v!r}" for k, v in e.parameters().items() if k != "norm")
            kind = "" if e.white_box else " (black box)"
            note = BATCH_NOTE if e.batch_dependent else ""
            print(f"  {name:<18} [{'/'.join(e.norms)}]{kind} {e.description}{note}\n  {'':<18} args: {params}")
        print("  corruptions        the common corruptions (--corruptions, --severity; see docs/CORRUPTIONS.md)")
        print("adaptive attacks (rows of their own; --adaptive adds them where a check fires, docs/CHECKS.md):")
        print("  eot:ATTACK         ATTACK against the expected prediction of eot=N passes (default 20; eot=N works on any attack)")
        print("  bpda:ATTACK        ATTACK with the masking parts the identity on the backward pass (bpda=auto|PATH, --bpda)")
        print("  transfer:MODEL[+MODEL...][:ATTACK]   ATTACK (pgd) crafted on surrogate models (self: the model without its "
              "masking parts), evaluated on the target (black box)")
        try:
            from attacks.torchattacks_adapter import list_torchattacks
            rows = list_torchattacks()
        except ImportError:
            rows = []
        if rows:
            print(f"torchattacks (--attack torchattacks:NAME --attack-args key=value,...; all{BATCH_NOTE}):")
            for r in rows:
                args = ", ".join(f"{k}={v!r}" for k, v in (r.get("args") or {}).items())
                norms = "/".join(r.get("norms") or ()) or "?"
                print(f"  {r['name']:<26} [{norms}] {args}")
        else:
            print("torchattacks: not installed (pip install 'robust-bench[torchattacks]')")
    return 0
