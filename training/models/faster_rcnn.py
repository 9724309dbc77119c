"""Faster R-CNN with FPN: backbone -> necks (FPN, then e.g. BFP) -> RPN -> RoI head.

Shapes: B images [B, 3, H, W], padded (H, W divisible by the pad divisor) and already normalised;
M ground truths of an image; C classes (background not counted).

Contract (shared with RetinaNet):

* train mode: ``model(images, targets) -> {name: weighted scalar loss}``; ``compute_losses`` returns
  the same dict unweighted. ``targets[i]``: ``boxes`` float [M, 4] x1y1x2y2 in input pixels with
  x2 > x1 and y2 > y1, ``labels`` int64 [M] in 0..C-1, optional ``ignore_boxes`` float [I, 4]
  (crowd regions, never used as negatives) and ``img_size`` (h, w) of the valid region before
  padding. Images without boxes train (all negatives, a graph-connected zero box loss).
* eval: ``model.predict(images, image_sizes) -> [{"boxes": float32 [D, 4], "scores": float32 [D],
  "labels": int64 [D]}]``, boxes clipped to ``image_sizes[i]`` (h, w).
* eval, fixed size: ``model.detect(images, image_sizes [B, 2], max_dets=K) -> Detections`` (padded
  ``num_dets`` [B, 1], ``boxes`` [B, K, 4], ``scores`` [B, K], ``labels`` [B, K]); the code the ONNX
  export traces. ``predict`` is ``detect`` trimmed to each image's valid rows.

Loss names: ``rpn_cls``, ``rpn_bbox``, ``rcnn_cls``, ``rcnn_bbox``.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .dense_heads.rpn_head import RPN
from .detector import Detector, check_loss_weights, validate_targets, weighted_losses
from .ops import Detections
from .roi_heads.roi_head import RoIHead

__all__ = ["FasterRCNN", "validate_targets", "weighted_losses", "check_loss_weights"]


class FasterRCNN(Detector):
    """Two-stage detector (see the module docstring for the contract)."""

    ARCH = "faster_rcnn"
    LOSS_NAMES: Tuple[str, ...] = ("rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox")

    def __init__(
        self,
        *,
        backbone: nn.Module,
        necks: Sequence[nn.Module],
        rpn: RPN,
        roi_head: RoIHead,
        loss_weights: Optional[Mapping[str, float]] = None,
    ) -> None:
        super().__init__(backbone=backbone, necks=necks, loss_weights=loss_weights)
        self.rpn = rpn
        self.roi_head = roi_head

    @property
    def num_classes(self) -> int:
        return self.roi_head.num_classes

    def compute_losses(self, images: Tensor, targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Unweighted losses ``rpn_cls``, ``rpn_bbox``, ``rcnn_cls``, ``rcnn_bbox``."""
        validate_targets(images, targets, self.num_classes)
        feats = self.extract_feats(images)
        image_shape = (int(images.shape[-2]), int(images.shape[-1]))
        image_sizes = [tuple(t.get("img_size", image_shape)) for t in targets]
        objectness, deltas = self.rpn(feats)
        anchors = self.rpn.get_anchors(feats, image_shape)
        losses = self.rpn.loss(objectness, deltas, anchors, targets)
        proposals, _ = self.rpn.get_proposals(objectness, deltas, anchors, image_sizes, training=True)  # type: ignore[arg-type]
        losses.update(self.roi_head.compute_losses(feats, proposals, targets))
        return losses

    @torch.no_grad()
    def detect(self, images: Tensor, image_sizes: Tensor, *, max_dets: Optional[int] = None) -> Detections:
        """Padded detections of a batch (the path the ONNX export traces; ``predict`` trims it).

        Args:
            images: [B, 3, H, W], normalised and padded.
            image_sizes: [B, 2] (h, w) valid region of each image (float or int tensor).
            max_dets: K rows per image (default: the RoI head's ``max_per_img``).
        """
        feats = self.extract_feats(images)
        objectness, deltas = self.rpn(feats)
        anchors = self.rpn.get_anchors(feats, (images.shape[-2], images.shape[-1]))
        sizes = image_sizes.to(torch.float32)
        proposals, _, valid = self.rpn.propose(objectness, deltas, anchors, sizes, training=False)
        return self.roi_head.detect(feats, proposals, valid, sizes, max_dets=max_dets)
