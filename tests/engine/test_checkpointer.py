"""Training checkpoints: atomic writes, clear errors for --resume, RNG snapshots."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from training.engine.checkpointer import (
    CheckpointError,
    Checkpointer,
    capture_rng_state,
    restore_rng_state,
)


def payload(iteration: int) -> dict:
    return {
        "model": {"w": torch.full((3,), float(iteration))},
        "config": {"name": "t"},
        "meta": {},
        "optimizer": {"state": {}, "param_groups": []},
        "iteration": iteration,
        "epoch": 0,
        "batch_in_epoch": iteration,
        "rng": [capture_rng_state()],
    }


def test_save_then_load_latest(tmp_path):
    ck = Checkpointer(work_dir=tmp_path)
    ck.save_latest(payload(2))
    ck.save_latest(payload(4))
    loaded = ck.load_latest()  # weights_only=True: RNG states are plain containers/tensors
    assert loaded["iteration"] == 4
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 4.0))


def test_failure_mid_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    ck = Checkpointer(work_dir=tmp_path)
    ck.save_latest(payload(2))
    before = ck.latest_path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # some bytes reach the disk, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_latest(payload(4))
    monkeypatch.setattr(torch, "save", real_save)
    assert ck.latest_path.read_bytes() == before
    assert ck.load_latest()["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth"]  # no temp file left


def test_disabled_checkpointer_writes_nothing(tmp_path):
    ck = Checkpointer(work_dir=tmp_path, enabled=False)
    ck.save_latest(payload(1))
    ck.save_final({"model": {}, "config": {}, "meta": {}})
    assert list(tmp_path.iterdir()) == []


def test_incomplete_payload_is_refused(tmp_path):
    p = payload(1)
    del p["rng"]
    with pytest.raises(ValueError, match="rng"):
        Checkpointer(work_dir=tmp_path).save_latest(p)


def test_resume_without_checkpoint_names_the_file(tmp_path):
    ck = Checkpointer(work_dir=tmp_path)
    with pytest.raises(CheckpointError) as e:
        ck.load_latest()
    assert str(ck.latest_path) in str(e.value)
    assert "no checkpoint to resume from" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_corrupt_checkpoint_names_the_file(tmp_path, content):
    ck = Checkpointer(work_dir=tmp_path)
    if content == "truncated":
        ck.save_latest(payload(2))
        data = ck.latest_path.read_bytes()
        ck.latest_path.write_bytes(data[: len(data) // 2])
    else:
        ck.latest_path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        ck.load_latest()
    assert str(ck.latest_path) in str(e.value)
    assert "corrupt" in str(e.value)


def test_final_model_checkpoint_is_not_resumable(tmp_path):
    ck = Checkpointer(work_dir=tmp_path)
    torch.save({"model": {}, "config": {}, "meta": {}}, ck.latest_path)
    with pytest.raises(CheckpointError) as e:
        ck.load_latest()
    msg = str(e.value)
    assert str(ck.latest_path) in msg and "optimizer" in msg and "iteration" in msg


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in the NumPy state
    state = capture_rng_state()
    first = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(state)
    again = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    assert again == first
