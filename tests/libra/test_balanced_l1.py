"""Balanced L1 (Libra R-CNN Eq. 7-9 and mmdetection's beta form) and the shared loss reduction."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.models.losses import BalancedL1Loss, L1Loss, SmoothL1Loss, balanced_l1_loss, weight_reduce_loss

ALPHA, GAMMA = 0.5, 1.5
B = math.exp(GAMMA / ALPHA) - 1.0  # alpha * ln(b + 1) = gamma (Eq. 9)


def eq8(x: float, alpha: float = ALPHA, gamma: float = GAMMA) -> float:
    """The paper's Eq. 8, written out independently (threshold 1, C from continuity at 1)."""
    b = math.exp(gamma / alpha) - 1.0
    d = abs(x)
    if d < 1.0:
        return alpha / b * (b * d + 1.0) * math.log(b * d + 1.0) - alpha * d
    return gamma * d + (gamma / b - alpha)


def eq7(x: float, alpha: float = ALPHA, gamma: float = GAMMA) -> float:
    """The paper's Eq. 7: the promoted gradient, odd in x."""
    b = math.exp(gamma / alpha) - 1.0
    d = abs(x)
    g = alpha * math.log(b * d + 1.0) if d < 1.0 else gamma
    return math.copysign(g, x)


XS = [-3.0, -1.2, -0.999, -0.6, -0.3, -0.05, -1e-3, 0.0, 1e-3, 0.02, 0.25, 0.5, 0.9, 0.999, 1.0, 1.5, 4.0]


