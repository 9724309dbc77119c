"""What every detector shares: the train/eval ``forward``, ``predict`` as ``detect`` trimmed per
image, ``extract_feats`` over backbone + necks, and the loss-weight / target checks.

Shapes: B images [B, 3, H, W], padded and already normalised; M ground truths of an image.
A subclass sets ``ARCH`` (the ``model.arch`` name) and ``LOSS_NAMES``, registers its heads after
calling ``Detector.__init__`` and implements ``num_classes``, ``compute_losses`` and ``detect``
(see ``training/models/faster_rcnn.py`` for the contract).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .ops import Detections, trim_detections

__all__ = ["Detector", "validate_targets", "weighted_losses", "check_loss_weights"]


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


class Detector(nn.Module):
    """Backbone + necks and the plumbing around a subclass's ``compute_losses`` / ``detect``."""

    ARCH: str = ""
    LOSS_NAMES: Tuple[str, ...] = ()

    def __init__(
        self, *, backbone: nn.Module, necks: Sequence[nn.Module], loss_weights: Optional[Mapping[str, float]] = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.necks = necks if isinstance(necks, nn.ModuleList) else nn.ModuleList(necks)
        self.loss_weights = check_loss_weights(loss_weights, self.LOSS_NAMES, self.ARCH)

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def extract_feats(self, images: Tensor) -> List[Tensor]:
        """[B, 3, H, W] -> pyramid maps [B, C, Hi, Wi], finest first."""
        feats = self.backbone(images)
        for neck in self.necks:
            feats = neck(feats)
        return list(feats)

    def compute_losses(self, images: Tensor, targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Unweighted losses, one per name in ``LOSS_NAMES``."""
        raise NotImplementedError

    def detect(self, images: Tensor, image_sizes: Tensor, *, max_dets: Optional[int] = None) -> Detections:
        """Padded detections of a batch: images [B, 3, H, W], image_sizes [B, 2] (h, w)."""
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        targets: Optional[Sequence[Dict[str, Tensor]]] = None,
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    ):
        """Train mode: weighted losses. Eval mode: ``predict(images, image_sizes)``."""
        if self.training:
            if targets is None:
                raise ValueError(f"{type(self).__name__} in train mode needs targets (call model.eval() to predict)")
            return weighted_losses(self.compute_losses(images, targets), self.loss_weights)
        if image_sizes is None:
            image_sizes = [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
        return self.predict(images, image_sizes)

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Sequence[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        """Detections per image (boxes float32 [D, 4], scores float32 [D], labels int64 [D]):
        ``detect`` trimmed to the valid rows."""
        if len(image_sizes) != images.shape[0]:
            raise ValueError(f"got {len(image_sizes)} image_sizes for a batch of {images.shape[0]} images")
        sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=images.device).reshape(-1, 2)
        return trim_detections(self.detect(images, sizes))
