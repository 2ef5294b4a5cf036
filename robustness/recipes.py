"""Named training recipes: the settings of published adversarial-training papers, as `TrainSpec` fields.

`robust-bench train --recipe NAME` (or `TrainSpec.from_recipe(NAME, **overrides)`) starts from these values;
anything given explicitly overrides them, and the checkpoint records the final values. The numbers were read
from each paper's official code (the repository named in `code`) and the paper itself; `notes` says where a
recipe departs from them and why. Pure data: importing this module costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from .errors import unknown

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)   # the statistics the fast_adversarial / robust_overfitting code uses
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


@dataclass(frozen=True)
class PublishedRecipe:
    name: str
    paper: str                       # authors, title, venue
    url: str                         # the paper
    code: str                        # the official code the settings were read from
    settings: Mapping[str, Any]      # TrainSpec field -> value
    published: str                   # the paper's headline numbers for this setting
    notes: str = ""

    def describe(self) -> str:
        """The settings as the command-line options they stand for."""
        parts = []
        for k, v in self.settings.items():
            opt = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                parts.append(opt if v else f"--no-{opt[2:]}")
            elif isinstance(v, (tuple, list)):
                parts.append(f"{opt} {','.join(_num(x) for x in v)}")
            else:
                parts.append(f"{opt} {_num(v)}")
        return " ".join(parts)


def _num(v: Any) -> str:
    if isinstance(v, float):
        k = v * 255
        if abs(k - round(k)) < 1e-9 and 1 <= round(k) < 255 and len(f"{v:g}") > 6:
            return f"{round(k)}/255"
        return f"{v:g}"
    return str(v)


def _recipe(name: str, paper: str, url: str, code: str, published: str, notes: str = "",
            **settings: Any) -> PublishedRecipe:
    return PublishedRecipe(name, paper, url, code, MappingProxyType(dict(settings)), published, notes)


_WONG = "Wong, Rice & Kolter, Fast is better than free: revisiting adversarial training, ICLR 2020"
_MADRY = "Madry et al., Towards deep learning models resistant to adversarial attacks, ICLR 2018"

RECIPES: Mapping[str, PublishedRecipe] = MappingProxyType({r.name: r for r in (
    _recipe("wong2020-fgsm-mnist", _WONG, "https://arxiv.org/abs/2001.03994",
            "https://github.com/locuslab/fast_adversarial (MNIST/train_mnist.py)",
            "about 88.8% PGD accuracy at L-inf eps 0.3 (PGD-50, 10 restarts, step 0.01)",
            "Adam at weight decay 0 is AdamW at weight decay 0. Trains on all 60,000 images and keeps the last "
            "epoch, as the paper (no validation split, so catastrophic overfitting cannot be detected). The "
            "gradient is taken at the unclipped random start, as their code (only the result is clipped to the "
            "[0, 1] box); clipping the start first collapses the run here (measured: 6.8% instead of 88% PGD "
            "accuracy, docs/TRAINING.md).",
            dataset="mnist", arch="small-cnn", defense="fgsm", eps=0.3, step_size=0.375, epochs=10,
            batch_size=100, optimizer="adamw", lr=5e-3, weight_decay=0.0, schedule="cyclic", cycle_peak=0.4,
            augment="none", clip_start=False, eps_warmup=0.0, val_size=0, select_by="last"),
    _recipe("wong2020-fgsm-cifar10", _WONG, "https://arxiv.org/abs/2001.03994",
            "https://github.com/locuslab/fast_adversarial (CIFAR10/train_fgsm.py)",
            "86.06% clean, 46.06% PGD accuracy at L-inf 8/255 (PGD-50, 10 restarts), 12 minutes on one GPU",
            "The paper trains in mixed precision (apex O2); pass --precision bf16 (and --channels-last) on a GPU. "
            "Its cyclic rate peaks half-way (the MNIST code peaks at 2/5), and its random start is clipped to the "
            "[0, 1] box before the gradient step (the MNIST code's is not). Last epoch kept, as the paper; "
            "--val-size 1000 --select-by pgd adds their optional early stopping in our form.",
            dataset="cifar10", arch="preact-resnet18", mean=CIFAR10_MEAN, std=CIFAR10_STD, defense="fgsm",
            eps=8 / 255, step_size=10 / 255, epochs=15, batch_size=128, optimizer="sgd", lr=0.2, momentum=0.9,
            weight_decay=5e-4, schedule="cyclic", cycle_peak=0.5, augment="crop-flip", clip_start=True,
            eps_warmup=0.0, val_size=0, select_by="last"),
    _recipe("madry2018-pgd-mnist", _MADRY, "https://arxiv.org/abs/1706.06083",
            "https://github.com/MadryLab/mnist_challenge (config.json, model.py, train.py)",
            "98.8% clean; 89.3% PGD accuracy at L-inf eps 0.3 (PGD-100, 20 restarts), 93.2% against PGD-40",
            "100,000 steps of batch 50 = 83.3 epochs, rounded down to 83. Their network is the TensorFlow "
            "tutorial CNN (madry-cnn here: two 5x5 conv + max-pool layers of 32 and 64 channels, 1024 hidden "
            "units).",
            dataset="mnist", arch="madry-cnn", defense="pgd", eps=0.3, steps=40, step_size=0.01, epochs=83,
            batch_size=50, optimizer="adamw", lr=1e-4, weight_decay=0.0, schedule="constant", augment="none",
            eps_warmup=0.0, val_size=0, select_by="last"),
    _recipe("madry2018-pgd-cifar10", _MADRY, "https://arxiv.org/abs/1706.06083",
            "https://github.com/MadryLab/cifar10_challenge (config.json, model.py)",
            "87.3% clean; 45.8% PGD accuracy at L-inf 8/255 (PGD-20), 50.0% against PGD-7",
            "80,000 steps of batch 128 = 204.8 epochs (205 here), rate 0.1 -> 0.01 -> 0.001 at steps 40,000 and "
            "60,000 (epochs 102.4 and 153.6). PGD-7 of step 2/255 as in the paper (the repository's config.json "
            "has 10 steps). Their network (five residual units of widths 160/320/640 per stage) has the block "
            "layout of WRN-34-10.",
            dataset="cifar10", arch="wrn-34-10", defense="pgd", eps=8 / 255, steps=7, step_size=2 / 255,
            epochs=205, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="step",
            lr_milestones=(102.4, 153.6), augment="crop-flip", eps_warmup=0.0, val_size=0, select_by="last"),
    _recipe("zhang2019-trades-cifar10",
            "Zhang et al., Theoretically principled trade-off between robustness and accuracy, ICML 2019",
            "https://arxiv.org/abs/1901.08573", "https://github.com/yaodongyu/TRADES (train_trades_cifar10.py)",
            "84.92% clean, 56.61% PGD-20 accuracy at L-inf 0.031 (the released WRN-34-10, beta 6); 53.08% "
            "against AutoAttack (RobustBench)",
            "76 epochs; the rate is 0.1 for epochs 1-74 and 0.01 for epochs 75-76 (adjust_learning_rate at "
            "epoch >= 75). No input normalization, as their code.",
            dataset="cifar10", arch="wrn-34-10", defense="trades", eps=0.031, steps=10, step_size=0.007,
            beta=6.0, epochs=76, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4,
            schedule="step", lr_milestones=(74.0,), augment="crop-flip", eps_warmup=0.0, val_size=0,
            select_by="last"),
    _recipe("rice2020-pgd-cifar10",
            "Rice, Wong & Kolter, Overfitting in adversarially robust deep learning, ICML 2020",
            "https://arxiv.org/abs/2002.11569", "https://github.com/locuslab/robust_overfitting (train_cifar.py)",
            "about 53% PGD-10 accuracy at L-inf 8/255 at the best epoch (early stopping) against about 47% "
            "at the last of 200 (PreAct ResNet-18)",
            "Early stopping on robust validation accuracy: 1,000 training images are held out and the epoch "
            "with the best PGD-10 accuracy on them is written. Rate 0.1, x0.1 at epochs 100 and 150.",
            dataset="cifar10", arch="preact-resnet18", mean=CIFAR10_MEAN, std=CIFAR10_STD, defense="pgd",
            eps=8 / 255, steps=10, step_size=2 / 255, epochs=200, batch_size=128, optimizer="sgd", lr=0.1,
            momentum=0.9, weight_decay=5e-4, schedule="step", lr_milestones=(100.0, 150.0), augment="crop-flip",
            eps_warmup=0.0, val_size=1000, val_steps=10, select_by="pgd"),
)})


def get_recipe(name: str) -> PublishedRecipe:
    if name not in RECIPES:
        raise unknown("recipe", name, RECIPES)
    return RECIPES[name]


def recipe_names() -> list[str]:
    return sorted(RECIPES)
