"""Libra samplers: IoU-balanced negatives, instance-balanced positives, the combined sampler.

The vectorised torch samplers are checked against a NumPy re-statement of the reference algorithm
(mmdetection's set-based code), with the randomness made identical: every "choose k of S" picks
the k members of S with the smallest hash key, in both implementations.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.models.assigner import AssignResult
from training.models.samplers.combined import CombinedSampler
from training.models.samplers.instance_balanced import InstanceBalancedPosSampler
from training.models.samplers.iou_balanced import IoUBalancedNegSampler


def key(i) -> int:
    """A fixed pseudo-random order of indices (a bijection of int32)."""
    return (int(i) * 2654435761) % 2**32


def np_choose(items, k: int) -> np.ndarray:
    return np.array(sorted((int(i) for i in items), key=key)[:k], dtype=np.int64)


class KeyOrder:
    """Mixin: the samplers' random order replaced by the fixed key order."""

    def _random_order(self, candidates):
        keys = torch.tensor([key(i) for i in candidates.tolist()], dtype=torch.int64)
        return torch.argsort(keys)


class KeyIoU(KeyOrder, IoUBalancedNegSampler):
    pass


class KeyInstance(KeyOrder, InstanceBalancedPosSampler):
    pass


# ----------------------------------------------------------------------------------------------
# NumPy re-statements of the reference algorithms (libra_facts.md 2.4, 2.5)
# ----------------------------------------------------------------------------------------------
def ref_iou_balanced_neg(
    mo, neg_inds, num_expected, *, floor_thr, floor_fraction, num_bins, binning="reference", neg_iou_thr=0.5
):
    if len(neg_inds) <= num_expected:
        return np.asarray(neg_inds)
    neg_set = set(int(i) for i in neg_inds)
    if floor_thr > 0:
        floor_set = set(np.where(np.logical_and(mo >= 0, mo < floor_thr))[0])
        iou_set = set(np.where(mo >= floor_thr)[0])
        lower = floor_thr
    elif floor_thr == 0:
        floor_set = set(np.where(mo == 0)[0])
        iou_set = set(np.where(mo > 0)[0])
        lower = 0.0
    else:
        floor_set = set()
        iou_set = set(np.where(mo > floor_thr)[0])
        lower = 0.0  # the interval computation uses floor_thr = 0
    floor_neg = [i for i in floor_set if i in neg_set]
    iou_neg = [i for i in iou_set if i in neg_set]
    n_iou = int(num_expected * (1 - floor_fraction))
    if len(iou_neg) > n_iou:
        if num_bins >= 2:
            upper = neg_iou_thr if binning == "paper" else float(mo.max())
            interval = (upper - lower) / num_bins
            per = int(n_iou / num_bins)
            full = set(iou_neg)
            parts = []
            for i in range(num_bins):
                start, end = lower + i * interval, lower + (i + 1) * interval
                if binning == "paper" and i == num_bins - 1:
                    end = upper
                tmp = list(set(np.where(np.logical_and(mo >= start, mo < end))[0]) & full)
                parts.append(np_choose(tmp, per) if len(tmp) > per else np.array(tmp, dtype=np.int64))
            iou_sampled = np.concatenate(parts)
            if len(iou_sampled) < n_iou:
                extra = list(full - set(iou_sampled.tolist()))
                iou_sampled = np.concatenate([iou_sampled, np_choose(extra, n_iou - len(iou_sampled))])
        else:
            iou_sampled = np_choose(iou_neg, n_iou)
    else:
        iou_sampled = np.array(iou_neg, dtype=np.int64)
    n_floor = num_expected - len(iou_sampled)
    floor_sampled = np_choose(floor_neg, n_floor) if len(floor_neg) > n_floor else np.array(floor_neg, dtype=np.int64)
    sampled = np.concatenate([floor_sampled, iou_sampled])
    if len(sampled) < num_expected:
        extra = list(neg_set - set(sampled.tolist()))
        sampled = np.concatenate([sampled, np_choose(extra, num_expected - len(sampled))])
    return sampled


