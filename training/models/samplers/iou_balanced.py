"""IoU-balanced negative sampling (Libra R-CNN, Pang et al. CVPR 2019, Sec. 3.1, Eq. 2).

Shapes: N candidates (proposals, plus the gts when they are added as proposals); ``max_overlaps``
float [N] each candidate's max IoU with the gts; ``neg_inds`` / ``candidates`` int64 [M] the
negative indices into the N; the result int64 [k] with k = min(M, num_expected), a subset of them
(no positive, no duplicate).

Two ways to call it:

* ``IoUBalancedNegSampler(num_bins=3, floor_thr=-1.0, floor_fraction=0.0).sample(max_overlaps,
  neg_inds, num_expected)``: the negative choice alone (the Libra interface).
* As a :class:`BaseSampler` (``sample(assign_result)``, ``sample_neg``): random positives and
  IoU-balanced negatives within the ``num`` / ``pos_fraction`` budget (default: the Libra R-CNN
  stage's 512 and 0.25); inside a :class:`CombinedSampler` only its ``sample_neg`` is used.

Where the gts sit among the candidates does not matter (our RoI head appends them after the
proposals, torchvision's order; mmdetection prepends them): bins depend on IoU values only, and
the draws are uniform within a bin, so the sampled distribution is the same for any order.

The negatives' max IoU range is split into K = ``num_bins`` equal bins; each bin gets
``int(n / K)`` draws, uniform inside the bin; a bin with fewer candidates gives all it has and the
shortfall is filled uniformly from the negatives not yet drawn. ``floor_thr`` / ``floor_fraction``
optionally set aside low-IoU "floor" negatives sampled uniformly (mmdetection's semantics):

* ``floor_thr > 0``: floor = IoU in [0, floor_thr), binned = IoU >= floor_thr, bins from floor_thr;
* ``floor_thr == 0``: floor = IoU == 0, binned = IoU > 0, bins from 0;
* ``floor_thr == -1`` (config default): no floor set, every negative binned, bins from 0
  (the authors' "-1 means IoU starts from and includes 0").

``floor_fraction`` of the budget goes to the floor set, the rest to the bins; any shortfall of
either part is filled uniformly from the unpicked negatives.

Binning (``binning``):

* ``"reference"`` (default): the authors' release that produced the paper's numbers
  (OceanPang/Libra_R-CNN 387fdb3, ``hard_thr=0, hard_fraction=1, num_intervals=3``; the same
  per-bin sets as mmdetection v1.0 with ``floor_thr=-1`` and as mmdetection >= v1.1 / 3.x on its
  first call). Bins span [lower, max IoU over *all* candidates): with gts added as proposals that
  maximum is 1.0, so with negatives in [0, 0.5) and K = 3 the bins are [0, 1/3), [1/3, 2/3),
  [2/3, 1) and the top bin never holds a negative: a third of the budget ends up filled at random.
  (mmdetection >= v1.1 mutates ``floor_thr`` from -1 to 0 after its first call, so from then on
  it behaves as ``floor_thr=0`` here: IoU == 0 negatives are only used to top up.)
* ``"paper"``: Eq. 2 literally, K bins over the negatives' IoU interval [lower, ``neg_iou_thr``).

The torch code is vectorised per bin (K is small); randomness comes from ``torch.randperm`` on
the candidates' device (global generator), through :meth:`_random_order`.
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import Tensor

from ..assigner import AssignResult
from .args import check_sample_args
from .base import SamplingResult
from .random import RandomSampler

__all__ = ["IoUBalancedNegSampler", "BINNINGS"]

BINNINGS = ("reference", "paper")


class IoUBalancedNegSampler(RandomSampler):
    """Random positives, IoU-balanced negatives (see the module docstring).

    Args:
        num, pos_fraction, neg_pos_ub: the budget, as :class:`BaseSampler` (unused by the
            ``sample(max_overlaps, neg_inds, num_expected)`` form).
        floor_thr: -1 (no floor set), 0 (IoU == 0 is the floor) or > 0 (IoU < floor_thr).
        floor_fraction: share of the negative budget drawn from the floor set, in [0, 1].
        num_bins: K; 1 means uniform sampling of the binned set.
        binning: "reference" (bins up to the max IoU of all candidates) or "paper" (up to
            ``neg_iou_thr``).
        neg_iou_thr: the assigner's negative threshold; used by ``binning="paper"`` only.
    """

    def __init__(
        self,
        *,
        num_bins: int = 3,
        floor_thr: float = -1.0,
        floor_fraction: float = 0.0,
        binning: str = "reference",
        neg_iou_thr: float = 0.5,
        num: int = 512,
        pos_fraction: float = 0.25,
        neg_pos_ub: int = -1,
    ) -> None:
        super().__init__(num=num, pos_fraction=pos_fraction, neg_pos_ub=neg_pos_ub)
        name = type(self).__name__
        if not (floor_thr >= 0 or floor_thr == -1):
            raise ValueError(f"{name}: floor_thr must be -1 or >= 0, got {floor_thr}")
        if not 0.0 <= floor_fraction <= 1.0:
            raise ValueError(f"{name}: floor_fraction must be in [0, 1], got {floor_fraction}")
        if num_bins < 1:
            raise ValueError(f"{name}: num_bins must be >= 1, got {num_bins}")
        if binning not in BINNINGS:
            raise ValueError(f"{name}: binning must be one of {BINNINGS}, got {binning!r}")
        if binning == "paper" and not max(floor_thr, 0.0) < neg_iou_thr:
            raise ValueError(f"{name}: binning='paper' needs floor_thr < neg_iou_thr, got {floor_thr}, {neg_iou_thr}")
        self.floor_thr = float(floor_thr)
        self.floor_fraction = float(floor_fraction)
        self.num_bins = int(num_bins)
        self.binning = binning
        self.neg_iou_thr = float(neg_iou_thr)

    def _random_order(self, candidates: Tensor) -> Tensor:
        """A uniformly random permutation of ``range(len(candidates))`` (tests may override)."""
        return torch.randperm(candidates.numel(), device=candidates.device)

    def _choose(self, candidates: Tensor, num: int) -> Tensor:  # type: ignore[override]
        """``num`` of ``candidates`` uniformly without replacement (all of them if fewer)."""
        return candidates[self._random_order(candidates)[:num]]

    def _fill(self, picked: Tensor, pool: Tensor, num_expected: int) -> Tensor:
        """Top ``picked`` up to ``num_expected`` with random members of ``pool`` not in it."""
        short = num_expected - picked.numel()
        if short <= 0:
            return picked
        rest = pool[~torch.isin(pool, picked)]
        return torch.cat([picked, self._choose(rest, short)])

    def _bin_edges(self, max_overlaps: Tensor) -> List[float]:
        lower = max(self.floor_thr, 0.0)
        if self.binning == "paper":
            upper = self.neg_iou_thr
        else:
            upper = float(max_overlaps.max())
        width = (upper - lower) / self.num_bins
        edges = [lower + i * width for i in range(self.num_bins + 1)]
        if self.binning == "paper":
            edges[-1] = upper  # no negative may fall outside the last bin by rounding
        return edges

    def _sample_via_bins(self, max_overlaps: Tensor, pool: Tensor, num_expected: int) -> Tensor:
        """``int(num_expected / K)`` per bin from ``pool`` (indices), then a uniform top-up."""
        iou = max_overlaps[pool]
        edges = self._bin_edges(max_overlaps)
        per_bin = int(num_expected / self.num_bins)
        parts = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            in_bin = pool[(iou >= lo) & (iou < hi)]
            parts.append(self._choose(in_bin, per_bin))
        return self._fill(torch.cat(parts), pool, num_expected)

    def sample(  # type: ignore[override]
        self,
        max_overlaps: Union[Tensor, AssignResult],
        neg_inds: Optional[Tensor] = None,
        num_expected: Optional[int] = None,
    ) -> Union[Tensor, SamplingResult]:
        """``sample(max_overlaps [N], neg_inds [M], num_expected) -> int64 [k]``: IoU-balanced
        negatives, indices into the N candidates (k = min(M, num_expected)).

        Given an :class:`AssignResult` alone, it is :meth:`BaseSampler.sample` instead (random
        positives, IoU-balanced negatives, the ``num`` / ``pos_fraction`` budget), which is how
        the detector heads call every sampler.
        """
        if isinstance(max_overlaps, AssignResult):
            if neg_inds is not None or num_expected is not None:
                raise TypeError(
                    "IoUBalancedNegSampler.sample: pass either an AssignResult alone or "
                    "(max_overlaps, neg_inds, num_expected)"
                )
            return super().sample(max_overlaps)
        if neg_inds is None or num_expected is None:
            raise TypeError("IoUBalancedNegSampler.sample: needs max_overlaps, neg_inds and num_expected")
        check_sample_args("IoUBalancedNegSampler.sample", max_overlaps, "max_overlaps", neg_inds, "neg_inds", num_expected)
        if not max_overlaps.is_floating_point():
            raise ValueError(f"IoUBalancedNegSampler.sample: max_overlaps must be a float tensor, got {max_overlaps.dtype}")
        return self._sample(max_overlaps, neg_inds.long(), int(num_expected))

    def sample_neg(self, assign_result: AssignResult, candidates: Tensor, num_expected: int) -> Tensor:
        return self._sample(assign_result.max_overlaps, candidates, num_expected)

    def _sample(self, max_overlaps: Tensor, candidates: Tensor, num_expected: int) -> Tensor:
        """The IoU-balanced choice of ``num_expected`` of ``candidates`` (see the module docstring)."""
        if candidates.numel() <= num_expected:
            return candidates
        iou = max_overlaps[candidates]
        if self.floor_thr > 0:
            floor_mask = iou < self.floor_thr  # negatives have IoU >= 0
        elif self.floor_thr == 0:
            floor_mask = iou == 0
        else:
            floor_mask = torch.zeros_like(iou, dtype=torch.bool)
        floor_set, binned_set = candidates[floor_mask], candidates[~floor_mask]

        num_binned = int(num_expected * (1 - self.floor_fraction))
        if binned_set.numel() <= num_binned:
            picked = binned_set
        elif self.num_bins >= 2:
            picked = self._sample_via_bins(max_overlaps, binned_set, num_binned)
        else:
            picked = self._choose(binned_set, num_binned)
        picked = torch.cat([self._choose(floor_set, num_expected - picked.numel()), picked])
        return self._fill(picked, candidates, num_expected)
