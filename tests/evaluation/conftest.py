"""Tiny COCO ground truth and detection sets for the evaluation tests, served as fixtures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD

CAT_IDS = [2, 5, 9]  # non-contiguous on purpose: labels 0, 1, 2 map to these


def make_ground_truth(num_images: int = 6, seed: int = 0) -> dict:
    """Images of 160x120 / 120x160 with 3-6 objects each, small, medium and large boxes, one
    crowd region and one image without objects."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        w, h = (160, 120) if i % 2 == 0 else (120, 160)
        images.append({"id": 100 + i, "file_name": f"img{i}.png", "width": w, "height": h})
        if i == num_images - 1:
            continue  # one image without any object
        for j in range(int(rng.integers(3, 7))):
            side = float([6.0, 20.0, 40.0, 110.0][j % 4])  # areas: 36 / 400 small, 1600 medium, 12100 large
            bw, bh = side * rng.uniform(0.8, 1.0), side * rng.uniform(0.8, 1.0)
            bw, bh = min(bw, w - 1.0), min(bh, h - 1.0)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({
                "id": len(anns) + 1, "image_id": 100 + i, "category_id": int(rng.choice(CAT_IDS)),
                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
            })
    anns.append({  # a crowd region in image 0
        "id": len(anns) + 1, "image_id": 100, "category_id": CAT_IDS[0],
        "bbox": [100.0, 80.0, 50.0, 30.0], "area": 1500.0, "iscrowd": 1,
    })
    categories = [{"id": c, "name": n} for c, n in zip(CAT_IDS, ["cat", "dog", "bird"])]
    return {"images": images, "annotations": anns, "categories": categories}


def write_ground_truth(path, gt: dict):
    path.write_text(json.dumps(gt))
    return path


def xywh_to_xyxy(b):
    x, y, w, h = b
    return [x, y, x + w, y + h]


def perfect_predictions(gt: dict) -> dict:
    """image id -> {boxes, scores, labels}: every non-crowd ground truth with score 1.0."""
    label = {c: k for k, c in enumerate(CAT_IDS)}
    out = {img["id"]: {"boxes": [], "scores": [], "labels": []} for img in gt["images"]}
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        p = out[a["image_id"]]
        p["boxes"].append(xywh_to_xyxy(a["bbox"]))
        p["scores"].append(1.0)
        p["labels"].append(label[a["category_id"]])
    return {
        k: {"boxes": np.asarray(v["boxes"], np.float32).reshape(-1, 4), "scores": np.asarray(v["scores"], np.float32),
            "labels": np.asarray(v["labels"], np.int64)}
        for k, v in out.items()
    }


def noisy_predictions(gt: dict, seed: int = 1) -> dict:
    """Shifted/jittered ground truths, some with the wrong class, plus false positives."""
    rng = np.random.default_rng(seed)
    preds = perfect_predictions(gt)
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    out = {}
    for image_id, p in preds.items():
        w, h = sizes[image_id]
        boxes = p["boxes"].astype(np.float64)
        sides = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        boxes = boxes + rng.normal(0, 0.12, boxes.shape) * sides
        labels = p["labels"].copy()
        flip = rng.random(len(labels)) < 0.2
        labels[flip] = (labels[flip] + 1) % len(CAT_IDS)
        n_fp = int(rng.integers(0, 4))
        xy = rng.uniform(0, [w - 30, h - 30], (n_fp, 2))
        fp = np.concatenate([xy, xy + rng.uniform(5, 30, (n_fp, 2))], axis=1)
        boxes = np.concatenate([boxes, fp])
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        out[image_id] = {
            "boxes": boxes.astype(np.float32),
            "scores": rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32),
            "labels": np.concatenate([labels, rng.integers(0, len(CAT_IDS), n_fp)]).astype(np.int64),
        }
    return out


IMAGE_SIZES = [(40, 30), (30, 40), (40, 30), (50, 50)]  # (w, h) of each image of make_image_dataset
IMAGE_CATS = [{"id": 3, "name": "a"}, {"id": 11, "name": "b"}]


def make_image_dataset(root):
    """PNG images whose red value encodes their index, and ``val.json`` with boxes in them.

    Returns (annotation file, image folder, ground-truth dict)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    images, anns = [], []
    for i, (w, h) in enumerate(IMAGE_SIZES):
        Image.new("RGB", (w, h), (20 + 40 * i, 100, 100)).save(root / "img" / f"{i}.png")
        images.append({"id": 7 + i, "file_name": f"{i}.png", "width": w, "height": h})
        for _ in range(2):
            bw, bh = rng.uniform(8, 20, 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({"id": len(anns) + 1, "image_id": 7 + i, "category_id": int(rng.choice([3, 11])),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    gt = {"images": images, "annotations": anns, "categories": IMAGE_CATS}
    (root / "val.json").write_text(json.dumps(gt))
    return root / "val.json", root / "img", gt


class OracleDetector(torch.nn.Module):
    """Predicts the ground truth of make_image_dataset: reads the image index from the red value
    (ImageNet normalisation, RGB) and scales its boxes to the resized input. Records the mode and
    grad state of every predict call."""

    def __init__(self, gt):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        label = {c["id"]: k for k, c in enumerate(IMAGE_CATS)}
        self.objects = {}
        for i, img in enumerate(gt["images"]):
            anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
            boxes = torch.tensor([xywh_to_xyxy(a["bbox"]) for a in anns], dtype=torch.float32)
            self.objects[i] = (img["width"], img["height"], boxes, torch.tensor([label[a["category_id"]] for a in anns]))
        self.calls = []

    def predict(self, images, image_sizes):
        self.calls.append((self.training, torch.is_grad_enabled(), len(images)))
        out = []
        for image, (h, w) in zip(images, image_sizes):
            red = float(image[0, 0, 0]) * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            orig_w, orig_h, boxes, labels = self.objects[round((red - 20) / 40)]
            scale = torch.tensor([w / orig_w, h / orig_h] * 2)
            out.append({"boxes": boxes * scale, "scores": torch.ones(len(boxes)), "labels": labels})
        return out


# Fixtures (the test directories are not packages, so tests reach these helpers through fixtures)
@pytest.fixture
def gt():
    return make_ground_truth()


@pytest.fixture
def gt_file(tmp_path, gt):
    return write_ground_truth(tmp_path / "instances_val.json", gt)


@pytest.fixture(name="perfect_predictions")
def _perfect_predictions_fixture():
    return perfect_predictions


@pytest.fixture(name="noisy_predictions")
def _noisy_predictions_fixture():
    return noisy_predictions


@pytest.fixture(name="make_ground_truth")
def _make_ground_truth_fixture():
    return make_ground_truth


@pytest.fixture
def image_dataset(tmp_path):
    return make_image_dataset(tmp_path)


@pytest.fixture
def oracle_detector():
    return OracleDetector
