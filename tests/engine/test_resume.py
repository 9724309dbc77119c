"""The real CLI on the tiny Faster R-CNN: the work dir's files, and exact resume after SIGKILL.

Run A trains 6 updates uninterrupted. Run B is the same command, paused in update 5 (after the
checkpoint of update 4 was written) by the ``LIBRA_TRAIN_DEBUG_PAUSE_AT_ITER`` hook, killed with
SIGKILL, then resumed with ``--resume``: its final weights and logged losses must equal A's
bit for bit.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

from training.config import load_config
from training.engine.trainer import DEBUG_PAUSE_ENV
from training.models import load_checkpoint_model

from .conftest import REPO, TINY_CONFIG, data_overrides

TIMEOUT = 120


def cli(work_dir: Path, data_dir: Path, *extra: str) -> List[str]:
    return [
        sys.executable, "-m", "training.train", "--config", str(TINY_CONFIG), "--work-dir", str(work_dir),
        "--no-progress", *extra, "--set", *data_overrides(data_dir),
        "train.max_iters=6", "train.checkpoint_interval=2", "train.log_interval=1",
        "data.workers=0", "data.batch_size=2", "data.scale=[64,64]", "train.device=cpu",
    ]


def env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run(cmd: List[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(work_dir: Path) -> List[dict]:
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "data_time", "memory", "eta_s")} for r in records]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, synthetic_dir) -> Path:
    work = tmp_path_factory.mktemp("run_a")
    run(cli(work, synthetic_dir))
    return work


def test_a_run_writes_config_metrics_checkpoints_and_eval(run_a):
    assert {"config.yaml", "metrics.jsonl", "loss_curves.png", "latest.pth", "model_final.pth", "eval"} <= {
        p.name for p in run_a.iterdir()}
    cfg = load_config(run_a / "config.yaml")
    assert cfg.model.num_classes == 6 and cfg.model.class_names[0] == "circle"
    records = losses(run_a)
    assert [r["iter"] for r in records] == [1, 2, 3, 4, 5, 6]
    for name in ("rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox"):
        assert name in records[0] and f"{name}_unweighted" in records[0]
    model = load_checkpoint_model(run_a / "model_final.pth")  # no YAML needed
    assert not model.training
    final = torch.load(run_a / "model_final.pth", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(final["model"][k], v)
    metrics = json.loads((run_a / "eval" / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "concept_recall", "concept_precision"):
        assert key in metrics


def test_sigkill_then_resume_matches_the_uninterrupted_run(run_a, tmp_path, synthetic_dir):
    work = tmp_path / "run_b"
    log = tmp_path / "b.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(cli(work, synthetic_dir), cwd=REPO, env=env(**{DEBUG_PAUSE_ENV: "5"}),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "debug: paused in iteration 5" not in log.read_text():
            assert proc.poll() is None, f"run B exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "run B never reached update 5"
            time.sleep(0.1)
        assert torch.load(work / "latest.pth", weights_only=True)["iteration"] == 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "model_final.pth").exists()

    resumed = run(cli(work, synthetic_dir, "--resume"))
    assert "resumed from" in resumed.stderr and "at iteration 4" in resumed.stderr

    a = torch.load(run_a / "model_final.pth", weights_only=True)["model"]
    b = torch.load(work / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    assert losses(work) == losses(run_a)  # same losses at every update, none logged twice
