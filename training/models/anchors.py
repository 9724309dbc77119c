"""Anchor boxes per feature level, in torchvision's order.

Shapes: L levels, level i with a grid of Hi x Wi cells, A = len(sizes_i) * len(ratios) anchors per
cell. Level i yields [Hi*Wi*A, 4] x1y1x2y2 anchors, location-major (row by row, then column), and
within a location ratio-major (for each ratio, every size), as
``torchvision.models.detection.anchor_utils.AnchorGenerator`` and mmdetection order them.

A base anchor of size s and ratio r (= h / w) has w = s / sqrt(r), h = s * sqrt(r), centred on
``center_offset * stride``; ``round_base`` rounds the half-extents to integers as torchvision does.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator"]


class AnchorGenerator(nn.Module):
    """Generate per-level anchors for feature maps of given sizes.

    Give either ``sizes_per_level`` (torchvision style, absolute sizes per level) or ``scales``
    (anchor side = stride * scale, mmdetection style), plus ``ratios`` (h / w).

    ``stride_from_image``: torchvision computes a level's stride as ``padded image size // grid
    size`` (so P6 of an image whose P5 is odd-sized gets e.g. stride 59 rather than 64); set it to
    reproduce torchvision exactly. Otherwise the configured ``strides`` are used.
    """

    def __init__(
        self,
        *,
        strides: Sequence[int],
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Optional[Sequence[float]] = None,
        sizes_per_level: Optional[Sequence[Sequence[float]]] = None,
        round_base: bool = False,
        center_offset: float = 0.0,
        stride_from_image: bool = False,
    ) -> None:
        super().__init__()
        if (scales is None) == (sizes_per_level is None):
            raise ValueError("AnchorGenerator: give exactly one of scales or sizes_per_level")
        if sizes_per_level is None:
            sizes_per_level = [[float(s) * float(sc) for sc in scales] for s in strides]  # type: ignore[union-attr]
        if len(sizes_per_level) != len(strides):
            raise ValueError(
                f"AnchorGenerator: {len(sizes_per_level)} levels of sizes for {len(strides)} strides"
            )
        self.strides = [int(s) for s in strides]
        self.ratios = [float(r) for r in ratios]
        self.sizes_per_level = [[float(s) for s in sizes] for sizes in sizes_per_level]
        self.round_base = round_base
        self.center_offset = float(center_offset)
        self.stride_from_image = stride_from_image
        self._base: List[Tensor] = [self._base_anchors(sizes, stride) for sizes, stride in zip(self.sizes_per_level, self.strides)]

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def num_anchors_per_location(self) -> List[int]:
        """A for each level."""
        return [len(sizes) * len(self.ratios) for sizes in self.sizes_per_level]

    def _base_anchors(self, sizes: Sequence[float], stride: int) -> Tensor:
        """[A, 4] anchors of one cell, ratio-major; float32 arithmetic as torchvision."""
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        ratios = torch.as_tensor(self.ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        if self.round_base:
            base = base.round()
        if self.center_offset:
            base = base + self.center_offset * stride
        return base

    def grid_anchors(
        self,
        feature_sizes: Sequence[Tuple[int, int]],
        image_size: Optional[Tuple[int, int]] = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> List[Tensor]:
        """Anchors for each level: list of L tensors [Hi*Wi*A, 4].

        Args:
            feature_sizes: (Hi, Wi) per level.
            image_size: padded input (H, W); needed when ``stride_from_image``.
        """
        if len(feature_sizes) != self.num_levels:
            raise ValueError(f"AnchorGenerator: {len(feature_sizes)} feature maps for {self.num_levels} levels")
        if self.stride_from_image and image_size is None:
            raise ValueError("AnchorGenerator(stride_from_image=True) needs image_size")
        out = []
        # no int() on the sizes: while tracing for ONNX they are 0-dim tensors, so the exported
        # anchors follow the input size instead of being frozen at the export size
        for (h, w), stride, base in zip(feature_sizes, self.strides, self._base):
            sy, sx = (image_size[0] // h, image_size[1] // w) if self.stride_from_image else (stride, stride)  # type: ignore[index]
            shifts_x = torch.arange(0, w, dtype=torch.int32, device=device) * sx
            shifts_y = torch.arange(0, h, dtype=torch.int32, device=device) * sy
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1).to(dtype)
            # (Hi*Wi, 1, 4) + (1, A, 4) -> (Hi*Wi*A, 4)
            out.append((shifts.view(-1, 1, 4) + base.to(device=device, dtype=dtype).view(1, -1, 4)).reshape(-1, 4))
        return out

    def forward(self, features: Sequence[Tensor], image_size: Optional[Tuple[int, int]] = None) -> List[Tensor]:
        """Anchors for feature maps [B, C, Hi, Wi] (one set, shared by every image of the batch)."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        # half-precision features (autocast) still get float32 anchors: fp16 cannot hold pixel coordinates
        dtype = torch.float64 if features[0].dtype == torch.float64 else torch.float32
        return self.grid_anchors(sizes, image_size, device=features[0].device, dtype=dtype)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return (
            f"strides={self.strides}, sizes={self.sizes_per_level}, ratios={self.ratios}, "
            f"round_base={self.round_base}, center_offset={self.center_offset}, "
            f"stride_from_image={self.stride_from_image}"
        )


def octave_scales(octave_base_scale: float, scales_per_octave: int) -> List[float]:
    """RetinaNet scales: ``base * 2**(i / n)`` for i in 0..n-1."""
    return [octave_base_scale * math.pow(2, i / scales_per_octave) for i in range(scales_per_octave)]
