"""Shared helpers of the export tests: tiny detectors with spread-out scores, smooth test images,
an ONNX Runtime runner and order-free detection matching.

Freshly initialised heads give no detections (RetinaNet's prior bias) or tied scores (uniform
softmax), which would make a parity check test nothing or fail on arbitrary tie order; the last
layer of each head is therefore re-drawn with a larger spread (as tests/models/test_tv_parity_*.py
do) and the score threshold raised so that images keep fewer than the per-image cap of detections.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers.detections import build_with_redrawn_heads, match_detections
from training.config import Config

REPO = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["square", "circle", "triangle"]
EXPORT_SIZE = (224, 288)  # traced at this size; the checks run other sizes and batch sizes

_RCNN_HEADS = [
    ("rpn.head.cls_logits", 0.1, 0.0),
    ("rpn.head.bbox_pred", 0.02, 0.0),
    ("roi_head.box_predictor.cls_score", 0.1, 0.0),
    ("roi_head.box_predictor.bbox_pred", 0.02, 0.0),
]
_RETINA_HEADS = [("head.cls_logits", 1.0, -2.0), ("head.bbox_reg", 0.02, 0.0)]

# name -> (config, overrides, head layers to re-draw as (path, weight std, bias mean))
MODELS: Dict[str, Tuple[str, Sequence[str], Sequence[Tuple[str, float, float]]]] = {
    "faster_rcnn": ("tiny_faster_rcnn.yaml", ["model.roi_head.score_thresh=0.5"], _RCNN_HEADS),
    "retinanet": ("tiny_retinanet.yaml", ["model.retina_head.score_thresh=0.6"], _RETINA_HEADS),
    "libra_faster_rcnn": ("tiny_libra_faster_rcnn.yaml", ["model.roi_head.score_thresh=0.5"], _RCNN_HEADS),
    "libra_retinanet": ("tiny_libra_retinanet.yaml", ["model.retina_head.score_thresh=0.7"], _RETINA_HEADS),
}


def make_model(name: str, *, seed: int = 0, overrides: Sequence[str] = ()) -> Tuple[torch.nn.Module, Config]:
    """Model ``name`` of :data:`MODELS` (eval mode) with re-drawn head layers, and its config."""
    config, base_overrides, heads = MODELS[name]
    return build_with_redrawn_heads(REPO / "configs" / config, [*base_overrides, *overrides], heads, CLASS_NAMES, seed=seed)


def smooth_images(batch: int, height: int, width: int, valid: Sequence[Tuple[int, int]], seed: int) -> torch.Tensor:
    """Float pixels 0..255 [B, 3, H, W]: smooth random content inside each valid (h, w), 0 outside."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 16 + 1, width // 16 + 1, generator=g)
    x = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False) * 255
    for i, (h, w) in enumerate(valid):
        x[i, :, h:, :] = 0
        x[i, :, :, w:] = 0
    return x


def run_ort(path: Path, images: torch.Tensor, sizes: Sequence[Tuple[int, int]]) -> List[np.ndarray]:
    """ONNX Runtime outputs (num_dets, boxes, scores, labels) on CPU with 2 threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {"images": images.numpy().astype(np.float32), "image_sizes": np.asarray(sizes, dtype=np.int32)}
    return session.run(["num_dets", "boxes", "scores", "labels"], feeds)


def assert_same_detections(ref: Dict[str, torch.Tensor], boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, where: str) -> None:
    """Eager detections of one image vs the graph's valid rows: same count; each eager detection
    matched (same label, greedy by score) with IoU >= 0.99 and |score diff| <= 1e-4."""
    ref_arrays = (ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy())
    match_detections(ref_arrays, (boxes, scores, labels), min_iou=0.99, max_score_diff=1e-4, where=where)


@pytest.fixture(scope="session")
def export_model_fn():
    from export.onnx_export import export_model

    return export_model
