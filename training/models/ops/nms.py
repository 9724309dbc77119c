"""Batched class-aware NMS plus the k best survivors, fixed-size, exported as ONNX ``NonMaxSuppression``.

Shapes: B images, N candidates per image (a fixed number; candidates that are padding or filtered
out carry a negative score, ``INVALID_SCORE``), C classes, k kept rows. Boxes are x1y1x2y2.

``nms_topk`` is an autograd Function. Its eager ``forward`` is exactly torchvision's
``batched_nms(boxes, scores, labels, iou)[:k]`` on each image's valid candidates (in their order),
so the eager detectors reproduce torchvision's post-processing. Its ``symbolic`` (TorchScript ONNX
exporter) emits one ``NonMaxSuppression`` over class scores [B, C, N] (a candidate scores only in
its class row) with constant ``max_output_boxes_per_class`` = k (never INT64_MAX: at most k
survivors matter, so at most k per class) and ``iou_threshold``; the data-dependent selected
indices are scattered (``ScatterND``) into a fixed [B, N] mask, and a ``TopK`` with constant K = k
returns the k best kept candidates. No data-dependent shape leaves the op.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from ._symbolic import BOOL, const, dim, full, padded_topk

__all__ = ["INVALID_SCORE", "nms_topk"]

# Score of padding / filtered-out candidates. Real scores are probabilities (>= 0); the ONNX graph
# passes score_threshold = -0.5 to NonMaxSuppression (strictly greater-than), between the two.
INVALID_SCORE = -1.0
_ONNX_SCORE_THRESHOLD = INVALID_SCORE / 2


class _NMSTopK(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, boxes: Tensor, scores: Tensor, labels: Tensor, k: int, num_classes: int, iou_threshold: float
    ) -> Tuple[Tensor, Tensor]:
        index = torch.zeros((scores.shape[0], k), dtype=torch.int64, device=scores.device)
        valid = torch.zeros((scores.shape[0], k), dtype=torch.bool, device=scores.device)
        for b in range(scores.shape[0]):
            cand = torch.where(scores[b] >= 0)[0]
            kept = cand[batched_nms(boxes[b, cand], scores[b, cand], labels[b, cand], iou_threshold)[:k]]
            index[b, : kept.numel()], valid[b, : kept.numel()] = kept, True
        return index, valid

    @staticmethod
    def symbolic(g, boxes, scores, labels, k: int, num_classes: int, iou_threshold: float):  # pragma: no cover
        # class rows: scores [B, N] -> [B, C, N]; a candidate keeps its score only in its class row
        classes = const(g, [[[c] for c in range(num_classes)]], torch.int64)  # [1, C, 1]
        in_class = g.op("Equal", g.op("Unsqueeze", labels, const(g, [1], torch.int64)), classes)
        class_scores = g.op(
            "Where", in_class, g.op("Unsqueeze", scores, const(g, [1], torch.int64)), const(g, INVALID_SCORE, torch.float32)
        )
        selected = g.op(
            "NonMaxSuppression",
            boxes,
            class_scores,
            const(g, [k], torch.int64),
            const(g, [iou_threshold], torch.float32),
            const(g, [_ONNX_SCORE_THRESHOLD], torch.float32),
            center_point_box_i=0,
        )  # [M, 3] rows (batch, class, box)
        where = g.op("Gather", selected, const(g, [0, 2], torch.int64), axis_i=1)  # [M, 2] (batch, box)
        # float32 scatter: TensorRT's ScatterND takes float/int types
        zeros = g.op("ConstantOfShape", g.op("Shape", scores), value_t=torch.tensor([0.0], dtype=torch.float32))
        ones = full(g, [dim(g, selected, 0)], 1.0, torch.float32)
        kept = g.op("Cast", g.op("ScatterND", zeros, where, ones), to_i=BOOL)  # [B, N]
        kept_scores = g.op("Where", kept, scores, const(g, INVALID_SCORE, torch.float32))
        values, index = padded_topk(g, kept_scores, k, INVALID_SCORE)
        valid = g.op("And", g.op("Less", index, dim(g, scores, 1)), g.op("GreaterOrEqual", values, const(g, 0.0, torch.float32)))
        return g.op("Where", valid, index, const(g, 0, torch.int64)), valid


def nms_topk(
    boxes: Tensor, scores: Tensor, labels: Tensor, *, k: int, num_classes: int, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """Per-class NMS per image over padded candidates, then the ``k`` best survivors.

    Args:
        boxes: [B, N, 4] float32 x1y1x2y2.
        scores: [B, N] float32; candidates with a negative score (``INVALID_SCORE``) are ignored.
        labels: [B, N] int64 class of each candidate in 0..num_classes-1 (NMS runs per class).
        k: rows returned per image (a graph constant).
        num_classes: C (a graph constant).
        iou_threshold: a box is suppressed by a higher-scoring kept box of its class with IoU > this.

    Returns:
        int64 index [B, k] into N, by decreasing score (0 on padding rows), and bool valid [B, k].
    """
    return _NMSTopK.apply(boxes, scores, labels, int(k), int(num_classes), float(iou_threshold))
