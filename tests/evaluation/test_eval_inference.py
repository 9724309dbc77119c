"""evaluate_model end to end with a stand-in detector, and the mapping back to original pixels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.config import EvalConfig
from training.data.coco import CocoDetection
from training.data.transforms import build_transforms

IMAGE_SIZES = [(40, 30), (30, 40), (40, 30), (50, 50)]  # as in conftest.make_image_dataset
from training.evaluation.inference import build_eval_loader, evaluate_model, predictions_to_original


def _make_dataset(tmp_path, image_dataset):
    ann_file, img_dir, gt = image_dataset
    transforms = build_transforms(scale=(64, 100), train=False)  # 40x30 -> 85x64: sx != sy
    return CocoDetection(ann_file, img_dir, transforms=transforms), gt



def test_predictions_to_original_scales_clips_and_unflips():
    pred = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}
    out = predictions_to_original(pred, {"scale_factor": (2.0, 0.5), "orig_size": (100, 12)})
    np.testing.assert_allclose(out["boxes"], [[5.0, 40.0, 12.0, 80.0]])  # x2 15 clipped to width 12
    assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int64
    flipped = {"scale_factor": (2.0, 0.5), "orig_size": (100, 12), "flipped": True, "img_size": (50, 24)}
    pred["boxes"] = torch.tensor([[2.0, 20.0, 10.0, 40.0]])
    np.testing.assert_allclose(predictions_to_original(pred, flipped)["boxes"], [[7.0, 40.0, 11.0, 80.0]])


def test_evaluate_model_maps_boxes_back_and_writes_reports(tmp_path, image_dataset, oracle_detector):
    dataset, gt = _make_dataset(tmp_path, image_dataset)
    model = oracle_detector(gt)
    model.train()
    metrics = evaluate_model(
        model, dataset, work_dir=tmp_path / "work", eval_cfg=EvalConfig(use_faster_coco_eval=False),
        batch_size=3, progress=False,
    )
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert metrics["num_images"] == len(IMAGE_SIZES) and metrics["concept_recall"] == 1.0
    assert model.training  # mode restored
    assert all(not training and not grad for training, grad, _ in model.calls)

    out = tmp_path / "work" / "eval"
    assert json.loads((out / "metrics.json").read_text())["AP"] == pytest.approx(1.0)
    assert "| AP | AP50 |" in (out / "metrics.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert len(results) == len(gt["annotations"])
    by_key = {(r["image_id"], tuple(np.round(r["bbox"], 2))): r for r in results}
    for a in gt["annotations"]:  # original-pixel xywh boxes and dataset category ids come back
        r = by_key[(a["image_id"], tuple(np.round(a["bbox"], 2)))]
        np.testing.assert_allclose(r["bbox"], a["bbox"], atol=1e-3)
        assert r["category_id"] == a["category_id"]


def test_evaluate_model_on_a_loader_with_max_images(tmp_path, image_dataset, oracle_detector):
    dataset, gt = _make_dataset(tmp_path, image_dataset)
    loader = build_eval_loader(dataset, batch_size=3)
    metrics = evaluate_model(oracle_detector(gt), loader, progress=False, max_images=2,
                             eval_cfg=EvalConfig(use_faster_coco_eval=False))
    assert metrics["num_images"] == 2 and metrics["AP"] == pytest.approx(1.0)
    assert not (tmp_path / "eval").exists()  # no work_dir: nothing written


def test_evaluate_model_needs_predict(tmp_path, image_dataset):
    dataset, _ = _make_dataset(tmp_path, image_dataset)
    with pytest.raises(TypeError, match="Linear has no predict"):
        evaluate_model(torch.nn.Linear(1, 1), dataset, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_model_on_cuda(tmp_path, image_dataset, oracle_detector):
    dataset, gt = _make_dataset(tmp_path, image_dataset)
    model = oracle_detector(gt).cuda()
    metrics = evaluate_model(model, dataset, device="cuda", progress=False,
                             eval_cfg=EvalConfig(use_faster_coco_eval=False))
    assert metrics["AP"] == pytest.approx(1.0)
