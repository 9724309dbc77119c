"""Elementwise box-regression losses (L1, smooth L1) and the reduction every head shares.

Shapes: ``pred``/``target`` any shape S (typically [N, 4] box deltas); ``weight`` S or [S[0]].

All loss modules here (and :class:`~training.models.losses.balanced_l1.BalancedL1Loss`) have one
call signature, so a head switches loss by config without other changes::

    loss(pred, target, weight=None, avg_factor=None, reduction_override=None) -> Tensor

The reduction follows mmdetection's weighted-loss wrapper: the elementwise loss is multiplied by
``weight``; with ``avg_factor`` and reduction "mean" the result is ``sum / avg_factor`` (the R-CNN
head passes the number of sampled RoIs, RetinaNet the number of positive anchors), otherwise a
plain mean or sum; then times ``loss_weight``.
"""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["REDUCTIONS", "weight_reduce_loss", "ElementwiseLoss", "L1Loss", "SmoothL1Loss"]

REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str, where: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def weight_reduce_loss(
    loss: Tensor,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    avg_factor: Optional[Union[float, Tensor]] = None,
) -> Tensor:
    """Weight an elementwise ``loss`` (shape S) and reduce it.

    Args:
        loss: elementwise loss, shape S.
        weight: shape S, or [S[0]] (one weight per row, broadcast over the other dimensions).
        reduction: "none" (shape S), "mean" or "sum" (scalars).
        avg_factor: with "mean", divide the weighted sum by this instead of the element count.

    An empty ``loss`` reduces to a zero that is still connected to the graph.
    """
    _check_reduction(reduction, "weight_reduce_loss")
    if weight is not None:
        if weight.shape != loss.shape:
            if weight.dim() == 1 and loss.dim() > 1 and weight.shape[0] == loss.shape[0]:
                weight = weight.reshape(-1, *([1] * (loss.dim() - 1)))
            else:
                raise ValueError(
                    f"weight_reduce_loss: weight of shape {tuple(weight.shape)} does not match the "
                    f"loss of shape {tuple(loss.shape)} (give the same shape or one weight per row)"
                )
        loss = loss * weight
    if reduction == "none":
        return loss
    if avg_factor is not None and reduction == "sum":
        raise ValueError('weight_reduce_loss: avg_factor cannot be used with reduction="sum"')
    if loss.numel() == 0:
        return loss.sum() * 0.0
    if avg_factor is None:
        return loss.mean() if reduction == "mean" else loss.sum()
    if isinstance(avg_factor, numbers.Number) and avg_factor <= 0:
        raise ValueError(f"weight_reduce_loss: avg_factor must be > 0 for a non-empty loss, got {avg_factor}")
    return loss.sum() / avg_factor


class ElementwiseLoss(nn.Module):
    """Base of the regression losses: ``elementwise(pred, target)`` then the shared reduction."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction, type(self).__name__)
        self.loss_weight = float(loss_weight)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        """Unreduced loss of the same shape as ``pred``."""
        raise NotImplementedError

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Optional[Tensor] = None,
        avg_factor: Optional[Union[float, Tensor]] = None,
        reduction_override: Optional[str] = None,
    ) -> Tensor:
        """Weighted, reduced loss times ``loss_weight`` (scalar, or shape S with "none")."""
        if pred.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
            )
        reduction = self.reduction if reduction_override is None else reduction_override
        _check_reduction(reduction, type(self).__name__)
        loss = self.elementwise(pred, target.to(pred.dtype))
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


class L1Loss(ElementwiseLoss):
    """|pred - target| elementwise (mmdetection v2+ default box loss)."""

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(pred, target, reduction="none")


class SmoothL1Loss(ElementwiseLoss):
    """Smooth L1 with threshold ``beta``: 0.5 x^2 / beta below ``beta``, |x| - 0.5 beta above."""

    def __init__(self, *, beta: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        if beta < 0:
            raise ValueError(f"SmoothL1Loss: beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(pred, target, reduction="none", beta=self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"
