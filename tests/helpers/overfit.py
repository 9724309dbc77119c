"""Shared helpers of the "overfits one image" tests: a synthetic image, a short training loop and
the check that the three best detections find every object with its class.

Import as ``from tests.helpers.overfit import ...`` (pytest runs from the repository root with
``python -m pytest``, which puts the root on ``sys.path``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

__all__ = ["rectangles_image", "overfit", "assert_finds_every_object"]


def rectangles_image(height: int = 160, width: int = 192, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """A normalised image [1, 3, H, W] with three coloured rectangles on a textured background,
    their boxes [3, 4] (x1y1x2y2, input pixels) and labels [3] (0, 2, 1)."""
    g = torch.Generator().manual_seed(seed)
    img = 0.2 * torch.randn(3, height, width, generator=g) + torch.tensor([0.1, -0.2, 0.0]).view(3, 1, 1)
    boxes = torch.tensor([[16.0, 24.0, 80.0, 104.0], [104.0, 32.0, 176.0, 80.0], [120.0, 100.0, 152.0, 148.0]])
    labels = torch.tensor([0, 2, 1])
    colours = torch.tensor([[1.5, -1.0, -1.0], [-1.0, -1.0, 1.5], [-1.0, 1.5, -1.0]])
    for (x1, y1, x2, y2), c in zip(boxes.int().tolist(), colours):
        img[:, y1:y2, x1:x2] = c.view(3, 1, 1)
    return img[None], boxes, labels


def overfit(
    model: nn.Module,
    images: Tensor,
    targets: List[Dict[str, Tensor]],
    *,
    steps: int,
    make_optimizer: Callable[[List[nn.Parameter]], torch.optim.Optimizer],
    clip: Optional[float] = None,
    stop_below: float = 0.0,
) -> List[float]:
    """Train ``model`` on one batch for up to ``steps`` updates; returns the total loss per step.

    Stops early once the loss is below ``stop_below`` times the first loss (no time limit: a busy
    machine makes the test slower, never wrong).
    """
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    history: List[float] = []
    for _ in range(steps):
        total = sum(model(images, targets).values())
        history.append(float(total.detach()))
        optimizer.zero_grad()
        total.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if history[-1] < stop_below * history[0]:
            break
    return history


def assert_finds_every_object(
    model: nn.Module, images: Tensor, boxes: Tensor, labels: Tensor, *, min_iou: float = 0.7
) -> None:
    """In eval mode, each of the G gts is matched (IoU > ``min_iou``, same label) by one of the G
    best detections, and the best detection is one of them."""
    model.eval()
    size = (int(images.shape[-2]), int(images.shape[-1]))
    det = model.predict(images, [size])[0]
    g = boxes.shape[0]
    assert det["boxes"].shape[0] >= g, det
    order = det["scores"].argsort(descending=True)[:g]
    iou = box_iou(det["boxes"][order], boxes)  # [g best detections, G gts]
    best_iou, best_gt = iou.max(dim=1)
    assert sorted(best_gt.tolist()) == list(range(g)), (iou, det["labels"][order])
    assert (best_iou > min_iou).all(), best_iou
    assert torch.equal(det["labels"][order], labels[best_gt]), (det["labels"][order], labels[best_gt])
