"""Two CPU processes (gloo) under torchrun: replicas stay identical, evaluation is gathered on
rank 0, and a run killed with SIGKILL resumes to the uninterrupted run's weights."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

from training.engine.trainer import DEBUG_PAUSE_ENV
from training.train import SAVE_RANK_WEIGHTS_ENV

from .conftest import REPO, TINY_CONFIG, data_overrides

TIMEOUT = 180
PAUSED = re.compile(r"debug: paused in iteration 3 \(pid (\d+)\)")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def torchrun(work_dir: Path, data_dir: Path, *extra: str) -> List[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training.train", "--config", str(TINY_CONFIG), "--work-dir", str(work_dir), "--no-progress",
        *extra, "--set", *data_overrides(data_dir),
        "train.max_iters=4", "train.checkpoint_interval=2", "train.log_interval=1",
        "data.workers=0", "data.batch_size=2", "data.scale=[64,64]", "train.device=cpu",
    ]


def env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", SAVE_RANK_WEIGHTS_ENV: "1", **extra}


def run(cmd: List[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, synthetic_dir) -> Path:
    work = tmp_path_factory.mktemp("ddp")
    run(torchrun(work, synthetic_dir))
    return work


def test_replicas_stay_identical_and_rank0_writes_the_outputs(ddp_run):
    r0 = torch.load(ddp_run / "rank0.pth", weights_only=True)
    r1 = torch.load(ddp_run / "rank1.pth", weights_only=True)
    final = torch.load(ddp_run / "model_final.pth", weights_only=True)
    assert r0.keys() == r1.keys() == final["model"].keys()
    assert [k for k in r0 if not torch.equal(r0[k], r1[k])] == []
    assert all(torch.equal(r0[k], final["model"][k]) for k in r0)
    latest = torch.load(ddp_run / "latest.pth", weights_only=True)
    assert latest["iteration"] == 4 and len(latest["rng"]) == 2  # one RNG snapshot per rank
    assert latest["meta"]["data"]["world_size"] == 2
    records = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3, 4]  # one writer
    # lr scaled for 2 processes x 2 images against the config's base_batch_size 4
    assert latest["scheduler"]["base_lr"] == pytest.approx(0.02)
    metrics = json.loads((ddp_run / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 4  # both ranks' shards gathered


def test_ddp_sigkill_then_resume_matches(ddp_run, tmp_path, synthetic_dir):
    work = tmp_path / "ddp_b"
    log = tmp_path / "b.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(torchrun(work, synthetic_dir), cwd=REPO, env=env(**{DEBUG_PAUSE_ENV: "3"}),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(paused := PAUSED.findall(log.read_text())) < 2:
            assert proc.poll() is None, f"run B exited early:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "run B never reached update 3"
            time.sleep(0.1)
        assert torch.load(work / "latest.pth", weights_only=True)["iteration"] == 2
        for pid in paused:  # both workers, mid-update, then the launcher
            os.kill(int(pid), signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert not (work / "model_final.pth").exists()

    resumed = run(torchrun(work, synthetic_dir, "--resume"))
    assert "at iteration 2" in resumed.stderr
    a = torch.load(ddp_run / "model_final.pth", weights_only=True)["model"]
    b = torch.load(work / "model_final.pth", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
