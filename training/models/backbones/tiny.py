"""A narrow from-scratch backbone for CPU training on small images.

Shapes: input [B, 3, H, W]; outputs C2..C5 of [B, widths[i], H/si, W/si] with s = 4, 8, 16, 32.

Layout (every conv is 3x3 + norm + ReLU):
* stem: stride-2 conv to ``widths[0] // 2`` channels, stride-2 conv to ``widths[0]`` (stride 4);
* stage 1 (C2): one conv at stride 4;
* stages 2-4 (C3..C5): a stride-2 conv to ``widths[i]`` then one conv.
``norm`` is "bn" (BatchNorm2d) or "gn" (GroupNorm with ``gn_groups`` groups); "frozen_bn" makes
no sense without pretrained weights and is refused. ``frozen_stages`` as in the ResNet backbone.
"""
from __future__ import annotations

from typing import List, Sequence

from torch import Tensor, nn

from ..norms import GroupNorm2d
from .freezing import FrozenStagesBackbone

__all__ = ["TinyBackbone"]


def _conv_norm_relu(cin: int, cout: int, stride: int, norm: str, gn_groups: int) -> nn.Sequential:
    if norm == "bn":
        norm_layer: nn.Module = nn.BatchNorm2d(cout)
    elif norm == "gn":
        norm_layer = GroupNorm2d(min(gn_groups, cout), cout)
    else:
        raise ValueError(f"TinyBackbone: norm must be 'bn' or 'gn', got '{norm}'")
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, norm_layer, nn.ReLU(inplace=True))


class TinyBackbone(FrozenStagesBackbone):
    """Four stages of strided 3x3 conv blocks producing [C2, C3, C4, C5]."""

    def __init__(
        self, *, widths: Sequence[int] = (32, 64, 128, 256), norm: str = "gn", gn_groups: int = 8, frozen_stages: int = -1
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"TinyBackbone: widths needs 4 values (C2..C5), got {list(widths)}")
        w = [int(x) for x in widths]
        self.stem = nn.Sequential(
            _conv_norm_relu(3, max(w[0] // 2, 8), 2, norm, gn_groups),
            _conv_norm_relu(max(w[0] // 2, 8), w[0], 2, norm, gn_groups),
        )
        self.stages = nn.ModuleList([nn.Sequential(_conv_norm_relu(w[0], w[0], 1, norm, gn_groups))])
        for cin, cout in zip(w[:-1], w[1:]):
            self.stages.append(
                nn.Sequential(_conv_norm_relu(cin, cout, 2, norm, gn_groups), _conv_norm_relu(cout, cout, 1, norm, gn_groups))
            )
        self.out_channels: List[int] = w
        self.strides: List[int] = [4, 8, 16, 32]
        self.frozen_stages = frozen_stages
        self._freeze()

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem] + list(self.stages[: self.frozen_stages])

    def forward(self, x: Tensor) -> List[Tensor]:
        """[B, 3, H, W] -> [C2, C3, C4, C5]."""
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
