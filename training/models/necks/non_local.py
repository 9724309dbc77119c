"""Embedded-Gaussian non-local block (Wang et al. 2018), as the Libra R-CNN BFP uses it.

Shapes: x [B, C, H, W]; C' = C // reduction inter channels; HW = H * W positions.

    theta, phi, g = 1x1 convs C -> C' (bias, no norm, no activation)
    A   = softmax_over_last_dim(theta(x)^T phi(x))      [B, HW, HW]   (no 1/sqrt(C') scaling)
    y   = A g(x)                                        [B, HW, C'] -> [B, C', H, W]
    out = x + conv_out(y)                               conv_out: 1x1 C' -> C (bias, no norm)

This is mmcv's ``NonLocal2d(mode="embedded_gaussian")`` with the settings the BFP passes
(``reduction=1``, ``use_scale=False``, no conv/norm cfg). Initialisation (``zeros_init=True``,
the mmcv default): g/theta/phi ~ N(0, ``std``) with zero bias, ``conv_out`` all zeros, so the block
starts as the identity. The BFP may override this with Xavier on every conv (see ``bfp.py``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["NonLocal2d"]


class NonLocal2d(nn.Module):
    """Non-local block with embedded-Gaussian pairwise function and a residual connection."""

    def __init__(
        self,
        *,
        in_channels: int,
        reduction: int = 1,
        use_scale: bool = False,
        zeros_init: bool = True,
        std: float = 0.01,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or reduction <= 0 or in_channels // reduction <= 0:
            raise ValueError(
                f"NonLocal2d: need in_channels > 0 and 1 <= reduction <= in_channels, "
                f"got in_channels={in_channels}, reduction={reduction}"
            )
        self.in_channels = in_channels
        self.inter_channels = in_channels // reduction
        self.use_scale = use_scale
        self.g = nn.Conv2d(in_channels, self.inter_channels, 1)
        self.theta = nn.Conv2d(in_channels, self.inter_channels, 1)
        self.phi = nn.Conv2d(in_channels, self.inter_channels, 1)
        self.conv_out = nn.Conv2d(self.inter_channels, in_channels, 1)
        self.init_weights(std=std, zeros_init=zeros_init)

    def init_weights(self, *, std: float = 0.01, zeros_init: bool = True) -> None:
        """g/theta/phi ~ N(0, std), bias 0; ``conv_out`` zero (``zeros_init``) or N(0, std)."""
        for conv in (self.g, self.theta, self.phi):
            nn.init.normal_(conv.weight, 0.0, std)
            nn.init.zeros_(conv.bias)
        if zeros_init:
            nn.init.zeros_(self.conv_out.weight)
        else:
            nn.init.normal_(self.conv_out.weight, 0.0, std)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        b, _, h, w = x.shape
        c = self.inter_channels
        g_x = self.g(x).reshape(b, c, -1).transpose(1, 2)  # (B, C', H, W) -> (B, HW, C')
        theta_x = self.theta(x).reshape(b, c, -1).transpose(1, 2)  # (B, C', H, W) -> (B, HW, C')
        phi_x = self.phi(x).reshape(b, c, -1)  # (B, C', H, W) -> (B, C', HW)
        pairwise = torch.matmul(theta_x, phi_x)  # (B, HW, HW)
        if self.use_scale:
            pairwise = pairwise / math.sqrt(c)
        pairwise = pairwise.softmax(dim=-1)
        y = torch.matmul(pairwise, g_x)  # (B, HW, C')
        y = y.transpose(1, 2).reshape(b, c, h, w)  # (B, HW, C') -> (B, C', H, W)
        return x + self.conv_out(y)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, use_scale={self.use_scale}"
