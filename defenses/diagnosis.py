"""Did a training run work? Three ways it fails that the numbers of the run itself show:

  chance     accuracy never left chance level (the most frequent class's share, plus a tenth of the way to
             100%): nothing was learned; a learning rate of 0 or far too high, or an attack budget too large
             to learn from at the start. Judged after at least MIN_STEPS optimizer steps, on validation
             clean accuracy when there are at least MIN_VAL validation examples, else on the final model's
             clean accuracy on (up to 1,000) training images;
             a smoke test of a few steps on a handful of images is not judged.
  diverged   the training loss became NaN or infinite: the learning rate is too high for the architecture,
             or fp16 overflowed.
  collapsed  catastrophic overfitting (Wong et al. 2020): PGD validation accuracy fell to near zero while FGSM
             accuracy stayed high, the signature of single-step training with too large a step.

Each failure names the likely cause and the option to change; the caller decides whether it is fatal.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

FAILURE_KINDS = ("chance", "diverged", "collapsed")
CHANCE_MARGIN = 0.1   # a tenth of the way from chance to 100% still counts as chance level
MIN_VAL = 50          # fewer validation examples cannot tell chance from learning
MIN_STEPS = 50        # nor can fewer optimizer steps


@dataclass(frozen=True)
class TrainingFailure:
    kind: str                 # one of FAILURE_KINDS
    message: str              # one line: what happened, the likely cause, the option to change
    epoch: int | None = None  # the epoch where it showed (1-based)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def chance_threshold(chance: float) -> float:
    return chance + CHANCE_MARGIN * (1.0 - chance)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def diagnose(history: Sequence[Mapping[str, Any]], config: Any, *, adversarial: bool, chance: float | None,
             diverged: Mapping[str, Any] | None = None, best_epoch: int | None = None,
             steps: int | None = None, n_val: int | None = None,
             train_clean: float | None = None) -> TrainingFailure | None:
    """The first failure that applies (diverged, collapsed, chance), or None. `config` is the TrainConfig
    (read for the options to suggest); `history` holds the validated epochs, `diverged` the row of the
    epoch whose loss stopped being finite, `steps` the optimizer steps taken and `n_val` the validation
    examples (None: enough). Without validation, `train_clean` is the final model's clean accuracy on
    training examples; the training accuracy of the history is the accuracy on the training inputs,
    adversarial ones for adversarial training, and says nothing about chance level there."""
    keep = f"; the checkpoint keeps epoch {best_epoch}" if best_epoch else "; no epoch is worth keeping"
    if diverged is not None:
        hint = f"lower --lr (now {config.lr:g})"
        if config.precision == "fp16":
            hint += " or use --precision bf16/fp32"
        if config.schedule == "constant":
            hint += " or use a decaying --schedule"
        return TrainingFailure("diverged", f"training diverged in epoch {diverged['epoch']} (the loss is not "
                                           f"finite): {hint}{keep}", int(diverged["epoch"]))
    collapsed = [r for r in history if r.get("warning")]
    if collapsed:
        first = collapsed[0]
        kept = next((r for r in history if r["epoch"] == best_epoch), None)
        if kept is not None and kept.get("warning"):
            tail = (f"; the checkpoint keeps epoch {best_epoch}, which has collapsed too: select the epoch by "
                    f"robust accuracy with --select-by pgd")
        else:
            tail = keep + (f" (PGD validation accuracy {_pct(kept['val_pgd'])})" if kept and kept.get("val_pgd")
                           is not None else "")
        return TrainingFailure("collapsed", f"catastrophic overfitting from epoch {first['epoch']}: "
                                            f"{first['warning']}. Lower --step-size, train fewer "
                                            f"--epochs, or use --defense pgd{tail}", int(first["epoch"]))
    if chance is None or not history or (steps is not None and steps < MIN_STEPS):
        return None
    measured = [r.get("val_clean") for r in history if r.get("val_clean") is not None]
    if n_val is not None and n_val < MIN_VAL:
        measured = []
    what = "validation clean accuracy"
    if not measured and train_clean is not None:
        measured, what = [train_clean], "clean accuracy on training images"
    if not measured and not adversarial:
        measured, what = [r.get("train_acc") for r in history if r.get("train_acc") is not None], "training accuracy"
    if not measured:
        return None
    best = max(measured)
    if best > chance_threshold(chance):
        return None
    if config.lr == 0:
        cause = "the learning rate is 0: pass a positive --lr"
    elif adversarial and not config.eps_warmup:
        cause = (f"the attack budget may be too large to learn from at the start: ramp it up with --eps-warmup "
                 f"EPOCHS (e.g. {max(1, config.epochs // 3)}), or try another --lr (now {config.lr:g})")
    elif config.optimizer == "sgd":
        cause = (f"SGD at --lr {config.lr:g} may not suit the architecture (networks without batch norm often "
                 f"stay at chance with it): try --optimizer adamw --lr 5e-3, another --lr, or more --epochs")
    else:
        cause = f"the learning rate may not suit the architecture: try another --lr (now {config.lr:g}) or more --epochs"
    last_loss = history[-1].get("train_loss")
    loss = f", final training loss {last_loss:.3f}" if isinstance(last_loss, float) else ""
    return TrainingFailure("chance", f"training stayed at chance level (best {what} {_pct(best)}, chance "
                                     f"{_pct(chance)}{loss}): {cause}", int(history[-1]["epoch"]))
