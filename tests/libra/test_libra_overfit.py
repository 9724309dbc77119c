"""Both Libra tiny configs (BFP, Libra samplers, Balanced L1) overfit one synthetic image on CPU,
as the baseline tiny configs do (tests/models/test_overfit_faster_rcnn.py, test_retinanet.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.helpers.overfit import assert_finds_every_object, overfit, rectangles_image
from training.config import load_config
from training.models import build_model
from training.models.necks import BalancedFeaturePyramid

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _model(name: str):
    cfg = load_config(CONFIGS / name)
    cfg.model.num_classes = 3
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.necks[-1], BalancedFeaturePyramid)
    return model


def test_tiny_libra_faster_rcnn_overfits_one_image():
    model = _model("tiny_libra_faster_rcnn.yaml")
    images, boxes, labels = rectangles_image()
    history = overfit(
        model, images, [{"boxes": boxes, "labels": labels}], steps=70,
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9), clip=10.0,
    )
    assert np.mean(history[-5:]) < history[0] / 5, f"loss {history[0]:.3f} -> {history[-5:]}"
    assert_finds_every_object(model, images, boxes, labels, min_iou=0.7)


def test_tiny_libra_retinanet_overfits_one_image():
    model = _model("tiny_libra_retinanet.yaml")
    images, boxes, labels = rectangles_image()
    history = overfit(
        model, images, [{"boxes": boxes, "labels": labels}], steps=150,
        make_optimizer=lambda params: torch.optim.Adam(params, lr=1e-3), stop_below=1 / 30,
    )
    assert history[-1] < history[0] / 10, f"loss fell only from {history[0]:.3f} to {history[-1]:.3f}"
    assert_finds_every_object(model, images, boxes, labels, min_iou=0.7)
