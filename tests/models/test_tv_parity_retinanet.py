"""Parity with torchvision's RetinaNet: converted weights give the same detections and losses.

torchvision's ``retinanet_resnet50_fpn`` (random weights, fixed seed) gets BatchNorm statistics
calibrated on random images (so they are far from 0/1 and matter) and random affine parameters,
and a head re-initialised with a larger std so that many (anchor, class) scores pass 0.05. Its
state dict goes through ``convert_retinanet_state_dict`` into our model built from
``configs/tv_retinanet_r50_fpn.yaml``. Both get the same padded, normalised tensors (torchvision's
``GeneralizedRCNNTransform`` is bypassed: its backbone, head, anchor generator and
``postprocess_detections`` are called as in its eval ``forward``).
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection._utils import overwrite_eps
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from training.config import load_config
from training.models.build import build_model
from training.models import load_checkpoint_model
from training.models.convert.torchvision import ConversionError, convert_retinanet_state_dict
from training.models.convert.torchvision import main as convert_main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tv_retinanet_r50_fpn.yaml"
NUM_CLASSES = 91

# (padded H, W) of a batch and the valid (h, w) of each of its images. Sizes are multiples of 32
# but not of 128, so torchvision's "image size // grid size" strides of P6/P7 differ from 64/128.
BATCHES: List[Tuple[Tuple[int, int], List[Tuple[int, int]]]] = [
    ((320, 416), [(320, 416), (290, 397)]),
    ((384, 288), [(370, 288)]),
    ((256, 256), [(256, 256)]),
]


def _freeze_bn(module: nn.Module) -> None:
    """Replace every BatchNorm2d below ``module`` by a FrozenBatchNorm2d with its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_bn(child)


