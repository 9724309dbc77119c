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

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .dense_heads.rpn_head import RPN
from .ops import Detections, trim_detections
from .roi_heads.roi_head import RoIHead

__all__ = ["FasterRCNN", "validate_targets", "weighted_losses", "check_loss_weights"]


def check_loss_weights(loss_weights: Optional[Mapping[str, float]], valid: Sequence[str], owner: str) -> Dict[str, float]:
    """Weights for every name in ``valid`` (1.0 when not given); an unknown name is an error."""
    loss_weights = dict(loss_weights or {})
    unknown = [k for k in loss_weights if k not in valid]
    if unknown:
        raise ValueError(
            f"model.loss_weights: unknown loss name '{unknown[0]}' for {owner}; valid names are: {', '.join(valid)}"
        )
    return {k: float(loss_weights.get(k, 1.0)) for k in valid}


def weighted_losses(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Dict[str, Tensor]:
    """Multiply each loss by its weight."""
    return {k: v * weights.get(k, 1.0) for k, v in losses.items()}


def validate_targets(
    images: Tensor, targets: Sequence[Dict[str, Tensor]], num_classes: Optional[int] = None
) -> None:
    """Check the training targets; raise ValueError/TypeError naming the image and the first bad box."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
    if len(targets) != images.shape[0]:
        raise ValueError(f"got {len(targets)} targets for a batch of {images.shape[0]} images")
    for i, t in enumerate(targets):
        for key in ("boxes", "labels"):
            if key not in t:
                raise ValueError(f"targets[{i}] has no '{key}' (keys: {sorted(t)})")
        boxes, labels = t["boxes"], t["labels"]
        if not isinstance(boxes, Tensor) or not boxes.is_floating_point():
            raise TypeError(f"targets[{i}]['boxes'] must be a float tensor, got {getattr(boxes, 'dtype', type(boxes))}")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must have shape [N, 4], got {tuple(boxes.shape)}")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64:
            raise TypeError(f"targets[{i}]['labels'] must be an int64 tensor, got {getattr(labels, 'dtype', type(labels))}")
        if labels.shape != (boxes.shape[0],):
            raise ValueError(f"targets[{i}]['labels'] has shape {tuple(labels.shape)}, expected ({boxes.shape[0]},)")
        if boxes.numel():
            bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                j = int(torch.where(bad)[0][0])
                raise ValueError(
                    f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} is degenerate or not finite "
                    "(boxes are x1, y1, x2, y2 with x2 > x1 and y2 > y1)"
                )
            if num_classes is not None and ((labels < 0) | (labels >= num_classes)).any():
                j = int(torch.where((labels < 0) | (labels >= num_classes))[0][0])
                raise ValueError(f"targets[{i}]['labels'][{j}] = {int(labels[j])} is outside 0..{num_classes - 1}")
        ignore = t.get("ignore_boxes")
        if ignore is not None and (ignore.dim() != 2 or ignore.shape[-1] != 4):
            raise ValueError(f"targets[{i}]['ignore_boxes'] must have shape [M, 4], got {tuple(ignore.shape)}")


class FasterRCNN(nn.Module):
    """Two-stage detector (see the module docstring for the contract)."""

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
        super().__init__()
        self.backbone = backbone
        self.necks = necks if isinstance(necks, nn.ModuleList) else nn.ModuleList(necks)
        self.rpn = rpn
        self.roi_head = roi_head
        self.loss_weights = check_loss_weights(loss_weights, self.LOSS_NAMES, "faster_rcnn")

    @property
    def num_classes(self) -> int:
        return self.roi_head.num_classes

    def extract_feats(self, images: Tensor) -> List[Tensor]:
        """[B, 3, H, W] -> pyramid maps, finest first (P2..P6)."""
        feats = self.backbone(images)
        for neck in self.necks:
            feats = neck(feats)
        return list(feats)

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

    def forward(
        self,
        images: Tensor,
        targets: Optional[Sequence[Dict[str, Tensor]]] = None,
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    ):
        """Train mode: weighted losses. Eval mode: ``predict(images, image_sizes)``."""
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNN in train mode needs targets (call model.eval() to predict)")
            return weighted_losses(self.compute_losses(images, targets), self.loss_weights)
        if image_sizes is None:
            image_sizes = [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
        return self.predict(images, image_sizes)

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

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Sequence[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        """Detections per image (see the module docstring): ``detect`` trimmed to the valid rows."""
        if len(image_sizes) != images.shape[0]:
            raise ValueError(f"got {len(image_sizes)} image_sizes for a batch of {images.shape[0]} images")
        sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=images.device).reshape(-1, 2)
        return trim_detections(self.detect(images, sizes))
