"""Per-class concept recall / concept precision at one score threshold (pure NumPy).

COCO AP averages over every score threshold; a deployed detector runs at one. These numbers say,
at that threshold, which classes the model finds (recall) and how often a box it reports is real
(precision):

* Detections scoring below ``score_thr`` are dropped.
* Per image and class, detections are matched greedily by descending score: each takes the
  unmatched non-crowd ground truth of its class with the highest IoU, if that IoU >= ``iou_thr``.
  One detection per ground truth; a second detection of the same object counts as unmatched.
* A detection left unmatched whose box lies on a crowd region (``iscrowd=1``) of its class --
  intersection over the *detection's* area >= ``iou_thr``, as COCOeval scores crowd regions -- is
  ignored: neither a true nor a false detection. Crowd regions are never counted as ground truths.
* concept recall = matched ground truths / ground truths; concept precision = matched detections /
  counted detections, per class. Macro values average the classes where the ratio is defined
  (recall: classes with ground truths; precision: classes with counted detections); micro values
  pool the counts. An undefined value is ``None``.

Boxes are x1y1x2y2 in continuous pixel coordinates (a COCO ``[x, y, w, h]`` is
``[x, y, x + w, y + h]``), like pycocotools.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "ImageGroundTruth",
    "ImageDetections",
    "box_iou",
    "box_iof",
    "match_image",
    "concept_metrics",
]


@dataclass(frozen=True)
class ImageGroundTruth:
    """Ground truth of one image: ``boxes`` float [G, 4] x1y1x2y2, ``cat_ids`` int [G],
    ``iscrowd`` bool [G]."""

    boxes: np.ndarray
    cat_ids: np.ndarray
    iscrowd: np.ndarray


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image: ``boxes`` float [D, 4] x1y1x2y2, ``scores`` float [D],
    ``cat_ids`` int [D]."""

    boxes: np.ndarray
    scores: np.ndarray
    cat_ids: np.ndarray


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas [N, M] of boxes a [N, 4] and b [M, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [N, M] of x1y1x2y2 boxes a [N, 4] and b [M, 4] (0 where the union is empty)."""
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iof(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of ``a``: [N, M] for a [N, 4], b [M, 4]."""
    inter = _intersection(a, b)
    area = _area(a)[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def match_image(
    gt_boxes: np.ndarray,
    gt_crowd: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    *,
    iou_thr: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of one image's detections of ONE class to its ground truths.

    Args:
        gt_boxes: [G, 4] x1y1x2y2; gt_crowd: bool [G]; det_boxes: [D, 4]; det_scores: [D].
    Returns:
        (matched bool [D], ignored bool [D]): a detection is matched to a non-crowd ground truth,
        ignored when unmatched but on a crowd region, otherwise a false detection.
    """
    d = len(det_boxes)
    matched = np.zeros(d, dtype=bool)
    ignored = np.zeros(d, dtype=bool)
    if d == 0:
        return matched, ignored
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    regular, crowd = gt_boxes[~gt_crowd], gt_boxes[gt_crowd]
    order = np.argsort(-det_scores, kind="stable")
    if len(regular):
        iou = box_iou(det_boxes, regular)  # [D, G]
        taken = np.zeros(len(regular), dtype=bool)
        for i in order:  # greedy by score; D is small (one class, one image, above threshold)
            cand = np.where(taken, -1.0, iou[i])
            j = int(np.argmax(cand))
            if cand[j] >= iou_thr:
                taken[j] = True
                matched[i] = True
    if len(crowd):
        on_crowd = (box_iof(det_boxes, crowd) >= iou_thr).any(axis=1)
        ignored = ~matched & on_crowd
    return matched, ignored


def _ratio(num: int, den: int) -> Optional[float]:
    return float(num) / den if den > 0 else None


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def concept_metrics(
    ground_truth: Mapping[int, ImageGroundTruth],
    detections: Mapping[int, ImageDetections],
    *,
    cat_ids: Sequence[int],
    image_ids: Optional[Iterable[int]] = None,
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
) -> dict:
    """Concept recall / precision per class and averaged (see the module docstring).

    Args:
        ground_truth: image id -> its ground truth (images without an entry have none).
        detections: image id -> its detections (images without an entry have none).
        cat_ids: the dataset's category ids; detections of other ids raise ValueError.
        image_ids: images to score; default: every image in ``ground_truth`` or ``detections``.
    Returns:
        ``{"concept_recall", "concept_precision"`` (macro), ``"concept_recall_micro",
        "concept_precision_micro", "per_class": {cat_id: {"num_gts", "num_dets", "matched",
        "recall", "precision"}}}``; ``num_dets`` counts detections above the threshold that are
        not ignored on crowd regions.
    """
    cat_ids = [int(c) for c in cat_ids]
    index = {c: k for k, c in enumerate(cat_ids)}
    num_gts = np.zeros(len(cat_ids), dtype=np.int64)
    num_dets = np.zeros(len(cat_ids), dtype=np.int64)
    num_matched = np.zeros(len(cat_ids), dtype=np.int64)
    if image_ids is None:
        image_ids = set(ground_truth) | set(detections)
    no_gt = ImageGroundTruth(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))

    def class_index(ids: Any, what: str, image_id: int) -> np.ndarray:
        """Category ids [N] -> indices into ``cat_ids`` [N]."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        unknown = sorted(set(ids.tolist()) - set(cat_ids))
        if unknown:
            raise ValueError(
                f"image {image_id}: {what} with category id(s) {unknown} not among the dataset's "
                f"category ids {cat_ids}"
            )
        return np.array([index[c] for c in ids.tolist()], dtype=np.int64)

    for image_id in image_ids:
        gt = ground_truth.get(image_id, no_gt)
        gt_boxes = np.asarray(gt.boxes, np.float64).reshape(-1, 4)
        gt_cls = class_index(gt.cat_ids, "ground truth", image_id)
        gt_crowd = np.asarray(gt.iscrowd, bool).reshape(-1)
        num_gts += np.bincount(gt_cls[~gt_crowd], minlength=len(cat_ids))
        det = detections.get(image_id)
        if det is None:
            continue
        scores = np.asarray(det.scores, np.float64).reshape(-1)
        keep = scores >= score_thr
        scores = scores[keep]
        det_boxes = np.asarray(det.boxes, np.float64).reshape(-1, 4)[keep]
        det_cls = class_index(det.cat_ids, "detections", image_id)[keep]
        for k in np.unique(det_cls):
            d_sel, g_sel = det_cls == k, gt_cls == k
            matched, ignored = match_image(
                gt_boxes[g_sel], gt_crowd[g_sel], det_boxes[d_sel], scores[d_sel], iou_thr=iou_thr
            )
            num_matched[k] += int(matched.sum())
            num_dets[k] += int((~ignored).sum())

    per_class: Dict[int, dict] = {}
    for k, c in enumerate(cat_ids):
        per_class[c] = {
            "num_gts": int(num_gts[k]),
            "num_dets": int(num_dets[k]),
            "matched": int(num_matched[k]),
            "recall": _ratio(num_matched[k], num_gts[k]),
            "precision": _ratio(num_matched[k], num_dets[k]),
        }
    return {
        "concept_recall": _mean(v["recall"] for v in per_class.values()),
        "concept_precision": _mean(v["precision"] for v in per_class.values()),
        "concept_recall_micro": _ratio(int(num_matched.sum()), int(num_gts.sum())),
        "concept_precision_micro": _ratio(int(num_matched.sum()), int(num_dets.sum())),
        "per_class": per_class,
    }