def _tv_model(depth: int) -> nn.Module:
    torch.manual_seed(0)
    if depth == 50:
        model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    else:  # the same detector on a ResNet-18 trunk, from torchvision's building blocks
        trunk = torchvision.models.resnet18(weights=None)
        backbone = _resnet_fpn_extractor(trunk, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        model = TVRetinaNet(backbone, NUM_CLASSES)
    # calibrate the BatchNorm statistics on random images (cumulative average), then randomise the
    # affine parameters: every FrozenBN term of our model then matters
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.backbone.train()
    with torch.no_grad():
        model.backbone(torch.randn(2, 3, 128, 160))
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
            m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
    # torchvision's pretrained detectors run FrozenBatchNorm2d (as ours): same arithmetic, so that
    # scores agree to the last bit and near-equal scores keep their order
    _freeze_bn(model)
    # what torchvision does when it loads its COCO_V1 weights; the tv config's norm_eps is 0.0 to match
    overwrite_eps(model, 0.0)
    # head: He-initialised towers fed unit-scale features, a lower class prior and larger logit and
    # delta weights, so that scores spread over (0.05, 1) and boxes are neither tiny nor huge
    model.eval()
    with torch.no_grad():
        feats = list(model.backbone(torch.randn(1, 3, 128, 160, generator=g)).values())
    rms = float(torch.stack([f.pow(2).mean() for f in feats]).mean().sqrt())
    for name, p in model.head.named_parameters():
        if name.endswith("weight"):
            if "cls_logits" in name:
                p.data.normal_(0.0, 0.02, generator=g)
            elif "bbox_reg" in name:
                p.data.normal_(0.0, 0.004, generator=g)
            else:
                p.data.normal_(0.0, math.sqrt(2.0 / p[0].numel()), generator=g)
                if ".conv.0." in name:
                    p.data /= rms
        elif "cls_logits" in name:
            p.data.fill_(-2.5)
        else:
            p.data.normal_(0.0, 0.05, generator=g)
    return model.eval()


@functools.lru_cache(maxsize=None)
def _models(depth: int) -> Tuple[nn.Module, nn.Module]:
    """(torchvision model, our model with its converted weights), built once per depth."""
    tv_model = _tv_model(depth)
    return tv_model, _our_model(depth, tv_model)


def _our_model(depth: int, tv_model: nn.Module) -> nn.Module:
    cfg = load_config(CONFIG)
    cfg.model.num_classes = NUM_CLASSES
    cfg.model.backbone.depth = depth
    model = build_model(cfg, pretrained=False)
    model.load_state_dict(convert_retinanet_state_dict(tv_model.state_dict(), NUM_CLASSES), strict=True)
    return model.eval()


@torch.no_grad()
def _tv_detect(model: nn.Module, images: torch.Tensor, sizes: List[Tuple[int, int]]):
    """torchvision's RetinaNet eval ``forward`` without the transform (and its rescale to originals)."""
    features = list(model.backbone(images).values())
    head_outputs = model.head(features)
    anchors = model.anchor_generator(ImageList(images, sizes), features)
    num_per_level = [f.shape[-2] * f.shape[-1] * model.anchor_generator.num_anchors_per_location()[0] for f in features]
    split_outputs = {k: list(v.split(num_per_level, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(num_per_level)) for a in anchors]
    return features, head_outputs, anchors, model.postprocess_detections(split_outputs, split_anchors, sizes)


def _images(padded: Tuple[int, int], sizes: List[Tuple[int, int]], seed: int) -> torch.Tensor:
    """Smooth random images (normalised scale), zero outside each valid region as after padding."""
    g = torch.Generator().manual_seed(seed)
    h, w = padded
    coarse = torch.randn(len(sizes), 3, h // 16, w // 16, generator=g)
    x = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.3 * torch.randn(len(sizes), 3, h, w, generator=g)
    for i, (vh, vw) in enumerate(sizes):
        x[i, :, vh:, :] = 0
        x[i, :, :, vw:] = 0
    return x


def _check_parity(depth: int) -> None:
    tv_model, ours = _models(depth)
    total = 0
    for b, (padded, sizes) in enumerate(BATCHES):
        images = _images(padded, sizes, seed=10 + b)
        tv_feats, _, _, tv_dets = _tv_detect(tv_model, images, sizes)
        our_feats = ours.extract_feats(images)
        assert len(our_feats) == len(tv_feats) == 5
        for lvl, (a, t) in enumerate(zip(our_feats, tv_feats)):
            assert a.shape == t.shape, f"P{lvl + 3}"
            torch.testing.assert_close(a, t, rtol=1e-4, atol=1e-4 * float(t.abs().max()), msg=f"P{lvl + 3} differs")
        our_dets = ours.predict(images, sizes)
        for i, (d, t) in enumerate(zip(our_dets, tv_dets)):
            where = f"batch {b} image {i} ({sizes[i]})"
            assert d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32
            assert d["labels"].dtype == torch.int64
            assert d["boxes"].shape[0] == t["boxes"].shape[0], f"{where}: detection count"
            assert torch.equal(d["labels"], t["labels"]), f"{where}: labels"
            torch.testing.assert_close(d["scores"], t["scores"], rtol=0, atol=1e-5, msg=f"{where}: scores")
            torch.testing.assert_close(d["boxes"], t["boxes"], rtol=0, atol=1e-3, msg=f"{where}: boxes")
            assert (d["boxes"][:, 2] <= sizes[i][1]).all() and (d["boxes"][:, 3] <= sizes[i][0]).all()
            total += d["boxes"].shape[0]
            # not degenerate: many detections of several classes, with boxes of positive area
            assert d["boxes"].shape[0] >= 100, f"{where}: too few detections to compare"
            assert d["labels"].unique().numel() >= 3
            areas = (d["boxes"][:, 2] - d["boxes"][:, 0]) * (d["boxes"][:, 3] - d["boxes"][:, 1])
            assert (areas > 1).float().mean() > 0.9
    assert total > 0


def _check_loss_parity(depth: int) -> None:
    """torchvision's ``compute_loss`` and ours on the same features, anchors and targets."""
    tv_model, ours = _models(depth)
    padded, sizes = BATCHES[0]
    images = _images(padded, sizes, seed=3)
    targets: List[Dict[str, torch.Tensor]] = [
        {
            # the 12 px box matches no anchor at IoU >= 0.4: only a low-quality match makes it positive
            "boxes": torch.tensor([[10.0, 20.0, 110.0, 90.0], [200.0, 100.0, 260.0, 300.0], [300.0, 10.0, 312.0, 22.0]]),
            "labels": torch.tensor([1, 17, 90]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects
    ]
    with torch.no_grad():
        features, head_outputs, anchors, _ = _tv_detect(tv_model, images, sizes)
        tv_losses = tv_model.compute_loss(targets, head_outputs, anchors)
        our_losses = ours.compute_losses(images, targets)
    torch.testing.assert_close(our_losses["retina_cls"], tv_losses["classification"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(our_losses["retina_bbox"], tv_losses["bbox_regression"], rtol=1e-4, atol=1e-5)
    assert our_losses["retina_bbox"] > 0


def test_parity_retinanet_resnet50_fpn_detections() -> None:
    _check_parity(50)


def test_parity_retinanet_resnet50_fpn_losses() -> None:
    _check_loss_parity(50)


def test_parity_resnet18_fpn_detections() -> None:
    """A basic-block trunk: the converter reads the depth, the FPN takes 128/256/512 channels."""
    _check_parity(18)


def test_convert_v1_head_layout_matches_v2() -> None:
    """Old torchvision checkpoints name tower conv i ``conv.{2i}`` (Sequential of conv, ReLU)."""
    tv_model, _ = _models(18)
    sd = tv_model.state_dict()
    v1 = {}
    for k, v in sd.items():
        m = re.match(r"^(head\.\w+_head\.conv\.)(\d+)\.0\.(weight|bias)$", k)
        v1[f"{m.group(1)}{2 * int(m.group(2))}.{m.group(3)}" if m else k] = v
    assert v1.keys() != sd.keys()
    a = convert_retinanet_state_dict(sd, NUM_CLASSES)
    b = convert_retinanet_state_dict(v1, NUM_CLASSES)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_convert_rejects_wrong_num_classes_and_other_models() -> None:
    tv_model, _ = _models(18)
    sd = tv_model.state_dict()
    with pytest.raises(ConversionError, match="--num-classes 80 but the weights classify 91 classes"):
        convert_retinanet_state_dict(sd, 80)
    with pytest.raises(ConversionError, match="not a torchvision RetinaNet state dict"):
        convert_retinanet_state_dict({k: v for k, v in sd.items() if not k.startswith("head.")}, NUM_CLASSES)
    with pytest.raises(ConversionError, match="unexpected torchvision RetinaNet key 'head.extra.weight'"):
        convert_retinanet_state_dict({**sd, "head.extra.weight": torch.zeros(1)}, NUM_CLASSES)


def test_convert_checkpoint_cli_roundtrip(tmp_path: Path) -> None:
    """The CLI writes a checkpoint whose model (built from the embedded config) predicts as torchvision."""
    tv_model, _ = _models(18)
    src = tmp_path / "tv_retinanet.pth"
    torch.save(tv_model.state_dict(), src)
    out = tmp_path / "ours.pth"
    assert convert_main([str(src), str(out), "--arch", "retinanet", "--num-classes", str(NUM_CLASSES)]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["config"]["model"]["arch"] == "retinanet"
    assert ckpt["config"]["model"]["num_classes"] == NUM_CLASSES  # no background class to drop
    assert ckpt["config"]["model"]["backbone"]["depth"] == 18
    names = ckpt["config"]["model"]["class_names"]
    assert names[0] == "unused_0" and names[1] == "person" and names[90] == "toothbrush"
    assert ckpt["meta"]["category_ids"] == list(range(NUM_CLASSES))
    model = load_checkpoint_model(out)
    padded, sizes = BATCHES[1]
    images = _images(padded, sizes, seed=11)
    ours = model.predict(images, sizes)[0]
    theirs = _tv_detect(tv_model, images, sizes)[3][0]
    assert torch.equal(ours["labels"], theirs["labels"])
    torch.testing.assert_close(ours["boxes"], theirs["boxes"], rtol=0, atol=1e-3)
