"""A hand-made ONNX detector graph with the export I/O (``export/onnx_export.py``) whose outputs
can be predicted by hand, for backend and CLI tests that need no exporter and no torch.

Per image b with valid region (h, w) from ``image_sizes`` (or the padded input size when the
graph has no such input) and mean pixel value m of ``images``:
  num_dets = 2; boxes = [[0, 0, w/2, h/2], [w/4, h/4, w + 10, h + 10], [1, 2, 3, 4]] (the third row
  is padding past num_dets, and the second box reaches past the image, to be clipped);
  scores = [m / 255, 0.5, 0.99]; labels = [1, 0, 1].
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["INPUT", "META", "toy_graph", "write_model"]

INPUT = {
    "scale": [64, 96], "pad_divisor": 32, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
    "to_rgb": True, "pixel_range": [0, 255], "channel_order": "RGB", "pad_value": "mean",
}
# the keys of export/onnx_export.py's model.json (format_version 1) that the runtime reads
META = {"format_version": 1, "class_names": ["circle", "square"], "category_ids": [3, 7], "input": INPUT,
        "score_thresh": 0.05, "max_dets": 3}


def _const(name, value, dtype=TensorProto.FLOAT):
    arr = np.asarray(value)
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, arr.shape, arr.flatten().tolist()))


def toy_graph(with_sizes: bool = True, sizes_type=TensorProto.INT64, fixed_batch=None) -> onnx.ModelProto:
    nodes = [
        _const("one", 1.0), _const("three", 3.0), _const("four", 4.0), _const("p99", 0.99),
        _const("zero", 0.0), _const("half", 0.5), _const("quarter", 0.25), _const("ten", 10.0),
        _const("two", 2.0), _const("k255", 255.0), _const("shape_bk4", [-1, 3, 4], TensorProto.INT64),
        _const("ax123", [1, 2, 3], TensorProto.INT64),
        helper.make_node("ReduceMean", ["images", "ax123"], ["m"], keepdims=0),  # [B]
        _const("ax1", [1], TensorProto.INT64),
        helper.make_node("Unsqueeze", ["m", "ax1"], ["m1"]),  # [B] -> [B, 1]
        helper.make_node("Mul", ["m1", "zero"], ["z"]),  # [B, 1] zeros
    ]
    if with_sizes:
        nodes += [
            helper.make_node("Cast", ["image_sizes"], ["hw"], to=TensorProto.FLOAT),  # [B, 2]
            helper.make_node("Split", ["hw"], ["h", "w"], axis=1, num_outputs=2),  # [B, 1] each
        ]
    else:  # use the padded input size
        nodes += [
            helper.make_node("Shape", ["images"], ["shp"]),
            _const("i2", [2], TensorProto.INT64), _const("i3", [3], TensorProto.INT64),
            helper.make_node("Gather", ["shp", "i2"], ["h_i"]), helper.make_node("Gather", ["shp", "i3"], ["w_i"]),
            helper.make_node("Cast", ["h_i"], ["h0"], to=TensorProto.FLOAT), helper.make_node("Cast", ["w_i"], ["w0"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["z", "h0"], ["h"]), helper.make_node("Add", ["z", "w0"], ["w"]),
        ]
    nodes += [
        helper.make_node("Mul", ["w", "half"], ["w2"]), helper.make_node("Mul", ["h", "half"], ["h2"]),
        helper.make_node("Mul", ["w", "quarter"], ["w4"]), helper.make_node("Mul", ["h", "quarter"], ["h4"]),
        helper.make_node("Add", ["w", "ten"], ["w10"]), helper.make_node("Add", ["h", "ten"], ["h10"]),
        helper.make_node("Add", ["z", "one"], ["c1"]), helper.make_node("Add", ["z", "two"], ["c2"]),
        helper.make_node("Add", ["z", "three"], ["c3"]), helper.make_node("Add", ["z", "four"], ["c4"]),
        helper.make_node("Concat", ["z", "z", "w2", "h2", "w4", "h4", "w10", "h10", "c1", "c2", "c3", "c4"], ["flat"], axis=1),
        helper.make_node("Reshape", ["flat", "shape_bk4"], ["boxes"]),  # [B, 12] -> [B, 3, 4]
        helper.make_node("Div", ["m1", "k255"], ["s0"]),
        helper.make_node("Add", ["z", "half"], ["s1"]), helper.make_node("Add", ["z", "p99"], ["s2"]),
        helper.make_node("Concat", ["s0", "s1", "s2"], ["scores"], axis=1),
        helper.make_node("Concat", ["c1", "z", "c1"], ["labels_f"], axis=1),
        helper.make_node("Cast", ["labels_f"], ["labels"], to=TensorProto.INT32),
        helper.make_node("Cast", ["c2"], ["num_dets"], to=TensorProto.INT32),
    ]
    batch = fixed_batch if fixed_batch is not None else "batch"
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, "height", "width"])]
    if with_sizes:
        inputs.append(helper.make_tensor_value_info("image_sizes", sizes_type, [batch, 2]))
    outputs = [
        helper.make_tensor_value_info("num_dets", TensorProto.INT32, [batch, 1]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, 3, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3]),
        helper.make_tensor_value_info("labels", TensorProto.INT32, [batch, 3]),
    ]
    graph = helper.make_graph(nodes, "toy_detector", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model(tmp_path, model, meta=META, name="model.onnx", props=False):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if props:
        for k, v in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, json.dumps(v)
    path = tmp_path / name
    onnx.save(model, path)
    if meta is not None and not props:
        (tmp_path / "model.json").write_text(json.dumps(meta))
    return path
