"""Diagnostics: ``training.tools.sampling_stats`` (the paper's Figure 3 analogue) end to end, and the
per-loss gradient norms into the shared features (``training.tools.grad_balance``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers.overfit import rectangles_image
from training.config import load_config
from training.data.synthetic import generate_dataset
from training.models import build_model
from training.tools import sampling_stats
from training.tools.grad_balance import FeatureTap, grad_norm_records, loss_grad_norms, shared_features_module

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# ----------------------------------------------------------------------------------------------
# sampling_stats
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """6 training images of 256x256 px with 1-3 objects: most negatives have IoU ~0, as on COCO."""
    out = tmp_path_factory.mktemp("synthetic")
    generate_dataset(out, 6, 0, seed=1, image_size=(256, 256), max_objects=3)
    return out


def _data_args(root: Path):
    return [
        f"data.train.ann_file={root / 'annotations' / 'instances_train.json'}",
        f"data.train.img_dir={root / 'train'}",
        "data.scale=[256,256]",
    ]


def test_sampling_stats_end_to_end(synthetic, tmp_path):
    """The untrained tiny Libra model's 1000 training proposals per image: IoU-balanced sampling puts
    more of its negatives above IoU 0.05 (and far more above 1/3) than random sampling does."""
    out = tmp_path / "stats"
    argv = [
        "--config", str(CONFIGS / "tiny_libra_faster_rcnn.yaml"),
        "--set", *_data_args(synthetic), "model.rpn.post_nms_top_n_train=1000", "model.roi_head.sampler.num=64",
        "--out", str(out), "--images", "6", "--device", "cpu",
    ]
    assert sampling_stats.main(argv) == 0
    report = json.loads((out / "sampling_stats.json").read_text())
    with Image.open(out / "sampling_stats.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    assert report["num_images"] == 6 and report["neg_iou_thr"] == 0.5
    assert report["bin_edges"][0] == 0.0 and report["bin_edges"][-1] == 0.5 and len(report["bin_edges"]) == 11
    sets = report["sets"]
    assert set(sets) == {"all", "random", "iou_balanced", "hard"}
    # every image draws the same budget for every sampled set, fewer than all negatives
    assert sets["random"]["count"] == sets["iou_balanced"]["count"] == sets["hard"]["count"] < sets["all"]["count"]
    for s in sets.values():
        assert sum(s["histogram"]) == s["count"]  # every negative has IoU in [0, 0.5)
    above = {name: s["fraction_above"]["0.05"] for name, s in sets.items()}
    assert above["iou_balanced"] > above["random"] + 0.02, above
    top = {name: sum(s["histogram"][7:]) / s["count"] for name, s in sets.items()}  # IoU >= 0.35
    assert top["iou_balanced"] > 2 * top["random"], top


def test_sampling_stats_needs_a_two_stage_model(synthetic, tmp_path, capsys):
    argv = ["--config", str(CONFIGS / "tiny_libra_retinanet.yaml"), "--set", *_data_args(synthetic),
            "--out", str(tmp_path), "--images", "1"]
    assert sampling_stats.main(argv) == 2
    err = capsys.readouterr().err
    assert "tiny_libra_retinanet.yaml: model.arch is 'retinanet'" in err and "faster_rcnn" in err


# ----------------------------------------------------------------------------------------------
# grad_balance
# ----------------------------------------------------------------------------------------------
def _model(name: str, **weights: float):
    cfg = load_config(CONFIGS / name)
    cfg.model.num_classes = 3
    cfg.model.loss_weights = {**cfg.model.loss_weights, **weights}
    torch.manual_seed(0)
    return build_model(cfg).train()


def _norms(model, *, weighted: bool):
    images, boxes, labels = rectangles_image()
    tap = FeatureTap(shared_features_module(model))
    tap.arm()
    torch.manual_seed(1)  # the same sampled RoIs / anchors on every call
    targets = [{"boxes": boxes, "labels": labels}]
    losses = model(images, targets) if weighted else model.compute_losses(images, targets)
    feats = tap.take()
    norms = loss_grad_norms(model, losses, feats, losses_are_weighted=weighted)
    tap.remove()
    # the training step's backward still works afterwards (the graph was retained)
    sum(losses.values()).backward()
    return norms


@pytest.mark.parametrize(
    "name,box,cls", [("tiny_libra_faster_rcnn.yaml", "rcnn_bbox", "rcnn_cls"), ("tiny_libra_retinanet.yaml", "retina_bbox", "retina_cls")]
)
def test_grad_norms_per_component_and_linear_in_the_loss_weight(name, box, cls):
    model = _model(name)
    norms = _norms(model, weighted=True)
    assert set(norms) == set(model.LOSS_NAMES)
    assert all(math.isfinite(v) and v > 0 for v in norms.values()), norms
    assert all(p.grad is not None for p in model.necks[-1].parameters())  # backward after the norms
    half = _norms(_model(name, **{box: 0.5}), weighted=True)
    assert half[box] == pytest.approx(0.5 * norms[box], rel=1e-5)
    assert half[cls] == pytest.approx(norms[cls], rel=1e-5)
    # unweighted losses + the model's weights give the same numbers
    assert _norms(_model(name, **{box: 0.5}), weighted=False)[box] == pytest.approx(half[box], rel=1e-5)
    assert grad_norm_records(half)[f"grad_norm/{box}"] == half[box]


def test_grad_norms_are_the_feature_gradients():
    """The norm equals ||d loss / d features|| computed directly over every level."""
    model = _model("tiny_libra_retinanet.yaml")
    images, boxes, labels = rectangles_image()
    feats = model.extract_feats(images)
    anchors = model.anchor_generator(feats, (int(images.shape[-2]), int(images.shape[-1])))
    cls_logits, deltas = model.head(feats)
    losses = model.head.loss(cls_logits, deltas, anchors, [{"boxes": boxes, "labels": labels}],
                             assigner=model.assigner, box_coder=model.box_coder)
    norms = loss_grad_norms(model, losses, feats, losses_are_weighted=True)
    grads = torch.autograd.grad(losses["retina_bbox"], feats, retain_graph=True)
    assert norms["retina_bbox"] == pytest.approx(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)), rel=1e-6)
    # a loss that does not reach the features, and no features: zero
    assert loss_grad_norms(model, {"x": torch.tensor(1.0)}, feats) == {"x": 0.0}


def test_feature_tap_only_holds_armed_forwards():
    model = _model("tiny_libra_retinanet.yaml")
    tap = FeatureTap(shared_features_module(model))
    images, _, _ = rectangles_image()
    model.extract_feats(images)
    with pytest.raises(RuntimeError, match="nothing captured; call arm"):
        tap.take()
    tap.arm()
    feats = model.extract_feats(images)
    taken = tap.take()
    assert len(taken) == len(feats) and all(a is b for a, b in zip(taken, feats))
    with pytest.raises(ValueError, match="has no 'necks' ModuleList"):
        shared_features_module(torch.nn.Linear(2, 2))
