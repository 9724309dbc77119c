"""A sampler taking its positives from one sampler and its negatives from another.

The Libra R-CNN stage-2 sampler is ``CombinedSampler(num=512, pos_fraction=0.25,
pos_sampler=InstanceBalancedPosSampler(...), neg_sampler=IoUBalancedNegSampler(...))``
(mmdetection's ``CombinedSampler``). The budget (``num``, ``pos_fraction``, ``neg_pos_ub``) is this
sampler's; the two samplers only choose *which* candidates, through ``sample_pos`` / ``sample_neg``.

Shapes: as :class:`BaseSampler` (N candidates; P positives and Q negatives sampled, int64).
"""
from __future__ import annotations

from torch import Tensor

from ..assigner import AssignResult
from .base import BaseSampler

__all__ = ["CombinedSampler"]


class CombinedSampler(BaseSampler):
    """Positives chosen by ``pos_sampler.sample_pos``, negatives by ``neg_sampler.sample_neg``."""

    def __init__(
        self,
        *,
        num: int,
        pos_fraction: float,
        pos_sampler: BaseSampler,
        neg_sampler: BaseSampler,
        neg_pos_ub: int = -1,
    ) -> None:
        super().__init__(num=num, pos_fraction=pos_fraction, neg_pos_ub=neg_pos_ub)
        for name, s in (("pos_sampler", pos_sampler), ("neg_sampler", neg_sampler)):
            if not isinstance(s, BaseSampler):
                raise TypeError(f"CombinedSampler: {name} must be a BaseSampler, got {type(s).__name__}")
        self.pos_sampler = pos_sampler
        self.neg_sampler = neg_sampler

    def sample_pos(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        return self.pos_sampler.sample_pos(assign_result, candidates, num_expected)

    def sample_neg(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        return self.neg_sampler.sample_neg(assign_result, candidates, num_expected)
