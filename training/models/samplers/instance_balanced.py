"""Instance-balanced positive sampling (Libra R-CNN, Sec. 3.1: "Pos Balance").

Shapes: ``candidates`` int64 [P0] the positive indices into the N candidates; the result int64 [P]
with P = min(P0, num_expected).

When there are more positives than ``num_expected``: with G distinct gts among them, each gt keeps
``per_gt = round(num_expected / G) + 1`` of its positives (all of them if it has fewer), drawn
uniformly; if that totals less than ``num_expected`` the rest is drawn uniformly from the positives
not yet picked, if more it is uniformly subsampled down to ``num_expected`` (mmdetection's
``InstanceBalancedPosSampler``; ``round`` is Python's, half to even).

One deliberate difference: the reference tops up from ``set(pos) - set(picked)`` built from 0-dim
tensors, which hash by identity, so it really draws from *all* positives and the duplicates are
then dropped by its ``unique()`` (fewer positives than intended, more negatives). Here the top-up
draws only from the positives not yet picked, as the algorithm intends.

Vectorised: one random permutation, a stable sort by gt, and each positive's rank within its gt.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..assigner import AssignResult
from .random import RandomSampler

__all__ = ["InstanceBalancedPosSampler"]


class InstanceBalancedPosSampler(RandomSampler):
    """Instance-balanced positives, random negatives (see the module docstring)."""

    def _random_order(self, candidates: Tensor) -> Tensor:
        """A uniformly random permutation of ``range(len(candidates))`` (tests may override)."""
        return torch.randperm(candidates.numel(), device=candidates.device)

    def _choose(self, candidates: Tensor, num: int) -> Tensor:  # type: ignore[override]
        """``num`` of ``candidates`` uniformly without replacement (all of them if fewer)."""
        return candidates[self._random_order(candidates)[:num]]

    def sample_pos(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        if candidates.numel() <= num_expected:
            return candidates
        shuffled = candidates[self._random_order(candidates)]
        gt = assign_result.gt_inds[shuffled]
        gt_sorted, order = torch.sort(gt, stable=True)  # keeps the random order inside each gt
        _, counts = torch.unique_consecutive(gt_sorted, return_counts=True)
        per_gt = int(round(num_expected / counts.numel()) + 1)
        group_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        rank = torch.arange(order.numel(), device=order.device) - group_start
        keep = torch.zeros_like(shuffled, dtype=torch.bool)
        keep[order] = rank < per_gt
        picked = shuffled[keep]
        if picked.numel() > num_expected:
            return self._choose(picked, num_expected)
        rest = shuffled[~keep]
        return torch.cat([picked, self._choose(rest, num_expected - picked.numel())])
