"""Top-k selections with fixed-size, padded results, exported as ONNX ``TopK`` with a constant K.

Shapes: B rows (images), N entries per row, k kept. Every result is [B, k] for any N (also N < k):
rows past the available entries are padding (``valid`` False, index 0 so that it can still index
the unpadded tensors). Each op is an autograd Function: the eager ``forward`` makes exactly the
calls torchvision's detectors make (``Tensor.topk`` on the same tensors, hence the same order of
equal values), the ``symbolic`` pads the row to N + k entries and emits one ``TopK`` (largest,
sorted, K constant < 3840 for TensorRT). Equal values may be ordered differently by ONNX ``TopK``
(lower index first) and ``torch.topk``; nothing else differs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._symbolic import BOOL, INT64, const, dim, padded_topk
from .nms import INVALID_SCORE

__all__ = ["topk_padded", "select_candidates"]


def _pad(values: Tensor, index: Tensor, k: int, fill: float) -> Tuple[Tensor, Tensor, Tensor]:
    """[B, n] results (n <= k) -> [B, k] values (``fill``), index (0) and valid (False) padded."""
    b, n = index.shape
    valid = torch.zeros((b, k), dtype=torch.bool, device=index.device)
    valid[:, :n] = True
    out_v = values.new_full((b, k), fill)
    out_v[:, :n] = values
    out_i = index.new_zeros((b, k))
    out_i[:, :n] = index
    return out_v, out_i, valid


class _TopKPadded(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: int, fill: float, threshold: Optional[float]):  # type: ignore[override]
        if threshold is None:  # torchvision RPN: topk over the whole level
            values, index = x.topk(min(k, x.shape[1]), dim=1)
            return _pad(values, index, k, fill)
        # torchvision RetinaNet: topk among the entries above the threshold
        out_v = x.new_full((x.shape[0], k), fill)
        out_i = torch.zeros((x.shape[0], k), dtype=torch.int64, device=x.device)
        valid = torch.zeros((x.shape[0], k), dtype=torch.bool, device=x.device)
        for b in range(x.shape[0]):
            cand = torch.where(x[b] > threshold)[0]
            values, order = x[b, cand].topk(min(k, cand.numel()))
            n = values.numel()
            out_v[b, :n], out_i[b, :n], valid[b, :n] = values, cand[order], True
        return out_v, out_i, valid

    @staticmethod
    def symbolic(g, x, k: int, fill: float, threshold: Optional[float]):  # pragma: no cover - export only
        if threshold is not None:
            above = g.op("Greater", x, const(g, threshold, torch.float32))
            x_in = g.op("Where", above, x, const(g, fill, torch.float32))
        else:
            x_in = x
        values, index = padded_topk(g, x_in, k, fill)
        valid = g.op("Less", index, dim(g, x, 1))
        if threshold is not None:
            valid = g.op("And", valid, g.op("Greater", values, const(g, threshold, torch.float32)))
        index = g.op("Where", valid, index, const(g, 0, torch.int64))
        values = g.op("Where", valid, values, const(g, fill, torch.float32))
        return values, index, valid


def topk_padded(x: Tensor, k: int, *, fill: float, threshold: Optional[float] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest entries of each row of ``x`` [B, N] (float32), descending.

    With ``threshold``, only entries ``> threshold`` count. Returns values [B, k] (``fill`` on
    padding rows), int64 index [B, k] (0 on padding rows) and bool valid [B, k].
    """
    return _TopKPadded.apply(x, int(k), float(fill), None if threshold is None else float(threshold))


class _SelectCandidates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, k: int):  # type: ignore[override]
        index = torch.zeros((scores.shape[0], k), dtype=torch.int64, device=scores.device)
        valid = torch.zeros((scores.shape[0], k), dtype=torch.bool, device=scores.device)
        for b in range(scores.shape[0]):
            cand = torch.where(scores[b] >= 0)[0]
            if cand.numel() > k:
                cand = cand[scores[b, cand].topk(k).indices].sort().values
            index[b, : cand.numel()], valid[b, : cand.numel()] = cand, True
        return index, valid

    @staticmethod
    def symbolic(g, scores, k: int):  # pragma: no cover - export only
        values, index = padded_topk(g, scores, k, INVALID_SCORE)
        valid = g.op("And", g.op("Less", index, dim(g, scores, 1)), g.op("GreaterOrEqual", values, const(g, 0.0, torch.float32)))
        # back to ascending index order, padding last: TopK on -index (valid) / -index - N - k (padding)
        neg = g.op("Neg", index)
        total = g.op("Add", dim(g, scores, 1), const(g, [k], torch.int64))
        key = g.op("Where", valid, neg, g.op("Sub", neg, total))
        _, order = g.op("TopK", key, const(g, [k], torch.int64), axis_i=1, largest_i=1, sorted_i=1, outputs=2)
        index = g.op("GatherElements", index, order, axis_i=1)
        valid = g.op("Cast", g.op("GatherElements", g.op("Cast", valid, to_i=INT64), order, axis_i=1), to_i=BOOL)
        return g.op("Where", valid, index, const(g, 0, torch.int64)), valid


def select_candidates(scores: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """At most ``k`` candidates per row of ``scores`` [B, N] (negative = not a candidate): all of
    them when there are <= k, else the k best; returned in ascending index order (the order
    torchvision hands candidates to NMS), as int64 index [B, k] (0 on padding) and bool valid [B, k]."""
    return _SelectCandidates.apply(scores, int(k))
