"""DeltaXYWHBoxCoder: round trip, equality with torchvision's BoxCoder, clamping and clipping."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from training.models.box_coder import DeltaXYWHBoxCoder


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 80 + 2
    return torch.cat([xy, xy + wh], dim=1)


def test_round_trip_with_means_and_stds():
    coder = DeltaXYWHBoxCoder(target_means=(0.1, -0.2, 0.05, 0.0), target_stds=(0.1, 0.1, 0.2, 0.2))
    props, gt = _random_boxes(50, 0), _random_boxes(50, 1)
    assert torch.allclose(coder.decode(coder.encode(props, gt), props), gt, atol=1e-3)


def test_identity_encodes_to_zero():
    coder = DeltaXYWHBoxCoder()
    boxes = _random_boxes(10, 2)
    assert torch.equal(coder.encode(boxes, boxes), torch.zeros(10, 4))


@pytest.mark.parametrize("stds,weights", [((0.1, 0.1, 0.2, 0.2), (10.0, 10.0, 5.0, 5.0)), ((1.0,) * 4, (1.0,) * 4)])
def test_equals_torchvision_boxcoder(stds, weights):
    ours = DeltaXYWHBoxCoder(target_stds=stds)
    tv = BoxCoder(weights)
    props, gt = _random_boxes(64, 3), _random_boxes(64, 4)
    assert torch.equal(ours.encode(props, gt), tv.encode_single(gt, props))
    deltas = torch.randn(64, 3 * 4, generator=torch.Generator().manual_seed(5)) * 2
    # class-specific [N, K*4] decode as the RoI head uses it
    assert torch.equal(ours.decode(deltas, props), tv.decode_single(deltas, props))


def test_decode_broadcasts_batch_and_clamps_and_clips():
    coder = DeltaXYWHBoxCoder(clip=math.log(1000.0 / 16))
    anchors = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    huge = torch.tensor([[[0.0, 0.0, 50.0, 50.0]]])  # [B=1, N=1, 4]: exp(50) would overflow
    out = coder.decode(huge, anchors)
    assert out.shape == (1, 1, 4) and torch.isfinite(out).all()
    assert torch.allclose(out[0, 0, 2] - out[0, 0, 0], torch.tensor(10.0 * 1000 / 16))
    clipped = coder.decode(huge, anchors, max_shape=(30, 40))
    assert torch.equal(clipped[0, 0], torch.tensor([0.0, 0.0, 40.0, 30.0]))


def test_bad_stds_rejected():
    with pytest.raises(ValueError, match="target_stds"):
        DeltaXYWHBoxCoder(target_stds=(0.1, 0.1, 0.0, 0.2))
