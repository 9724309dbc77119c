"""Shared by the export and parity tests: tiny detectors with spread-out scores, and order-free
matching of two detection sets.

Freshly initialised heads give no detections (RetinaNet's prior-probability bias) or scores that tie
(uniform softmax), and ties make NMS and top-k order arbitrary, so a parity check would test nothing
or fail by chance. ``build_with_redrawn_heads`` re-draws the last layer of each head with a larger
spread (as tests/models/test_tv_parity_*.py do).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch

from training.config import Config, load_config
from training.models import build_model

__all__ = ["HeadSpec", "build_with_redrawn_heads", "box_iou", "match_detections"]

# (head layer path, weight std, bias mean)
HeadSpec = Tuple[str, float, float]


def build_with_redrawn_heads(
    config: Path, overrides: Sequence[str], heads: Sequence[HeadSpec], class_names: Sequence[str], *, seed: int = 0
) -> Tuple[torch.nn.Module, Config]:
    """The config's model (eval mode, ``len(class_names)`` classes) with ``heads`` re-drawn."""
    cfg = load_config(config, [f"model.num_classes={len(class_names)}", *overrides])
    cfg.model.class_names = list(class_names)
    torch.manual_seed(seed)
    model = build_model(cfg, pretrained=False).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for path, std, bias in heads:
            layer = model.get_submodule(path)
            layer.weight.normal_(0.0, std, generator=g)
            layer.bias.normal_(bias, 0.1, generator=g)
    return model, cfg


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of x1y1x2y2 boxes a [N, 4] and b [M, 4] (two empty boxes at one place: 1)."""
    a = a.astype(np.float64)[:, None]
    b = b.astype(np.float64)[None]
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), (inter == 0) * 1.0)


def match_detections(
    ref: Tuple[np.ndarray, np.ndarray, np.ndarray],
    other: Tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    min_iou: float = 0.99,
    max_score_diff: float = 1e-4,
    where: str = "",
) -> Tuple[List[Tuple[int, int]], float, float]:
    """Match each detection of ``ref`` (boxes [N, 4], scores [N], labels [N]) to one of ``other``:
    same label, best IoU, greedy by score; assert equal counts, IoU >= ``min_iou`` and |score diff|
    <= ``max_score_diff``. Returns the (ref, other) index pairs, the min IoU and the max score diff
    (1.0 and 0.0 when both are empty)."""
    rb, rs, rl = ref
    ob, os_, ol = other
    prefix = f"{where}: " if where else ""
    assert len(rb) == len(ob), f"{prefix}{len(rb)} vs {len(ob)} detections"
    if len(rb) == 0:
        return [], 1.0, 0.0
    iou = box_iou(rb, ob)
    iou[rl[:, None] != ol[None, :]] = -1.0
    used = np.zeros(len(ob), dtype=bool)
    pairs, ious, diffs = [], [], []
    for i in np.argsort(-rs, kind="stable"):
        candidates = np.where(used, -2.0, iou[i])
        j = int(np.argmax(candidates))
        assert candidates[j] >= min_iou, (
            f"{prefix}detection {i} (label {rl[i]}, score {rs[i]:.5f}, box {rb[i].tolist()}) has no match: "
            f"best IoU {candidates[j]:.4f} with {ob[j].tolist()} (label {ol[j]})"
        )
        diff = abs(float(rs[i]) - float(os_[j]))
        assert diff <= max_score_diff, f"{prefix}detection {i}: scores {rs[i]} vs {os_[j]}"
        used[j] = True
        pairs.append((int(i), j))
        ious.append(float(candidates[j]))
        diffs.append(diff)
    return pairs, min(ious), max(diffs)
