"""Balanced L1 loss (Libra R-CNN, Pang et al. CVPR 2019, Sec. 3.3, Eq. 7-9).

With x = pred - target, d = |x| and b = e^(gamma/alpha) - 1 (so that alpha * ln(b + 1) = gamma,
Eq. 9), the loss of the paper (Eq. 8, threshold 1) is

    L_b(x) = alpha/b * (b d + 1) * ln(b d + 1) - alpha d      if d < 1
             gamma d + gamma/b - alpha                        otherwise

whose gradient (Eq. 7) is alpha * ln(b d + 1) * sign(x) below 1 and gamma * sign(x) above.
mmdetection (the authors' code, every version) adds a threshold ``beta`` in this exact form:

    L(d) = alpha/b * (b d + 1) * ln(b d / beta + 1) - alpha d  if d < beta
           gamma d + gamma/b - alpha beta                      otherwise

which is Eq. 8 for beta = 1 and continuous at d = beta for any beta; for beta != 1 it is *not* a
rescaled Eq. 8 (b does not depend on beta and the gradient jumps at d = beta: e.g. 1.70 -> 1.5 for
beta = 0.11, the Libra RetinaNet setting). It is kept verbatim for parity with the published models.

Shapes: ``pred``/``target`` any shape S (box deltas [N, 4]). ``balanced_l1_elementwise`` gives the
unreduced loss (shape S); ``balanced_l1_loss`` (the functional form, reduction "mean" by default)
and :class:`BalancedL1Loss` (the heads' module) weight and reduce it as mmdetection does.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .regression import REDUCTIONS, ElementwiseLoss, weight_reduce_loss

__all__ = ["balanced_l1_loss", "balanced_l1_elementwise", "BalancedL1Loss"]


def _check_params(alpha: float, gamma: float, beta: float, where: str) -> None:
    if not (alpha > 0 and gamma > 0 and beta > 0):
        raise ValueError(f"{where}: alpha, gamma and beta must be > 0, got {alpha}, {gamma}, {beta}")


def balanced_l1_elementwise(
    pred: Tensor, target: Tensor, *, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0
) -> Tensor:
    """Elementwise balanced L1 loss of ``pred - target`` (both shape S), unreduced, shape S."""
    _check_params(alpha, gamma, beta, "balanced_l1_loss")
    if pred.shape != target.shape:
        raise ValueError(
            f"balanced_l1_loss: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    diff = (pred - target).abs()
    b = math.exp(gamma / alpha) - 1.0
    # Both branches are finite (and have finite gradients) everywhere, so torch.where is safe.
    inlier = alpha / b * (b * diff + 1.0) * torch.log1p(b * diff / beta) - alpha * diff
    outlier = gamma * diff + (gamma / b - alpha * beta)
    return torch.where(diff < beta, inlier, outlier)


def balanced_l1_loss(
    pred: Tensor,
    target: Tensor,
    beta: float = 1.0,
    alpha: float = 0.5,
    gamma: float = 1.5,
    reduction: str = "mean",
    weight: Optional[Tensor] = None,
    avg_factor: Optional[Union[float, Tensor]] = None,
) -> Tensor:
    """Balanced L1 loss of ``pred - target`` (both shape S), weighted and reduced.

    Defaults are the paper's (alpha 0.5, gamma 1.5) with beta 1 (Eq. 8 exactly). ``weight``: shape
    S or one weight per row [S[0]]. ``reduction``: "none" (shape S), "mean" (plain mean, or the
    weighted sum / ``avg_factor`` when given: the heads pass the number of sampled RoIs or of
    positive anchors) or "sum" (see :func:`~training.models.losses.regression.weight_reduce_loss`).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"balanced_l1_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    loss = balanced_l1_elementwise(pred, target.to(pred.dtype), alpha=alpha, gamma=gamma, beta=beta)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


class BalancedL1Loss(ElementwiseLoss):
    """Balanced L1 with the shared regression-loss call signature (see ``losses.regression``).

    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        gamma: float = 1.5,
        beta: float = 1.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        _check_params(alpha, gamma, beta, "BalancedL1Loss")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.beta = float(beta)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return balanced_l1_elementwise(pred, target, alpha=self.alpha, gamma=self.gamma, beta=self.beta)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}, "
            f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"
        )
