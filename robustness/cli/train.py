"""`robust-bench train`: standard and adversarial training (FGSM, PGD, TRADES) from scratch or by
fine-tuning any model `robust-bench run` loads, or a published recipe (`--recipe`); writes a
self-describing checkpoint that `robust-bench run --model OUT` evaluates with no other flag. See
docs/TRAINING.md.

This module only turns options into a `robustness.training.TrainSpec` and prints the outcome; the work is
`robustness.train`. torch loads only when training is asked for, not at every CLI start.

Several processes: `torchrun --nproc-per-node N -m robustness train ...` (DistributedDataParallel; nccl on
CUDA, gloo on the CPU); --batch-size is the global batch, split evenly; only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from .options import parse_channels, parse_kv, parse_number, positive_int

EXAMPLES = """examples:
  robust-bench train --dataset digits --arch digits-cnn --defense pgd --eps 0.1 --out at.pt
  robust-bench train --recipe wong2020-fgsm-mnist --data-dir ../shared/data --out mnist-fgsm.pt
  robust-bench train --dataset mnist --data-dir ../shared/data --arch small-cnn --defense fgsm --eps 0.3 \\
      --n-train 10000 --epochs 5 --out mnist-fgsm.pt
  robust-bench train --recipe rice2020-pgd-cifar10 --dataset ../shared/data/cifar10/train --epochs 100 --out rice.pt
  robust-bench train --model robustness/archs.py:resnet20 --weights resnet20.th --mean 0.485,0.456,0.406 \\
      --std 0.229,0.224,0.225 --dataset cifar10/train --finetune linear --epochs 1 --out probe.pt
  torchrun --nproc-per-node 4 -m robustness train --recipe zhang2019-trades-cifar10 --sync-bn ...
  robust-bench list recipes                         # the published recipes, their sources and numbers
  robust-bench run --model at.pt                    # evaluate what was written
