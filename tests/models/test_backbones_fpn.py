"""Backbones (frozen stages, norms, pretrained loading, tiny speed) and the FPN (vs torchvision)."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from training.models.backbones import PretrainedLoadError, ResNetBackbone, TinyBackbone
from training.models.necks import FPN

REPO = Path(__file__).resolve().parents[2]


def test_resnet_outputs_and_frozen_stages():
    net = ResNetBackbone(depth=18, frozen_stages=1, norm="frozen_bn")
    outs = net(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == net.out_channels == [64, 128, 256, 512]
    assert [o.shape[-2:] for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    for name, p in net.named_parameters():
        frozen = name.startswith(("conv1.", "bn1.", "layer1."))
        assert p.requires_grad != frozen, name
    assert isinstance(net.bn1, FrozenBatchNorm2d) and isinstance(net.layer4[0].bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_resnet_bn_frozen_stages_stay_in_eval_mode():
    net = ResNetBackbone(depth=18, frozen_stages=2, norm="bn").train()
    assert not net.bn1.training and not net.layer2[0].bn1.training
    assert net.layer3[0].bn1.training
    before = net.layer1[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    assert torch.equal(net.layer1[0].bn1.running_mean, before)


def test_resnet_gn_and_nothing_frozen():
    net = ResNetBackbone(depth=18, frozen_stages=-1, norm="gn", gn_groups=16)
    assert isinstance(net.bn1, nn.GroupNorm) and net.bn1.num_groups == 16
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="depth 152"):
        ResNetBackbone(depth=152)


def test_load_pretrained_from_torchvision_state_dict(tmp_path, capsys):
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        tv.conv1.weight.normal_()
        tv.layer3[1].bn2.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    net = ResNetBackbone(depth=18, norm="frozen_bn")
    report = net.load_pretrained(path)
    assert report == {"missing": [], "unexpected": []}  # fc.* and num_batches_tracked dropped
    assert torch.equal(net.conv1.weight, tv.conv1.weight)
    assert torch.equal(net.layer3[1].bn2.running_var, tv.layer3[1].bn2.running_var)
    x = torch.randn(1, 3, 64, 64)
    tv.eval()
    expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
    assert torch.allclose(net(x)[-1], expected, atol=1e-5)

    sd = tv.state_dict()
    del sd["layer2.0.conv1.weight"]
    torch.save(sd, path)
    report = ResNetBackbone(depth=18).load_pretrained(path)
    assert report["missing"] == ["layer2.0.conv1.weight"]
    assert "layer2.0.conv1.weight" in capsys.readouterr().out


def test_load_pretrained_errors_name_the_file(tmp_path):
    net = ResNetBackbone(depth=50)
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedLoadError, match="nope.pth.*not found"):
        net.load_pretrained(missing)
    other = tmp_path / "not_resnet.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, other)
    with pytest.raises(PretrainedLoadError, match="not_resnet.pth.*not a torchvision ResNet"):
        net.load_pretrained(other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(PretrainedLoadError, match="garbage.pth.*cannot read"):
        net.load_pretrained(garbage)
    r18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    with pytest.raises(PretrainedLoadError, match="resnet18.pth.*ResNet-50"):
        net.load_pretrained(r18)


def test_tiny_backbone_shapes_and_norms():
    net = TinyBackbone(widths=[32, 64, 128, 256], norm="gn", gn_groups=8)
    x = torch.randn(1, 3, 320, 320)
    outs = net(x)
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 80, 80), (64, 40, 40), (128, 20, 20), (256, 10, 10)]
    sum(o.mean() for o in net(x)).backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="'bn' or 'gn'"):
        TinyBackbone(norm="frozen_bn")
    frozen = TinyBackbone(norm="bn", frozen_stages=1).train()
    assert not any(p.requires_grad for p in frozen.stem.parameters())
    assert not frozen.stages[0][0][1].training and frozen.stages[1][0][1].training


def _copy_fpn_weights(ours: FPN, tv: FeaturePyramidNetwork) -> None:
    sd = {}
    for k, v in tv.state_dict().items():
        k = k.replace("inner_blocks", "lateral_convs").replace("layer_blocks", "fpn_convs").replace(".0.weight", ".weight")
        k = k.replace(".0.bias", ".bias").replace("extra_blocks.p6", "extra_convs.0").replace("extra_blocks.p7", "extra_convs.1")
        sd[k] = v
    ours.load_state_dict(sd)


def test_fpn_maxpool_equals_torchvision():
    torch.manual_seed(0)
    chans = [16, 32, 64, 128]
    tv = FeaturePyramidNetwork(chans, 24, extra_blocks=LastLevelMaxPool())
    ours = FPN(in_channels=chans, out_channels=24, num_outs=5, extra="maxpool")
    _copy_fpn_weights(ours, tv)
    feats = [torch.randn(2, c, 52 // 2**i, 40 // 2**i) for i, c in enumerate(chans)]  # 52 -> 6 (odd-size path)
    expected = list(tv(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
    got = ours(feats)
    assert len(got) == 5 and all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("extra,in_p6", [("conv_p5", 24), ("conv_c5", 128)])
def test_fpn_p6p7_equals_torchvision(extra, in_p6):
    torch.manual_seed(0)
    chans = [32, 64, 128]
    tv = FeaturePyramidNetwork(chans, 24, extra_blocks=LastLevelP6P7(in_p6, 24))
    ours = FPN(in_channels=[16] + chans, out_channels=24, num_outs=5, start_level=1, extra=extra)
    assert ours.extra_convs[0].in_channels == in_p6
    _copy_fpn_weights(ours, tv)
    feats = [torch.randn(1, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate([16] + chans)]
    expected = list(tv(OrderedDict((str(i), f) for i, f in enumerate(feats[1:]))).values())
    got = ours(feats)
    assert [g.shape[-1] for g in got] == [32, 16, 8, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_fpn_bad_arguments():
    with pytest.raises(ValueError, match="extra must be one of"):
        FPN(in_channels=[8, 16], extra="avgpool")
    with pytest.raises(ValueError, match="num_outs 1 < 2"):
        FPN(in_channels=[8, 16], num_outs=1)


def test_norm_eps_reaches_every_norm_layer():
    """torchvision's COCO_V1 detector weights need FrozenBatchNorm eps 0.0 (its tv configs set it)."""
    from training.config import load_config
    from training.models import build_model

    cfg = load_config(REPO / "configs" / "tv_faster_rcnn_r50_fpn.yaml", ["model.num_classes=3"])
    assert cfg.model.backbone.norm_eps == 0.0
    model = build_model(cfg)
    eps = {m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)}
    assert eps == {0.0}
    net = ResNetBackbone(depth=18, norm="bn", norm_eps=1e-3)
    assert {m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
