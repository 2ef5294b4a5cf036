"""`robust-bench train`: standard and adversarial training (FGSM, PGD, TRADES) from scratch or by
fine-tuning any model `robust-bench run` loads; writes a self-describing checkpoint that
`robust-bench run --model OUT` evaluates with no other flag. See docs/TRAINING.md.

Several processes: `torchrun --nproc-per-node N -m robustness train ...` (DistributedDataParallel; nccl on
CUDA, gloo on the CPU); --batch-size is the global batch, split evenly; only rank 0 writes files.
"""
from __future__ import annotations

import argparse

from .options import positive_int

PARSER: argparse.ArgumentParser | None = None   # the train parser, to rebuild the command line it ran

EXAMPLES = """examples:
  robust-bench train --dataset digits --arch digits-cnn --defense pgd --eps 0.1 --out at.pt
  robust-bench train --dataset mnist --data-dir ../shared/data --arch small-cnn --defense fgsm --eps 0.3 \\
      --n-train 10000 --epochs 5 --out mnist-fgsm.pt
  robust-bench train --dataset cifar10/train --arch preact-resnet18 --defense pgd --eps 8/255 --steps 10 \\
      --step-size 2/255 --schedule step --epochs 200 --out pgd-at.pt
  robust-bench train --model robustness/archs.py:resnet20 --weights resnet20.th --mean 0.485,0.456,0.406 \\
      --std 0.229,0.224,0.225 --dataset cifar10/train --finetune linear --epochs 1 --out probe.pt
  torchrun --nproc-per-node 4 -m robustness train --dataset cifar10 --arch wrn-28-10 --defense trades ...
  robust-bench run --model at.pt                    # evaluate what was written
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="standard or adversarial training / fine-tuning; writes a checkpoint",
                       description="Train a classifier with a defense (standard, fgsm, pgd, trades), from "
                       "scratch (--arch) or from any model `run` loads (--model, fine-tuning). Validation after "
                       "every epoch (clean, FGSM, PGD); the epoch with the best robust validation accuracy is "
                       "written to --out with everything `robust-bench run --model OUT` needs.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    global PARSER
    PARSER = p
    m = p.add_argument_group("what to train")
    m.add_argument("--arch", help="train from scratch: digits-cnn, small-cnn, resnet20, preact-resnet18, wrn-28-10, "
                                  "wrn-34-10 (default: digits-cnn for digits, small-cnn for other grey images, "
                                  "preact-resnet18 for colour)")
    m.add_argument("--arch-args", help="extra key=value,... for the architecture (e.g. dropout=0.3)")
    m.add_argument("--model", help="fine-tune a model, named as in `robust-bench run --model`: a built-in, a "
                                   "torchvision name, robustbench:NAME, path/to/file.py:factory, a checkpoint")
    m.add_argument("--finetune", choices=("none", "linear", "full"),
                   help="with --model: none = train everything as is (the classes must fit); linear = freeze "
                        "the backbone, train the head (the last nn.Linear; replaced if the class count differs); "
                        "full = train everything, the backbone at --backbone-lr-mult times the rate (default: full)")
    m.add_argument("--backbone-lr-mult", type=float, default=0.1,
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
    d.add_argument("--augment", default="auto", choices=("auto", "none", "crop", "flip", "crop-flip"),
                   help="auto: random crop (4 px padding) and horizontal flip for colour images, none for grey "
                        "ones (digits, MNIST)")
    d.add_argument("--workers", type=int, default=0, help="DataLoader workers for reading images (default: 0)")
    d.add_argument("--in-memory", default="auto", choices=("auto", "yes", "no"),
                   help="hold the decoded training set in memory (auto: when it fits in 4 GiB)")
    a = p.add_argument_group("defense")
    a.add_argument("--defense", default="standard", choices=("standard", "fgsm", "pgd", "trades"),
                   help="standard; fgsm = FGSM with random start, step 1.25*eps (Wong et al. 2020); pgd = PGD "
                        "adversarial training (Madry et al. 2018); trades (Zhang et al. 2019) (default: standard)")
    a.add_argument("--eps", help="perturbation budget, fractions accepted (8/255); also the validation attack's "
                                 "(default: the data set's largest standard budget, e.g. 0.3 MNIST, 8/255 CIFAR)")
    a.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat model (default: linf)")
    a.add_argument("--steps", type=positive_int, help="inner attack steps for pgd and trades (default: 10)")
    a.add_argument("--step-size", help="inner attack step, fractions accepted (fgsm: 1.25*eps; pgd/trades: "
                                       "2.5*eps/steps)")
    a.add_argument("--beta", type=float, help="TRADES robustness weight (default: 6)")
    a.add_argument("--eps-warmup", type=float, default=0.0, metavar="EPOCHS",
                   help="ramp the training eps (and step) linearly from 0 over this many epochs (default: 0); "
                        "helps large budgets such as MNIST at 0.3 start learning")
    o = p.add_argument_group("optimization")
    o.add_argument("--epochs", type=positive_int, default=10, help="epochs (default: 10)")
    o.add_argument("--batch-size", type=positive_int, default=128, help="global batch size (default: 128)")
    o.add_argument("--lr", help="peak learning rate (default: sgd 0.1 from scratch or linear, 0.01 fine-tuning; "
                                "adamw 1e-3 / 1e-4)")
    o.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"), help="sgd (momentum 0.9) or adamw")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    o.add_argument("--weight-decay", type=float, help="weight decay (default: sgd 5e-4, adamw 0.05)")
    o.add_argument("--schedule", default="auto", choices=("auto", "cosine", "cyclic", "step", "constant"),
                   help="learning rate per step: cosine to 0; cyclic = one cycle peaking at 2/5; step = x0.1 at "
                        "1/2 and 3/4 (auto: cyclic for fgsm, cosine otherwise)")
    v = p.add_argument_group("validation")
    v.add_argument("--val-steps", type=positive_int, default=10, help="PGD steps of the validation attack (default: 10)")
    v.add_argument("--select-by", default="auto", choices=("auto", "pgd", "clean", "last"),
                   help="which epoch to write: best PGD validation accuracy, best clean, or the last "
                        "(auto: pgd for adversarial defenses, clean for standard)")
    e = p.add_argument_group("engine")
    e.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    e.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="autocast precision (fp16 uses a gradient scaler on CUDA)")
    e.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="channels_last memory format")
    e.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="torch.compile the model (backend: inductor; aot_eager or eager compile faster and help "
                        "debugging)")
    e.add_argument("--seed", type=int, default=0, help="seed of initialization, data split, order and attacks")
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
    out.add_argument("--quiet", action="store_true", help="print only the final summary")
    p.set_defaults(func=_run)



def _run(args: argparse.Namespace) -> int:
    """torch and the trainer load only when training is asked for, not at every CLI start."""
    from ..train_command import run
    return run(args)
