"""The Libra components through the interface the issue names, checked against the paper.

``balanced_l1_loss(pred, target, beta, alpha, gamma, reduction, weight, avg_factor)``,
``IoUBalancedNegSampler(num_bins, floor_thr, floor_fraction).sample(max_overlaps, neg_inds, n)``,
``InstanceBalancedPosSampler().sample(assigned_gt_inds, pos_inds, n)`` and
``BalancedFeaturePyramid(in_channels, num_levels, refine_level, refine_type)``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.models.losses.balanced_l1 import balanced_l1_loss
from training.models.necks import BalancedFeaturePyramid
from training.models.samplers import InstanceBalancedPosSampler, IoUBalancedNegSampler

ALPHA, GAMMA = 0.5, 1.5
B = math.exp(GAMMA / ALPHA) - 1.0  # Eq. 9: alpha * ln(b + 1) = gamma


# ----------------------------------------------------------------------------------------------
# Balanced L1, functional form
# ----------------------------------------------------------------------------------------------
def test_functional_defaults_are_the_paper_and_reduce_by_mean():
    x = torch.tensor([[0.3, -2.0, 0.0, 0.9]], dtype=torch.float64)
    d = x.abs()
    eq8 = torch.where(d < 1, ALPHA / B * (B * d + 1) * torch.log(B * d + 1) - ALPHA * d, GAMMA * d + GAMMA / B - ALPHA)
    assert torch.allclose(balanced_l1_loss(x, torch.zeros_like(x)), eq8.mean(), atol=1e-12, rtol=0)
    # positional order of the issue: pred, target, beta, alpha, gamma, reduction
    assert torch.allclose(balanced_l1_loss(x, torch.zeros_like(x), 1.0, 0.5, 1.5, "sum"), eq8.sum(), atol=1e-12, rtol=0)
    none = balanced_l1_loss(x, torch.zeros_like(x), reduction="none")
    assert none.shape == x.shape and torch.allclose(none, eq8, atol=1e-12, rtol=0)


def test_functional_weight_and_avg_factor():
    torch.manual_seed(0)
    pred, target = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    elem = balanced_l1_loss(pred, target, reduction="none")
    w = torch.rand(8, 4, dtype=torch.float64)
    assert torch.allclose(balanced_l1_loss(pred, target, weight=w), (elem * w).mean())
    assert torch.allclose(balanced_l1_loss(pred, target, weight=w, avg_factor=512), (elem * w).sum() / 512)
    assert torch.allclose(balanced_l1_loss(pred, target, reduction="sum", weight=w[:, 0]), (elem * w[:, :1]).sum())
    with pytest.raises(ValueError, match="balanced_l1_loss: reduction must be one of"):
        balanced_l1_loss(pred, target, reduction="avg")


@pytest.mark.parametrize("x", [-3.0, -0.4, -0.01, 0.01, 0.2, 0.7, 1.3, 5.0])
def test_functional_gradient_is_eq7_at_chosen_points(x):
    """d L_b / dx = alpha ln(b|x| + 1) sign(x) for |x| < 1, gamma sign(x) outside (beta = 1)."""
    t = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(t, torch.zeros_like(t), reduction="sum").backward()
    want = (ALPHA * math.log(B * abs(x) + 1) if abs(x) < 1 else GAMMA) * math.copysign(1.0, x)
    assert t.grad.item() == pytest.approx(want, abs=1e-10)


# ----------------------------------------------------------------------------------------------
# IoU-balanced negatives, stand-alone form
# ----------------------------------------------------------------------------------------------
def _candidates(groups, n_pos=20, seed=0):
    """max_overlaps [N]: ``n_pos`` positives (IoU in [0.5, 1], one of them a gt at 1.0), then the
    negatives of each (lo, hi, count) group; returns (max_overlaps, neg_inds, group id per index)."""
    rng = np.random.default_rng(seed)
    mo = [np.concatenate([[1.0], rng.uniform(0.5, 0.95, n_pos - 1)])]
    gid = [np.full(n_pos, -1)]
    for g, (lo, hi, count) in enumerate(groups):
        mo.append(rng.uniform(lo, hi, count))
        gid.append(np.full(count, g))
    mo_t = torch.tensor(np.concatenate(mo), dtype=torch.float32)
    gid_np = np.concatenate(gid)
    return mo_t, torch.arange(n_pos, len(mo_t)), gid_np


def _check_subset(out, neg_inds, num_expected):
    got = out.tolist()
    assert len(got) == min(num_expected, neg_inds.numel())
    assert len(set(got)) == len(got), "duplicate index"
    assert set(got) <= set(neg_inds.tolist()), "returned a non-negative"


def test_paper_binning_quota_per_bin():
    """Bins [0, 1/6), [1/6, 1/3), [1/3, 1/2) with 200 / 150 / 100 negatives: 30 from each for 90."""
    mo, neg, gid = _candidates([(0.0, 0.16, 200), (0.17, 0.33, 150), (0.34, 0.49, 100)])
    sampler = IoUBalancedNegSampler(num_bins=3, floor_thr=-1.0, floor_fraction=0.0, binning="paper", neg_iou_thr=0.5)
    torch.manual_seed(0)
    for _ in range(20):
        out = sampler.sample(mo, neg, 90)
        _check_subset(out, neg, 90)
        assert np.bincount(gid[out.numpy()], minlength=3).tolist() == [30, 30, 30]


def test_short_bin_gives_all_it_has_and_the_rest_is_filled():
    """The top bin has 7 negatives (< quota 30): all 7 are taken, the total is still 90."""
    mo, neg, gid = _candidates([(0.0, 0.16, 200), (0.17, 0.33, 150), (0.34, 0.49, 7)])
    sampler = IoUBalancedNegSampler(binning="paper", neg_iou_thr=0.5)
    torch.manual_seed(1)
    for _ in range(20):
        out = sampler.sample(mo, neg, 90)
        _check_subset(out, neg, 90)
        counts = np.bincount(gid[out.numpy()], minlength=3)
        assert counts[2] == 7 and counts[0] >= 30 and counts[1] >= 30 and counts.sum() == 90


def test_reference_binning_quota_per_bin():
    """The authors' release: bins over [0, max IoU = 1.0) -> [0, 1/3), [1/3, 2/3), [2/3, 1); negatives
    only fill the first two, each with its quota int(90 / 3) = 30, the last 30 are random."""
    mo, neg, gid = _candidates([(0.0, 0.3, 300), (0.34, 0.49, 100)])
    sampler = IoUBalancedNegSampler()  # the issue's defaults: num_bins 3, floor_thr -1, floor_fraction 0
    assert (sampler.num_bins, sampler.floor_thr, sampler.floor_fraction, sampler.binning) == (3, -1.0, 0.0, "reference")
    torch.manual_seed(2)
    for _ in range(20):
        out = sampler.sample(mo, neg, 90)
        _check_subset(out, neg, 90)
        counts = np.bincount(gid[out.numpy()], minlength=2)
        assert counts[0] >= 30 and counts[1] >= 30


def test_total_is_all_negatives_when_fewer_than_requested():
    mo, neg, _ = _candidates([(0.0, 0.3, 10), (0.34, 0.49, 5)])
    out = IoUBalancedNegSampler().sample(mo, neg, 100)
    assert sorted(out.tolist()) == neg.tolist()
    assert IoUBalancedNegSampler().sample(mo, neg, 0).numel() == 0


def test_gts_appended_or_prepended_sample_the_same():
    """The RoI head appends gts after the proposals (mmdetection prepends them): the bins come from
    IoU values only, so with the random order tied to the candidate (not its position) the same
    negatives are chosen in both layouts."""

    class IoUKeyed(IoUBalancedNegSampler):
        def _random_order(self, candidates):
            return torch.argsort(self.keys[candidates])

    rng = np.random.default_rng(3)
    props = rng.uniform(0.0, 0.49, 400).astype(np.float32)  # proposals' IoUs (all negatives)
    keys = rng.permutation(402)
    for gts_last in (False, True):
        mo = np.concatenate([props, [1.0, 1.0]]) if gts_last else np.concatenate([[1.0, 1.0], props])
        key = np.concatenate([keys[2:], keys[:2]]) if gts_last else keys  # the key follows the candidate
        sampler = IoUKeyed()
        sampler.keys = torch.as_tensor(key)
        first = 0 if gts_last else 2
        out = sampler.sample(torch.as_tensor(mo), torch.arange(first, first + 400), 120)
        chosen = sorted(int(i) - first for i in out)
        if gts_last:
            assert chosen == previous
        previous = chosen


def test_equally_likely_within_a_bin_over_many_draws():
    """Eq. 2: inside a bin every candidate has probability (N/K) / M_k. 30 candidates share a
    quota of 10 over 3000 draws; the hit counts pass a chi-square test (29 dof) and average 1/3."""
    mo, neg, gid = _candidates([(0.0, 0.16, 30), (0.17, 0.33, 30), (0.34, 0.49, 30)])
    sampler = IoUBalancedNegSampler(binning="paper", neg_iou_thr=0.5)
    torch.manual_seed(4)
    trials = 3000
    hits = np.zeros(len(mo))
    for _ in range(trials):
        hits[sampler.sample(mo, neg, 30).numpy()] += 1
    for g in range(3):
        h = hits[gid == g]
        expected = trials * 10 / 30
        assert h.sum() == trials * 10  # exactly the quota every draw
        chi2 = float(((h - expected) ** 2 / expected).sum())
        assert chi2 < 70.0, (g, chi2)  # P(chi2_29 > 70) ~ 3e-5: a biased sampler fails, a fair one passes
        assert h.min() > 0.28 * trials and h.max() < 0.39 * trials


def test_stand_alone_argument_errors():
    sampler = IoUBalancedNegSampler()
    mo = torch.rand(10)
    with pytest.raises(ValueError, match="IoUBalancedNegSampler.sample: neg_inds must index the 10 candidates"):
        sampler.sample(mo, torch.tensor([3, 12]), 1)
    with pytest.raises(ValueError, match="neg_inds holds duplicate indices"):
        sampler.sample(mo, torch.tensor([3, 3]), 1)
    with pytest.raises(ValueError, match="num_expected must be an integer >= 0"):
        sampler.sample(mo, torch.tensor([3]), -1)
    with pytest.raises(ValueError, match="max_overlaps must be a 1-D tensor"):
        sampler.sample(mo[None], torch.tensor([3]), 1)
    with pytest.raises(TypeError, match="needs max_overlaps, neg_inds and num_expected"):
        sampler.sample(mo, torch.tensor([3]))


# ----------------------------------------------------------------------------------------------
# Instance-balanced positives, stand-alone form
# ----------------------------------------------------------------------------------------------
def test_instance_balanced_with_one_crowded_instance():
    """gt 0 has 200 positives, gts 1-3 have 10 each, 64 wanted: per_gt = round(64/4) + 1 = 17, so
    gts 1-3 give all 10 (random sampling would give them ~2.8 each) and gt 0 the remaining 34."""
    gt = np.concatenate([np.full(200, 0), np.full(10, 1), np.full(10, 2), np.full(10, 3), np.full(100, -1)])
    perm = np.random.default_rng(5).permutation(len(gt))
    gt = torch.as_tensor(gt[perm])
    pos = torch.where(gt >= 0)[0]
    sampler = InstanceBalancedPosSampler()
    torch.manual_seed(5)
    for _ in range(20):
        out = sampler.sample(gt, pos, 64)
        _check_subset(out, pos, 64)
        assert np.bincount(gt[out].numpy(), minlength=4).tolist() == [34, 10, 10, 10]


def test_instance_balanced_all_crowded_is_even():
    """4 gts x 100 positives, 64 wanted: 17 each (68) subsampled to 64 -> every gt 13..17."""
    gt = torch.arange(4).repeat_interleave(100)
    pos = torch.arange(400)
    torch.manual_seed(6)
    for _ in range(20):
        out = InstanceBalancedPosSampler().sample(gt, pos, 64)
        counts = np.bincount(gt[out].numpy(), minlength=4)
        assert counts.sum() == 64 and counts.min() >= 13 and counts.max() <= 17


def test_instance_balanced_argument_errors():
    with pytest.raises(ValueError, match="assigned_gt_inds must be an integer tensor"):
        InstanceBalancedPosSampler().sample(torch.rand(5), torch.tensor([0, 1]), 1)
    with pytest.raises(ValueError, match="pos_inds must be a 1-D integer tensor"):
        InstanceBalancedPosSampler().sample(torch.zeros(5, dtype=torch.int64), torch.tensor([0.0]), 1)


# ----------------------------------------------------------------------------------------------
# Balanced Feature Pyramid
# ----------------------------------------------------------------------------------------------
def _pyramid(h, w, *, channels, levels=5, stride=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    hh, ww, out = -(-h // stride), -(-w // stride), []
    for _ in range(levels):
        out.append(torch.randn(1, channels, hh, ww, generator=g))
        hh, ww = -(-hh // 2), -(-ww // 2)
    return out


def test_constructor_in_the_issue_form_and_shapes():
    bfp = BalancedFeaturePyramid(in_channels=256, num_levels=5, refine_level=2, refine_type="non_local")
    default = BalancedFeaturePyramid()
    assert (default.in_channels, default.num_levels, default.refine_level, default.refine_type) == (256, 5, 2, "non_local")
    small = BalancedFeaturePyramid(in_channels=8).eval()
    feats = _pyramid(96, 160, channels=8)
    with torch.no_grad():
        outs = small(feats)
    assert [o.shape for o in outs] == [f.shape for f in feats]
    assert sum(p.numel() for p in bfp.parameters()) == 4 * (256 * 256 + 256)  # only the non-local block


def test_zero_nonlocal_output_is_input_plus_average_constant_levels():
    """With the non-local output conv zeroed, refine is the identity: output_l = input_l + mean over
    levels of the rescaled inputs. For constant levels c_l rescaling keeps c_l, so out_l = c_l + mean(c)."""
    bfp = BalancedFeaturePyramid(in_channels=4, num_levels=5, refine_level=2, refine_type="non_local").eval()
    torch.nn.init.zeros_(bfp.refine.conv_out.weight)
    torch.nn.init.zeros_(bfp.refine.conv_out.bias)
    consts = [3.0, -1.0, 0.5, 8.0, 2.0]
    feats = [torch.full_like(f, c) for f, c in zip(_pyramid(64, 96, channels=4), consts)]
    with torch.no_grad():
        outs = bfp(feats)
    for o, c in zip(outs, consts):
        assert torch.equal(o, torch.full_like(o, c + sum(consts) / 5))


@pytest.mark.parametrize("refine_level,stride", [(2, 4), (1, 8)])
def test_zero_nonlocal_output_is_input_plus_rescaled_average(refine_level, stride):
    """Random levels: the paper's rescale (max-pool down / nearest up to the refine level), average,
    rescale back the reverse way and add; written with PyTorch's adaptive pooling and interpolation."""
    bfp = BalancedFeaturePyramid(in_channels=4, num_levels=5, refine_level=refine_level).eval()
    torch.nn.init.zeros_(bfp.refine.conv_out.weight)
    torch.nn.init.zeros_(bfp.refine.conv_out.bias)
    feats = _pyramid(320, 480, channels=4, stride=stride, seed=1)
    size = feats[refine_level].shape[-2:]
    gathered = [
        F.adaptive_max_pool2d(f, size) if i < refine_level else F.interpolate(f, size=size, mode="nearest")
        for i, f in enumerate(feats)
    ]
    avg = sum(gathered) / 5
    with torch.no_grad():
        outs = bfp(feats)
    for i, (o, f) in enumerate(zip(outs, feats)):
        if i < refine_level:
            back = F.interpolate(avg, size=f.shape[-2:], mode="nearest")
        else:
            back = F.adaptive_max_pool2d(avg, f.shape[-2:])
        torch.testing.assert_close(o, f + back, rtol=0, atol=1e-6)


@pytest.mark.parametrize("refine_type", ["non_local", "conv"])
def test_gradients_reach_every_level_through_the_integrated_map(refine_type):
    """A loss on one output level sends gradient into every input level (through the average, not
    only the residual) and into the refine block's parameters."""
    torch.manual_seed(0)
    bfp = BalancedFeaturePyramid(in_channels=4, num_levels=5, refine_type=refine_type)
    for j in (0, 4):
        feats = [f.requires_grad_() for f in _pyramid(128, 160, channels=4, seed=j)]
        bfp.zero_grad()
        bfp(feats)[j].pow(2).sum().backward()
        for i, f in enumerate(feats):
            assert f.grad is not None and f.grad.abs().sum() > 0, (j, i)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bfp.parameters() if p.dim() > 1)
