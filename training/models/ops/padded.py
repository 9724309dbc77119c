"""Fixed-size, padded selection helpers for the eval path (eager and ONNX alike).

Shapes: B images, N candidates per image, K kept rows. Every output size is a Python constant
(``k``) or a size of an input, never a data-dependent count: padding rows carry ``INVALID_SCORE``
(or a ``valid`` mask) instead of being removed. Trimming to per-image lists happens only at the
very end, in ``trim_detections`` (eager ``predict``); the exported graph keeps the padded form.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple

import torch
from torch import Tensor


__all__ = ["Detections", "clip_boxes", "gather_rows", "detections_from_index", "trim_detections"]


class Detections(NamedTuple):
    """Padded detections of a batch: rows >= ``num_dets`` are zeros.

    ``num_dets`` int64 [B, 1]; ``boxes`` float32 [B, K, 4] x1y1x2y2; ``scores`` float32 [B, K],
    descending within the valid rows; ``labels`` int64 [B, K] (0-based classes).
    """

    num_dets: Tensor
    boxes: Tensor
    scores: Tensor
    labels: Tensor


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip x to [0, w] and y to [0, h] of each image: boxes [B, ..., 4], image_sizes [B, 2] (h, w).

    The same values as ``torchvision.ops.clip_boxes_to_image`` per image (``clamp(0, size)``).
    """
    shape = (image_sizes.shape[0],) + (1,) * (boxes.dim() - 2)  # (B, 1, ..., 1): broadcast over the middle dims
    h = image_sizes[:, 0].to(boxes.dtype).reshape(shape)
    w = image_sizes[:, 1].to(boxes.dtype).reshape(shape)
    x1, y1, x2, y2 = boxes.unbind(-1)
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    x1 = torch.minimum(torch.maximum(x1, zero), w)
    x2 = torch.minimum(torch.maximum(x2, zero), w)
    y1 = torch.minimum(torch.maximum(y1, zero), h)
    y2 = torch.minimum(torch.maximum(y2, zero), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """Per-image row gather: x [B, N] or [B, N, D], index int64 [B, K] -> [B, K] or [B, K, D]."""
    if x.dim() == 2:
        return torch.gather(x, 1, index)
    if x.dim() != 3:
        raise ValueError(f"gather_rows: x must be [B, N] or [B, N, D], got shape {tuple(x.shape)}")
    # (B, K) -> (B, K, 1) -> (B, K, D)
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def detections_from_index(boxes: Tensor, scores: Tensor, labels: Tensor, index: Tensor, valid: Tensor) -> Detections:
    """Padded ``Detections`` of the rows ``index`` [B, K] (``valid`` [B, K]) of per-image candidates
    ``boxes`` [B, N, 4], ``scores`` [B, N], ``labels`` int64 [B, N]; invalid rows become zeros."""
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    out_boxes = torch.where(valid.unsqueeze(-1), gather_rows(boxes, index), zero)
    out_scores = torch.where(valid, gather_rows(scores, index), zero)
    out_labels = torch.where(valid, gather_rows(labels, index), torch.zeros_like(index))
    num_dets = valid.to(torch.int64).sum(dim=1, keepdim=True)
    return Detections(num_dets, out_boxes, out_scores, out_labels)


def trim_detections(dets: Detections) -> List[Dict[str, Tensor]]:
    """Padded detections -> per-image ``{"boxes" [D, 4], "scores" [D], "labels" int64 [D]}``."""
    out = []
    for b in range(dets.boxes.shape[0]):
        n = int(dets.num_dets[b, 0])
        out.append(
            {
                "boxes": dets.boxes[b, :n].float(),
                "scores": dets.scores[b, :n].float(),
                "labels": dets.labels[b, :n].to(torch.int64),
            }
        )
    return out
