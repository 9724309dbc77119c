"""Checkpoint files: a torch-saved dict ``{"model": state_dict, "config": dict, "meta": dict}``.

``config`` is ``config_to_dict(cfg)`` with ``model.num_classes`` and ``model.class_names`` filled,
so ``load_checkpoint_model`` rebuilds the detector with no YAML. The trainer may add its own keys
(``optimizer``, ``scheduler``, ``iteration``, ``epoch``, ``rng``). Files are written atomically
(temporary file in the same folder, fsync, ``os.replace``).
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from ..config import Config, ConfigError, config_from_dict, config_to_dict

__all__ = [
    "CheckpointError",
    "make_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_checkpoint_model",
    "config_from_checkpoint",
]

PathLike = Union[str, "os.PathLike[str]"]
REQUIRED_KEYS = ("model", "config")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, incomplete, or does not match its config."""


def make_checkpoint(model: nn.Module, cfg: Config, meta: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The standard payload for ``model`` built from ``cfg`` (num_classes and class_names required)."""
    if cfg.model.num_classes is None:
        raise CheckpointError("make_checkpoint: cfg.model.num_classes must be filled before saving")
    if cfg.model.class_names is None or len(cfg.model.class_names) != cfg.model.num_classes:
        raise CheckpointError(
            f"make_checkpoint: cfg.model.class_names must list {cfg.model.num_classes} names, got {cfg.model.class_names}"
        )
    return {"model": model.state_dict(), "config": config_to_dict(cfg), "meta": dict(meta or {})}


def save_checkpoint(path: PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (with at least ``model`` and ``config``) to ``path`` atomically."""
    path = Path(path)
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint payload lacks {missing} (has {sorted(payload)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: PathLike, map_location: Any = "cpu", *, weights_only: bool = True) -> Dict[str, Any]:
    """Read a checkpoint dict and check it has ``model`` (a state dict) and ``config``.

    ``weights_only=True`` (the default) refuses arbitrary pickled objects; trainer state such as
    NumPy RNG states may need ``weights_only=False`` for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (corrupt or wrong format): {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        hint = " (a bare state dict? convert it first)" if all(isinstance(v, torch.Tensor) for v in ckpt.values()) else ""
        raise CheckpointError(f"{path}: checkpoint lacks key(s) {missing}; has {sorted(ckpt)[:10]}{hint}")
    if not isinstance(ckpt["model"], Mapping):
        raise CheckpointError(f"{path}: 'model' must be a state dict, got {type(ckpt['model']).__name__}")
    return ckpt


def config_from_checkpoint(ckpt: Mapping[str, Any], path: PathLike = "<checkpoint>") -> Config:
    """The embedded config, validated against the schema."""
    try:
        cfg = config_from_dict(ckpt["config"], where=f"{path} [config]")
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    if cfg.model.num_classes is None:
        raise CheckpointError(f"{path}: embedded config has model.num_classes = null")
    return cfg


def load_checkpoint_model(path: PathLike, map_location: Any = "cpu") -> nn.Module:
    """Build the detector from the checkpoint's config, load its weights, return it in eval mode.

    Raises:
        CheckpointError: missing/corrupt file, missing keys, invalid config, or a state dict that
            does not match the config (missing/unexpected keys and shape mismatches listed).
    """
    from .build import build_model  # late: build imports every model module

    ckpt = load_checkpoint(path, map_location)
    cfg = config_from_checkpoint(ckpt, path)
    try:
        model = build_model(cfg, pretrained=False)
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot build the model of the embedded config: {e}") from e
    state = ckpt["model"]
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:8]}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes[:5]}")
        raise CheckpointError(f"{path}: state dict does not match the embedded config: " + "; ".join(parts))
    model.load_state_dict(state)
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    return model.eval()
