"""Defenses: adversarial training and fine-tuning recipes on top of `attacks` (never `robustness`).

  recipes     standard, fgsm (fast AT with random start), pgd (Madry et al.), trades (Zhang et al.)
  trainer     the epoch loop: validation, best-epoch selection, catastrophic-overfitting alarm, AMP,
              channels_last, torch.compile, DistributedDataParallel (SyncBatchNorm), exact resume
  diagnosis   did the run work: stayed at chance, diverged, collapsed (with the option to change)
  finetune    find / replace / freeze a classifier's head
  schedules   cosine, cyclic (one-cycle), step, constant learning rates
  augment     random crop and flip on batches

`robustness.train` (robustness/training.py) drives this package from a TrainSpec, and `robust-bench train`
(robustness/cli/train.py) is the command line over that; published recipes are robustness/recipes.py.
"""
from .augment import AUGMENTATIONS, augment
from .diagnosis import FAILURE_KINDS, TrainingFailure, diagnose
from .distributed import DistInfo, setup as setup_distributed, teardown as teardown_distributed
from .finetune import FINETUNE_MODES, find_head, freeze_backbone, replace_head, split_params
from .recipes import RECIPES, TRADES, FastFGSM, PGDTraining, Recipe, Standard, make_recipe
from .schedules import SCHEDULES, LRFactor
from .trainer import (CSV_COLUMNS, StreamData, TensorData, TrainConfig, Trainer, TrainingError, TrainResult,
                      load_state_file, save_state_file)

__all__ = ["AUGMENTATIONS", "CSV_COLUMNS", "DistInfo", "FAILURE_KINDS", "FINETUNE_MODES", "FastFGSM",
           "LRFactor", "PGDTraining", "RECIPES", "Recipe", "SCHEDULES", "Standard", "StreamData", "TRADES",
           "TensorData", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "TrainingFailure",
           "augment", "diagnose", "find_head", "freeze_backbone", "load_state_file", "make_recipe",
           "replace_head", "save_state_file", "setup_distributed", "split_params", "teardown_distributed"]
