"""Full-size configs (ResNet backbones, random weights, CPU) export to TensorRT-clean graphs.

R-50 Faster R-CNN runs in the default suite (about 15 s: export, checks, one ONNX Runtime run
compared with ``model.predict``); the other full-size configs only export and check (slow).
"""
from __future__ import annotations

import pytest
import torch

from export.check_ops import check_model
from export.deploy_graph import DeployGraph
from training.config import load_config
from training.models import build_model

from .conftest import REPO, assert_same_detections, run_ort, smooth_images


def _model(config: str):
    cfg = load_config(REPO / "configs" / config, ["model.num_classes=80", "model.roi_head.score_thresh=0.8"])
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).eval()
    if hasattr(model, "roi_head"):  # spread the scores: a uniform softmax gives none above the threshold
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer, std in [(model.rpn.head.cls_logits, 0.01), (model.roi_head.box_predictor.cls_score, 0.005)]:
                layer.weight.normal_(0.0, std, generator=g)
                layer.bias.normal_(0.0, 0.1, generator=g)
    return model, cfg


def test_r50_faster_rcnn_exports_and_matches_predict(tmp_path, export_model_fn):
    model, cfg = _model("faster_rcnn_r50_fpn_1x.yaml")
    path = export_model_fn(model, tmp_path, config=cfg, size_hint=(256, 320))
    report = check_model(path)
    assert report.ok, report.format()
    assert report.details["NonMaxSuppression"] and all("boxes per image" in d for d in report.details["NonMaxSuppression"])
    sizes = [(320, 410)]
    images = smooth_images(1, 320, 416, sizes, seed=7)
    graph = DeployGraph(detector=model, mean=cfg.data.mean, std=cfg.data.std, to_rgb=cfg.data.to_rgb)
    with torch.no_grad():
        ref = model.predict(graph.normalise(images), sizes)[0]
    num, boxes, scores, labels = run_ort(path, images, sizes)
    n = int(num[0, 0])
    assert n == len(ref["boxes"]) > 0
    assert_same_detections(ref, boxes[0, :n], scores[0, :n], labels[0, :n], "R-50 Faster R-CNN")


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        "retinanet_r50_fpn_1x.yaml",
        "faster_rcnn_r101_fpn_1x.yaml",
        "retinanet_r101_fpn_1x.yaml",
        "libra_faster_rcnn_r50_fpn_1x.yaml",
        "libra_faster_rcnn_r101_fpn_1x.yaml",
        "libra_retinanet_r50_fpn_1x.yaml",
    ],
)
def test_full_size_configs_export(config, tmp_path, export_model_fn):
    path = export_model_fn(None, tmp_path, config=REPO / "configs" / config, overrides=["model.num_classes=80"])
    report = check_model(path)
    assert report.ok, report.format()
    assert "NonMaxSuppression" in report.op_counts and "MaxRoiPool" not in report.op_counts