def ref_instance_balanced_pos(gt_inds, pos_inds, num_expected):
    """The reference's intended algorithm (top-up from the positives not yet picked)."""
    if len(pos_inds) <= num_expected:
        return np.asarray(pos_inds)
    gts = np.unique(gt_inds[pos_inds])
    per_gt = int(round(num_expected / float(len(gts))) + 1)
    sampled = []
    for g in gts:
        inds = np.intersect1d(np.where(gt_inds == g)[0], pos_inds)
        sampled.append(np_choose(inds, per_gt) if len(inds) > per_gt else inds)
    sampled = np.concatenate(sampled)
    if len(sampled) < num_expected:
        extra = list(set(int(i) for i in pos_inds) - set(sampled.tolist()))
        sampled = np.concatenate([sampled, np_choose(extra, num_expected - len(sampled))])
    elif len(sampled) > num_expected:
        sampled = np_choose(sampled, num_expected)
    return sampled


# ----------------------------------------------------------------------------------------------
def make_assign(gt_inds, max_overlaps) -> AssignResult:
    gt_inds = torch.as_tensor(gt_inds, dtype=torch.int64)
    return AssignResult(
        gt_inds=gt_inds,
        max_overlaps=torch.as_tensor(max_overlaps, dtype=torch.float32),
        labels=torch.where(gt_inds >= 0, 0, -1),
        num_gts=int(gt_inds.max().clamp(min=-1)) + 1,
    )


def random_assignment(rng: np.random.Generator, n_neg: int, n_pos: int, n_gts: int, zero_frac: float):
    """gts first (IoU 1, as added proposals), then positives, ignored and negatives (some IoU == 0)."""
    iou_neg = rng.uniform(0, 0.5, n_neg).astype(np.float32)
    iou_neg[rng.random(n_neg) < zero_frac] = 0.0
    gt_inds = np.concatenate([
        np.arange(n_gts), rng.integers(0, n_gts, n_pos), np.full(20, -2), np.full(n_neg, -1)
    ])
    mo = np.concatenate([
        np.ones(n_gts, np.float32), rng.uniform(0.5, 0.95, n_pos).astype(np.float32),
        rng.uniform(0.5, 0.5, 20).astype(np.float32), iou_neg,
    ])
    perm = rng.permutation(len(gt_inds))  # candidates in any order
    return gt_inds[perm], mo[perm]


@pytest.mark.parametrize("binning", ["reference", "paper"])
def test_iou_balanced_equals_numpy_reference(binning):
    rng = np.random.default_rng(0)
    configs = [(-1, 0.0, 3), (0, 0.0, 3), (0.1, 0.5, 3), (0.05, 0.0, 2), (-1, 0.0, 5), (-1, 0.0, 1), (0, 0.3, 4)]
    for case in range(28):
        floor_thr, floor_fraction, num_bins = configs[case % len(configs)]
        n_neg = int(rng.integers(50, 1500))
        gt_inds, mo = random_assignment(rng, n_neg, int(rng.integers(0, 60)), 3, zero_frac=rng.uniform(0, 0.6))
        neg = np.where(gt_inds == -1)[0]
        num_expected = int(rng.integers(1, 600))
        sampler = KeyIoU(num=512, pos_fraction=0.25, floor_thr=floor_thr, floor_fraction=floor_fraction,
                         num_bins=num_bins, binning=binning)
        got = sampler.sample_neg(make_assign(gt_inds, mo), torch.from_numpy(neg), num_expected)
        want = ref_iou_balanced_neg(mo, neg, num_expected, floor_thr=floor_thr, floor_fraction=floor_fraction,
                                    num_bins=num_bins, binning=binning)
        assert len(got) == len(want) == min(len(neg), num_expected)
        assert sorted(got.tolist()) == sorted(want.tolist()), (case, floor_thr, floor_fraction, num_bins)


def three_groups(n_each: int = 100):
    """One gt proposal (IoU 1) + negatives in three IoU groups: A [0, .1), B [.2, .3), C [.4, .5)."""
    rng = np.random.default_rng(1)
    mo = np.concatenate(
        [[1.0], rng.uniform(0.0, 0.1, n_each), rng.uniform(0.2, 0.3, n_each), rng.uniform(0.4, 0.5, n_each)]
    )
    gt_inds = np.full(len(mo), -1)
    gt_inds[0] = 0
    group = np.concatenate([[-1], np.zeros(n_each), np.ones(n_each), np.full(n_each, 2)]).astype(int)
    return make_assign(gt_inds, mo.astype(np.float32)), torch.arange(1, len(mo)), group


