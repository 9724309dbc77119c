"""MaxIoUAssigner thresholds and low-quality matches (vs torchvision's Matcher); RandomSampler counts."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou

from training.models.assigner import IGNORED, NEGATIVE, MaxIoUAssigner
from training.models.samplers import RandomSampler

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0]])
# IoU with gt 0: 1.0, 0.81 (9x9 inside), 0.5 (10x5), 0.2 (shifted), 0.0; gt 1 best: 0.25 (a 10x10 inside)
BOXES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 9.0, 9.0],
        [0.0, 0.0, 10.0, 5.0],
        [0.0, 0.0, 10.0, 2.0],
        [50.0, 50.0, 60.0, 60.0],
        [100.0, 100.0, 110.0, 110.0],
    ]
)


def test_thresholds_without_low_quality():
    a = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, allow_low_quality_matches=False)
    r = a.assign(BOXES, GT, torch.tensor([3, 5]))
    assert r.gt_inds.tolist() == [0, 0, IGNORED, NEGATIVE, NEGATIVE, NEGATIVE]
    assert r.labels.tolist() == [3, 3, -1, -1, -1, -1]
    assert torch.allclose(r.max_overlaps, torch.tensor([1.0, 0.81, 0.5, 0.2, 0.0, 0.25]))


def test_low_quality_match_and_min_pos_iou_gate():
    a = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.0, allow_low_quality_matches=True)
    assert a.assign(BOXES, GT).gt_inds.tolist() == [0, 0, IGNORED, NEGATIVE, NEGATIVE, 1]
    gated = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, allow_low_quality_matches=True)
    assert gated.assign(BOXES, GT).gt_inds.tolist() == [0, 0, IGNORED, NEGATIVE, NEGATIVE, NEGATIVE]


def test_low_quality_ties_all_become_positive():
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 15.0, 10.0, 20.0], [0.0, 0.0, 10.0, 3.0]])  # 0.25, 0.25, 0.15
    r = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3).assign(boxes, gt)
    assert r.gt_inds.tolist() == [0, 0, NEGATIVE]


@pytest.mark.parametrize("low_quality", [True, False])
def test_matches_torchvision_matcher_on_random_boxes(low_quality):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(500, 2, generator=g) * 40 + 1], 1)
    xy = torch.rand(7, 2, generator=g) * 100
    gt = torch.cat([xy, xy + torch.rand(7, 2, generator=g) * 40 + 1], 1)
    expected = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(box_iou(gt, boxes))
    got = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, allow_low_quality_matches=low_quality).assign(boxes, gt)
    assert torch.equal(got.gt_inds, expected)


def test_no_gt_all_negative_and_ignore_regions():
    a = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, ignore_iof_thr=0.5)
    r = a.assign(BOXES, torch.zeros(0, 4))
    assert r.gt_inds.tolist() == [NEGATIVE] * 6 and r.num_gts == 0
    r = a.assign(BOXES, GT[1:], ignore_boxes=torch.tensor([[45.0, 45.0, 70.0, 70.0]]))
    assert r.gt_inds[4] == IGNORED  # inside the crowd region: neither positive nor negative
    assert r.gt_inds[3] == NEGATIVE


def _assign_result(num_pos: int, num_neg: int, num_ignored: int):
    gt_inds = torch.tensor([0] * num_pos + [NEGATIVE] * num_neg + [IGNORED] * num_ignored)
    gt_inds = gt_inds[torch.randperm(gt_inds.numel(), generator=torch.Generator().manual_seed(1))]
    from training.models.assigner import AssignResult

    return AssignResult(gt_inds, torch.zeros(gt_inds.numel()), torch.full_like(gt_inds, -1), 1)


@pytest.mark.parametrize(
    "num_pos,num_neg,expected",
    [(10, 1000, (10, 246)), (500, 1000, (128, 128)), (0, 1000, (0, 256)), (10, 20, (10, 20))],
)
def test_random_sampler_counts(num_pos, num_neg, expected):
    r = _assign_result(num_pos, num_neg, 30)
    pos, neg = RandomSampler(num=256, pos_fraction=0.5).sample(r)
    assert (pos.numel(), neg.numel()) == expected
    assert (r.gt_inds[pos] >= 0).all() and (r.gt_inds[neg] == NEGATIVE).all()
    assert pos.unique().numel() == pos.numel() and neg.unique().numel() == neg.numel()


def test_random_sampler_neg_pos_ub():
    pos, neg = RandomSampler(num=256, pos_fraction=0.5, neg_pos_ub=5).sample(_assign_result(4, 1000, 0))
    assert (pos.numel(), neg.numel()) == (4, 20)
    pos, neg = RandomSampler(num=256, pos_fraction=0.5, neg_pos_ub=5).sample(_assign_result(0, 1000, 0))
    assert (pos.numel(), neg.numel()) == (0, 5)


def test_random_sampler_draws_like_torchvision():
    r = _assign_result(40, 600, 50)
    labels = torch.where(r.gt_inds >= 0, 1, torch.where(r.gt_inds == NEGATIVE, 0, -1))
    torch.manual_seed(7)
    tv_pos, tv_neg = BalancedPositiveNegativeSampler(64, 0.25)([labels])
    torch.manual_seed(7)
    pos, neg = RandomSampler(num=64, pos_fraction=0.25).sample(r)
    assert torch.equal(pos.sort().values, torch.where(tv_pos[0])[0])
    assert torch.equal(neg.sort().values, torch.where(tv_neg[0])[0])
