"""Training checkpoints in the work dir: ``latest.pth`` (resumable state) and ``model_final.pth``.

A training checkpoint is the models' checkpoint dict (``model``, ``config``, ``meta``; see
:mod:`training.models.checkpoint`) plus the trainer's keys:

* ``optimizer``: optimizer state (momentum buffers); ``scaler``: AMP GradScaler state or None
* ``scheduler``: the lr schedule's parameters (the rate is a function of ``iteration``)
* ``iteration``: optimizer steps done; ``epoch`` and ``batch_in_epoch``: the data-order position
  (the loader's order is a pure function of (seed, epoch), so these two fix it)
* ``rng``: one RNG snapshot per rank (:func:`capture_rng_state`)

Files are written and read by :mod:`training.models.checkpoint`: writes are atomic (temporary
file + rename), so a crash mid-write leaves the previous ``latest.pth`` intact, and every
problem raises its :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from training.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "LATEST_NAME",
    "FINAL_NAME",
    "RESUME_KEYS",
    "capture_rng_state",
    "restore_rng_state",
]

LATEST_NAME = "latest.pth"
FINAL_NAME = "model_final.pth"
RESUME_KEYS = ("model", "config", "optimizer", "iteration", "epoch", "batch_in_epoch", "rng")


class Checkpointer:
    """Reads and writes the checkpoints of one work dir.

    ``enabled`` is false on every rank but 0 of a distributed run: they compute the same state
    but must not race on the files. Writes are atomic.
    """

    def __init__(self, *, work_dir: Union[str, "os.PathLike[str]"], enabled: bool = True) -> None:
        self.work_dir = Path(work_dir)
        self.enabled = bool(enabled)

    @property
    def latest_path(self) -> Path:
        return self.work_dir / LATEST_NAME

    @property
    def final_path(self) -> Path:
        return self.work_dir / FINAL_NAME

    def save_latest(self, payload: Dict[str, Any]) -> None:
        """Atomically replace ``latest.pth`` with ``payload`` (must hold :data:`RESUME_KEYS`)."""
        missing = [k for k in RESUME_KEYS if k not in payload]
        if missing:
            raise ValueError(f"training checkpoint payload lacks keys {missing}")
        if self.enabled:
            save_checkpoint(self.latest_path, payload)

    def save_final(self, payload: Dict[str, Any]) -> None:
        """Atomically write ``model_final.pth`` (``model``, ``config``, ``meta``)."""
        if self.enabled:
            save_checkpoint(self.final_path, payload)

    def load_latest(self) -> Dict[str, Any]:
        """Load ``latest.pth`` on CPU for ``--resume``.

        Raises:
            CheckpointError: the file is missing, is not a readable torch file, or lacks a key of
                :data:`RESUME_KEYS`; the message names the file.
        """
        path = self.latest_path
        if not path.is_file():
            raise CheckpointError(
                f"{path}: no checkpoint to resume from (the work dir has no {LATEST_NAME}; "
                "run without --resume to start training)"
            )
        ckpt = load_checkpoint(path)  # CheckpointError naming the file if corrupt
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path}: not a resumable training checkpoint, missing keys {missing} "
                f"(has {sorted(ckpt)})"
            )
        return ckpt


def capture_rng_state() -> Dict[str, Any]:
    """Snapshot of Python ``random``, NumPy's global generator, torch CPU and (if used) the
    current CUDA device's RNG.

    Plain containers and tensors only, so the checkpoint loads with ``weights_only=True``.
    """
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's device only: the *_all variants would open a context on every GPU
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": np.asarray(npst["key"], dtype=np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])  # the current device (set by the trainer)
