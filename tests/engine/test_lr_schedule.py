"""Learning-rate schedule: warmup, step decay, max_iters scaling, the linear scaling rule."""
from __future__ import annotations

import pytest
import torch

from training.config import ConfigError, TrainConfig
from training.engine.lr_schedule import LrSchedule, build_lr_schedule, scaled_lr, set_lr


def test_warmup_starts_at_ratio_and_ramps_linearly():
    s = LrSchedule(base_lr=0.02, max_iters=1000, warmup_iters=500, warmup_ratio=1 / 3,
                   step_iters=[800, 900], gamma=0.1)
    assert s.lr_at(0) == pytest.approx(0.02 / 3)
    assert s.lr_at(250) == pytest.approx(0.02 * (1 / 3 + 2 / 3 * 0.5))
    assert s.lr_at(499) == pytest.approx(0.02 * (1 / 3 + 2 / 3 * 499 / 500))
    ramp = [s.lr_at(i) for i in range(500)]
    diffs = [b - a for a, b in zip(ramp, ramp[1:])]
    assert max(diffs) - min(diffs) < 1e-12  # constant slope
    assert s.lr_at(500) == pytest.approx(0.02)


def test_steps_decay_from_the_step_iteration_on():
    s = LrSchedule(base_lr=0.02, max_iters=1000, warmup_iters=0, warmup_ratio=0.1,
                   step_iters=[800, 900], gamma=0.1)
    assert s.lr_at(0) == pytest.approx(0.02)
    assert s.lr_at(799) == pytest.approx(0.02)
    assert s.lr_at(800) == pytest.approx(0.002)
    assert s.lr_at(899) == pytest.approx(0.002)
    assert s.lr_at(900) == pytest.approx(0.0002)
    assert s.lr_at(999) == pytest.approx(0.0002)


def test_epoch_schedule_converts_steps_with_iters_per_epoch():
    cfg = TrainConfig(epochs=12, lr=0.02, base_batch_size=16, warmup_iters=500, lr_steps=[8, 11])
    s = build_lr_schedule(cfg, iters_per_epoch=100, total_batch_size=16)
    assert s.max_iters == 1200
    assert s.step_iters == [800, 1100]
    assert s.warmup_iters == 500
    assert s.base_lr == pytest.approx(0.02)


@pytest.mark.parametrize(
    "max_iters, steps", [(6, [4, 6]), (12, [8, 11]), (1200, [800, 1100]), (100, [67, 92])]
)
def test_max_iters_keeps_steps_at_the_same_fraction(max_iters, steps):
    cfg = TrainConfig(epochs=12, lr_steps=[8, 11], max_iters=max_iters, warmup_iters=500)
    s = build_lr_schedule(cfg, iters_per_epoch=7, total_batch_size=16)
    assert s.max_iters == max_iters
    assert s.step_iters == steps
    assert s.warmup_iters == min(500, max_iters)  # warmup clipped to the schedule


def test_short_schedule_combines_warmup_and_steps():
    cfg = TrainConfig(epochs=12, lr=0.02, base_batch_size=2, lr_steps=[8, 11], max_iters=6,
                      warmup_iters=500, warmup_ratio=0.5)
    s = build_lr_schedule(cfg, iters_per_epoch=4, total_batch_size=2)
    assert s.warmup_iters == 6
    assert s.lr_at(0) == pytest.approx(0.01)
    assert s.lr_at(3) == pytest.approx(0.02 * (0.5 + 0.5 * 3 / 6))
    assert s.lr_at(4) == pytest.approx(0.02 * (0.5 + 0.5 * 4 / 6) * 0.1)  # step at 4 in warmup


def test_linear_scaling_rule():
    cfg = TrainConfig(lr=0.02, base_batch_size=16, scale_lr=True)
    assert scaled_lr(cfg, 16) == pytest.approx(0.02)
    assert scaled_lr(cfg, 4) == pytest.approx(0.005)
    assert scaled_lr(cfg, 32) == pytest.approx(0.04)
    cfg.scale_lr = False
    assert scaled_lr(cfg, 4) == pytest.approx(0.02)
    s = build_lr_schedule(TrainConfig(lr=0.02, base_batch_size=16, warmup_iters=0),
                          iters_per_epoch=10, total_batch_size=8)
    assert s.lr_at(0) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"lr_steps": [11, 8]}, "train.lr_steps"),
        ({"lr_steps": [0, 8]}, "train.lr_steps"),
        ({"max_iters": 0}, "train.max_iters"),
        ({"lr": 0.0}, "train.lr"),
        ({"warmup_ratio": 0.0}, "train.warmup_ratio"),
        ({"epochs": 0}, "train.epochs"),
        ({"warmup_iters": -1}, "train.warmup_iters"),
    ],
)
def test_invalid_schedule_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        build_lr_schedule(TrainConfig(**kwargs), iters_per_epoch=10, total_batch_size=16)


def test_set_lr_sets_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=1.0)
    set_lr(opt, 0.123)
    assert [g["lr"] for g in opt.param_groups] == [0.123, 0.123]


def test_state_dict_round_trips():
    s = LrSchedule(base_lr=0.01, max_iters=10, warmup_iters=2, warmup_ratio=0.5,
                   step_iters=[5, 8], gamma=0.5)
    assert LrSchedule(**s.state_dict()).state_dict() == s.state_dict()
