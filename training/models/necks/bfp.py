"""Balanced Feature Pyramid (Libra R-CNN, Pang et al. CVPR 2019, Sec. 3.2), as mmdetection's ``BFP``.

Shapes: L input levels ``P_i`` [B, C, Hi, Wi], finest first (e.g. P2..P6, strides 4..64); the
refine level r (``refine_level``, 2 = P4 for P2..P6, 1 = P4 for RetinaNet's P3..P7) has size Hr, Wr.

1. Gather: every level is resized to (Hr, Wr): finer levels (i < r) by adaptive max pooling,
   the others by nearest interpolation.
2. Integrate: average the L resized maps (no parameters).
3. Refine (optional): an embedded-Gaussian non-local block (``"non_local"``, the paper's default)
   or a 3x3 conv + bias + ReLU (``"conv"``, mmdetection's ConvModule without norm).
4. Strengthen: the refined map is resized back to each level (nearest up for i < r, adaptive max
   pooling down otherwise) and added to that level as a residual. Output shapes equal input shapes.

Export: the reference's ``adaptive_max_pool2d`` with a data-dependent output size does not export
to ONNX (mmdeploy#2763). This module therefore computes exactly the same values with plain ops
(MaxPool with a fixed kernel and stride 1, Gather, Max, Where, Range...), see
:func:`adaptive_max_pool2d_plain` and :func:`interpolate_nearest_plain`, in training and in the
exported graph alike (one code path, no tracing special case); the graph works for any input size.
The plain adaptive pooling assumes what a ResNet/FPN pyramid guarantees: each level is ``ceil`` of
half the previous one (so level sizes differ by a factor ``k = 2^|i - r|`` up to ceil rounding).
The tests check equality with the reference ops.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .non_local import NonLocal2d

__all__ = [
    "BalancedFeaturePyramid",
    "REFINE_TYPES",
    "INITS",
    "adaptive_max_pool2d_plain",
    "interpolate_nearest_plain",
]

REFINE_TYPES = ("non_local", "conv", None)
# "xavier": Xavier-uniform (bias 0) on every conv of the BFP, the non-local block included (mmdet
# <= 2.x, the published checkpoints). "zero_nonlocal_out": Xavier, then the non-local block's own
# init (N(0, 0.01), zero output conv: the refine step starts as the identity; mmdet 3.x).
INITS = ("xavier", "zero_nonlocal_out")

Size = Union[int, Tensor]  # an int in eager mode, a 0-dim int64 tensor while tracing


def _nearest_index(in_size: Size, out_size: Size, device: torch.device) -> Tensor:
    """int64 [out_size]: PyTorch's nearest source index min(floor(dst * float32(in / out)), in - 1)."""
    n = torch.as_tensor(in_size, dtype=torch.int64)
    scale = n.to(torch.float32) / torch.as_tensor(out_size, dtype=torch.float32)
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    src = torch.floor(dst * scale.to(device)).to(torch.int64)
    return torch.minimum(src, (n - 1).to(device))


def interpolate_nearest_plain(x: Tensor, size: Tuple[Size, Size]) -> Tensor:
    """``F.interpolate(x, size, mode="nearest")`` for x [B, C, H, W] by index gathers, exactly.

    Exported as Range/Mul/Floor/Gather, which reproduce PyTorch's float32 index formula; ONNX
    Resize rounds differently for some size pairs (e.g. 16 -> 122), this does not.
    """
    h, w = x.shape[-2], x.shape[-1]
    x = x.index_select(2, _nearest_index(h, size[0], x.device))
    return x.index_select(3, _nearest_index(w, size[1], x.device))


def _adaptive_max_1d(x: Tensor, dim: int, out_size: Size, max_log2: int) -> Tensor:
    """Adaptive max pooling of x [B, C, H, W] along ``dim`` (2 or 3) to ``out_size``.

    Bin i is [floor(i n / out), ceil((i + 1) n / out)) as in PyTorch. The max over a bin of length
    l is max(T_j[start], T_j[end - 2^j]) with j = floor(log2 l) and T_j the sliding max of width 2^j
    (a sparse table): exact whenever every bin is shorter than 2^(max_log2 + 1).
    """
    n = x.shape[dim]
    i = torch.arange(out_size, device=x.device)
    # all operands are >= 0, so truncating division is floor division (and exports as a plain Div)
    start = torch.div(i * n, out_size, rounding_mode="trunc")
    end = torch.div((i + 1) * n + out_size - 1, out_size, rounding_mode="trunc")
    length = end - start
    bcast = (-1, 1) if dim == 2 else (-1,)
    pad = 2**max_log2 - 1
    # -inf padding only keeps every T_j at least n long; gathered windows never reach it.
    xp = F.pad(x, (0, 0, 0, pad) if dim == 2 else (0, pad), value=float("-inf")) if pad else x
    result = x.index_select(dim, start)
    result = torch.maximum(result, x.index_select(dim, end - 1))
    for j in range(1, max_log2 + 1):
        width = 2**j
        kernel = (width, 1) if dim == 2 else (1, width)
        table = F.max_pool2d(xp, kernel_size=kernel, stride=1)
        cand = torch.maximum(
            table.index_select(dim, start), table.index_select(dim, torch.maximum(end - width, torch.zeros_like(end)))
        )
        result = torch.where((length >= width).reshape(bcast), cand, result)
    return result


