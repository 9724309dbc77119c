"""``libra-bench accuracy``: COCO AP in points per backend and the delta to the PyTorch reference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.base import Detections
from runtime.bench import cli
from runtime.bench.accuracy import AP_KEYS, ap_delta, evaluate_backend, read_image_list


def test_accuracy_onnxruntime_with_torch_reference(tiny_checkpoint, tiny_onnx, four_images, tmp_path):
    out = tmp_path / "acc.json"
    rc = cli.main(["accuracy", str(tiny_onnx), "--data", str(four_images["ann"]), "--images", str(four_images["images"]),
                   "--reference", str(tiny_checkpoint), "--threads", "1", "--json", str(out), "--md", str(tmp_path / "a.md"),
                   "--quiet"])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["backend"] == "onnxruntime" and record["num_images"] == 4 and record["num_detections"] > 0
    assert record["ap_unit"].startswith("AP points")
    assert set(AP_KEYS) <= set(record["metrics"]) and record["reference"]["backend"] == "torch"
    ref = record["reference"]["metrics"]
    for key in AP_KEYS:
        a, b = record["metrics"][key], ref[key]
        if a is None or b is None:
            assert a is None and b is None and record["delta"][key] is None
        else:
            assert 0.0 <= a <= 100.0
            assert record["delta"][key] == pytest.approx(a - b, abs=1e-3)
            assert abs(record["delta"][key]) <= 0.1  # the export is exact to 1e-4 in score
    md = (tmp_path / "a.md").read_text()
    assert "| backend | AP | AP50 | AP75 | APs | APm | APl |" in md and "delta (this - reference)" in md


def test_accuracy_torch_backend_equals_its_reference_entry(tiny_checkpoint, four_images, tmp_path):
    out = tmp_path / "acc.json"
    assert cli.main(["accuracy", str(tiny_checkpoint), "--data", str(four_images["ann"]), "--images",
                     str(four_images["images"]), "--backend", "torch", "--max-images", "2", "--json", str(out),
                     "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert record["backend"] == "torch" and record["num_images"] == 2
    assert record["reference"] is None and record["delta"] is None


class _GroundTruthBackend:
    """Predicts the ground-truth boxes of each file (optionally shifted) with score 0.9."""

    def __init__(self, gt: dict, images: Path, shift: float = 0.0):
        cats = sorted(c["id"] for c in gt["categories"])
        self.category_ids = tuple(cats)
        by_file = {im["file_name"]: im["id"] for im in gt["images"]}
        self._boxes = {}
        for name, image_id in by_file.items():
            anns = [a for a in gt["annotations"] if a["image_id"] == image_id and not a.get("iscrowd")]
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) + shift
            labels = np.array([cats.index(a["category_id"]) for a in anns], dtype=np.int64)
            self._boxes[str(images / name)] = (boxes, labels)
        self.calls = []

    def predict(self, paths):
        self.calls.append(len(paths))
        out = []
        for p in paths:
            boxes, labels = self._boxes[str(p)]
            out.append(Detections(boxes, np.full(len(boxes), 0.9, np.float32), labels))
        return out


def test_evaluate_backend_scores_perfect_and_shifted_predictions(four_images):
    gt, images = four_images["gt"], four_images["images"]
    perfect = evaluate_backend(_GroundTruthBackend(gt, images), four_images["ann"], images, batch_size=3)
    assert perfect["metrics"]["AP"] == pytest.approx(100.0) and perfect["metrics"]["AP50"] == pytest.approx(100.0)
    assert perfect["num_images"] == 4
    shifted_backend = _GroundTruthBackend(gt, images, shift=6.0)
    shifted = evaluate_backend(shifted_backend, four_images["ann"], images, batch_size=3)
    assert shifted_backend.calls == [3, 1]
    assert shifted["metrics"]["AP"] < 90.0
    delta = ap_delta(shifted["metrics"], perfect["metrics"])
    assert delta["AP"] == pytest.approx(shifted["metrics"]["AP"] - 100.0, abs=1e-3) and delta["AP"] < 0


def test_ap_delta_keeps_undefined_values_undefined():
    assert ap_delta({"AP": 40.0, "APs": None}, {"AP": 40.25, "APs": 3.0}) == {
        "AP": -0.25, "AP50": None, "AP75": None, "APs": None, "APm": None, "APl": None}


def test_missing_image_is_named(four_images, tmp_path):
    gt = dict(four_images["gt"])
    gt["images"] = gt["images"] + [{"id": 999, "file_name": "ghost.jpg", "width": 10, "height": 10}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(gt))
    with pytest.raises(ValueError, match="ghost.jpg"):
        read_image_list(ann, four_images["images"])
    with pytest.raises(ValueError, match="annotation file not found"):
        read_image_list(tmp_path / "none.json", four_images["images"])
