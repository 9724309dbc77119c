"""Export of the four tiny detectors: valid, TensorRT-checked graphs whose ONNX Runtime detections
equal ``model.predict`` at other sizes and batch sizes than the export's, also with no detections."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export.check_ops import check_model
from export.deploy_graph import DeployGraph

from .conftest import EXPORT_SIZE, MODELS, assert_same_detections, make_model, run_ort, smooth_images


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory, export_model_fn):
    """(name, model, config, path of model.onnx) for each tiny model, exported at EXPORT_SIZE."""
    model, cfg = make_model(request.param)
    out = tmp_path_factory.mktemp(request.param)
    path = export_model_fn(model, out, config=cfg, size_hint=EXPORT_SIZE)
    return request.param, model, cfg, path


def _data_dependent_consumers(graph: onnx.GraphProto) -> set:
    """Op types reached from NonZero / NonMaxSuppression outputs (tensors whose size depends on the
    data) through ops whose output size follows their input's. Scatter updates, Shape and Concat
    (the per-level RoI subsets concatenate back to the fixed RoI count) end a path."""
    consumers = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    frontier = [o for n in graph.node if n.op_type in ("NonZero", "NonMaxSuppression") for o in n.output]
    seen, reached = set(), set()
    while frontier:
        for node, i in consumers.get(frontier.pop(), []):
            if node.op_type in ("Shape", "Concat") or (node.op_type.startswith("Scatter") and i > 0) or id(node) in seen:
                continue
            seen.add(id(node))
            reached.add(node.op_type)
            frontier.extend(node.output)
    return reached


def _expected_nms_candidates(model) -> list:
    """Candidates per image entering each NMS, by construction of the eval path."""
    if hasattr(model, "roi_head"):
        rpn = model.rpn
        return [len(rpn.anchor_generator.strides) * rpn.pre_nms_top_n[False], model.roi_head.nms_pre]
    return [model.anchor_generator.num_levels * model.head.pre_nms_top_n]


def _eager(model, cfg, images, sizes):
    graph = DeployGraph(detector=model, mean=cfg.data.mean, std=cfg.data.std, to_rgb=cfg.data.to_rgb)
    with torch.no_grad():
        return model.predict(graph.normalise(images), sizes)


def test_graph_is_valid_and_tensorrt_clean(exported):
    name, model, _, path = exported
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    report = check_model(proto)
    assert report.ok, report.format()
    ops = report.op_counts
    assert ops.get("NonMaxSuppression", 0) >= 1 and "MaxRoiPool" not in ops and "If" not in ops and "Loop" not in ops
    if "faster_rcnn" in name:
        assert ops["NonMaxSuppression"] == 2 and ops["RoiAlign"] == 4  # RPN + box head; one per pooled level
        mode = "half_pixel" if model.roi_head.roi_extractor.aligned else "output_half_pixel"
        assert any(f"coordinate_transformation_mode={mode}" in d for d in report.details["RoiAlign"])
    # every TopK has a constant K below TensorRT's 3840
    assert report.details["TopK"] and all(not d.endswith("?") for d in report.details["TopK"])
    # no reshape of a tensor whose size depends on the data (TensorRT cannot infer -1 of a 0-size tensor)
    assert not {"Reshape", "Flatten", "Expand", "Tile"} & _data_dependent_consumers(proto.graph)


def test_graph_io_names_dtypes_shapes(exported):
    _, model, _, path = exported
    graph = onnx.load(str(path)).graph
    elem = onnx.TensorProto

    def spec(v):
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        return v.name, v.type.tensor_type.elem_type, dims

    k = model.roi_head.max_per_img if hasattr(model, "roi_head") else model.head.max_per_img
    assert [spec(v) for v in graph.input] == [
        ("images", elem.FLOAT, ["batch", 3, "height", "width"]),
        ("image_sizes", elem.INT32, ["batch", 2]),
    ]
    assert [spec(v) for v in graph.output] == [
        ("num_dets", elem.INT32, ["batch", 1]),
        ("boxes", elem.FLOAT, ["batch", k, 4]),
        ("scores", elem.FLOAT, ["batch", k]),
        ("labels", elem.INT32, ["batch", k]),
    ]
    meta = json.loads((path.parent / "model.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["images", "image_sizes"]
    assert meta["outputs"][1] == {"name": "boxes", "dtype": "float32", "shape": ["batch", k, 4]}


def test_ort_equals_predict_at_another_size(exported):
    name, model, cfg, path = exported
    sizes = [(300, 397)]
    images = smooth_images(1, 320, 416, sizes, seed=1)  # not the export size (224 x 288)
    ref = _eager(model, cfg, images, sizes)
    num, boxes, scores, labels = run_ort(path, images, sizes)
    n = int(num[0, 0])
    assert n == len(ref[0]["boxes"]) > 0
    assert_same_detections(ref[0], boxes[0, :n], scores[0, :n], labels[0, :n], f"{name} 320x416")
    assert (boxes[0, :n, 2] <= 397 + 1e-3).all() and (boxes[0, :n, 3] <= 300 + 1e-3).all()  # clipped to the valid size
    assert (scores[0, :n][:-1] >= scores[0, :n][1:]).all()


def test_ort_equals_predict_on_batch_of_two_sizes(exported):
    name, model, cfg, path = exported
    sizes = [(256, 352), (192, 230)]
    images = smooth_images(2, 256, 352, sizes, seed=2)
    ref = _eager(model, cfg, images, sizes)
    num, boxes, scores, labels = run_ort(path, images, sizes)
    assert num.shape == (2, 1) and num.dtype == np.int32 and labels.dtype == np.int32
    for i, (h, w) in enumerate(sizes):
        n = int(num[i, 0])
        assert n == len(ref[i]["boxes"]) > 0
        assert_same_detections(ref[i], boxes[i, :n], scores[i, :n], labels[i, :n], f"{name} batch image {i}")
        assert (boxes[i, :n, 2] <= w + 1e-3).all() and (boxes[i, :n, 3] <= h + 1e-3).all()
        # padding rows are zeros
        assert not boxes[i, n:].any() and not scores[i, n:].any() and not labels[i, n:].any()


@pytest.mark.parametrize("name", ["faster_rcnn", "retinanet"])
def test_no_detections_gives_zero_rows(name, tmp_path, export_model_fn):
    """Thresholds no score can pass: every selection is empty (no proposals at all for Faster R-CNN),
    yet the graph runs, on an all-black image too, and returns num_dets 0 and zero rows."""
    over = ["model.rpn.score_thresh=2.0"] if name == "faster_rcnn" else ["model.retina_head.score_thresh=1.0"]
    model, cfg = make_model(name, overrides=over)
    path = export_model_fn(model, tmp_path, config=cfg, size_hint=EXPORT_SIZE)
    sizes = [(192, 256), (128, 96)]
    images = smooth_images(2, 192, 256, sizes, seed=3)
    images[1] = 0  # all black
    num, boxes, scores, labels = run_ort(path, images, sizes)
    assert num.tolist() == [[0], [0]]
    assert boxes.shape == (2, 100, 4) and not boxes.any() and not scores.any() and not labels.any()
    assert all(len(d["boxes"]) == 0 for d in _eager(model, cfg, images, sizes))


def test_nms_candidates_are_fixed_and_bounded(exported):
    """The boxes entering every NonMaxSuppression have the same, bounded count at any input size."""
    import onnxruntime as ort

    _, model, _, path = exported
    proto = onnx.load(str(path))
    nms_boxes = [n.input[0] for n in proto.graph.node if n.op_type == "NonMaxSuppression"]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in nms_boxes)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = _expected_nms_candidates(model)
    assert max(expected) <= 5000
    for b, h, w in [(1, 96, 128), (2, 416, 480)]:
        feeds = {"images": np.zeros((b, 3, h, w), np.float32), "image_sizes": np.array([[h, w]] * b, np.int32)}
        shapes = [o.shape for o in session.run(nms_boxes, feeds)]
        assert shapes == [(b, n, 4) for n in expected], f"{h}x{w}: {shapes}"
