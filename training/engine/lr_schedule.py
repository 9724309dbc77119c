"""Learning-rate schedule: linear warmup then step decay, as a pure function of the iteration.

``lr(i)`` is the rate used by optimizer step ``i`` (0-based: step 0 is the first update)::

    warmup(i) = warmup_ratio + (1 - warmup_ratio) * i / warmup_iters    for i < warmup_iters
              = 1                                                      otherwise
    lr(i)     = base_lr * warmup(i) * gamma ** (number of step_iters s with s <= i)

(mmdetection's "linear" warmup applied on top of the step schedule). Because the rate depends on
the iteration only, resuming needs nothing but the iteration count.

Epoch-based schedules convert ``lr_steps`` epochs to iterations with the loader's batches per
epoch. ``train.max_iters`` shortens (or stretches) a schedule: the steps keep their fraction of
it, ``round(max_iters * step / epochs)`` with halves rounded up, e.g. epochs [8, 11] of 12 with
``max_iters=6`` -> iterations 4 and 6. Warmup is clipped to the schedule's length.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import torch

from training.config import ConfigError, TrainConfig

__all__ = ["LrSchedule", "scaled_lr", "build_lr_schedule", "set_lr"]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


class LrSchedule:
    """Linear warmup from ``base_lr * warmup_ratio`` to ``base_lr``, then ``gamma`` at each step.

    ``step_iters`` are the iterations at which the rate drops (the step at ``s`` is in force from
    update ``s`` on); they must be ascending. ``max_iters`` is the schedule's length.
    """

    def __init__(
        self,
        *,
        base_lr: float,
        max_iters: int,
        warmup_iters: int,
        warmup_ratio: float,
        step_iters: Sequence[int],
        gamma: float,
    ) -> None:
        if base_lr <= 0:
            raise ValueError(f"LrSchedule: base_lr must be > 0, got {base_lr}")
        if max_iters < 1:
            raise ValueError(f"LrSchedule: max_iters must be >= 1, got {max_iters}")
        if warmup_iters < 0:
            raise ValueError(f"LrSchedule: warmup_iters must be >= 0, got {warmup_iters}")
        if not 0.0 < warmup_ratio <= 1.0:
            raise ValueError(f"LrSchedule: warmup_ratio must be in (0, 1], got {warmup_ratio}")
        steps = [int(s) for s in step_iters]
        if steps != sorted(steps):
            raise ValueError(f"LrSchedule: step_iters must be ascending, got {steps}")
        self.base_lr = float(base_lr)
        self.max_iters = int(max_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.step_iters: List[int] = steps
        self.gamma = float(gamma)

    def factor(self, iteration: int) -> float:
        """Multiplier of ``base_lr`` for update ``iteration`` (0-based)."""
        decay = self.gamma ** sum(1 for s in self.step_iters if s <= iteration)
        if iteration < self.warmup_iters:
            warm = self.warmup_ratio + (1.0 - self.warmup_ratio) * iteration / self.warmup_iters
            return warm * decay
        return decay

    def lr_at(self, iteration: int) -> float:
        """Learning rate of update ``iteration`` (0-based)."""
        return self.base_lr * self.factor(iteration)

    def state_dict(self) -> Dict[str, Any]:
        """The schedule's parameters (stored in checkpoints for reference)."""
        return {
            "base_lr": self.base_lr,
            "max_iters": self.max_iters,
            "warmup_iters": self.warmup_iters,
            "warmup_ratio": self.warmup_ratio,
            "step_iters": list(self.step_iters),
            "gamma": self.gamma,
        }

    def __repr__(self) -> str:
        return "LrSchedule(" + ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items()) + ")"


def scaled_lr(train: TrainConfig, total_batch_size: int) -> float:
    """``train.lr`` scaled by the linear scaling rule: ``lr * total_batch / base_batch_size``.

    ``total_batch_size`` is images per optimizer step over all processes. Unscaled when
    ``train.scale_lr`` is false.
    """
    if total_batch_size < 1:
        raise ValueError(f"total_batch_size must be >= 1, got {total_batch_size}")
    if not train.scale_lr:
        return float(train.lr)
    if train.base_batch_size < 1:
        raise ConfigError(f"train.base_batch_size must be >= 1, got {train.base_batch_size}")
    return float(train.lr) * total_batch_size / train.base_batch_size


def build_lr_schedule(
    train: TrainConfig, *, iters_per_epoch: int, total_batch_size: int
) -> LrSchedule:
    """The schedule of ``train`` for a loader with ``iters_per_epoch`` batches per epoch.

    Length: ``train.max_iters`` when set, else ``train.epochs * iters_per_epoch``. Raises
    :class:`ConfigError` naming the key for an invalid schedule.
    """
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    if train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {train.epochs}")
    if list(train.lr_steps) != sorted(train.lr_steps) or any(s <= 0 for s in train.lr_steps):
        raise ConfigError(f"train.lr_steps must be positive and ascending, got {train.lr_steps}")
    if train.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {train.lr}")
    if not 0.0 < train.warmup_ratio <= 1.0:
        raise ConfigError(f"train.warmup_ratio must be in (0, 1], got {train.warmup_ratio}")
    if train.warmup_iters < 0:
        raise ConfigError(f"train.warmup_iters must be >= 0, got {train.warmup_iters}")
    if train.max_iters is not None:
        if train.max_iters < 1:
            raise ConfigError(f"train.max_iters must be >= 1 (or null), got {train.max_iters}")
        max_iters = int(train.max_iters)
        steps = [_round_half_up(max_iters * s / train.epochs) for s in train.lr_steps]
    else:
        max_iters = train.epochs * iters_per_epoch
        steps = [s * iters_per_epoch for s in train.lr_steps]
    return LrSchedule(
        base_lr=scaled_lr(train, total_batch_size),
        max_iters=max_iters,
        warmup_iters=min(train.warmup_iters, max_iters),
        warmup_ratio=train.warmup_ratio,
        step_iters=steps,
        gamma=train.lr_gamma,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
