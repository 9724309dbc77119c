"""Embedded-Gaussian non-local block: the formula, scaling option and initialisation."""
from __future__ import annotations

import math

import pytest
import torch

from training.models.necks.non_local import NonLocal2d


def reference_non_local(block: NonLocal2d, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """out_i = x_i + W_out( sum_j softmax_j(theta_i . phi_j / scale) g_j ), written per position."""
    def conv1x1(conv, t):  # [C, H, W] -> [C', H*W]
        w = conv.weight[:, :, 0, 0]
        return w @ t.reshape(t.shape[0], -1) + conv.bias[:, None]

    outs = []
    for t in x:
        theta, phi, g = conv1x1(block.theta, t), conv1x1(block.phi, t), conv1x1(block.g, t)
        logits = torch.einsum("ci,cj->ij", theta, phi) / scale  # [HW, HW]
        attn = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        attn = attn / attn.sum(dim=1, keepdim=True)
        y = torch.einsum("ij,cj->ci", attn, g).reshape(-1, *t.shape[1:])
        outs.append(t + conv1x1(block.conv_out, y).reshape(t.shape))
    return torch.stack(outs)


def test_matches_written_out_formula_without_scale():
    torch.manual_seed(0)
    block = NonLocal2d(in_channels=6, zeros_init=False, std=0.3).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    out = block(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference_non_local(block, x), rtol=1e-10, atol=1e-10)
    # not the identity when conv_out is not zero
    assert not torch.allclose(out, x)


def test_use_scale_divides_by_sqrt_inter_channels():
    torch.manual_seed(1)
    block = NonLocal2d(in_channels=8, reduction=2, use_scale=True, zeros_init=False, std=0.3).double()
    assert block.inter_channels == 4 and block.g.out_channels == 4 and block.conv_out.in_channels == 4
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(block(x), reference_non_local(block, x, scale=math.sqrt(4)), rtol=1e-10, atol=1e-10)
    block.use_scale = False
    assert not torch.allclose(block(x), reference_non_local(block, x, scale=math.sqrt(4)))


def test_default_init_is_identity_with_small_normal_projections():
    torch.manual_seed(2)
    block = NonLocal2d(in_channels=64)
    assert torch.count_nonzero(block.conv_out.weight) == 0 and torch.count_nonzero(block.conv_out.bias) == 0
    for conv in (block.g, block.theta, block.phi):
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert torch.count_nonzero(conv.bias) == 0
    x = torch.randn(2, 64, 4, 6)
    assert torch.equal(block(x), x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="NonLocal2d: need in_channels > 0"):
        NonLocal2d(in_channels=4, reduction=8)
