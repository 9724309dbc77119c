"""Feature Pyramid Network (Lin et al. 2017), numerically as ``torchvision.ops.FeaturePyramidNetwork``.

Shapes: inputs C_i [B, in_channels[i], Hi, Wi] from the backbone (finest first); outputs
``num_outs`` maps [B, out_channels, Hj, Wj], finest first (e.g. P2..P6 or P3..P7).

Inputs ``in_channels[start_level:]`` get a 1x1 lateral conv; from the coarsest down, each lateral
is added to the nearest-neighbour upsampling (to the lateral's exact size) of the level above,
then a 3x3 conv makes the output. Levels beyond the inputs (``extra``):
* ``"maxpool"``: ``max_pool2d(P_last, kernel 1, stride 2)`` for each extra level (Faster R-CNN);
* ``"conv_c5"`` / ``"conv_p5"``: a stride-2 3x3 conv on the last used backbone map (mmdetection
  RetinaNet) or on the last FPN output (torchvision RetinaNet), then further stride-2 convs on
  ReLU of the previous extra level.

Parameter names ``lateral_convs.i``, ``fpn_convs.i``, ``extra_convs.j`` map one-to-one onto
torchvision's ``inner_blocks.i.0``, ``layer_blocks.i.0`` and ``extra_blocks.p6`` / ``p7``.
Convs are initialised as torchvision's: kaiming_uniform(a=1), bias 0.
"""
from __future__ import annotations

from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN"]

_EXTRAS = ("maxpool", "conv_c5", "conv_p5")


class FPN(nn.Module):
    """Lateral 1x1 + top-down nearest upsampling + 3x3 output convs, plus extra levels."""

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int = 5,
        start_level: int = 0,
        extra: str = "maxpool",
    ) -> None:
        super().__init__()
        if extra not in _EXTRAS:
            raise ValueError(f"FPN: extra must be one of {_EXTRAS}, got '{extra}'")
        used = list(in_channels)[start_level:]
        if not used:
            raise ValueError(f"FPN: start_level {start_level} leaves no input of {list(in_channels)}")
        if num_outs < len(used):
            raise ValueError(f"FPN: num_outs {num_outs} < {len(used)} used inputs")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.extra = extra
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in used)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in used)
        num_extra = num_outs - len(used)
        self.extra_convs = nn.ModuleList()
        if extra != "maxpool":
            for j in range(num_extra):
                cin = used[-1] if (j == 0 and extra == "conv_c5") else out_channels
                self.extra_convs.append(nn.Conv2d(cin, out_channels, 3, stride=2, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, feats: Sequence[Tensor]) -> List[Tensor]:
        """[C_0, ..., C_n] -> ``num_outs`` maps, finest first."""
        inputs = list(feats)[self.start_level :]
        if len(inputs) != len(self.lateral_convs):
            raise ValueError(f"FPN: expected {len(self.lateral_convs) + self.start_level} inputs, got {len(feats)}")
        last = self.lateral_convs[-1](inputs[-1])
        outs = [self.fpn_convs[-1](last)]
        for i in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral_convs[i](inputs[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.fpn_convs[i](last))
        num_extra = self.num_outs - len(outs)
        if self.extra == "maxpool":
            for _ in range(num_extra):
                outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0))
        elif num_extra > 0:
            x = inputs[-1] if self.extra == "conv_c5" else outs[-1]
            outs.append(self.extra_convs[0](x))
            for conv in self.extra_convs[1:]:
                outs.append(conv(F.relu(outs[-1])))
        return outs
