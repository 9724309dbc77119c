"""PyTorch eager vs ONNX Runtime, through the runtime backends, for the four tiny detectors.

Each model (random-but-fixed weights with many well-spread detections, see ``tiny_models``) is
exported once, at ``EXPORT_SIZE``, a batch shape that none of the checked batches has, so every
check also proves that the graph's dynamic batch and spatial axes work. Checks, per model:

* single images of different sizes and aspect ratios (synthetic val images, plus a small image
  that is upscaled and a wide one) and batches of 2 images of different sizes: the same number
  of detections, each matched (same label) with IoU >= 0.99 and |score diff| <= 1e-4;
* COCO AP of both backends on the synthetic val subset, against its annotations and against
  pseudo ground truth made of the confident PyTorch detections, jittered (random weights score
  ~0 AP on the real annotations; the pseudo set gives a mid-range AP that a drift of the ONNX
  boxes would move): equal within 0.001.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.backends import Backend, Detections
from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from runtime.backends.torch_backend import TorchBackend
from runtime.preprocess import load_image
from tests.parity.tiny_models import CAT_IDS, MODELS, make_checkpoint_file, match_detections
from training.data.synthetic import generate_dataset
from training.evaluation.coco import COCOEvaluator

from export import onnx_export as export_onnx

EXPORT_SIZE = (224, 288)  # (H, W) of the dummy batch at export; no checked batch has this shape
MIN_IOU, MAX_SCORE_DIFF, MAX_AP_DIFF = 0.99, 1e-4, 1e-3
REPORT: dict = {}  # model -> measured parity, printed at the end of the module (-s shows it)


@pytest.fixture(scope="session")
def val_subset(tmp_path_factory):
    """8 synthetic val images (landscape, portrait and square; one without objects)."""
    out = tmp_path_factory.mktemp("synthetic")
    info = generate_dataset(out, num_train=0, num_val=8, seed=5)
    ann = Path(info["val"]["annotations"])
    gt = json.loads(ann.read_text())
    files = [Path(info["val"]["images_dir"]) / img["file_name"] for img in gt["images"]]
    return {"ann": ann, "gt": gt, "files": files, "ids": [img["id"] for img in gt["images"]]}


@pytest.fixture(scope="module")
def odd_images():
    """A small image (upscaled by the resize) and a wide one (long side binds), smooth content."""
    rng = np.random.default_rng(11)
    out = []
    for w, h in [(75, 60), (400, 130)]:
        coarse = rng.integers(0, 255, size=(h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR)))
    return out


@pytest.fixture(scope="module", params=list(MODELS))
def backends(request, tmp_path_factory):
    name = request.param
    tmp = tmp_path_factory.mktemp(f"parity_{name}")
    ckpt = make_checkpoint_file(name, tmp / f"{name}.pth")
    start = time.perf_counter()
    onnx_path = export_onnx.export_model(ckpt, tmp / "export", size_hint=EXPORT_SIZE)
    export_s = time.perf_counter() - start
    torch_backend = Backend.from_path(ckpt)
    ort_backend = Backend.from_path(onnx_path, intra_op_threads=2)
    assert isinstance(torch_backend, TorchBackend) and isinstance(ort_backend, OnnxRuntimeBackend)
    REPORT[name] = {"export_s": round(export_s, 2), "min_iou": 1.0, "max_score_diff": 0.0, "detections": 0}
    yield name, torch_backend, ort_backend
    torch_backend.close()
    ort_backend.close()


def _record(name: str, pairs) -> None:
    for ref, other in pairs:
        iou, diff = match_detections(ref, other, min_iou=MIN_IOU, max_score_diff=MAX_SCORE_DIFF)
        r = REPORT[name]
        r["min_iou"] = min(r["min_iou"], iou)
        r["max_score_diff"] = max(r["max_score_diff"], diff)
        r["detections"] += len(ref)


def test_metadata_agrees(backends):
    _, torch_backend, ort_backend = backends
    for key in ("class_names", "category_ids", "scale", "pad_divisor", "mean", "std", "to_rgb", "score_thr"):
        assert getattr(ort_backend.info, key) == getattr(torch_backend.info, key), key
    assert ort_backend.category_ids == tuple(CAT_IDS)


@pytest.fixture(scope="module")
def single_image_runs(backends, val_subset, odd_images):
    """Both backends on each image alone (the same pre-processed batch): val images then odd ones.
    Returns ([(torch Detections, ONNX Runtime Detections)], set of batch shapes)."""
    _, torch_backend, ort_backend = backends
    images = [load_image(f) for f in val_subset["files"]] + odd_images
    shapes, pairs = set(), []
    for image in images:
        batch, metas = torch_backend.preprocess([image])
        shapes.add(batch.shape)
        ref = torch_backend.postprocess(torch_backend.infer(batch, metas), metas)[0]
        other = ort_backend.postprocess(ort_backend.infer(batch, metas), metas)[0]
        pairs.append((ref, other))
    return pairs, shapes


def test_single_images_match(backends, single_image_runs):
    pairs, shapes = single_image_runs
    assert len(shapes) >= 3 and (1, 3, *EXPORT_SIZE) not in shapes  # dynamic H, W really used
    assert sum(len(r) > 0 for r, _ in pairs) >= len(pairs) - 2, "the weights should detect things"
    _record(backends[0], pairs)


def test_batches_of_two_match(backends, val_subset, odd_images):
    name, torch_backend, ort_backend = backends
    images = [load_image(f) for f in val_subset["files"][:4]] + odd_images
    pairs = []
    for a, b in [(0, 4), (1, 3), (2, 5)]:  # val 3 is portrait, 4 small, 5 wide
        batch, metas = torch_backend.preprocess([images[a], images[b]])
        assert batch.shape[0] == 2 and metas[0].img_size != metas[1].img_size
        ref = torch_backend.postprocess(torch_backend.infer(batch, metas), metas)
        other = ort_backend.postprocess(ort_backend.infer(batch, metas), metas)
        assert len(ref) == len(other) == 2
        pairs += list(zip(ref, other))
    _record(name, pairs)


def _coco_ap(gt, ids, dets) -> float:
    evaluator = COCOEvaluator(gt, label_to_cat_id=CAT_IDS)
    evaluator.process(ids, [d.as_dict() for d in dets])
    return evaluator.evaluate()["AP"]


def _pseudo_ground_truth(gt: dict, ids, dets, score_thr: float) -> dict:
    """The detections scoring >= ``score_thr`` as annotations, each side moved by up to 15% of the
    box size (fixed seed), so matches spread over the IoU thresholds 0.5..0.95 and AP is a
    mid-range number that moves when the boxes move."""
    rng = np.random.default_rng(0)
    anns = []
    for image_id, det in zip(ids, dets):
        keep = det.scores >= score_thr
        for box, cat in zip(det.boxes[keep], det.category_ids[keep]):
            size = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float64)
            x1, y1, x2, y2 = box + rng.uniform(-0.15, 0.15, 4) * size
            w, h = float(x2 - x1), float(y2 - y1)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cat),
                         "bbox": [float(x1), float(y1), w, h], "area": w * h, "iscrowd": 0})
    return {"images": gt["images"], "categories": gt["categories"], "annotations": anns}


def test_coco_ap_equal(backends, val_subset, single_image_runs):
    name = backends[0]
    n = len(val_subset["files"])
    ref = [r for r, _ in single_image_runs[0][:n]]
    other = [o for _, o in single_image_runs[0][:n]]
    gt, ids = val_subset["gt"], val_subset["ids"]
    ap_ref, ap_other = _coco_ap(gt, ids, ref), _coco_ap(gt, ids, other)
    assert abs(ap_ref - ap_other) <= MAX_AP_DIFF, (ap_ref, ap_other)
    # pseudo ground truth: the confident half of the PyTorch detections, jittered
    scores = np.concatenate([d.scores for d in ref])
    pseudo = _pseudo_ground_truth(gt, ids, ref, float(np.median(scores)))
    assert len(pseudo["annotations"]) >= 10
    pap_ref, pap_other = _coco_ap(pseudo, ids, ref), _coco_ap(pseudo, ids, other)
    assert 0.2 < pap_ref < 0.9, pap_ref  # a mid-range number, so a drift of the boxes would move it
    assert abs(pap_ref - pap_other) <= MAX_AP_DIFF, (pap_ref, pap_other)
    # ... and that a 2-pixel drift of the boxes would have failed the check
    drifted = [Detections(d.boxes + 2.0, d.scores, d.labels, d.category_ids) for d in other]
    assert abs(_coco_ap(pseudo, ids, drifted) - pap_ref) > 10 * MAX_AP_DIFF
    REPORT[name].update(ap=round(ap_ref, 4), ap_delta=abs(ap_ref - ap_other),
                        pseudo_ap=round(pap_ref, 4), pseudo_ap_delta=abs(pap_ref - pap_other))


def test_perturbed_output_is_caught():
    """The matcher does fail on a box moved by 2% or a score moved by 2e-4."""
    ref = Detections(np.array([[10, 10, 110, 60]], np.float32), np.array([0.8], np.float32), np.array([2]))
    moved = Detections(np.array([[12, 10, 112, 60]], np.float32), np.array([0.8], np.float32), np.array([2]))
    rescored = Detections(ref.boxes, np.array([0.8002], np.float32), ref.labels)
    relabelled = Detections(ref.boxes, ref.scores, np.array([1]))
    for bad in (moved, rescored, relabelled):
        with pytest.raises(AssertionError):
            match_detections(ref, bad, min_iou=MIN_IOU, max_score_diff=MAX_SCORE_DIFF)
    assert match_detections(ref, ref) == (1.0, 0.0)


def teardown_module(module):
    if REPORT:
        print("\nONNX Runtime vs PyTorch parity:", json.dumps(REPORT, indent=1))
