"""RetinaNet: head shapes and init, focal/box loss behaviour, train/eval API, and an overfit run."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from tests.helpers.overfit import assert_finds_every_object, overfit, rectangles_image
from training.config import ModelConfig, load_config
from training.models.build import build_model
from training.models.dense_heads.retina_head import RetinaHead
from training.models.retinanet import RetinaNet

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_retinanet.yaml"


def _tiny_cfg(num_classes: int = 3, **loss_weights: float) -> ModelConfig:
    cfg = load_config(TINY_CONFIG).model
    cfg.num_classes = num_classes
    cfg.loss_weights = dict(loss_weights)
    return cfg


def _tiny_model(num_classes: int = 3, seed: int = 0, **loss_weights: float) -> RetinaNet:
    torch.manual_seed(seed)
    model = build_model(_tiny_cfg(num_classes, **loss_weights))
    assert isinstance(model, RetinaNet)
    return model


def _target(boxes: List[List[float]], labels: List[int]) -> Dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


# ----------------------------------------------------------------------------------------------
# Head
# ----------------------------------------------------------------------------------------------
def test_head_output_shapes() -> None:
    head = RetinaHead(num_classes=5, in_channels=16, feat_channels=8, stacked_convs=2, num_anchors=9)
    feats = [torch.randn(2, 16, h, w) for h, w in [(20, 26), (10, 13), (5, 7), (3, 4)]]
    cls_logits, bbox_deltas = head(feats)
    assert [tuple(c.shape) for c in cls_logits] == [(2, 45, h, w) for h, w in [(20, 26), (10, 13), (5, 7), (3, 4)]]
    assert [tuple(b.shape) for b in bbox_deltas] == [(2, 36, h, w) for h, w in [(20, 26), (10, 13), (5, 7), (3, 4)]]
    assert len(head.cls_convs) == len(head.reg_convs) == 2
    assert head.cls_convs[0].in_channels == 16 and head.cls_convs[1].in_channels == 8


def test_head_prior_probability_init() -> None:
    torch.manual_seed(0)
    head = RetinaHead(num_classes=4, in_channels=32, feat_channels=32, num_anchors=9, prior_prob=0.01)
    assert torch.allclose(head.cls_logits.bias, torch.full((36,), -math.log(99.0)))
    assert torch.count_nonzero(head.bbox_reg.bias) == 0
    for conv in [*head.cls_convs, *head.reg_convs, head.cls_logits, head.bbox_reg]:
        assert abs(float(conv.weight.detach().std()) - 0.01) < 0.002
    # with small weights every class starts near the prior probability
    with torch.no_grad():
        cls_logits, _ = head([torch.randn(1, 32, 8, 8)])
    probs = torch.sigmoid(cls_logits[0])
    assert abs(float(probs.mean()) - 0.01) < 1e-3
    with pytest.raises(ValueError, match="prior_prob must be in"):
        RetinaHead(num_classes=4, in_channels=8, feat_channels=8, prior_prob=1.0)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def test_image_without_boxes_trains() -> None:
    model = _tiny_model()
    model.train()
    images = torch.randn(1, 3, 128, 160)
    losses = model.compute_losses(images, [_target([], [])])
    assert set(losses) == {"retina_cls", "retina_bbox"}
    assert torch.isfinite(losses["retina_cls"]) and losses["retina_cls"] > 0
    assert losses["retina_bbox"].item() == 0.0
    assert losses["retina_bbox"].requires_grad  # graph-connected zero
    (losses["retina_cls"] + losses["retina_bbox"]).backward()
    assert model.head.cls_logits.weight.grad is not None and model.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.head.bbox_reg.weight.grad is not None
    assert model.head.bbox_reg.weight.grad.abs().sum() == 0


def test_losses_are_per_image_means() -> None:
    """torchvision's normalisation: each image's losses / its positives, then the batch mean."""
    model = _tiny_model()
    model.train()
    torch.manual_seed(1)
    images = torch.randn(2, 3, 128, 160)
    targets = [
        _target([[10, 12, 60, 70], [70, 20, 150, 110]], [0, 2]),
        _target([[30, 40, 50, 56]], [1]),
    ]
    both = model.compute_losses(images, targets)
    one = [model.compute_losses(images[i : i + 1], [targets[i]]) for i in range(2)]
    for name in ("retina_cls", "retina_bbox"):
        torch.testing.assert_close(both[name], (one[0][name] + one[1][name]) / 2, rtol=1e-5, atol=1e-6)
        assert one[0][name] != one[1][name]


def test_ignore_boxes_exclude_anchors() -> None:
    """An ignore region over the whole image leaves no anchor to classify: zero focal loss."""
    model = _tiny_model()
    model.train()
    images = torch.randn(1, 3, 128, 160)
    plain = model.compute_losses(images, [_target([], [])])
    target = _target([], [])
    target["ignore_boxes"] = torch.tensor([[-500.0, -500.0, 700.0, 700.0]])
    ignored = model.compute_losses(images, [target])
    assert plain["retina_cls"] > 0
    assert ignored["retina_cls"].item() == 0.0


def test_smooth_l1_config_changes_box_loss() -> None:
    torch.manual_seed(0)
    images = torch.randn(1, 3, 128, 160)
    targets = [_target([[10, 12, 60, 70]], [1])]
    values = {}
    for kind in ("l1", "smooth_l1"):
        cfg = _tiny_cfg()
        cfg.retina_head.bbox_loss = kind
        torch.manual_seed(0)
        model = build_model(cfg).train()
        values[kind] = model.compute_losses(images, targets)["retina_bbox"].item()
    # same weights; smooth L1 is below L1 (|x| - beta / 2 or x^2 / (2 beta) <= |x|)
    assert 0 < values["smooth_l1"] < values["l1"]


# ----------------------------------------------------------------------------------------------
# Detector API
# ----------------------------------------------------------------------------------------------
def test_train_forward_weights_losses() -> None:
    model = _tiny_model(retina_bbox=2.0)
    assert model.loss_weights == {"retina_cls": 1.0, "retina_bbox": 2.0}
    model.train()
    images = torch.randn(2, 3, 128, 160)
    targets = [_target([[10, 12, 60, 70]], [1]), _target([[20, 30, 120, 100]], [2])]
    weighted = model(images, targets)
    raw = model.compute_losses(images, targets)
    assert set(weighted) == {"retina_cls", "retina_bbox"}
    for v in weighted.values():
        assert v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v)
    torch.testing.assert_close(weighted["retina_cls"], raw["retina_cls"])
    torch.testing.assert_close(weighted["retina_bbox"], 2.0 * raw["retina_bbox"])
    with pytest.raises(ValueError, match="needs targets"):
        model(images)


def test_unknown_loss_weight_is_a_build_error() -> None:
    with pytest.raises(ValueError, match="unknown loss name 'rpn_cls'.*retina_cls, retina_bbox"):
        _tiny_model(rpn_cls=1.0)


def test_anchor_levels_must_match_fpn() -> None:
    cfg = _tiny_cfg()
    cfg.retina_head.anchors.strides = [8, 16, 32]
    with pytest.raises(ValueError, match="model.retina_head.anchors.strides has 3 levels but the FPN makes 4"):
        build_model(cfg)


def test_eval_outputs() -> None:
    model = _tiny_model()
    model.head.score_thresh = 0.0  # untrained scores sit near the 0.01 prior
    model.head.max_per_img = 50
    model.eval()
    images = torch.randn(2, 3, 128, 160)
    sizes = [(128, 160), (100, 120)]
    dets = model.predict(images, sizes)
    assert len(dets) == 2
    for d, (h, w) in zip(dets, sizes):
        assert d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32
        assert d["labels"].dtype == torch.int64
        n = d["boxes"].shape[0]
        assert 0 < n <= 50 and d["boxes"].shape == (n, 4) and d["scores"].shape == (n,) and d["labels"].shape == (n,)
        assert (d["boxes"] >= 0).all() and (d["boxes"][:, 2] <= w).all() and (d["boxes"][:, 3] <= h).all()
        assert ((d["labels"] >= 0) & (d["labels"] < 3)).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()  # sorted, best first
    assert not dets[0]["boxes"].requires_grad
    # eval-mode forward is predict over the full padded size
    full = model(images[:1])
    torch.testing.assert_close(full[0]["boxes"], model.predict(images[:1], [(128, 160)])[0]["boxes"])
    with pytest.raises(ValueError, match="got 1 image_sizes for a batch of 2 images"):
        model.predict(images, sizes[:1])


# ----------------------------------------------------------------------------------------------
# Overfitting one synthetic image
# ----------------------------------------------------------------------------------------------
def test_overfits_one_image() -> None:
    model = _tiny_model(seed=0)
    images, boxes, labels = rectangles_image()
    history = overfit(
        model, images, [{"boxes": boxes, "labels": labels}], steps=150,
        make_optimizer=lambda params: torch.optim.Adam(params, lr=1e-3), stop_below=1 / 30,
    )
    assert history[-1] < history[0] / 10, f"loss fell only from {history[0]:.3f} to {history[-1]:.3f}"
    # each of the three best detections matches its own object at IoU > 0.7 with its class
    assert_finds_every_object(model, images, boxes, labels, min_iou=0.7)
