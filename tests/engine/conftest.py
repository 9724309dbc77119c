"""Shared fixtures of the engine tests: a tiny synthetic COCO dataset and a stand-in detector."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
from torch import nn

from training.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny_faster_rcnn.yaml"


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """8 training and 4 validation images of 64x64 px (some 64x48 / 48x64)."""
    out = tmp_path_factory.mktemp("synthetic")
    generate_dataset(out, 8, 4, seed=0, image_size=(64, 64), max_objects=4)
    return out


def data_overrides(data_dir: Path) -> List[str]:
    """``--set`` items pointing a config at the synthetic dataset in ``data_dir``."""
    return [
        f"data.train.ann_file={data_dir / 'annotations' / 'instances_train.json'}",
        f"data.train.img_dir={data_dir / 'train'}",
        f"data.val.ann_file={data_dir / 'annotations' / 'instances_val.json'}",
        f"data.val.img_dir={data_dir / 'val'}",
    ]


class ToyDetector(nn.Module):
    """Stand-in with the detector interface: ``forward(images, targets)`` -> weighted losses.

    It draws from torch's and Python's RNGs in every forward (like a proposal sampler would), so
    a resumed run only matches when those RNG states are restored. ``nan_at``: the forward call
    (1-based) whose ``toy_box`` loss is NaN.
    """

    def __init__(self, *, num_classes: int, loss_weights: Optional[Dict[str, float]] = None,
                 nan_at: Optional[int] = None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.cls = nn.Linear(8, num_classes)
        self.box = nn.Linear(8, 4)
        self.loss_weights = dict(loss_weights or {"toy_cls": 1.0, "toy_box": 0.5})
        self.nan_at = nan_at
        self.calls = 0

    def compute_losses(self, images: torch.Tensor, targets: List[dict]) -> Dict[str, torch.Tensor]:
        self.calls += 1
        feats = self.body(images)  # [B, 8]
        logits, deltas = self.cls(feats), self.box(feats)  # [B, C], [B, 4]
        cls_terms, box_terms = [], []
        for i, t in enumerate(targets):
            if len(t["labels"]) == 0:
                cls_terms.append(logits[i].sum() * 0)
                box_terms.append(deltas[i].sum() * 0)
                continue
            j = int(torch.randint(len(t["labels"]), ()))  # a random ground truth
            cls_terms.append(nn.functional.cross_entropy(logits[i : i + 1], t["labels"][j : j + 1]))
            box_terms.append((deltas[i] - t["boxes"][j] / 64.0).abs().mean())
        jitter = 1.0 + 0.01 * random.random()
        box = torch.stack(box_terms).mean() * jitter
        if self.nan_at == self.calls:
            box = box * float("nan")
        return {"toy_cls": torch.stack(cls_terms).mean(), "toy_box": box}

    def forward(self, images: torch.Tensor, targets: List[dict]) -> Dict[str, torch.Tensor]:
        losses = self.compute_losses(images, targets)
        return {k: v * self.loss_weights.get(k, 1.0) for k, v in losses.items()}

    def predict(self, images: torch.Tensor, image_sizes) -> List[dict]:
        return [
            {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
            for _ in image_sizes
        ]
