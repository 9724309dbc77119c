"""PyTorch eager backend: a training checkpoint (``.pth``) run with ``model.predict``.

The only runtime module that needs torch and ``training/``; both are imported when a
:class:`TorchBackend` is created, never at import time. Pre-processing is the shared NumPy policy
(:mod:`runtime.preprocess`); the batch is normalised here with the checkpoint config's mean/std
(the model never normalises), so the padding -- the mean pixel -- becomes 0, as in training.

Shapes: B images; H, W the padded batch size; N detections of an image.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Sequence, Union

import numpy as np

from runtime.backends.base import Backend, Detections, ModelInfo, ModelLoadError
from runtime.preprocess import ImageMeta

__all__ = ["TorchBackend", "model_info_from_checkpoint"]

PathLike = Union[str, "os.PathLike[str]"]


def model_info_from_checkpoint(ckpt: Any, cfg: Any, path: PathLike) -> ModelInfo:
    """:class:`ModelInfo` of a checkpoint dict and its parsed ``Config``.

    Category ids come from ``meta.cat_ids`` (written by ``libra-train``), else None.
    """
    meta = ckpt.get("meta") or {}
    cat_ids = meta.get("cat_ids")
    names = cfg.model.class_names or [str(i) for i in range(cfg.model.num_classes)]
    if cat_ids is not None and len(cat_ids) != len(names):
        raise ModelLoadError(
            f"{path}: meta.cat_ids has {len(cat_ids)} ids for {len(names)} classes"
        )
    score_thr = cfg.model.roi_head.score_thresh if cfg.model.arch == "faster_rcnn" else cfg.model.retina_head.score_thresh
    return ModelInfo(
        class_names=tuple(str(n) for n in names),
        scale=tuple(int(s) for s in cfg.data.scale),
        pad_divisor=int(cfg.data.pad_divisor),
        mean=tuple(float(m) for m in cfg.data.mean),
        std=tuple(float(s) for s in cfg.data.std),
        to_rgb=bool(cfg.data.to_rgb),
        category_ids=None if cat_ids is None else tuple(int(c) for c in cat_ids),
        score_thr=float(score_thr),
        source=os.fspath(path),
        extra={"arch": cfg.model.arch, "config_name": cfg.name},
    )


class TorchBackend(Backend):
    """A checkpoint in PyTorch eager mode.

    Args:
        path: checkpoint written by ``libra-train`` / ``make_checkpoint`` (config embedded).
        device: "cpu", "cuda" or "cuda:N".
        num_threads: ``torch.set_num_threads`` for CPU runs (None leaves torch's default).
    """

    name = "torch"

    def __init__(self, *, path: PathLike, device: str = "cpu", num_threads: int | None = None) -> None:
        try:
            import torch
        except ImportError as exc:  # the runtime installs without torch
            raise ModelLoadError(
                f"{path}: the torch backend needs PyTorch (pip install 'libra-rcnn[train]'): {exc}"
            ) from exc
        from training.models.checkpoint import (
            CheckpointError,
            config_from_checkpoint,
            load_checkpoint,
            load_checkpoint_model,
        )

        path = Path(path)
        self._torch = torch
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"{path}: device {device!r} asked for, but CUDA is not available")
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        try:
            ckpt = load_checkpoint(path)
            cfg = config_from_checkpoint(ckpt, path)
            info = model_info_from_checkpoint(ckpt, cfg, path)
            del ckpt
            self.model = load_checkpoint_model(path, map_location=dev)
        except CheckpointError as exc:  # the message already names the file
            raise ModelLoadError(str(exc)) from exc
        super().__init__(info=info, device=str(dev))
        self._torch_device = dev
        # [1, 3, 1, 1] normalisation constants in the model's channel order
        self._mean = torch.tensor(info.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        self._std = torch.tensor(info.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)

    def infer(self, batch: np.ndarray, metas: Sequence[ImageMeta]) -> List[Detections]:
        """``model.predict`` on the normalised batch; detections in batch pixels."""
        torch = self._torch
        if batch.ndim != 4 or batch.shape[1] != 3 or len(metas) != batch.shape[0]:
            raise ValueError(
                f"infer: expected a [B, 3, H, W] batch and B metas, got {list(batch.shape)} and {len(metas)}"
            )
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._torch_device)
            if not self.info.to_rgb:
                x = x.flip(1)  # RGB -> BGR, as training's Normalize(to_rgb=False)
            x = (x - self._mean) / self._std
            sizes = [tuple(int(v) for v in m.img_size) for m in metas]
            outputs = self.model.predict(x, sizes)
            return [
                Detections(o["boxes"].float().cpu().numpy(), o["scores"].float().cpu().numpy(),
                           o["labels"].cpu().numpy())
                for o in outputs
            ]

    def close(self) -> None:
        self.model = None
