"""Instance-balanced positive sampling (Libra R-CNN, Sec. 3.1: "Pos Balance").

Shapes: N candidates; ``assigned_gt_inds`` int [N] the gt each candidate is assigned to (only the
values of the positives are read, so any labelling of the gts works); ``pos_inds`` / ``candidates``
int64 [P0] the positive indices into the N; the result int64 [P] with P = min(P0, num_expected), a
subset of them without duplicates.

Two ways to call it:

* ``InstanceBalancedPosSampler().sample(assigned_gt_inds, pos_inds, num_expected)``: the positive
  choice alone (the Libra interface).
* As a :class:`BaseSampler` (``sample(assign_result)``, ``sample_pos``): instance-balanced
  positives and random negatives within the ``num`` / ``pos_fraction`` budget (default: the Libra
  R-CNN stage's 512 and 0.25); inside a :class:`CombinedSampler` only its ``sample_pos`` is used.

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

from typing import Optional, Union

import torch
from torch import Tensor

from ..assigner import AssignResult
from .args import check_sample_args
from .base import SamplingResult
from .random import RandomSampler

__all__ = ["InstanceBalancedPosSampler"]


class InstanceBalancedPosSampler(RandomSampler):
    """Instance-balanced positives, random negatives (see the module docstring).

    Args:
        num, pos_fraction, neg_pos_ub: the budget, as :class:`BaseSampler` (unused by the
            ``sample(assigned_gt_inds, pos_inds, num_expected)`` form).
    """

    def __init__(self, *, num: int = 512, pos_fraction: float = 0.25, neg_pos_ub: int = -1) -> None:
        super().__init__(num=num, pos_fraction=pos_fraction, neg_pos_ub=neg_pos_ub)

    def _random_order(self, candidates: Tensor) -> Tensor:
        """A uniformly random permutation of ``range(len(candidates))`` (tests may override)."""
        return torch.randperm(candidates.numel(), device=candidates.device)

    def _choose(self, candidates: Tensor, num: int) -> Tensor:  # type: ignore[override]
        """``num`` of ``candidates`` uniformly without replacement (all of them if fewer)."""
        return candidates[self._random_order(candidates)[:num]]

    def sample(  # type: ignore[override]
        self,
        assigned_gt_inds: Union[Tensor, AssignResult],
        pos_inds: Optional[Tensor] = None,
        num_expected: Optional[int] = None,
    ) -> Union[Tensor, SamplingResult]:
        """``sample(assigned_gt_inds [N], pos_inds [P0], num_expected) -> int64 [P]``:
        instance-balanced positives, indices into the N candidates (P = min(P0, num_expected)).

        Given an :class:`AssignResult` alone, it is :meth:`BaseSampler.sample` instead
        (instance-balanced positives, random negatives, the ``num`` / ``pos_fraction`` budget),
        which is how the detector heads call every sampler.
        """
        if isinstance(assigned_gt_inds, AssignResult):
            if pos_inds is not None or num_expected is not None:
                raise TypeError(
                    "InstanceBalancedPosSampler.sample: pass either an AssignResult alone or "
                    "(assigned_gt_inds, pos_inds, num_expected)"
                )
            return super().sample(assigned_gt_inds)
        if pos_inds is None or num_expected is None:
            raise TypeError("InstanceBalancedPosSampler.sample: needs assigned_gt_inds, pos_inds and num_expected")
        where = "InstanceBalancedPosSampler.sample"
        check_sample_args(where, assigned_gt_inds, "assigned_gt_inds", pos_inds, "pos_inds", num_expected)
        if assigned_gt_inds.is_floating_point():
            raise ValueError(f"{where}: assigned_gt_inds must be an integer tensor, got {assigned_gt_inds.dtype}")
        return self._sample(assigned_gt_inds, pos_inds.long(), int(num_expected))

    def sample_pos(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        return self._sample(assign_result.gt_inds, candidates, num_expected)

    def _sample(self, assigned_gt_inds: Tensor, candidates: Tensor, num_expected: int) -> Tensor:
        """The instance-balanced choice of ``num_expected`` of ``candidates`` (module docstring)."""
        if candidates.numel() <= num_expected:
            return candidates
        shuffled = candidates[self._random_order(candidates)]
        gt = assigned_gt_inds[shuffled]
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
