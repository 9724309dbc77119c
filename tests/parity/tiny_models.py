"""Tiny detectors with random-but-fixed weights whose detections are many and well spread, saved as
checkpoints; and order-free matching of two detection sets.

Freshly initialised heads give no detections (RetinaNet's prior-probability bias) or scores that
tie (uniform softmax), and ties make NMS and top-k order arbitrary, so a parity check would test
nothing or fail by chance. ``make_checkpoint_file`` therefore re-draws the last layer of each head
with a larger spread (as tests/models/test_tv_parity_*.py do), and raises the score threshold so
that most images stay below the per-image cap of 100.

Import as ``from tests.parity.tiny_models import ...``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

from tests.helpers.detections import box_iou, build_with_redrawn_heads
from tests.helpers.detections import match_detections as _match
from training.data.synthetic import CATEGORIES
from training.models.checkpoint import make_checkpoint, save_checkpoint

__all__ = ["MODELS", "CLASS_NAMES", "CAT_IDS", "make_checkpoint_file", "match_detections", "box_iou"]

REPO = Path(__file__).resolve().parents[2]
CLASS_NAMES = [c["name"] for c in CATEGORIES]
CAT_IDS = [c["id"] for c in CATEGORIES]

# name -> (config file, overrides, [(head layer path, weight std, bias mean)])
_RCNN_HEADS = [("rpn.head.cls_logits", 0.1, 0.0), ("rpn.head.bbox_pred", 0.02, 0.0),
               ("roi_head.box_predictor.cls_score", 0.1, 0.0), ("roi_head.box_predictor.bbox_pred", 0.02, 0.0)]

# name -> (config file, overrides, [(head layer, weight std, bias mean)]). Chosen on the synthetic
# val images: 3-100 detections per image, top scores below ~0.99 (saturated scores tie in float32).
MODELS: Dict[str, Tuple[str, Sequence[str], Sequence[Tuple[str, float, float]]]] = {
    "faster_rcnn": ("configs/tiny_faster_rcnn.yaml", ["model.roi_head.score_thresh=0.4"], _RCNN_HEADS),
    "retinanet": (
        "configs/tiny_retinanet.yaml",
        ["model.retina_head.score_thresh=0.6"],
        [("head.cls_logits", 1.0, -2.0), ("head.bbox_reg", 0.02, 0.0)],
    ),
    "libra_faster_rcnn": ("configs/tiny_libra_faster_rcnn.yaml", ["model.roi_head.score_thresh=0.4"], _RCNN_HEADS),
    "libra_retinanet": (
        "configs/tiny_libra_retinanet.yaml",
        ["model.retina_head.score_thresh=0.4"],
        [("head.cls_logits", 0.7, -3.0), ("head.bbox_reg", 0.02, 0.0)],
    ),
}


def make_checkpoint_file(name: str, path: Path, *, seed: int = 0) -> Path:
    """Build model ``name`` of :data:`MODELS` for the synthetic dataset's 6 classes, re-draw its
    head layers, and save it as a checkpoint (with ``meta.cat_ids``) at ``path``."""
    config, overrides, heads = MODELS[name]
    model, cfg = build_with_redrawn_heads(REPO / config, overrides, heads, CLASS_NAMES, seed=seed)
    payload = make_checkpoint(model, cfg, meta={"cat_ids": list(CAT_IDS), "class_names": list(CLASS_NAMES)})
    return save_checkpoint(path, payload)


def match_detections(ref, other, *, min_iou: float = 0.99, max_score_diff: float = 1e-4) -> Tuple[float, float]:
    """Match each detection of ``ref`` to one of ``other`` (same label, best IoU, greedy by score)
    and assert the counts, IoUs, scores and category ids agree. Returns (min IoU, max |score
    diff|) over the matches (1.0, 0.0 when both are empty)."""
    pairs, worst_iou, worst_diff = _match(
        (ref.boxes, ref.scores, ref.labels), (other.boxes, other.scores, other.labels),
        min_iou=min_iou, max_score_diff=max_score_diff,
    )
    if ref.category_ids is not None or other.category_ids is not None:
        for i, j in pairs:
            assert ref.category_ids[i] == other.category_ids[j]
    return worst_iou, worst_diff
