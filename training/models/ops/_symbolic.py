"""Small helpers for the ``symbolic`` methods of the ops in this package (ONNX graph building)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

BOOL = 9  # onnx.TensorProto.BOOL
INT64 = 7  # onnx.TensorProto.INT64


def const(g: Any, value: Any, dtype: torch.dtype) -> Any:
    """A Constant node holding ``torch.tensor(value, dtype)``."""
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def dim(g: Any, x: Any, axis: int) -> Any:
    """Size of ``x`` along ``axis`` as an int64 tensor of shape [1]."""
    return g.op("Slice", g.op("Shape", x), const(g, [axis], torch.int64), const(g, [axis + 1], torch.int64))


def full(g: Any, sizes: Sequence[Any], value: float, dtype: torch.dtype) -> Any:
    """ConstantOfShape over the concatenation of [1]-shaped int64 size tensors."""
    shape = g.op("Concat", *sizes, axis_i=0)
    return g.op("ConstantOfShape", shape, value_t=torch.tensor([value], dtype=dtype))


def padded_topk(g: Any, x: Any, k: int, fill: float) -> Any:
    """TopK (largest, sorted, constant K) of x [B, N] padded with k entries of ``fill``: (values, index) [B, k]."""
    pad = full(g, [dim(g, x, 0), const(g, [k], torch.int64)], fill, torch.float32)
    return g.op("TopK", g.op("Concat", x, pad, axis_i=1), const(g, [k], torch.int64), axis_i=1, largest_i=1, sorted_i=1, outputs=2)