def adaptive_max_pool2d_plain(x: Tensor, size: Tuple[Size, Size], max_ratio: int) -> Tensor:
    """``F.adaptive_max_pool2d(x, size)`` for x [B, C, H, W] with plain exportable ops, exactly.

    ``max_ratio`` bounds the pooling factor: valid when every bin is at most ``2 * 2^floor(log2(
    max_ratio + 1))`` long, which holds for ``size = ceil(input / k)`` with k <= ``max_ratio``
    (bins are then at most k + 1 long). With int sizes (eager) the bound is checked.
    """
    if max_ratio < 1:
        raise ValueError(f"adaptive_max_pool2d_plain: max_ratio must be >= 1, got {max_ratio}")
    max_log2 = int(math.floor(math.log2(max_ratio + 1)))
    for n, out in zip(x.shape[-2:], size):
        if isinstance(n, int) and isinstance(out, int):
            longest = -(-n // out) + 1 if n % out else n // out
            if out <= 0 or longest > 2 ** (max_log2 + 1):
                raise ValueError(
                    f"adaptive_max_pool2d_plain: pooling {tuple(x.shape[-2:])} to {tuple(size)} needs "
                    f"bins up to {longest} long, more than max_ratio={max_ratio} allows"
                )
    x = _adaptive_max_1d(x, 2, size[0], max_log2)
    return _adaptive_max_1d(x, 3, size[1], max_log2)


class BalancedFeaturePyramid(nn.Module):
    """Gather to the refine level, average, refine, scatter back as residuals (module docstring).

    Args:
        in_channels: C of every level (the FPN's ``out_channels``).
        num_levels: L, the number of levels ``forward`` receives.
        refine_level: index r of the level whose size the levels are gathered to (the stride-16
            level in the Libra configs: 2 for P2..P6, 1 for P3..P7).
        refine_type: "non_local" (the paper's default), "conv", or None / "none" (integration only).
        init: "xavier" (every conv, the published checkpoints) or "zero_nonlocal_out".
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        num_levels: int = 5,
        refine_level: int = 2,
        refine_type: Optional[str] = "non_local",
        init: str = "xavier",
    ) -> None:
        super().__init__()
        if refine_type == "none":
            refine_type = None
        if refine_type not in REFINE_TYPES:
            raise ValueError(
                f"BalancedFeaturePyramid: refine_type must be one of {REFINE_TYPES} or 'none', got {refine_type!r}"
            )
        if init not in INITS:
            raise ValueError(f"BalancedFeaturePyramid: init must be one of {INITS}, got {init!r}")
        if not 0 <= refine_level < num_levels:
            raise ValueError(
                f"BalancedFeaturePyramid: need 0 <= refine_level < num_levels, got {refine_level} and {num_levels}"
            )
        self.in_channels = in_channels
        self.num_levels = num_levels
        self.refine_level = refine_level
        self.refine_type = refine_type
        self.init = init
        self.refine: Optional[nn.Module]
        if refine_type == "non_local":
            self.refine = NonLocal2d(in_channels=in_channels, reduction=1, use_scale=False)
        elif refine_type == "conv":
            self.refine = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True))
        else:
            self.refine = None
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform (gain 1, bias 0) on every conv; then, for ``zero_nonlocal_out``, the
        non-local block's own init (N(0, 0.01), zero output conv)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=1.0)
                nn.init.zeros_(m.bias)
        if self.init == "zero_nonlocal_out" and isinstance(self.refine, NonLocal2d):
            self.refine.init_weights(std=0.01, zeros_init=True)

    @staticmethod
    def _down(x: Tensor, size: Tuple[Size, Size], levels_apart: int) -> Tensor:
        return adaptive_max_pool2d_plain(x, size, max_ratio=2**levels_apart)

    @staticmethod
    def _up(x: Tensor, size: Tuple[Size, Size]) -> Tensor:
        return interpolate_nearest_plain(x, size)

    def forward(self, inputs: Sequence[Tensor]) -> List[Tensor]:
        """L maps [B, C, Hi, Wi] -> L maps of the same shapes."""
        if len(inputs) != self.num_levels:
            raise ValueError(f"BalancedFeaturePyramid: expected {self.num_levels} levels, got {len(inputs)}")
        r = self.refine_level
        gather_size = (inputs[r].shape[-2], inputs[r].shape[-1])
        feats = []
        for i, x in enumerate(inputs):
            if i < r:
                feats.append(self._down(x, gather_size, r - i))
            elif i == r:
                feats.append(x)  # resizing to its own size is the identity
            else:
                feats.append(self._up(x, gather_size))
        bsf = sum(feats[1:], feats[0]) / len(feats)
        if self.refine is not None:
            bsf = self.refine(bsf)
        outs = []
        for i, x in enumerate(inputs):
            size = (x.shape[-2], x.shape[-1])
            if i < r:
                residual = self._up(bsf, size)
            elif i == r:
                residual = bsf
            else:
                residual = self._down(bsf, size, i - r)
            outs.append(residual + x)
        return outs

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_levels={self.num_levels}, refine_level={self.refine_level}, "
            f"refine_type={self.refine_type!r}, init={self.init!r}"
        )
