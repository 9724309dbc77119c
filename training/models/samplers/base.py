"""The sampler interface: which assigned candidates enter the loss.

Shapes: N candidates; P sampled positives, Q sampled negatives (P + Q <= ``num``).

``BaseSampler.sample`` follows the flow shared by torchvision's ``BalancedPositiveNegativeSampler``
and mmdetection's samplers: at most ``int(num * pos_fraction)`` positives, negatives fill the rest
of ``num`` (capped at ``neg_pos_ub * max(1, P)`` when ``neg_pos_ub >= 0``). Subclasses choose
*which* positives and negatives with ``sample_pos`` / ``sample_neg``; they get the whole
``AssignResult`` (gt indices, max IoUs) so IoU- or instance-balanced samplers can plug in.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..assigner import AssignResult

__all__ = ["BaseSampler", "SamplingResult"]


class SamplingResult(NamedTuple):
    """Indices into the candidates: ``pos_inds`` int64 [P], ``neg_inds`` int64 [Q] (unpacks as a pair)."""

    pos_inds: Tensor
    neg_inds: Tensor


class BaseSampler:
    """Positive/negative sampling with a fixed budget (see the module docstring)."""

    def __init__(self, *, num: int, pos_fraction: float, neg_pos_ub: int = -1) -> None:
        if num <= 0 or not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"{type(self).__name__}: need num > 0 and 0 <= pos_fraction <= 1, got {num}, {pos_fraction}")
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub

    def sample_pos(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        """Choose at most ``num_expected`` of the positive ``candidates`` (int64 indices)."""
        raise NotImplementedError

    def sample_neg(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        """Choose at most ``num_expected`` of the negative ``candidates`` (int64 indices)."""
        raise NotImplementedError

    def sample(self, assign_result: AssignResult) -> SamplingResult:
        """Sample positives then negatives of one image's assignment."""
        gt_inds = assign_result.gt_inds
        positive = torch.where(gt_inds >= 0)[0]
        negative = torch.where(gt_inds == -1)[0]
        num_pos = min(positive.numel(), int(self.num * self.pos_fraction))
        pos_inds = self.sample_pos(assign_result, positive, num_pos)
        num_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_neg = min(num_neg, self.neg_pos_ub * max(1, pos_inds.numel()))
        num_neg = min(negative.numel(), num_neg)
        neg_inds = self.sample_neg(assign_result, negative, num_neg)
        return SamplingResult(pos_inds=pos_inds, neg_inds=neg_inds)
