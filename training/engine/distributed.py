"""Multi-process training: process group from torchrun's environment, DDP wrapping, collectives.

``torchrun --nproc_per_node N -m training.train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (plus ``MASTER_ADDR``/``MASTER_PORT``); :func:`dist_info_from_env` reads them and
:func:`init_distributed` joins the group with NCCL on GPU and gloo on CPU. Without them (or with ``WORLD_SIZE=1``) every
helper here degrades to the single-process case, so the trainer calls them unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "dist_info_from_env",
    "init_distributed",
    "select_device",
    "wrap_model",
    "unwrap_model",
    "barrier",
    "all_gather_object",
    "broadcast_object",
    "all_reduce_mean",
    "all_reduce_sum",
    "cleanup",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, checkpoints and evaluation results."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def select_device(kind: str, local_rank: int = 0) -> torch.device:
    """``kind`` "auto" (CUDA when available), "cpu" or "cuda"; CUDA picks GPU ``local_rank``."""
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {kind!r}")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def dist_info_from_env() -> DistInfo:
    """This process's rank from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (rank 0 of 1
    when they are unset)."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo()
    rank = _env_int("RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is out of range for WORLD_SIZE={world_size}")
    return DistInfo(rank=rank, world_size=world_size, local_rank=_env_int("LOCAL_RANK", 0))


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group of ``info`` (no-op for a single process).

    Backend: NCCL when ``device`` is CUDA, gloo otherwise; the rendezvous address comes from
    torchrun's ``MASTER_ADDR``/``MASTER_PORT``. A group that is already initialised is reused.
    """
    if not info.distributed:
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` unchanged.

    ``find_unused_parameters=True`` because a detector may leave a branch out of the graph for a
    batch (e.g. a head whose loss is skipped); DDP would otherwise hang or raise on that batch.
    DDP broadcasts rank 0's parameters and buffers at construction, so every replica starts equal.
    """
    if not info.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=True
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` in a single process."""
    if not _active():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _all_reduce_values(values: Dict[str, float], device: torch.device, mean: bool) -> Dict[str, float]:
    if not _active() or not values:
        return dict(values)
    keys = sorted(values)  # same order on every rank
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    if mean:
        t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_reduce_mean(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Mean over ranks of each value (every rank must pass the same keys)."""
    return _all_reduce_values(values, device, mean=True)


def all_reduce_sum(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Sum over ranks of each value (a NaN on any rank makes the sum NaN everywhere)."""
    return _all_reduce_values(values, device, mean=False)


def cleanup() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