def test_paper_vs_reference_binning_on_hand_made_case():
    """Paper: bins [0, 1/6), [1/6, 1/3), [1/3, 1/2) -> exactly 30 from each group.
    Reference: bins up to max IoU 1 -> [0, 1/3) holds A and B, [1/3, 2/3) holds C, [2/3, 1) is empty:
    30 from A+B, 30 from C, the last 30 at random from what is left (C gets 30 + ~30 * 70/240)."""
    assign, neg, group = three_groups()
    torch.manual_seed(0)
    paper = IoUBalancedNegSampler(num=512, pos_fraction=0.25, binning="paper", neg_iou_thr=0.5)
    reference = IoUBalancedNegSampler(num=512, pos_fraction=0.25)
    c_counts = []
    for _ in range(200):
        p = paper.sample_neg(assign, neg, 90)
        assert np.bincount(group[p.numpy()], minlength=3).tolist() == [30, 30, 30]
        r = reference.sample_neg(assign, neg, 90)
        counts = np.bincount(group[r.numpy()], minlength=3)
        assert len(set(r.tolist())) == 90 and counts[0] + counts[1] >= 30 and counts[2] >= 30
        c_counts.append(counts[2])
    assert np.mean(c_counts) == pytest.approx(30 + 30 * 70 / 240, abs=1.0)  # 38.75
    assert np.std(c_counts) > 1.0  # the last third really is random


def test_bin_quota_too_few_candidates_and_remainder_fill():
    """Bin [1/3, 2/3) holds only 5 negatives: all 5 are taken, the shortfall comes from the rest."""
    rng = np.random.default_rng(2)
    mo = np.concatenate([[1.0], rng.uniform(0.0, 0.33, 300), rng.uniform(0.34, 0.5, 5)]).astype(np.float32)
    gt_inds = np.full(len(mo), -1)
    gt_inds[0] = 0
    assign = make_assign(gt_inds, mo)
    torch.manual_seed(0)
    out = IoUBalancedNegSampler(num=512, pos_fraction=0.25).sample_neg(assign, torch.arange(1, len(mo)), 99)
    assert len(out) == 99 and len(set(out.tolist())) == 99
    assert set(range(301, 306)) <= set(out.tolist())  # the whole small bin
    assert (out < 301).sum() == 94  # 33 quota + 61 fill from the low bin


def test_uniform_within_a_bin():
    """An oversubscribed bin is sampled uniformly: 60 candidates, quota 20 -> p = 1/3 each."""
    mo = np.concatenate([[1.0], np.linspace(0.01, 0.3, 60), np.linspace(0.34, 0.49, 20)]).astype(np.float32)
    gt_inds = np.full(len(mo), -1)
    gt_inds[0] = 0
    assign = make_assign(gt_inds, mo)
    sampler = IoUBalancedNegSampler(num=512, pos_fraction=0.25, num_bins=3)
    torch.manual_seed(0)
    hits = np.zeros(len(mo))
    trials = 300
    for _ in range(trials):
        # 60 = 3 bins x 20; the middle bin (20 candidates) is taken whole, the top bin is empty,
        # so 20 + 20 fill come from the low bin: p = 40/60 there
        hits[sampler.sample_neg(assign, torch.arange(1, len(mo)), 60).numpy()] += 1
    assert (hits[61:] == trials).all()
    p = hits[1:61] / trials
    assert abs(p.mean() - 40 / 60) < 1e-9  # exactly 40 per draw
    assert p.min() > 0.5 and p.max() < 0.83  # ~ +-5.5 sigma around 2/3


