"""Learning-rate schedules of the paper and of the original code, as `LambdaLR` schedulers."""

from __future__ import annotations

import logging
import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from transformers.trainer_utils import SchedulerType


logger = logging.getLogger(__name__)


# Learning-rate schedules of the paper and of the authors' code (`run_main.py`, `utils/tools.py`), and PatchTST's
# own per-epoch decay (for the baseline in `comparison`); any `transformers.SchedulerType` name is accepted as well.
PAPER_SCHEDULES = ("halving", "original_type1", "original_tst", "original_cos", "patchtst_type3")


# Those of them that change the rate once per epoch (`EpochLrLambda`); `original_tst` is a per-step one-cycle.
EPOCH_SCHEDULES = tuple(kind for kind in PAPER_SCHEDULES if kind != "original_tst")


TRANSFORMERS_SCHEDULES = tuple(item.value for item in SchedulerType)


class EpochLrLambda:
    r"""
    Per-step multiplier of the base learning rate that changes once per epoch (a picklable `LambdaLR` function, so
    its settings are saved in `scheduler.pt` and restored on resume).

    Args:
        kind (`str`):
            `"halving"`: `0.5 ** (epoch - 1)`; `"original_type1"`: `0.5 ** max(epoch - 2, 0) / 25`;
            `"original_cos"`: `(eta_min + (1 - eta_min) * (1 + cos(pi * (epoch - 1) / 20)) / 2)` relative to the base
            rate, with `eta_min = 1e-8 / learning_rate`; `"patchtst_type3"`: `0.9 ** max(epoch - 4, 0)`. `epoch`
            counts from 1.
        steps_per_epoch (`int`):
            Optimizer steps per epoch; step `s` (from 0) is in epoch `s // steps_per_epoch + 1`.
        learning_rate (`float`, *optional*, defaults to 1.0):
            Base learning rate (only used by `"original_cos"` for its absolute `eta_min`).
    """

    def __init__(self, kind: str, steps_per_epoch: int, learning_rate: float = 1.0) -> None:
        if kind not in EPOCH_SCHEDULES:
            raise ValueError(f"`kind` must be one of {EPOCH_SCHEDULES}, got {kind!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be positive, got {steps_per_epoch}")
        self.kind = kind
        self.steps_per_epoch = int(steps_per_epoch)
        self.learning_rate = float(learning_rate)

    def __call__(self, step: int) -> float:
        epoch_index = step // self.steps_per_epoch  # 0 for the first epoch
        if self.kind == "halving":
            return 0.5**epoch_index
        if self.kind == "original_type1":
            return 0.5 ** max(epoch_index - 1, 0) / 25.0
        if self.kind == "patchtst_type3":
            return 0.9 ** max(epoch_index - 3, 0)
        eta_min = 1e-8 / self.learning_rate
        return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * epoch_index / 20)) / 2.0


def create_paper_scheduler(
    kind: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int, num_training_steps: int
) -> LRScheduler:
    r"""
    One of the schedules of [`PAPER_SCHEDULES`] (see [`TrainingSettings`]) as a per-step scheduler.

    Args:
        kind (`str`): `"halving"`, `"original_type1"`, `"original_tst"`, `"original_cos"` or `"patchtst_type3"`.
        optimizer (`torch.optim.Optimizer`): its current learning rate is the base (peak) rate.
        steps_per_epoch (`int`): optimizer steps per epoch.
        num_training_steps (`int`): total optimizer steps (the one-cycle length of `"original_tst"`).
    """
    if kind == "original_tst":
        # As `lr_scheduler.OneCycleLR(steps_per_epoch=train_steps, pct_start=0.2, epochs=train_epochs, max_lr=lr)`.
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(num_training_steps, 1), pct_start=0.2)
    learning_rate = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, EpochLrLambda(kind, steps_per_epoch, learning_rate))


__all__ = [
    "EPOCH_SCHEDULES",
    "EpochLrLambda",
    "PAPER_SCHEDULES",
    "TRANSFORMERS_SCHEDULES",
    "create_paper_scheduler",
]
