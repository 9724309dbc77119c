"""Faster R-CNN: build errors, train/eval outputs, empty images, target validation, RoI pooling."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from training.config import load_config
from training.models import build_model
from training.models.faster_rcnn import FasterRCNN
from training.models.roi_heads.roi_head import MMDetLevelMapper, MultiLevelRoIAlign, TorchvisionLevelMapper

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_faster_rcnn.yaml"


def _tiny_model(num_classes: int = 3, loss_weights=None):
    cfg = load_config(TINY)
    cfg.model.num_classes = num_classes
    cfg.model.loss_weights = dict(loss_weights or {})
    torch.manual_seed(0)
    return build_model(cfg)


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [80.0, 20.0, 120.0, 50.0]]), "labels": torch.tensor([0, 2]),
         "img_size": (128, 128)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "img_size": (96, 128)},
    ]


def test_build_errors():
    cfg = load_config(TINY)
    with pytest.raises(ValueError, match="set model.num_classes or let the trainer fill it"):
        build_model(cfg)
    cfg.model.num_classes = 3
    cfg.model.loss_weights = {"rcnn_bbox": 2.0, "retina_cls": 1.0}
    with pytest.raises(ValueError, match="unknown loss name 'retina_cls'.*rpn_cls, rpn_bbox, rcnn_cls, rcnn_bbox"):
        build_model(cfg)
    cfg.model.loss_weights = {}
    cfg.model.roi_head.sampler.kind = "magic"
    with pytest.raises(ValueError, match="model.roi_head.sampler.kind: unknown 'magic'"):
        build_model(cfg)


def test_train_outputs_weighted_losses_and_backward():
    model = _tiny_model(loss_weights={"rcnn_bbox": 0.5})
    assert isinstance(model, FasterRCNN) and model.loss_weights["rcnn_bbox"] == 0.5 and model.loss_weights["rpn_cls"] == 1.0
    model.train()
    images = torch.randn(2, 3, 128, 128)
    torch.manual_seed(1)
    weighted = model(images, _targets())
    torch.manual_seed(1)
    raw = model.compute_losses(images, _targets())
    assert sorted(weighted) == sorted(FasterRCNN.LOSS_NAMES)
    for k, v in weighted.items():
        assert v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v)
        assert torch.allclose(v, raw[k] * model.loss_weights[k])
    sum(weighted.values()).backward()
    assert model.roi_head.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0


def test_all_empty_batch_trains_with_zero_box_loss():
    model = _tiny_model().train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(2)]
    losses = model.compute_losses(torch.randn(2, 3, 96, 96), empty)
    assert losses["rpn_bbox"].item() == 0.0 and losses["rcnn_bbox"].item() == 0.0
    assert losses["rpn_cls"] > 0 and losses["rcnn_cls"] > 0
    assert losses["rpn_bbox"].requires_grad and losses["rcnn_bbox"].requires_grad
    sum(losses.values()).backward()


def test_predict_shapes_dtypes_and_clipping():
    model = _tiny_model().eval()
    sizes = [(100, 120), (128, 90)]
    out = model.predict(torch.randn(2, 3, 128, 128), sizes)
    assert len(out) == 2
    for det, (h, w) in zip(out, sizes):
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == torch.float32
        assert det["scores"].shape == (n,) and det["scores"].dtype == torch.float32
        assert det["labels"].shape == (n,) and det["labels"].dtype == torch.int64
        assert n <= 100
        if n:
            assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all() and (det["boxes"] >= 0).all()
            assert ((det["labels"] >= 0) & (det["labels"] < 3)).all() and (det["scores"] > 0.05).all()
    assert model(torch.randn(1, 3, 64, 64))[0].keys() == {"boxes", "scores", "labels"}


@pytest.mark.parametrize(
    "target,error,message",
    [
        ({"boxes": torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 5, 9]]), "labels": torch.tensor([0, 1])}, ValueError,
         r"targets\[1\]\['boxes'\]\[1\] = \[5.0, 5.0, 5.0, 9.0\] is degenerate"),
        ({"boxes": torch.tensor([[0, 0, 10, 10]]), "labels": torch.tensor([0])}, TypeError, r"targets\[1\]\['boxes'\] must be a float"),
        ({"boxes": torch.zeros(2, 5), "labels": torch.tensor([0, 1])}, ValueError, r"shape \[N, 4\], got \(2, 5\)"),
        ({"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0], dtype=torch.int32)}, TypeError, "int64"),
        ({"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([3])}, ValueError, r"\['labels'\]\[0\] = 3 is outside 0..2"),
        ({"labels": torch.tensor([0])}, ValueError, r"targets\[1\] has no 'boxes'"),
    ],
)
def test_bad_targets_name_image_and_box(target, error, message):
    model = _tiny_model().train()
    good = {"boxes": torch.tensor([[1.0, 1, 20, 20]]), "labels": torch.tensor([1])}
    with pytest.raises(error, match=message):
        model.compute_losses(torch.randn(2, 3, 64, 64), [good, target])


def test_level_mappers():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 2000, 2000]])
    assert TorchvisionLevelMapper(k_min=2, k_max=5)(boxes).tolist() == [0, 1, 2, 3, 3]
    assert MMDetLevelMapper(num_levels=4, finest_scale=56)(boxes).tolist() == [0, 1, 2, 3, 3]
    assert MMDetLevelMapper(num_levels=4)(torch.tensor([[0.0, 0, 111, 111], [0, 0, 113, 113]])).tolist() == [0, 1]


def test_multilevel_roi_align_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 64 // 2**i, 48 // 2**i, generator=g) for i in range(4)]
    xy = torch.rand(40, 2, generator=g) * 150
    boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 200 + 2], 1)
    per_image = [boxes[:25], boxes[25:]]
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    expected = tv(OrderedDict((str(i), f) for i, f in enumerate(feats)), per_image, [(250, 190), (256, 192)])
    ours = MultiLevelRoIAlign(
        strides=[4, 8, 16, 32], output_size=7, sampling_ratio=2, aligned=False, level_mapper=TorchvisionLevelMapper(k_min=2, k_max=5)
    )
    from training.models.roi_heads.roi_head import boxes_to_rois

    assert torch.equal(ours(feats, boxes_to_rois(per_image)), expected)


@pytest.mark.parametrize("name", ["faster_rcnn_r50_fpn_1x.yaml", "tv_faster_rcnn_r50_fpn.yaml"])
def test_r50_configs_build_torchvision_sized_model(name):
    cfg = load_config(REPO / "configs" / name)
    cfg.model.num_classes = 90
    model = build_model(cfg)
    # torchvision's fasterrcnn_resnet50_fpn (91 classes) has 41,755,286 parameters; ours has no
    # background box regression: 4 * (1024 + 1) fewer
    assert sum(p.numel() for p in model.parameters()) == 41_755_286 - 4 * 1025
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