"""

# options that change how this invocation runs, not what it produces: left out of `trained_with`
_SESSION = ("resume", "stop_after")
# options the CLI keeps to itself (not TrainSpec fields)
_CLI_ONLY = ("quiet", "func", "command", "argv")


def register(sub: argparse._SubParsersAction) -> None:
    # options not given stay absent (argument_default SUPPRESS), so a recipe's values apply unless overridden
    p = sub.add_parser("train", help="standard or adversarial training / fine-tuning; writes a checkpoint",
                       description="Train a classifier with a defense (standard, fgsm, pgd, trades), from "
                       "scratch (--arch), from any model `run` loads (--model, fine-tuning), or with a published "
                       "recipe (--recipe; other options override it). Validation after every epoch (clean, FGSM, "
                       "PGD); the selected epoch is written to --out with everything `robust-bench run --model "
                       "OUT` needs. A run that stays at chance, diverges or collapses says so and exits with "
                       "code 3 unless --allow-failed.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       argument_default=argparse.SUPPRESS)
    m = p.add_argument_group("what to train")
    m.add_argument("--recipe", help="start from a published recipe (robust-bench list recipes): architecture, "
                                    "optimizer, schedule, eps, step size, epochs, augmentation as the paper; any "
                                    "option given here overrides it")
    m.add_argument("--arch", help="train from scratch: digits-cnn, small-cnn, madry-cnn, resnet20, preact-resnet18, "
                                  "wrn-28-10, wrn-34-10 (default: digits-cnn for digits, small-cnn for other grey "
                                  "images, preact-resnet18 for colour)")
    m.add_argument("--arch-args", help="extra key=value,... for the architecture (e.g. dropout=0.3)")
    m.add_argument("--model", help="fine-tune a model, named as in `robust-bench run --model`: a built-in, a "
                                   "torchvision name, robustbench:NAME, path/to/file.py:factory, a checkpoint")
    m.add_argument("--finetune", choices=("none", "linear", "full", "lora", "bitfit"),
                   help="with --model: none = train everything as is (the classes must fit); linear = freeze "
                        "the backbone, train the head (the last nn.Linear; replaced if the class count differs); "
                        "full = train everything, the backbone at --backbone-lr-mult times the rate (default: full)")
    m.add_argument("--lora-rank", type=positive_int, help="--finetune lora: rank of the update (default 8); lora "
                   "and bitfit train an adapter (and the head) with the base frozen and in eval mode")
    m.add_argument("--lora-alpha", type=float, help="--finetune lora: the update is scaled by alpha / rank (default 16)")
    m.add_argument("--lora-targets", help="--finetune lora: layer names, name suffixes or patterns, comma-separated "
                   "(default: a ViT's attention and MLP layers, else every Conv2d/Linear but the head)")
    m.add_argument("--save-adapter", action="store_true", help="lora/bitfit: write the adapter alone (it names its "
                   "base model) instead of the merged weights")
    m.add_argument("--backbone-lr-mult", type=float,
                   help="learning-rate multiplier of the backbone with --finetune full (default: 0.1)")
    m.add_argument("--weights", help="weights for --model (as in `run`)")
    m.add_argument("--mean", help="per-channel normalization mean (for --model as in `run`; with --arch it is "
                                  "folded into the model and stored in the checkpoint)")
    m.add_argument("--std", help="per-channel normalization std")
    m.add_argument("--num-classes", type=positive_int, help="classes, passed to a file.py factory that takes them")
    m.add_argument("--unsafe-load", action="store_true", help="allow checkpoints that need full unpickling")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", help="training data: a named set (its train split), an image folder or an "
                                     ".npz/.npy file (default with --model: the model's data set)")
    d.add_argument("--data-dir", help="root folder of a named data set")
    d.add_argument("--n-train", type=positive_int, help="train on a deterministic random subset of N examples")
    d.add_argument("--val-size", type=int, help="examples held out of the training data for validation "
                                                "(default: 10%%, at most 1000; 0 = no validation, keep the last epoch)")
    d.add_argument("--augment", choices=("auto", "none", "crop", "flip", "crop-flip"),
                   help="auto: random crop (4 px padding) and horizontal flip for colour images, none for grey "
                        "ones (digits, MNIST)")
    d.add_argument("--workers", type=int, help="DataLoader workers for reading images (default: 0)")
    d.add_argument("--in-memory", choices=("auto", "yes", "no"),
                   help="hold the decoded training set in memory (auto: when it fits in 4 GiB)")
    a = p.add_argument_group("defense")
    a.add_argument("--defense", choices=("standard", "fgsm", "pgd", "trades", "gaussian"),
                   help="standard; fgsm = FGSM with random start, step 1.25*eps (Wong et al. 2020); pgd = PGD "
                        "adversarial training (Madry et al. 2018); trades (Zhang et al. 2019); gaussian = Gaussian "
                        "noise augmentation, the base classifier of randomized smoothing (Cohen et al. 2019; "
                        "certify it with robust-bench certify) (default: standard)")
    a.add_argument("--eps", help="perturbation budget, fractions accepted (8/255); also the validation attack's "
                                 "(default: the data set's largest standard budget, e.g. 0.3 MNIST, 8/255 CIFAR)")
    a.add_argument("--norm", choices=("linf", "l2"), help="threat model (default: linf)")
    a.add_argument("--steps", type=positive_int, help="inner attack steps for pgd and trades (default: 10)")
    a.add_argument("--step-size", help="inner attack step, fractions accepted (fgsm: 1.25*eps; pgd/trades: "
                                       "2.5*eps/steps)")
    a.add_argument("--beta", type=float, help="TRADES robustness weight (default: 6)")
    a.add_argument("--sigma", type=float, help="gaussian: noise std on [0, 1] pixels, the sigma to certify with "
                                               "(default: 0.25)")
    a.add_argument("--clip-start", action=argparse.BooleanOptionalAction,
                   help="fgsm: clip the uniform random start to the [0, 1] box before the gradient step (Wong "
                        "et al.'s CIFAR-10 code); default: the gradient at the unclipped start, as the paper's "
                        "algorithm and their MNIST code (the result is clipped to the box either way)")
    a.add_argument("--eps-warmup", type=float, metavar="EPOCHS",
                   help="ramp the training eps (and step) linearly from 0 over this many epochs (default: a "
                        "third of the run, at most 5, for large budgets such as MNIST at 0.3 (L-inf >= 0.1); "
                        "none otherwise; 0 turns it off)")
    o = p.add_argument_group("optimization")
    o.add_argument("--epochs", type=positive_int, help="epochs (default: 10)")
    o.add_argument("--batch-size", type=positive_int, help="global batch size (default: 128)")
    o.add_argument("--lr", help="peak learning rate (default: sgd 0.1 from scratch or linear, 0.01 fine-tuning; "
                                "adamw 1e-3 / 1e-4, 5e-3 for adversarial training of a network without batch norm)")
    o.add_argument("--optimizer", choices=("sgd", "adamw"),
                   help="sgd (momentum 0.9) or adamw (default: sgd; adamw at 5e-3 without weight decay for "
                        "adversarial training from scratch of a network without batch norm, unless --lr is given)")
    o.add_argument("--momentum", type=float, help="SGD momentum (default: 0.9)")
    o.add_argument("--weight-decay", type=float, help="weight decay (default: sgd 5e-4, adamw 0.05; 0 with the "
                                                      "adamw default of a network without batch norm)")
    o.add_argument("--schedule", choices=("auto", "cosine", "cyclic", "step", "constant"),
                   help="learning rate per step: cosine to 0; cyclic = one cycle peaking at --cycle-peak; step = "
                        "x0.1 at each of --lr-milestones (default 1/2 and 3/4 of training) (auto: cyclic for "
                        "fgsm, step with --lr-milestones, cosine otherwise)")
    o.add_argument("--cycle-peak", type=float, help="where the cyclic rate peaks, as a fraction of training "
                                                    "(default: 0.4)")
    o.add_argument("--lr-milestones", help="epochs at which the step schedule multiplies the rate by 0.1, e.g. "
                                           "100,150")
    v = p.add_argument_group("validation")
    v.add_argument("--val-steps", type=positive_int, help="PGD steps of the validation attack (default: 10)")
    v.add_argument("--select-by", choices=("auto", "pgd", "clean", "last"),
                   help="which epoch to write: best PGD validation accuracy (early stopping, Rice et al. 2020), "
                        "best clean, or the last (auto: pgd for adversarial defenses, clean for standard)")
    e = p.add_argument_group("engine")
    e.add_argument("--device", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    e.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="autocast precision (fp16 uses a gradient scaler on CUDA) (default: fp32)")
    e.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="channels_last memory format")
    e.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="torch.compile the model (backend: inductor; aot_eager or eager compile faster and help "
                        "debugging)")
    e.add_argument("--sync-bn", action="store_true",
                   help="with several CUDA processes: batch-norm statistics over the global batch (SyncBatchNorm)")
    e.add_argument("--seed", type=int, help="seed of initialization, data split, order and attacks (default: 0)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="checkpoint to write (written at the end, atomically)")
    out.add_argument("--log-dir", help="per-epoch metrics.csv and TensorBoard events (default: runs/<out name>; "
                                       "'none' to skip)")
    out.add_argument("--resume", help="training-state file of an interrupted run (same arguments); the result "
                                      "is identical to an uninterrupted run")
    out.add_argument("--state", help="training-state file written after every epoch (default: OUT with suffix "
                                     ".state.pt; removed when training finishes unless --keep-state)")
    out.add_argument("--keep-state", action="store_true", help="keep the training-state file after finishing")
    out.add_argument("--stop-after", type=positive_int,
                     help="leave after N epochs of this invocation (keeps the state file for --resume)")
    out.add_argument("--allow-failed", action="store_true",
                     help="exit 0 even when the run failed (stayed at chance, diverged, collapsed); the checkpoint "
                          "records the failure either way")
    out.add_argument("--quiet", action="store_true", help="print only the final summary")
    p.set_defaults(func=_run)


def _num(text: str, what: str) -> float:
    return parse_number(text, what)


def spec_from_args(args: argparse.Namespace):
    """The TrainSpec the options describe: the recipe's values (if any) under the options given."""
    from ..training import TrainSpec
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _CLI_ONLY}
    for key, what in (("eps", "eps"), ("step_size", "step size"), ("lr", "learning rate")):
        if key in given:
            given[key] = _num(given[key], what)
    for key in ("mean", "std"):
        if key in given:
            given[key] = parse_channels(given[key], key)
    if "arch_args" in given:
        given["arch_args"] = parse_kv(given["arch_args"])
    if "lora_targets" in given:
        given["lora_targets"] = tuple(s.strip() for s in given["lora_targets"].split(",") if s.strip())
    if "lr_milestones" in given:
        items = [s for s in given["lr_milestones"].split(",") if s.strip()]
        if not items:
            raise UserError("--lr-milestones needs at least one epoch")
        given["lr_milestones"] = tuple(_num(s, "learning-rate milestone") for s in items)
    log_dir = given.get("log_dir")
    if log_dir is None:
        given["log_dir"] = str(Path("runs") / Path(given["out"]).stem)
    elif log_dir.lower() == "none":
        given["log_dir"] = None
    recipe = given.pop("recipe", None)
    spec = TrainSpec.from_recipe(recipe, **given) if recipe else TrainSpec(**given)
    return spec.check()


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (`main` records it as args.argv), else rebuilt from the options given; without
    --resume/--stop-after, so that it reproduces the result in one go."""
    argv = [str(a) for a in getattr(args, "argv", None) or []]
    if argv[:1] == ["train"]:
        return "robust-bench " + shlex.join(_drop_session_options(argv))
    parts = ["train"]
    for dest, value in vars(args).items():
        if dest in _CLI_ONLY or dest in _SESSION:
            continue
        opt = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            parts.append(opt if value else f"--no-{opt[2:]}")
        else:
            parts += [opt, str(value)]
    return "robust-bench " + shlex.join(parts)


def _drop_session_options(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--resume", "--stop-after"):
            skip = True
            continue
        if a.startswith(("--resume=", "--stop-after=")):
            continue
        out.append(a)
    return out


def _pct(v: float | None) -> str:
    return f"{100 * v:.1f}%"


def _run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    from ..training import FAILED_EXIT_CODE, TrainingFailed, train
    main = os.environ.get("RANK", "0") == "0"
    quiet = getattr(args, "quiet", False) or not main

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    try:
        outcome = train(spec, command=command_line(args), log=None if quiet else log,
                        progress=not quiet and sys.stderr.isatty())
        failed = False
    except TrainingFailed as e:
        outcome, failed = e.outcome, True
    except KeyboardInterrupt:
        if main:
            state = spec.state_path()
            hint = (f"continue with the same command plus --resume {state}" if state is not None and state.is_file()
                    else "no epoch had finished; rerun the command")
            sys.stderr.write(f"robust-bench: interrupted; {hint}\n")
        return 130
    if not main:
        return FAILED_EXIT_CODE if failed else 0
    s = outcome.spec
    if not outcome.finished:
        print(f"stopped after epoch {len(outcome.history)} of {s.epochs}; continue with the same command plus "
              f"--resume {outcome.state_file}")
        return 0
    if outcome.checkpoint is not None:
        m = outcome.meta["metrics"]
        tail = ""
        if m.get("val_clean") is not None:
            tail = f": validation clean {_pct(m['val_clean'])}"
            if m.get("val_pgd") is not None:
                from ..training import eps_label
                tail += f", PGD-{s.val_steps} eps {eps_label(s.eps)} {_pct(m['val_pgd'])}"
        mark = "marked as failed; " if outcome.failure is not None else ""
        print(f"wrote {outcome.checkpoint} ({mark}epoch {m['best_epoch']} of {s.epochs}, selected by "
              f"{m['selected_by']}){tail}")
    if outcome.failure is None:
        return 0
    if not failed:    # --allow-failed
        sys.stderr.write(f"warning: training failed: {outcome.failure.message}\n")
        return 0
    sys.stderr.write(f"robust-bench: error: training failed: {outcome.failure.message} (--allow-failed accepts "
                     f"such a run)\n")
    return FAILED_EXIT_CODE


def list_recipes() -> int:
    """`robust-bench list recipes`: each recipe with its source, published numbers and settings."""
    from ..recipes import RECIPES
    for name in sorted(RECIPES):
        r = RECIPES[name]
        print(f"  {name}")
        print(f"      {r.paper}  {r.url}")
        print(f"      code: {r.code}")
        print(f"      published: {r.published}")
        print(f"      settings: {r.describe()}")
        if r.notes:
            print(f"      notes: {r.notes}")
    print("use: robust-bench train --recipe NAME [--data-dir DIR | --dataset PATH] --out CKPT [any option to "
          "override]")
    return 0
