"""``export.check_ops``: the TensorRT rules on hand-built graphs (one violation each), and the CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.check_ops import check_model, load_rules, main

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(name="x", shape=(1, 8)):
    return helper.make_tensor_value_info(name, F, None if shape is None else list(shape))


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _errors(model):
    report = check_model(model)
    return report, [str(f) for f in report.errors]


def test_rules_file_names_version_and_source():
    rules = load_rules()
    assert rules["tensorrt_version"] == "10.15" and "operators.md" in rules["source"]
    assert rules["opset_range"] == [9, 24]
    assert rules["ops"]["MaxRoiPool"]["supported"] is False and rules["ops"]["NonMaxSuppression"]["supported"] is True
    assert "3840" in rules["ops"]["TopK"]["restriction"]


def test_clean_graph_passes():
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1), helper.make_node("Relu", ["v"], ["y"])]
    report, errors = _errors(_model(nodes, [_x()], [_x("y", (1, 3))], [_const("k", [3])]))
    assert report.ok and not errors and report.op_counts == {"TopK": 1, "Relu": 1}
    assert report.details["TopK"] == ["K<=3"]


def test_unsupported_op_fails_naming_it(tmp_path, capsys):
    nodes = [helper.make_node("MaxRoiPool", ["x", "rois"], ["y"], pooled_shape=[7, 7], name="pool")]
    model = _model(nodes, [_x("x", (1, 4, 16, 16)), _x("rois", (3, 5))], [_x("y", (3, 4, 7, 7))])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "MaxRoiPool x1" in out and "FAIL: 1 problem(s)" in out
    assert "ERROR: MaxRoiPool (node 'pool'): not supported by the TensorRT 10.15 ONNX parser" in out
    assert main([str(path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    (tmp_path / "junk.onnx").write_text("not a model")
    assert main([str(tmp_path / "junk.onnx")]) == 2


@pytest.mark.parametrize(
    "case, expected",
    [
        ("topk_big_k", "K = 5000 but TensorRT needs K < 3840"),
        ("topk_dynamic_k", "no constant bound"),
        ("topk_unsorted", "sorted=1"),
        ("nms_int64_max", "INT64_MAX"),
        ("nms_dynamic_max", "must be a constant"),
        ("if_ranks", "then-branch rank 1 != else-branch rank 2"),
        ("slice_int64_max", "uses INT64_MAX/INT64_MIN constant 'ends'"),
        ("custom_domain", "custom op of domain 'mmdeploy'"),
        ("nonzero_bool", "of type BOOL is not supported"),
        ("resize_cubic", "mode 'cubic' is not supported"),
        ("scatter_add", "reduction 'add' is not supported"),
    ],
)
def test_rule_violations_are_reported(case, expected):
    x = _x()
    if case.startswith("topk"):
        k_input = "kk" if case == "topk_dynamic_k" else "k"
        nodes = [helper.make_node("TopK", ["x", k_input], ["v", "i"], axis=1, sorted=0 if case == "topk_unsorted" else 1)]
        inputs = [x, helper.make_tensor_value_info("kk", I64, [1])] if case == "topk_dynamic_k" else [x]
        model = _model(nodes, inputs, [_x("v", (1, None))], [_const("k", [5000 if case == "topk_big_k" else 2])])
    elif case.startswith("nms"):
        max_out = "m_in" if case == "nms_dynamic_max" else "m"
        nodes = [helper.make_node("NonMaxSuppression", ["b", "s", max_out, "iou"], ["sel"])]
        inputs = [_x("b", (1, 10, 4)), _x("s", (1, 2, 10))] + ([helper.make_tensor_value_info("m_in", I64, [1])] if case == "nms_dynamic_max" else [])
        model = _model(nodes, inputs, [helper.make_tensor_value_info("sel", I64, [None, 3])],
                       [_const("m", [np.iinfo(np.int64).max]), _const("iou", [0.5], np.float32)])
    elif case == "if_ranks":
        then_g = helper.make_graph([helper.make_node("Squeeze", ["x2"], ["t"])], "then", [], [helper.make_tensor_value_info("t", F, [8])])
        else_g = helper.make_graph([helper.make_node("Identity", ["x2"], ["e"])], "else", [], [helper.make_tensor_value_info("e", F, [1, 8])])
        nodes = [helper.make_node("Identity", ["x"], ["x2"]), helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
        model = _model(nodes, [x, helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [_x("y", None)])
    elif case == "slice_int64_max":
        nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])]
        model = _model(nodes, [x], [_x("y", (1, None))],
                       [_const("starts", [1]), _const("ends", [np.iinfo(np.int64).max]), _const("axes", [1])])
    elif case == "custom_domain":
        nodes = [helper.make_node("MMCVMultiLevelRoiAlign", ["x"], ["y"], domain="mmdeploy")]
        model = _model(nodes, [x], [_x("y", None)])
        model.opset_import.append(helper.make_opsetid("mmdeploy", 1))
    elif case == "nonzero_bool":
        nodes = [helper.make_node("NonZero", ["c"], ["y"])]
        model = _model(nodes, [helper.make_tensor_value_info("c", TensorProto.BOOL, [8])], [helper.make_tensor_value_info("y", I64, [1, None])])
    elif case == "resize_cubic":
        nodes = [helper.make_node("Resize", ["x4", "", "scales"], ["y"], mode="cubic")]
        model = _model(nodes, [_x("x4", (1, 1, 4, 4))], [_x("y", None)], [_const("scales", [1, 1, 2, 2], np.float32)])
    else:  # scatter_add
        nodes = [helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], reduction="add")]
        model = _model(nodes, [x, helper.make_tensor_value_info("idx", I64, [2, 2]), _x("upd", (2,))], [_x("y", (1, 8))])
    report, errors = _errors(model)
    assert not report.ok
    assert any(expected in e for e in errors), errors
