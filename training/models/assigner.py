"""Max-IoU assignment of ground truths to anchors/proposals (torchvision ``Matcher`` semantics).

Shapes: N candidate boxes (anchors or proposals), M ground truths, I ignore regions; boxes x1y1x2y2.

For each candidate, the gt of highest IoU is its match when that IoU >= ``pos_iou_thr``; it is a
negative when the IoU < ``neg_iou_thr``, and ignored in between (torchvision's
``BETWEEN_THRESHOLDS``). With ``allow_low_quality_matches``, every gt's highest-IoU candidates
(ties included) also become positives, matched to *their own* best gt as torchvision does;
``min_pos_iou`` (mmdetection) skips gts whose best IoU is below it (0 reproduces torchvision).
Candidates inside an ignore region (IoF > ``ignore_iof_thr``, when > 0) are never positives or negatives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["AssignResult", "MaxIoUAssigner", "box_iof", "NEGATIVE", "IGNORED"]

NEGATIVE = -1
IGNORED = -2


@dataclass
class AssignResult:
    """Result of assigning M gts to N candidates.

    Attributes:
        gt_inds: int64 [N]; index into the gts (>= 0) for positives, -1 negative, -2 ignored.
        max_overlaps: float [N]; each candidate's highest IoU with any gt (0 with no gts; -1 for
            candidates inside an ignore region).
        labels: int64 [N]; the matched gt's label for positives, -1 elsewhere.
        num_gts: M.
    """

    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor
    num_gts: int

    @property
    def num_candidates(self) -> int:
        return int(self.gt_inds.numel())

    @property
    def pos_mask(self) -> Tensor:
        return self.gt_inds >= 0

    @property
    def neg_mask(self) -> Tensor:
        return self.gt_inds == NEGATIVE


def box_iof(boxes: Tensor, regions: Tensor) -> Tensor:
    """Intersection over the area of ``boxes`` [N, 4] for each of ``regions`` [I, 4]: [N, I]."""
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    return inter / area[:, None]


class MaxIoUAssigner:
    """Assign each candidate box to at most one gt by IoU (see the module docstring)."""

    def __init__(
        self,
        *,
        pos_iou_thr: float,
        neg_iou_thr: float,
        min_pos_iou: float = 0.0,
        allow_low_quality_matches: bool = True,
        ignore_iof_thr: float = -1.0,
    ) -> None:
        if neg_iou_thr > pos_iou_thr:
            raise ValueError(f"MaxIoUAssigner: neg_iou_thr {neg_iou_thr} > pos_iou_thr {pos_iou_thr}")
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.allow_low_quality_matches = allow_low_quality_matches
        self.ignore_iof_thr = ignore_iof_thr

    def assign(
        self,
        boxes: Tensor,
        gt_boxes: Tensor,
        gt_labels: Optional[Tensor] = None,
        ignore_boxes: Optional[Tensor] = None,
    ) -> AssignResult:
        """Assign ``gt_boxes`` [M, 4] (labels [M]) to candidate ``boxes`` [N, 4]."""
        n, m = boxes.shape[0], gt_boxes.shape[0]
        device = boxes.device
        if m == 0 or n == 0:
            gt_inds = torch.full((n,), NEGATIVE, dtype=torch.int64, device=device)
            max_overlaps = boxes.new_zeros((n,))
            # an image whose only annotations are crowd regions still keeps them out of the negatives
            if n and ignore_boxes is not None and ignore_boxes.numel() > 0 and self.ignore_iof_thr > 0:
                ignored = box_iof(boxes, ignore_boxes.to(boxes.dtype)).max(dim=1).values > self.ignore_iof_thr
                gt_inds[ignored] = IGNORED
                max_overlaps[ignored] = -1.0
            return AssignResult(
                gt_inds=gt_inds,
                max_overlaps=max_overlaps,
                labels=torch.full((n,), -1, dtype=torch.int64, device=device),
                num_gts=m,
            )
        iou = box_iou(gt_boxes.to(boxes.dtype), boxes)  # [M, N]
        if ignore_boxes is not None and ignore_boxes.numel() > 0 and self.ignore_iof_thr > 0:
            ignored = box_iof(boxes, ignore_boxes.to(boxes.dtype)).max(dim=1).values > self.ignore_iof_thr
            iou[:, ignored] = -1.0

        max_overlaps, argmax = iou.max(dim=0)
        gt_inds = argmax.clone()
        gt_inds[max_overlaps < self.neg_iou_thr] = NEGATIVE
        gt_inds[(max_overlaps >= self.neg_iou_thr) & (max_overlaps < self.pos_iou_thr)] = IGNORED
        if self.ignore_iof_thr > 0:
            gt_inds[max_overlaps < 0] = IGNORED

        if self.allow_low_quality_matches:
            gt_max = iou.max(dim=1).values  # [M]
            eligible = gt_max >= self.min_pos_iou
            # every candidate that is some eligible gt's best (ties included)
            best = ((iou == gt_max[:, None]) & eligible[:, None]).any(dim=0)
            gt_inds[best] = argmax[best]

        labels = torch.full((n,), -1, dtype=torch.int64, device=device)
        if gt_labels is not None:
            pos = gt_inds >= 0
            labels[pos] = gt_labels.to(device=device, dtype=torch.int64)[gt_inds[pos]]
        return AssignResult(gt_inds=gt_inds, max_overlaps=max_overlaps, labels=labels, num_gts=m)
