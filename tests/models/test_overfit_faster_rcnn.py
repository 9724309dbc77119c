"""The tiny Faster R-CNN config overfits one synthetic image on CPU in a few seconds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.ops import box_iou

from training.config import load_config
from training.models import build_model

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_faster_rcnn.yaml"
BOXES = [[14, 20, 60, 75], [75, 30, 118, 58], [40, 82, 96, 120]]
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220)]
LABELS = [0, 1, 2]


def _image_and_target(cfg):
    img = Image.new("RGB", (128, 128), (90, 90, 90))
    draw = ImageDraw.Draw(img)
    for box, colour in zip(BOXES, COLOURS):
        draw.rectangle(box, fill=colour)  # Pillow fills x1..x2 inclusive: the box is [x1, x2 + 1)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()
    x = (x - torch.tensor(cfg.data.mean)[:, None, None]) / torch.tensor(cfg.data.std)[:, None, None]
    boxes = torch.tensor(BOXES, dtype=torch.float32) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    return x[None], {"boxes": boxes, "labels": torch.tensor(LABELS), "img_size": (128, 128)}


def test_tiny_faster_rcnn_overfits_one_image():
    cfg = load_config(TINY)
    cfg.model.num_classes = 3
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images, target = _image_and_target(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    history = []
    for _ in range(60):
        losses = model(images, [target])
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        history.append(total.item())
    assert np.mean(history[-5:]) < history[0] / 5, f"loss {history[0]:.3f} -> {history[-5:]}"

    model.eval()
    det = model.predict(images, [(128, 128)])[0]
    top = det["scores"].argmax()
    iou = box_iou(det["boxes"][top : top + 1], target["boxes"])[0]
    assert iou.max() > 0.7 and det["labels"][top] == target["labels"][iou.argmax()], (det, iou)
    # every object is found among the three best detections, with its label
    best3 = det["scores"].argsort(descending=True)[:3]
    ious = box_iou(target["boxes"], det["boxes"][best3])
    for g in range(3):
        j = ious[g].argmax()
        assert ious[g, j] > 0.5 and det["labels"][best3[j]] == LABELS[g], (g, ious, det["labels"][best3])
