"""GroupNorm2d: the same maths and parameters as nn.GroupNorm, with float32 sums that stay accurate."""
from __future__ import annotations

import torch
from torch import nn

from training.models.norms import GroupNorm2d


def test_equals_torch_group_norm_and_loads_its_state_dict():
    torch.manual_seed(0)
    ref = nn.GroupNorm(8, 32)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    ours = GroupNorm2d(8, 32)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 32, 17, 23) * 3 + 5
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=2e-5)
    x.requires_grad_(True)
    ours(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_nested_sums_are_closer_to_float64_than_one_long_float32_sum():
    torch.manual_seed(0)
    gn = GroupNorm2d(4, 64)
    x = torch.rand(1, 64, 80, 80) * 255  # a large, offset map, like the tiny backbone's first stage
    exact = nn.functional.group_norm(x.double(), 4, eps=gn.eps)
    err = (gn(x).double() - exact).abs().max().item()
    assert err < 1e-5, err
