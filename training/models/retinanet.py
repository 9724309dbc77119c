"""RetinaNet (Lin et al. 2017): backbone -> necks (FPN P3..P7, then e.g. BFP) -> RetinaHead.

Shapes: B images [B, 3, H, W], padded and already normalised; L pyramid levels; M ground truths
of an image; K classes (no background class: one sigmoid per class).

Contract (shared with Faster R-CNN, see ``training/models/faster_rcnn.py``):

* train mode: ``model(images, targets) -> {"retina_cls", "retina_bbox"}`` weighted scalar losses;
  ``compute_losses`` returns them unweighted. ``targets[i]``: ``boxes`` float [M, 4] x1y1x2y2,
  ``labels`` int64 [M] in 0..K-1, optional ``ignore_boxes`` float [I, 4], ``img_size`` (h, w).
  Images without boxes train (focal loss on all-negative anchors, a graph-connected zero box loss).
* eval: ``model.predict(images, image_sizes) -> [{"boxes": float32 [D, 4], "scores": float32 [D],
  "labels": int64 [D]}]``, boxes clipped to ``image_sizes[i]`` (h, w).
* eval, fixed size: ``model.detect(images, image_sizes [B, 2], max_dets=K) -> Detections`` (padded,
  see ``training.models.ops``); the code the ONNX export traces. ``predict`` trims it per image.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .anchors import AnchorGenerator
from .assigner import MaxIoUAssigner
from .box_coder import DeltaXYWHBoxCoder
from .dense_heads.retina_head import RetinaHead
from .detector import Detector, validate_targets
from .ops import Detections

__all__ = ["RetinaNet"]


class RetinaNet(Detector):
    """One-stage detector (see the module docstring for the contract)."""

    ARCH = "retinanet"
    LOSS_NAMES: Tuple[str, ...] = ("retina_cls", "retina_bbox")

    def __init__(
        self,
        *,
        backbone: nn.Module,
        necks: Sequence[nn.Module],
        head: RetinaHead,
        anchor_generator: AnchorGenerator,
        box_coder: DeltaXYWHBoxCoder,
        assigner: MaxIoUAssigner,
        loss_weights: Optional[Mapping[str, float]] = None,
    ) -> None:
        num_anchors = anchor_generator.num_anchors_per_location()
        if any(a != head.num_anchors for a in num_anchors):
            raise ValueError(
                f"RetinaNet: the head predicts {head.num_anchors} anchors per location but the anchor "
                f"generator makes {num_anchors} per level"
            )
        super().__init__(backbone=backbone, necks=necks, loss_weights=loss_weights)
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.assigner = assigner

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def extract_feats(self, images: Tensor) -> List[Tensor]:
        """[B, 3, H, W] -> pyramid maps [B, C, Hi, Wi], finest first (P3..P7)."""
        feats = super().extract_feats(images)
        if len(feats) != self.anchor_generator.num_levels:
            raise ValueError(
                f"RetinaNet: the necks give {len(feats)} levels but the anchors are set for "
                f"{self.anchor_generator.num_levels} (model.retina_head.anchors.strides)"
            )
        return feats

    def _anchors(self, feats: Sequence[Tensor], images: Tensor) -> List[Tensor]:
        """Per level [Hi*Wi*A, 4], for the padded batch shape."""
        return self.anchor_generator(feats, (images.shape[-2], images.shape[-1]))

    def compute_losses(self, images: Tensor, targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Unweighted ``retina_cls`` and ``retina_bbox``."""
        validate_targets(images, targets, self.num_classes)
        feats = self.extract_feats(images)
        cls_logits, bbox_deltas = self.head(feats)
        anchors = self._anchors(feats, images)
        return self.head.loss(
            cls_logits, bbox_deltas, anchors, targets, assigner=self.assigner, box_coder=self.box_coder
        )

    @torch.no_grad()
    def detect(self, images: Tensor, image_sizes: Tensor, *, max_dets: Optional[int] = None) -> Detections:
        """Padded detections of a batch (the path the ONNX export traces; ``predict`` trims it).

        Args:
            images: [B, 3, H, W], normalised and padded.
            image_sizes: [B, 2] (h, w) valid region of each image (float or int tensor).
            max_dets: K rows per image (default: the head's ``max_per_img``).
        """
        feats = self.extract_feats(images)
        cls_logits, bbox_deltas = self.head(feats)
        anchors = self._anchors(feats, images)
        return self.head.detect(
            cls_logits, bbox_deltas, anchors, image_sizes.to(torch.float32), box_coder=self.box_coder, max_dets=max_dets
        )
