"""Parity with torchvision: converted ``FasterRCNN`` weights give torchvision's proposals, detections
and (with the same seed) training losses.

torchvision's detector is built as ``fasterrcnn_resnet50_fpn`` builds it with a pretrained backbone
(ResNet + FrozenBatchNorm2d, trainable_layers=3, 91 classes), with random FrozenBN statistics/affines
(so they matter) and re-initialised heads with larger weights (so objectness and class scores are
spread out instead of tied). Both models get the same already-normalised, padded image tensors:
torchvision's ``GeneralizedRCNNTransform`` is bypassed by calling its backbone / rpn / roi_heads with
an ``ImageList``. The conversion goes through the CLI and ``load_checkpoint_model``.
"""
from __future__ import annotations


import pytest
import torch
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection._utils import overwrite_eps
from torchvision.ops import FrozenBatchNorm2d

from training.models import load_checkpoint_model
from training.models.checkpoint import load_checkpoint
from training.models.convert.torchvision import ConversionError, convert_checkpoint, main

# (padded H, W) and the valid region before padding
IMAGES = [((320, 416), (317, 403)), ((384, 288), (384, 270)), ((256, 256), (250, 256))]


def _torchvision_model(backbone_name: str) -> TVFasterRCNN:
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name=backbone_name, weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    model = TVFasterRCNN(backbone, num_classes=91)
    # what torchvision does when it loads its COCO_V1 weights; the tv config's norm_eps is 0.0 to match
    overwrite_eps(model, 0.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
        heads = [
            (model.rpn.head.conv[0][0], 0.02),
            (model.rpn.head.cls_logits, 0.1),
            (model.rpn.head.bbox_pred, 0.02),
            (model.roi_heads.box_predictor.cls_score, 0.4),
            (model.roi_heads.box_predictor.bbox_pred, 0.02),
        ]
        for layer, std in heads:
            layer.weight.normal_(0, std, generator=g)
            layer.bias.normal_(0, 0.1, generator=g)
    return model.eval()


@pytest.fixture(scope="module", params=["resnet50", pytest.param("resnet18", marks=pytest.mark.slow)])
def models(request, tmp_path_factory):
    tv = _torchvision_model(request.param)
    tmp = tmp_path_factory.mktemp(f"tv_{request.param}")
    torch.save(tv.state_dict(), tmp / "tv.pth")
    assert main([str(tmp / "tv.pth"), str(tmp / "ours.pth"), "--arch", "faster_rcnn", "--num-classes", "91"]) == 0
    ckpt = load_checkpoint(tmp / "ours.pth")
    ours = load_checkpoint_model(tmp / "ours.pth")
    return tv, ours, ckpt


def _torchvision_predict(tv: TVFasterRCNN, images: torch.Tensor, sizes):
    image_list = ImageList(images, list(sizes))
    feats = tv.backbone(images)
    proposals, _ = tv.rpn(image_list, feats)
    detections, _ = tv.roi_heads(feats, proposals, image_list.image_sizes)
    return list(feats.values()), proposals, detections


def _our_predict(ours, images: torch.Tensor, sizes):
    feats = ours.extract_feats(images)
    objectness, deltas = ours.rpn(feats)
    anchors = ours.rpn.get_anchors(feats, tuple(images.shape[-2:]))
    proposals, _ = ours.rpn.get_proposals(objectness, deltas, anchors, sizes, training=False)
    return feats, proposals, ours.roi_head.predict(feats, proposals, sizes)


def test_converted_checkpoint_metadata(models):
    tv, ours, ckpt = models
    cfg = ckpt["config"]["model"]
    assert cfg["num_classes"] == 90 and len(cfg["class_names"]) == 90
    assert cfg["class_names"][0] == "person" and cfg["class_names"][11] == "unused_12"
    assert ckpt["meta"]["category_ids"][:3] == [1, 2, 3]
    assert ours.roi_head.box_predictor.cls_score.out_features == 91
    assert ours.roi_head.box_predictor.bbox_pred.out_features == 90 * 4
    # background row moved from first to last
    tv_cls = tv.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(ours.roi_head.box_predictor.cls_score.weight[-1], tv_cls[0])
    assert torch.equal(ours.roi_head.box_predictor.cls_score.weight[:-1], tv_cls[1:])


@pytest.mark.parametrize("padded,valid", IMAGES)
@torch.no_grad()
def test_eval_parity(models, padded, valid):
    tv, ours, ckpt = models
    category_ids = torch.tensor(ckpt["meta"]["category_ids"])
    g = torch.Generator().manual_seed(padded[0] * 1000 + padded[1])
    images = torch.randn(1, 3, *padded, generator=g)
    tv_feats, tv_props, tv_dets = _torchvision_predict(tv, images, [valid])
    feats, props, dets = _our_predict(ours, images, [valid])

    for a, b in zip(feats, tv_feats):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    assert props[0].shape == tv_props[0].shape and props[0].shape[0] > 100
    assert torch.allclose(props[0], tv_props[0], atol=1e-3, rtol=0), "proposals differ"

    expected, got = tv_dets[0], dets[0]
    assert got["boxes"].shape[0] == expected["boxes"].shape[0] > 0
    assert torch.allclose(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    assert torch.allclose(got["scores"], expected["scores"], atol=1e-5, rtol=0)
    assert torch.equal(category_ids[got["labels"]], expected["labels"])
    assert expected["labels"].unique().numel() > 1 and expected["scores"].std() > 1e-3  # not degenerate


@torch.no_grad()
def test_eval_parity_batched(models):
    tv, ours, _ = models
    images = torch.randn(2, 3, 256, 320, generator=torch.Generator().manual_seed(5))
    sizes = [(256, 300), (230, 320)]
    _, tv_props, tv_dets = _torchvision_predict(tv, images, sizes)
    _, props, dets = _our_predict(ours, images, sizes)
    assert torch.allclose(ours.predict(images, sizes)[1]["boxes"], dets[1]["boxes"])
    for i in range(2):
        assert torch.allclose(props[i], tv_props[i], atol=1e-3, rtol=0)
        assert torch.allclose(dets[i]["boxes"], tv_dets[i]["boxes"], atol=1e-3, rtol=0)
        assert torch.allclose(dets[i]["scores"], tv_dets[i]["scores"], atol=1e-5, rtol=0)


def test_training_loss_parity_with_same_seed(models):
    """Same assignment and sampling (the samplers draw from the global RNG in torchvision's order)."""
    tv, ours, _ = models
    images = torch.randn(2, 3, 256, 320, generator=torch.Generator().manual_seed(6))
    sizes = [(256, 300), (230, 320)]
    boxes = [torch.tensor([[10.0, 20, 100, 150], [50, 50, 80, 90], [150, 100, 290, 220]]), torch.zeros(0, 4)]
    tv_labels = [torch.tensor([1, 5, 90]), torch.zeros(0, dtype=torch.int64)]
    tv_targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, tv_labels)]
    our_targets = [{"boxes": b, "labels": lab - 1, "img_size": s} for b, lab, s in zip(boxes, tv_labels, sizes)]
    tv.rpn.train()
    tv.roi_heads.train()
    ours.train()
    try:
        torch.manual_seed(123)
        image_list = ImageList(images, sizes)
        feats = tv.backbone(images)
        proposals, rpn_losses = tv.rpn(image_list, feats, tv_targets)
        _, roi_losses = tv.roi_heads(feats, proposals, image_list.image_sizes, tv_targets)
        torch.manual_seed(123)
        losses = ours.compute_losses(images, our_targets)
    finally:
        tv.eval()
        ours.eval()
    names = {"rpn_cls": "loss_objectness", "rpn_bbox": "loss_rpn_box_reg", "rcnn_cls": "loss_classifier", "rcnn_bbox": "loss_box_reg"}
    expected = {**rpn_losses, **roi_losses}
    for ours_name, tv_name in names.items():
        assert torch.allclose(losses[ours_name], expected[tv_name], rtol=1e-5, atol=1e-7), ours_name


