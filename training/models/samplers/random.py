"""Uniform random sampling (torchvision's ``BalancedPositiveNegativeSampler``, mmdet's ``RandomSampler``).

Draws with ``torch.randperm`` on the candidates' device from the global generator (the trainer
seeds it); per image it draws positives first, then negatives, as torchvision does, so the same
seed selects the same samples.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..assigner import AssignResult
from .base import BaseSampler

__all__ = ["RandomSampler"]


class RandomSampler(BaseSampler):
    """Up to ``num * pos_fraction`` random positives; random negatives fill the rest of ``num``."""

    @staticmethod
    def _choose(candidates: Tensor, num: int) -> Tensor:
        perm = torch.randperm(candidates.numel(), device=candidates.device)[:num]
        return candidates[perm]

    def sample_pos(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        return self._choose(candidates, num_expected)

    def sample_neg(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        return self._choose(candidates, num_expected)
