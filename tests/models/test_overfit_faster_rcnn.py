"""The tiny Faster R-CNN config overfits one synthetic image on CPU in a few seconds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.helpers.overfit import assert_finds_every_object, overfit, rectangles_image
from training.config import load_config
from training.models import build_model

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_faster_rcnn.yaml"


def test_tiny_faster_rcnn_overfits_one_image():
    cfg = load_config(TINY)
    cfg.model.num_classes = 3
    torch.manual_seed(0)
    model = build_model(cfg)
    images, boxes, labels = rectangles_image()
    history = overfit(
        model, images, [{"boxes": boxes, "labels": labels}], steps=100,
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9), clip=10.0,
    )
    assert np.mean(history[-5:]) < history[0] / 5, f"loss {history[0]:.3f} -> {history[-5:]}"
    # each of the three best detections matches its own object at IoU > 0.7 with its label
    assert_finds_every_object(model, images, boxes, labels, min_iou=0.7)