@pytest.mark.parametrize("alpha,gamma", [(0.5, 1.5), (0.2, 1.0), (0.5, 2.0)])
def test_matches_paper_eq8_for_beta_one(alpha, gamma):
    x = torch.tensor(XS, dtype=torch.float64)
    got = balanced_l1_loss(x, torch.zeros_like(x), alpha=alpha, gamma=gamma, beta=1.0, reduction="none")
    want = torch.tensor([eq8(v, alpha, gamma) for v in XS], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "beta,values",
    [
        (1.0, [0.009304, 0.031353, 0.400568, 1.078594, 2.578594]),
        (0.11, [0.091197, 0.171710, 0.773594, 1.523594, 3.023594]),
    ],
)
def test_sample_values_table(beta, values):
    d = torch.tensor([0.05, 0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    got = balanced_l1_loss(d + 3.0, torch.full_like(d, 3.0), alpha=ALPHA, gamma=GAMMA, beta=beta, reduction="none")
    torch.testing.assert_close(got, torch.tensor(values, dtype=torch.float64), rtol=0, atol=1e-6)
    # symmetric in the sign of pred - target
    torch.testing.assert_close(balanced_l1_loss(-d, torch.zeros_like(d), beta=beta, reduction="none"), got, rtol=0, atol=1e-12)


def test_gradient_is_eq7():
    xs = [v for v in XS if v != 0.0 and abs(v) != 1.0]
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(x, torch.zeros_like(x), reduction="sum").backward()
    want = torch.tensor([eq7(v) for v in xs], dtype=torch.float64)
    torch.testing.assert_close(x.grad, want, rtol=0, atol=1e-9)
    # outliers get gamma, inliers near 1 approach gamma from below: gradient continuous at 1 for beta = 1
    assert x.grad[xs.index(0.999)] == pytest.approx(GAMMA, abs=2e-3)


@pytest.mark.parametrize("beta", [1.0, 0.11, 0.5, 2.0])
def test_continuous_at_beta(beta):
    eps = 1e-9
    d = torch.tensor([beta - eps, beta, beta + eps], dtype=torch.float64)
    loss = balanced_l1_loss(d, torch.zeros_like(d), beta=beta, reduction="none")
    assert (loss[1] - loss[0]).abs() < 1e-7 and (loss[2] - loss[1]).abs() < 1e-7
    assert loss[1].item() == pytest.approx(GAMMA * beta + GAMMA / B - ALPHA * beta, abs=1e-12)


def test_beta_form_keeps_reference_gradient_jump():
    """For beta != 1 the reference form is kept verbatim: gradient ~4.045 at 0+ and ~1.701 below beta."""
    beta = 0.11
    d = torch.tensor([1e-9, beta - 1e-9, beta + 1e-9], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(d, torch.zeros_like(d), beta=beta, reduction="sum").backward()
    assert d.grad[0].item() == pytest.approx(ALPHA / beta - ALPHA, abs=1e-6)  # 4.045
    assert d.grad[1].item() == pytest.approx(1.701, abs=1e-3)
    assert d.grad[2].item() == pytest.approx(GAMMA, abs=1e-12)


def test_module_reductions_weights_and_avg_factor():
    torch.manual_seed(0)
    pred, target = torch.randn(6, 4), torch.randn(6, 4)
    elem = balanced_l1_loss(pred, target, reduction="none")
    w = torch.rand(6, 4)
    assert torch.allclose(BalancedL1Loss(reduction="none")(pred, target), elem)
    assert torch.allclose(BalancedL1Loss()(pred, target), elem.mean())
    assert torch.allclose(BalancedL1Loss(reduction="sum")(pred, target), elem.sum())
    assert torch.allclose(BalancedL1Loss()(pred, target, weight=w), (elem * w).mean())
    # avg_factor: sum / avg_factor (R-CNN: #sampled RoIs; RetinaNet: #positive anchors)
    assert torch.allclose(BalancedL1Loss()(pred, target, weight=w, avg_factor=512), (elem * w).sum() / 512)
    assert torch.allclose(BalancedL1Loss()(pred, target, avg_factor=torch.tensor(7.0)), elem.sum() / 7)
    # one weight per row broadcast over the 4 deltas
    row_w = torch.tensor([1.0, 0, 1, 0, 1, 0])
    assert torch.allclose(BalancedL1Loss(reduction="sum")(pred, target, weight=row_w), elem[::2].sum())
    # loss_weight and reduction_override
    loss = BalancedL1Loss(loss_weight=2.0)
    assert torch.allclose(loss(pred, target, reduction_override="sum"), 2 * elem.sum())
    assert loss(pred, target, reduction_override="none").shape == (6, 4)


def test_empty_input_gives_graph_connected_zero():
    pred = torch.zeros(0, 4, requires_grad=True)
    target = torch.zeros(0, 4)
    for reduction in ("mean", "sum"):
        for avg_factor in (None, 0, 5) if reduction == "mean" else (None,):
            out = BalancedL1Loss(reduction=reduction)(pred, target, avg_factor=avg_factor)
            assert out.shape == () and out.item() == 0.0 and out.requires_grad
            out.backward()
            assert pred.grad is not None and pred.grad.shape == (0, 4)
    # the heads' calling convention: elementwise, then .sum()
    out = BalancedL1Loss(reduction="none")(pred, target).sum()
    assert out.item() == 0.0 and out.requires_grad


def test_drop_in_for_head_callables():
    """RoI/RPN heads call ``bbox_loss(pred, target)`` for an elementwise [K, 4] loss and sum it;
    RetinaHead calls it for a summed scalar: reduction "none" / "sum" give exactly these."""
    torch.manual_seed(1)
    pred, target = torch.randn(5, 4), torch.randn(5, 4)
    elem = BalancedL1Loss(reduction="none")(pred, target)
    assert elem.shape == (5, 4)
    assert torch.allclose(BalancedL1Loss(reduction="sum")(pred, target), elem.sum())
    assert torch.allclose(L1Loss(reduction="none")(pred, target), (pred - target).abs())


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_l1_and_smooth_l1_wrappers(reduction):
    torch.manual_seed(2)
    pred, target = torch.randn(7, 4), torch.randn(7, 4)
    assert torch.allclose(L1Loss(reduction=reduction)(pred, target), F.l1_loss(pred, target, reduction=reduction))
    got = SmoothL1Loss(beta=1 / 9, reduction=reduction)(pred, target)
    assert torch.allclose(got, F.smooth_l1_loss(pred, target, beta=1 / 9, reduction=reduction))
    w = torch.rand(7)
    got = SmoothL1Loss(beta=0.11)(pred, target, weight=w, avg_factor=3)
    want = (F.smooth_l1_loss(pred, target, beta=0.11, reduction="none") * w[:, None]).sum() / 3
    assert torch.allclose(got, want)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="alpha, gamma and beta must be > 0"):
        BalancedL1Loss(alpha=0.0)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        SmoothL1Loss(beta=-1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        L1Loss(reduction="avg")
    with pytest.raises(ValueError, match=r"BalancedL1Loss: pred shape \(3, 4\) != target shape \(3, 2\)"):
        BalancedL1Loss()(torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="weight of shape"):
        BalancedL1Loss()(torch.zeros(4, 4), torch.zeros(4, 4), weight=torch.ones(3))
    with pytest.raises(ValueError, match="avg_factor cannot be used"):
        weight_reduce_loss(torch.ones(3), reduction="sum", avg_factor=2)
    with pytest.raises(ValueError, match="avg_factor must be > 0"):
        weight_reduce_loss(torch.ones(3), avg_factor=0)