def test_converter_errors_name_the_file(tmp_path):
    bad = tmp_path / "classifier.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConversionError, match="classifier.pth.*not a torchvision FasterRCNN"):
        convert_checkpoint(bad, tmp_path / "out.pth", arch="faster_rcnn", num_classes=91)
    with pytest.raises(ConversionError, match="missing.pth.*not found"):
        convert_checkpoint(tmp_path / "missing.pth", tmp_path / "out.pth", arch="faster_rcnn", num_classes=91)
    assert main([str(bad), str(tmp_path / "out.pth"), "--arch", "faster_rcnn", "--num-classes", "91"]) == 2
    assert not (tmp_path / "out.pth").exists()


def test_converter_class_count_checks(tmp_path):
    tv = TVFasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3), num_classes=4)
    path = tmp_path / "tv4.pth"
    torch.save(tv.state_dict(), path)  # BatchNorm2d backbone: num_batches_tracked entries are dropped
    with pytest.raises(ConversionError, match="--num-classes 91 but the weights classify 4"):
        convert_checkpoint(path, tmp_path / "o.pth", arch="faster_rcnn", num_classes=91)
    with pytest.raises(ConversionError, match="2 names given but --num-classes 4 means 3"):
        convert_checkpoint(path, tmp_path / "o.pth", arch="faster_rcnn", num_classes=4, class_names=["a", "b"])
    out = convert_checkpoint(path, tmp_path / "o.pth", arch="faster_rcnn", num_classes=4, class_names=["a", "b", "c"])
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["model"]["class_names"] == ["a", "b", "c"]
    assert ckpt["config"]["model"]["backbone"]["depth"] == 18
    assert load_checkpoint_model(out).num_classes == 3
