"""AnchorGenerator: counts, positions and order per level; equality with torchvision's generator."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from training.models.anchors import AnchorGenerator, octave_scales

STRIDES = [4, 8, 16, 32, 64]


def _feature_sizes(h: int, w: int):
    sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in STRIDES[:4]]
    sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))  # P6 = max_pool(P5, 1, 2)
    return sizes


@pytest.mark.parametrize("h,w", [(320, 416), (384, 288), (256, 256), (800, 1216)])
def test_equals_torchvision_defaults(h, w):
    tv = TVAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    ours = AnchorGenerator(
        strides=STRIDES, sizes_per_level=[[32], [64], [128], [256], [512]], round_base=True, stride_from_image=True
    )
    feats = [torch.zeros(1, 1, fh, fw) for fh, fw in _feature_sizes(h, w)]
    expected = tv(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), feats)[0]
    got = ours(feats, (h, w))
    assert [a.shape[0] for a in got] == [fh * fw * 3 for fh, fw in _feature_sizes(h, w)]
    assert torch.equal(torch.cat(got), expected)


def test_equals_torchvision_multi_size_levels():
    sizes = [[32, 40, 50], [64, 80, 101]]
    tv = TVAnchorGenerator(tuple(tuple(s) for s in sizes), ((0.5, 1.0, 2.0),) * 2)
    ours = AnchorGenerator(strides=[8, 16], sizes_per_level=sizes, round_base=True)
    feats = [torch.zeros(1, 1, 8, 6), torch.zeros(1, 1, 4, 3)]
    assert ours.num_anchors_per_location() == [9, 9] == tv.num_anchors_per_location()
    assert torch.equal(torch.cat(ours(feats, (64, 48))), tv(ImageList(torch.zeros(1, 3, 64, 48), [(64, 48)]), feats)[0])


def test_positions_and_order_mmdet_style():
    gen = AnchorGenerator(strides=[16], scales=[2.0], ratios=[0.25, 1.0])
    (a,) = gen.grid_anchors([(2, 3)])
    assert a.shape == (2 * 3 * 2, 4)
    # location (row 0, col 1) -> centre (16, 0); its two anchors are ratio 0.25 (wide) then 1.0
    wide, square = a[2], a[3]
    assert torch.allclose(wide, torch.tensor([16 - 32.0, -8.0, 16 + 32.0, 8.0]))
    assert torch.allclose(square, torch.tensor([0.0, -16.0, 32.0, 16.0]))
    # next row starts after the 3 locations of row 0: centre (0, 16)
    assert torch.allclose((a[6, :2] + a[6, 2:]) / 2, torch.tensor([0.0, 16.0]))


def test_fixed_strides_differ_from_torchvision_on_odd_p5():
    sizes = [[512.0]]
    fixed = AnchorGenerator(strides=[64], sizes_per_level=sizes, ratios=[1.0], round_base=True)
    tvlike = AnchorGenerator(strides=[64], sizes_per_level=sizes, ratios=[1.0], round_base=True, stride_from_image=True)
    # a 416 px wide image: P5 is 13 wide, P6 7 wide; torchvision's stride is 416 // 7 = 59
    assert fixed.grid_anchors([(1, 7)])[0][1, 0] - fixed.grid_anchors([(1, 7)])[0][0, 0] == 64
    assert tvlike.grid_anchors([(1, 7)], (64, 416))[0][1, 0] - tvlike.grid_anchors([(1, 7)], (64, 416))[0][0, 0] == 59


def test_center_offset_and_octave_scales():
    gen = AnchorGenerator(strides=[8], scales=octave_scales(4.0, 3), ratios=[1.0], center_offset=0.5)
    (a,) = gen.grid_anchors([(1, 1)])
    assert a.shape == (3, 4)
    assert torch.allclose((a[:, :2] + a[:, 2:]) / 2, torch.full((3, 2), 4.0))
    assert torch.allclose(a[:, 2] - a[:, 0], torch.tensor([32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        AnchorGenerator(strides=[4], scales=[8.0], sizes_per_level=[[32]])
    with pytest.raises(ValueError, match="2 levels of sizes for 1 strides"):
        AnchorGenerator(strides=[4], sizes_per_level=[[32], [64]])