def test_floor_options():
    rng = np.random.default_rng(3)
    mo = np.concatenate([[1.0], np.zeros(200), rng.uniform(0.0, 0.1, 200), rng.uniform(0.1, 0.5, 200)])
    mo = mo.astype(np.float32)
    gt_inds = np.full(len(mo), -1)
    gt_inds[0] = 0
    assign, neg = make_assign(gt_inds, mo), torch.arange(1, len(mo))
    torch.manual_seed(0)
    # floor_thr > 0 with a floor fraction: int(100 * 0.5) binned (IoU >= 0.1), the rest from the floor
    sampler = IoUBalancedNegSampler(num=512, pos_fraction=0.25, floor_thr=0.1, floor_fraction=0.5)
    out = sampler.sample_neg(assign, neg, 100)
    assert len(out) == 100 and (assign.max_overlaps[out] >= 0.1).sum() == 50
    # floor_thr == 0, fraction 0: IoU == 0 negatives are only a last resort
    out = IoUBalancedNegSampler(num=512, pos_fraction=0.25, floor_thr=0).sample_neg(assign, neg, 300)
    assert (assign.max_overlaps[out] == 0).sum() == 0
    out = IoUBalancedNegSampler(num=512, pos_fraction=0.25, floor_thr=0).sample_neg(assign, neg, 500)
    assert (assign.max_overlaps[out] == 0).sum() == 100 and len(set(out.tolist())) == 500
    # floor_thr == -1 (default): IoU == 0 negatives compete in the lowest bin
    out = IoUBalancedNegSampler(num=512, pos_fraction=0.25).sample_neg(assign, neg, 300)
    assert (assign.max_overlaps[out] == 0).sum() > 0


def test_iou_sampler_edge_cases():
    sampler = IoUBalancedNegSampler(num=512, pos_fraction=0.25)
    # fewer negatives than needed: all of them
    assign = make_assign([-1] * 10, [0.2] * 10)
    assert sampler.sample_neg(assign, torch.arange(10), 50).tolist() == list(range(10))
    # an image without gts: every IoU is 0, every bin is empty, the fill is uniform
    assign = make_assign([-1] * 300, [0.0] * 300)
    out = sampler.sample_neg(assign, torch.arange(300), 100)
    assert len(set(out.tolist())) == 100
    assert sampler.sample_neg(assign, torch.arange(300), 0).numel() == 0


def test_instance_balanced_equals_numpy_reference():
    rng = np.random.default_rng(4)
    for case in range(30):
        n_gts = int(rng.integers(1, 12))
        sizes = rng.integers(1, 120, n_gts) * (rng.random(n_gts) < 0.8) + 1
        gt_inds = np.concatenate([np.repeat(np.arange(n_gts), sizes), np.full(300, -1)])
        gt_inds = gt_inds[rng.permutation(len(gt_inds))]
        pos = np.where(gt_inds >= 0)[0]
        num_expected = int(rng.integers(1, 200))
        assign = make_assign(gt_inds, np.where(gt_inds >= 0, 0.7, 0.1))
        got = KeyInstance(num=512, pos_fraction=0.25).sample_pos(assign, torch.from_numpy(pos), num_expected)
        want = ref_instance_balanced_pos(gt_inds, pos, num_expected)
        assert len(got) == len(want) == min(len(pos), num_expected)
        assert sorted(got.tolist()) == sorted(want.tolist()), case


def test_instance_balanced_quotas():
    torch.manual_seed(0)
    sampler = InstanceBalancedPosSampler(num=512, pos_fraction=0.25)
    # 3 gts with 200, 100, 5 positives, 128 wanted: per_gt = round(128/3) + 1 = 44 -> 44 + 44 + 5 = 93,
    # topped up with 35 random unpicked positives of gts 0 and 1
    gt_inds = np.concatenate([np.zeros(200), np.ones(100), np.full(5, 2), np.full(50, -1)]).astype(int)
    assign = make_assign(gt_inds, np.where(gt_inds >= 0, 0.7, 0.1))
    out = sampler.sample_pos(assign, torch.arange(305), 128)
    counts = np.bincount(gt_inds[out.numpy()], minlength=3)
    assert len(set(out.tolist())) == 128 and counts[2] == 5 and counts[0] >= 44 and counts[1] >= 44
    # 10 gts x 50 positives: per_gt = round(12.8) + 1 = 14 -> 140 picked, subsampled to 128
    gt_inds = np.repeat(np.arange(10), 50)
    assign = make_assign(gt_inds, np.full(500, 0.7))
    out = sampler.sample_pos(assign, torch.arange(500), 128)
    counts = np.bincount(gt_inds[out.numpy()], minlength=10)
    assert len(set(out.tolist())) == 128 and counts.max() <= 14 and counts.min() >= 128 - 9 * 14
    # round is half-to-even: 10 / 4 = 2.5 -> 2, per_gt 3
    gt_inds = np.repeat(np.arange(4), 5)
    out = sampler.sample_pos(make_assign(gt_inds, np.full(20, 0.7)), torch.arange(20), 10)
    sampler_counts = np.bincount(gt_inds[out.numpy()], minlength=4)
    assert sampler_counts.sum() == 10 and sampler_counts.max() <= 3
    # no more positives than wanted: all of them; none: empty
    assert sampler.sample_pos(assign, torch.arange(5), 128).tolist() == list(range(5))
    assert sampler.sample_pos(assign, torch.zeros(0, dtype=torch.int64), 128).numel() == 0


