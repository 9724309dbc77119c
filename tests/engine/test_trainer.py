"""The training loop and the CLI's error paths, in process, with a stand-in detector.

The stand-in (``ToyDetector``) keeps these tests fast; the real detector runs in
test_resume.py and test_ddp.py.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

import training.models
from training.config import load_config
from training.engine.checkpointer import Checkpointer
from training.engine.distributed import DistInfo
from training.engine.lr_schedule import LrSchedule
from training.engine.metrics_log import MetricsLog
from training.engine.trainer import NonFiniteLossError, Trainer, TrainState, build_optimizer
from training.train import _build_train_loader, main

from .conftest import ToyDetector


@pytest.fixture()
def toy_config(tmp_path, synthetic_dir) -> Path:
    """A config for ToyDetector on the synthetic set: 64 px, batches of 2, 6 updates."""
    d = synthetic_dir
    cfg = {
        "data": {
            "train": {"ann_file": str(d / "annotations/instances_train.json"), "img_dir": str(d / "train")},
            "val": {"ann_file": str(d / "annotations/instances_val.json"), "img_dir": str(d / "val")},
            "scale": [64, 64],
            "batch_size": 2,
            "workers": 0,
        },
        "train": {"max_iters": 6, "checkpoint_interval": 2, "log_interval": 1, "warmup_iters": 2,
                  "eval_at_end": False, "lr": 0.01, "base_batch_size": 2, "device": "cpu"},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture()
def toy_model(monkeypatch):
    """Makes ``build_model`` return a ToyDetector; ``toy_model["nan_at"]`` injects a NaN loss."""
    options = {"nan_at": None}

    def build(cfg, **kwargs):
        return ToyDetector(num_classes=cfg.model.num_classes, nan_at=options["nan_at"])

    monkeypatch.setattr(training.models, "build_model", build)
    return options


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def make_trainer(cfg, work_dir: Path, model: torch.nn.Module, *, grad_clip=None, weight_decay=1e-4):
    loader = _build_train_loader(cfg, DistInfo(), torch.device("cpu"))
    schedule = LrSchedule(base_lr=0.01, max_iters=cfg.train.max_iters, warmup_iters=2, warmup_ratio=0.5,
                          step_iters=[4], gamma=0.1)
    optimizer = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=weight_decay)
    work_dir.mkdir(exist_ok=True)
    trainer = Trainer(
        model=model, optimizer=optimizer, schedule=schedule, data_loader=loader,
        device=torch.device("cpu"), checkpointer=Checkpointer(work_dir=work_dir),
        checkpoint_extra={"config": {"name": "toy"}, "meta": {}},
        metrics=MetricsLog(path=work_dir / "metrics.jsonl"), curves_path=work_dir / "curves.png",
        grad_clip=grad_clip, log_interval=1, checkpoint_interval=2, progress=False,
    )
    return trainer, loader


def test_metrics_records_follow_the_schedule(tmp_path, toy_config):
    cfg = load_config(toy_config)
    model = ToyDetector(num_classes=6)
    trainer, loader = make_trainer(cfg, tmp_path / "w", model)
    state = trainer.train()
    iters_per_epoch = len(loader)
    assert state.iteration == 6
    assert (state.epoch, state.batch_in_epoch) == divmod(6, iters_per_epoch)
    records = [json.loads(line) for line in (tmp_path / "w/metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert r["lr"] == pytest.approx(trainer.schedule.lr_at(r["iter"] - 1))
        assert r["epoch"] == (r["iter"] - 1) // iters_per_epoch
        assert r["total"] == pytest.approx(r["toy_cls"] + r["toy_box"], rel=1e-5)
        assert r["toy_box_unweighted"] == pytest.approx(r["toy_box"] / 0.5)
        assert r["time"] >= r["data_time"] >= 0 and r["memory"] > 0
    assert (tmp_path / "w/curves.png").is_file()
    ckpt = Checkpointer(work_dir=tmp_path / "w").load_latest()
    assert ckpt["iteration"] == 6
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)


def test_grad_clip_bounds_the_update(tmp_path, toy_config):
    cfg = load_config(toy_config, ["train.max_iters=1"])
    model = ToyDetector(num_classes=6)
    before = [p.detach().clone() for p in model.parameters()]
    trainer, _ = make_trainer(cfg, tmp_path / "w", model, grad_clip=1e-3, weight_decay=0.0)
    trainer.train()
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    lr0 = trainer.schedule.lr_at(0)
    record = json.loads((tmp_path / "w/metrics.jsonl").read_text().splitlines()[0])
    assert record["grad_norm"] > 0.1  # the norm before clipping is logged, far above the clip
    # first SGD step with momentum buffer = gradient: |update| = lr * |clipped grad| = lr * 1e-3
    # (1% slack: float32 rounding of p - lr * g at this tiny step size)
    assert step.norm() == pytest.approx(lr0 * 1e-3, rel=1e-2)


def test_non_finite_loss_stops_with_the_loss_dict(tmp_path, toy_config):
    cfg = load_config(toy_config)
    model = ToyDetector(num_classes=6, nan_at=3)
    trainer, _ = make_trainer(cfg, tmp_path / "w", model)
    with pytest.raises(NonFiniteLossError) as e:
        trainer.train()
    msg = str(e.value)
    assert "iteration 3" in msg and "toy_box: nan" in msg and "toy_cls:" in msg and "total: nan" in msg
    ckpt = Checkpointer(work_dir=tmp_path / "w").load_latest()
    assert ckpt["iteration"] == 2  # the checkpoint before the NaN is the latest
    for k, v in model.state_dict().items():  # and the NaN update touched no weight
        assert torch.equal(ckpt["model"][k], v)


def test_cli_non_finite_loss_exits_with_error(tmp_path, toy_config, toy_model, capsys):
    toy_model["nan_at"] = 5
    work = tmp_path / "run"
    assert main(["--config", str(toy_config), "--work-dir", str(work), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "libra-train: error: non-finite loss at iteration 5" in err
    assert "toy_box: nan" in err and str(work / "latest.pth") in err
    assert torch.load(work / "latest.pth", weights_only=True)["iteration"] == 4


def test_cli_run_writes_the_work_dir(tmp_path, toy_config, toy_model):
    work = tmp_path / "run"
    assert main(["--config", str(toy_config), "--work-dir", str(work), "--no-progress",
                 "--set", "train.max_iters=3"]) == 0
    assert sorted(p.name for p in work.iterdir()) == [
        "config.yaml", "latest.pth", "loss_curves.png", "metrics.jsonl", "model_final.pth"]
    resolved = load_config(work / "config.yaml")
    assert resolved.model.num_classes == 6
    assert resolved.model.class_names == ["circle", "square", "triangle", "star", "hexagon", "cross"]
    assert resolved.train.max_iters == 3
    final = torch.load(work / "model_final.pth", weights_only=True)
    assert sorted(final) == ["config", "meta", "model"]
    assert final["meta"]["class_names"] == resolved.model.class_names
    assert final["meta"]["cat_ids"] == [1, 2, 3, 5, 7, 9]
    assert final["config"]["model"]["num_classes"] == 6


def test_cli_refuses_to_overwrite_a_run(tmp_path, toy_config, toy_model, capsys):
    work = tmp_path / "run"
    work.mkdir()
    torch.save({}, work / "latest.pth")
    assert main(["--config", str(toy_config), "--work-dir", str(work)]) == 1
    err = capsys.readouterr().err
    assert str(work / "latest.pth") in err and "--resume" in err


def test_cli_resume_without_checkpoint_names_the_file(tmp_path, toy_config, toy_model, capsys):
    work = tmp_path / "run"
    assert main(["--config", str(toy_config), "--work-dir", str(work), "--resume"]) == 1
    err = capsys.readouterr().err
    assert str(work / "latest.pth") in err and "no checkpoint to resume from" in err


def test_cli_resume_from_corrupt_checkpoint_names_the_file(tmp_path, toy_config, toy_model, capsys):
    work = tmp_path / "run"
    work.mkdir()
    (work / "latest.pth").write_bytes(b"\x00garbage")
    assert main(["--config", str(toy_config), "--work-dir", str(work), "--resume"]) == 1
    err = capsys.readouterr().err
    assert str(work / "latest.pth") in err and "corrupt" in err


def test_cli_num_classes_mismatch_names_the_file(tmp_path, toy_config, toy_model, capsys):
    work = tmp_path / "run"
    assert main(["--config", str(toy_config), "--work-dir", str(work), "--set", "model.num_classes=3"]) == 1
    err = capsys.readouterr().err
    assert "model.num_classes is 3" in err and "instances_train.json defines 6 categories" in err


def test_resume_state_round_trip_in_process(tmp_path, toy_config):
    """Checkpoint at 4 -> a fresh trainer resumed from it ends where the uninterrupted one does."""
    cfg = load_config(toy_config)
    seed_all(0)
    model_a = ToyDetector(num_classes=6)
    init = {k: v.clone() for k, v in model_a.state_dict().items()}
    trainer_a, _ = make_trainer(cfg, tmp_path / "a", model_a)
    trainer_a.train()

    cfg4 = load_config(toy_config, ["train.max_iters=4"])
    model_b = ToyDetector(num_classes=6)
    model_b.load_state_dict(init)
    seed_all(0)
    _ = ToyDetector(num_classes=6)  # same RNG consumption as building model_a
    trainer_b, _ = make_trainer(cfg4, tmp_path / "b", model_b)
    # the 6-update schedule stopped after 4 updates (the rate depends on the iteration only)
    trainer_b.schedule = LrSchedule(**{**trainer_a.schedule.state_dict(), "max_iters": 4})
    trainer_b.train()
    ckpt = Checkpointer(work_dir=tmp_path / "b").load_latest()

    seed_all(123)  # a fresh process would have other RNG states
    model_c = ToyDetector(num_classes=6)
    trainer_c, _ = make_trainer(cfg, tmp_path / "c", model_c)
    state = trainer_c.load_state_dict(ckpt)
    assert state == TrainState(iteration=4, epoch=4 // len(trainer_c.data_loader),
                               batch_in_epoch=4 % len(trainer_c.data_loader))
    trainer_c.train(state)
    for k, v in model_a.state_dict().items():
        assert torch.equal(model_c.state_dict()[k], v), k


@pytest.mark.parametrize("override, message", [
    ("train.checkpoint_interval=0", "train.checkpoint_interval must be >= 1"),
    ("train.grad_clip=-1", "train.grad_clip must be > 0"),
    ("train.device=tpu", "train.device must be 'auto', 'cpu' or 'cuda'"),
    ("train.lr_steps=[11,8]", "train.lr_steps must be positive and ascending"),
])
def test_cli_bad_train_settings_name_the_key(tmp_path, toy_config, toy_model, capsys, override, message):
    assert main(["--config", str(toy_config), "--work-dir", str(tmp_path / "run"), "--set", override]) == 1
    assert message in capsys.readouterr().err
