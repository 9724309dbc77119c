"""Concept recall / precision on hand-made cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.concept_metrics import (
    ImageDetections,
    ImageGroundTruth,
    box_iof,
    box_iou,
    concept_metrics,
    match_image,
)

A, B = 3, 8  # non-contiguous category ids


def _gt(boxes, cats, crowd=None):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    crowd = np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd, bool)
    return ImageGroundTruth(boxes, np.asarray(cats, np.int64), crowd)


def _det(boxes, scores, cats):
    return ImageDetections(
        np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64), np.asarray(cats, np.int64)
    )


def test_box_iou_matches_torchvision():
    torch = pytest.importorskip("torch")
    from torchvision.ops import box_iou as tv_box_iou

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (2, 20, 2))
    wh = rng.uniform(0, 30, (2, 20, 2))  # includes near-degenerate boxes
    a, b = (np.concatenate([xy[i], xy[i] + wh[i]], axis=1) for i in range(2))
    expected = tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-12, atol=1e-12)
    assert box_iou(a[:0], b).shape == (0, 20)


def test_box_iof_is_intersection_over_first_box():
    iof = box_iof(np.array([[0.0, 0, 10, 10]]), np.array([[5.0, 0, 100, 100]]))
    assert iof[0, 0] == pytest.approx(0.5)


def test_hand_made_case():
    # image 1: one A object and one B object
    gts = {1: _gt([[0, 0, 10, 10], [20, 20, 30, 30]], [A, B])}
    dets = {
        1: _det(
            [
                [0, 0, 10, 6],  # A, IoU 0.6 with the A object -> match (highest score goes first)
                [0, 0, 10, 10],  # A, exact duplicate of the same object, lower score -> unmatched
                [20, 20, 30, 30],  # A on the B object: wrong class -> unmatched A detection
                [20, 20, 30, 30],  # B on the B object but below the score threshold -> not counted
            ],
            [0.9, 0.8, 0.7, 0.2],
            [A, A, A, B],
        )
    }
    out = concept_metrics(gts, dets, cat_ids=[A, B], score_thr=0.3, iou_thr=0.5)
    assert out["per_class"][A] == {"num_gts": 1, "num_dets": 3, "matched": 1, "recall": 1.0, "precision": pytest.approx(1 / 3)}
    assert out["per_class"][B] == {"num_gts": 1, "num_dets": 0, "matched": 0, "recall": 0.0, "precision": None}
    assert out["concept_recall"] == pytest.approx(0.5)  # mean of A 1.0 and B 0.0
    assert out["concept_precision"] == pytest.approx(1 / 3)  # B has no detection: undefined, left out
    assert out["concept_recall_micro"] == pytest.approx(0.5)
    assert out["concept_precision_micro"] == pytest.approx(1 / 3)


def test_iou_below_threshold_does_not_match_and_threshold_is_inclusive():
    gts = {1: _gt([[0, 0, 10, 10]], [A])}
    low = concept_metrics(gts, {1: _det([[0, 0, 10, 4]], [0.9], [A])}, cat_ids=[A], iou_thr=0.5)  # IoU 0.4
    assert low["per_class"][A]["matched"] == 0 and low["concept_precision"] == 0.0
    at = concept_metrics(gts, {1: _det([[0, 0, 10, 5]], [0.3], [A])}, cat_ids=[A], score_thr=0.3, iou_thr=0.5)
    assert at["per_class"][A]["matched"] == 1  # IoU exactly 0.5 and score exactly at the threshold


def test_greedy_by_score_takes_best_iou_unmatched_gt():
    # two objects; the top detection overlaps both but the first one more
    gt = _gt([[0, 0, 10, 10], [4, 0, 14, 10]], [A, A])
    det_boxes = np.array([[3, 0, 13, 10], [0, 0, 10, 10]], np.float64)  # IoU (0.54, 0.82) / (1.0, 0.43)
    matched, ignored = match_image(gt.boxes, gt.iscrowd, det_boxes, np.array([0.9, 0.8]), iou_thr=0.5)
    # det 0 (higher score) takes gt 1 (IoU 0.82); det 1 then takes gt 0
    assert matched.tolist() == [True, True] and not ignored.any()
    matched, _ = match_image(gt.boxes, gt.iscrowd, det_boxes, np.array([0.9, 0.8]), iou_thr=0.9)
    assert matched.tolist() == [False, True]


def test_crowd_regions_are_neither_ground_truth_nor_false_detections():
    gts = {5: _gt([[0, 0, 10, 10], [50, 50, 100, 100]], [A, A], crowd=[False, True])}
    dets = {5: _det([[60, 60, 70, 70], [200, 200, 210, 210]], [0.9, 0.9], [A, A])}
    out = concept_metrics(gts, dets, cat_ids=[A], score_thr=0.3)
    # the detection inside the crowd region is ignored, the far one is a false detection
    assert out["per_class"][A] == {"num_gts": 1, "num_dets": 1, "matched": 0, "recall": 0.0, "precision": 0.0}


def test_images_without_entries_and_unknown_categories():
    gts = {1: _gt([[0, 0, 10, 10]], [A]), 2: _gt([[0, 0, 10, 10]], [B])}
    out = concept_metrics(gts, {}, cat_ids=[A, B], image_ids=[1])  # only image 1 is scored
    assert out["per_class"][A]["num_gts"] == 1 and out["per_class"][B]["num_gts"] == 0
    assert out["per_class"][B]["recall"] is None and out["concept_recall"] == 0.0
    assert out["concept_precision"] is None and out["concept_precision_micro"] is None
    with pytest.raises(ValueError, match=r"image 1: detections with category id\(s\) \[99\]"):
        concept_metrics(gts, {1: _det([[0, 0, 1, 1]], [0.9], [99])}, cat_ids=[A, B])
