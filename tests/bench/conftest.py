"""Shared fixtures of the benchmark tests: a tiny Faster R-CNN checkpoint whose detections are not
empty (``tests/parity/tiny_models.py``), its ONNX export, and a 4-image synthetic COCO set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.onnx_export import export_model
from tests.parity.tiny_models import make_checkpoint_file
from training.data.synthetic import generate_dataset


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint_file("faster_rcnn", tmp_path_factory.mktemp("bench_ckpt") / "tiny_faster_rcnn.pth")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_model(tiny_checkpoint, tmp_path_factory.mktemp("bench_onnx"), size_hint=(128, 128))


@pytest.fixture(scope="session")
def four_images(tmp_path_factory) -> dict:
    """``{"ann": annotation file, "images": folder, "gt": its dict}`` of 4 synthetic val images."""
    info = generate_dataset(tmp_path_factory.mktemp("bench_data"), num_train=0, num_val=4, seed=3)
    ann = Path(info["val"]["annotations"])
    return {"ann": ann, "images": Path(info["val"]["images_dir"]), "gt": json.loads(ann.read_text())}
