"""The module that is exported: normalisation + a detector's fixed-size eval path + output dtypes.

Shapes: B images of the padded batch size H x W; K = ``max_dets`` rows per image.

``DeployGraph.forward(images, image_sizes)``:

* ``images`` float32 [B, 3, H, W]: resized and padded pixels in 0..255, RGB order, padded with the
  mean pixel (0 after normalisation, as training pads).
  The graph reverses the channels when the model was trained on BGR (``to_rgb: false``) and applies
  ``(x - mean) / std`` exactly as ``training.data.transforms.Normalize`` does.
* ``image_sizes`` int32 [B, 2]: valid (h, w) of each image; boxes are clipped to it.

Returns ``(num_dets int32 [B, 1], boxes float32 [B, K, 4], scores float32 [B, K], labels int32 [B, K])``,
rows >= ``num_dets`` all zero. The detector part is the detector's own ``detect`` (the code behind
``model.predict``): there is no export-only copy of the post-processing.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["DeployGraph", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "labels")


class DeployGraph(nn.Module):
    """Wrap a detector with a ``detect(images, image_sizes, *, max_dets)`` method for export."""

    def __init__(
        self,
        *,
        detector: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        to_rgb: bool,
        max_dets: Optional[int] = None,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"DeployGraph: mean and std need 3 values, got {list(mean)} and {list(std)}")
        self.detector = detector
        self.register_buffer("mean", torch.tensor([float(m) for m in mean], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std], dtype=torch.float32).view(1, 3, 1, 1))
        # to_rgb False: the model was trained on BGR pixels, the graph input is RGB
        self.register_buffer("bgr_index", torch.tensor([2, 1, 0], dtype=torch.int64))
        self.to_rgb = bool(to_rgb)
        self.max_dets = max_dets

    def normalise(self, images: Tensor) -> Tensor:
        """RGB 0..255 [B, 3, H, W] -> the detector's normalised input (same arithmetic as training)."""
        if not self.to_rgb:
            images = images.index_select(1, self.bgr_index)
        return (images - self.mean) / self.std

    def forward(self, images: Tensor, image_sizes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        dets = self.detector.detect(self.normalise(images), image_sizes.to(torch.float32), max_dets=self.max_dets)
        return (
            dets.num_dets.to(torch.int32),
            dets.boxes,
            dets.scores,
            dets.labels.to(torch.int32),
        )
