"""Delta (dx, dy, dw, dh) box encoding of Faster R-CNN, numerically as torchvision's ``BoxCoder``.

Shapes: N boxes, K boxes per reference (class-specific regression: K = C), boxes x1y1x2y2.
Widths are ``x2 - x1`` (no +1), centres ``x1 + 0.5 * w``. Deltas are normalised by
``(d - means) / stds``; torchvision's ``BoxCoder(weights=(10, 10, 5, 5))`` is the same coder with
``stds = (0.1, 0.1, 0.2, 0.2)`` and zero means. ``dw``/``dh`` are clamped at ``clip`` before ``exp``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["DeltaXYWHBoxCoder"]


class DeltaXYWHBoxCoder:
    """Encode gt boxes relative to proposals/anchors, and decode deltas back to boxes."""

    def __init__(
        self,
        *,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(target_means) != 4 or len(target_stds) != 4:
            raise ValueError(f"target_means/target_stds need 4 values, got {target_means} / {target_stds}")
        if any(s <= 0 for s in target_stds):
            raise ValueError(f"target_stds must be positive, got {target_stds}")
        self.target_means: Tuple[float, ...] = tuple(float(m) for m in target_means)
        self.target_stds: Tuple[float, ...] = tuple(float(s) for s in target_stds)
        self.clip = float(clip)
        # torchvision's BoxCoder weights; 1 / 0.1 and 1 / 0.2 are exactly 10 and 5 in float
        self._weights: Tuple[float, ...] = tuple(1.0 / s for s in self.target_stds)

    def encode(self, proposals: Tensor, gt: Tensor) -> Tensor:
        """Deltas that move ``proposals`` [N, 4] onto ``gt`` [N, 4]; returns [N, 4]."""
        proposals = proposals.to(gt.dtype)
        wx, wy, ww, wh = self._weights
        pw = proposals[:, 2] - proposals[:, 0]
        ph = proposals[:, 3] - proposals[:, 1]
        px = proposals[:, 0] + 0.5 * pw
        py = proposals[:, 1] + 0.5 * ph
        gw = gt[:, 2] - gt[:, 0]
        gh = gt[:, 3] - gt[:, 1]
        gx = gt[:, 0] + 0.5 * gw
        gy = gt[:, 1] + 0.5 * gh
        # (d - mean) / std written as w * d - w * mean (w = 1 / std), torchvision's operation order
        deltas = torch.stack(
            (wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)), dim=1
        )
        if any(self.target_means):
            deltas = deltas - deltas.new_tensor([m * w for m, w in zip(self.target_means, self._weights)])
        return deltas

    def decode(self, deltas: Tensor, boxes: Tensor, max_shape: Optional[Tuple[int, int]] = None) -> Tensor:
        """Apply ``deltas`` to reference ``boxes``.

        Args:
            deltas: [..., K*4] (K = 1 for plain [..., 4]); ``deltas[..., 4k:4k+4]`` applies to ``boxes``.
            boxes: [..., 4], broadcastable against ``deltas`` without its last dimension.
            max_shape: (h, w) to clip x to [0, w] and y to [0, h]; None leaves boxes unclipped.

        Returns:
            Boxes x1y1x2y2 with the shape of ``deltas``.
        """
        out_shape = deltas.shape
        d = deltas.reshape(*deltas.shape[:-1], deltas.shape[-1] // 4, 4)  # (..., K*4) -> (..., K, 4)
        b = boxes.to(deltas.dtype).unsqueeze(-2)  # (..., 4) -> (..., 1, 4)
        # d * std + mean, as torchvision's d / weight when the means are 0 (bit-identical)
        d = d / d.new_tensor(self._weights)
        if any(self.target_means):
            d = d + d.new_tensor(self.target_means)

        widths = b[..., 2] - b[..., 0]
        heights = b[..., 3] - b[..., 1]
        ctr_x = b[..., 0] + 0.5 * widths
        ctr_y = b[..., 1] + 0.5 * heights
        dw = torch.clamp(d[..., 2], max=self.clip)
        dh = torch.clamp(d[..., 3], max=self.clip)
        pred_ctr_x = d[..., 0] * widths + ctr_x
        pred_ctr_y = d[..., 1] * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        x1 = pred_ctr_x - half_w
        y1 = pred_ctr_y - half_h
        x2 = pred_ctr_x + half_w
        y2 = pred_ctr_y + half_h
        if max_shape is not None:
            h, w = max_shape
            x1, x2 = x1.clamp(min=0, max=w), x2.clamp(min=0, max=w)
            y1, y2 = y1.clamp(min=0, max=h), y2.clamp(min=0, max=h)
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(out_shape)
