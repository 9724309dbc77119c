"""Detectors (Faster R-CNN, RetinaNet) and their parts; build them with ``build_model(cfg)``."""
from .build import build_model
from .checkpoint import CheckpointError, load_checkpoint, load_checkpoint_model, make_checkpoint, save_checkpoint

__all__ = [
    "build_model",
    "load_checkpoint_model",
    "load_checkpoint",
    "save_checkpoint",
    "make_checkpoint",
    "CheckpointError",
]