def test_combined_sampler_libra_stage():
    """512 RoIs, 25% positives: instance-balanced positives + IoU-balanced negatives."""
    rng = np.random.default_rng(5)
    gt_inds, mo = random_assignment(rng, n_neg=1500, n_pos=400, n_gts=4, zero_frac=0.3)
    assign = make_assign(gt_inds, mo)
    sampler = CombinedSampler(
        num=512, pos_fraction=0.25,
        pos_sampler=KeyInstance(num=512, pos_fraction=0.25),
        neg_sampler=KeyIoU(num=512, pos_fraction=0.25),
    )
    pos, neg = sampler.sample(assign)
    assert len(pos) == 128 and len(neg) == 512 - 128
    assert (assign.gt_inds[pos] >= 0).all() and (assign.gt_inds[neg] == -1).all()
    pos_np = np.where(gt_inds >= 0)[0]
    neg_np = np.where(gt_inds == -1)[0]
    assert sorted(pos.tolist()) == sorted(ref_instance_balanced_pos(gt_inds, pos_np, 128).tolist())
    want_neg = ref_iou_balanced_neg(mo, neg_np, 384, floor_thr=-1, floor_fraction=0.0, num_bins=3)
    assert sorted(neg.tolist()) == sorted(want_neg.tolist())
    # few positives: the negatives fill the budget; neg_pos_ub caps them
    gt_inds, mo = random_assignment(rng, n_neg=1500, n_pos=10, n_gts=2, zero_frac=0.3)
    pos, neg = sampler.sample(make_assign(gt_inds, mo))
    assert len(pos) == 12 and len(neg) == 500
    capped = CombinedSampler(num=512, pos_fraction=0.25, neg_pos_ub=3,
                             pos_sampler=InstanceBalancedPosSampler(num=512, pos_fraction=0.25),
                             neg_sampler=IoUBalancedNegSampler(num=512, pos_fraction=0.25))
    pos, neg = capped.sample(make_assign(gt_inds, mo))
    assert len(pos) == 12 and len(neg) == 36


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="floor_thr must be -1 or >= 0"):
        IoUBalancedNegSampler(num=512, pos_fraction=0.25, floor_thr=-0.5)
    with pytest.raises(ValueError, match=r"floor_fraction must be in \[0, 1\]"):
        IoUBalancedNegSampler(num=512, pos_fraction=0.25, floor_fraction=1.5)
    with pytest.raises(ValueError, match="num_bins must be >= 1"):
        IoUBalancedNegSampler(num=512, pos_fraction=0.25, num_bins=0)
    with pytest.raises(ValueError, match="binning must be one of"):
        IoUBalancedNegSampler(num=512, pos_fraction=0.25, binning="uniform")
    with pytest.raises(ValueError, match="binning='paper' needs floor_thr < neg_iou_thr"):
        IoUBalancedNegSampler(num=512, pos_fraction=0.25, binning="paper", floor_thr=0.6, neg_iou_thr=0.5)
    with pytest.raises(TypeError, match="CombinedSampler: neg_sampler must be a BaseSampler"):
        CombinedSampler(
            num=512, pos_fraction=0.25,
            pos_sampler=InstanceBalancedPosSampler(num=512, pos_fraction=0.25), neg_sampler=object(),
        )
