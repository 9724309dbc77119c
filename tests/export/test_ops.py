"""The export-friendly selection ops: eager semantics (torchvision's calls), fixed-size padding, and
the same results from their ONNX mapping in ONNX Runtime, also when nothing is selected."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torchvision.ops import batched_nms

from training.models.ops import INVALID_SCORE, nms_topk, select_candidates, topk_padded


def _boxes(g: torch.Generator, b: int, n: int) -> torch.Tensor:
    xy = torch.rand(b, n, 2, generator=g) * 100
    wh = torch.rand(b, n, 2, generator=g) * 40 + 1
    return torch.cat([xy, xy + wh], dim=-1)


def _onnx_run(module: nn.Module, inputs, names):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, inputs, f, dynamo=False, opset_version=17, input_names=names,
            dynamic_axes={n: {0: "b", 1: "n"} for n in names},
        )
    proto = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    import onnxruntime as ort

    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    return proto, sess


class _NMS(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, boxes, scores, labels):
        return nms_topk(boxes, scores, labels, k=self.k, num_classes=3, iou_threshold=0.5)


def test_nms_topk_is_torchvision_batched_nms_per_image():
    g = torch.Generator().manual_seed(0)
    boxes, scores = _boxes(g, 2, 200), torch.rand(2, 200, generator=g)
    labels = torch.randint(0, 3, (2, 200), generator=g)
    scores[0, ::3] = INVALID_SCORE  # padding / filtered candidates
    index, valid = nms_topk(boxes, scores, labels, k=40, num_classes=3, iou_threshold=0.5)
    assert index.shape == valid.shape == (2, 40) and index.dtype == torch.int64
    for b in range(2):
        cand = torch.where(scores[b] >= 0)[0]
        expected = cand[batched_nms(boxes[b, cand], scores[b, cand], labels[b, cand], 0.5)[:40]]
        n = int(valid[b].sum())
        assert n == min(40, expected.numel()) and valid[b, :n].all()
        assert torch.equal(index[b, :n], expected)
        assert not index[b, n:].any()


def test_nms_topk_onnx_matches_eager_with_padding_and_empty_images():
    g = torch.Generator().manual_seed(1)
    boxes, scores = _boxes(g, 3, 60), torch.rand(3, 60, generator=g)
    labels = torch.randint(0, 3, (3, 60), generator=g)
    scores[1] = INVALID_SCORE  # an image with no candidate at all
    scores[2, 5:] = INVALID_SCORE  # fewer survivors than k
    module = _NMS(k=30)
    proto, sess = _onnx_run(module, (boxes, scores, labels), ["boxes", "scores", "labels"])
    nms = [n for n in proto.graph.node if n.op_type == "NonMaxSuppression"]
    assert len(nms) == 1
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant"}
    assert consts[nms[0].input[2]].tolist() == [30]  # bounded max_output_boxes_per_class
    # other batch size and candidate count than traced
    g = torch.Generator().manual_seed(2)
    boxes, scores = _boxes(g, 2, 90), torch.rand(2, 90, generator=g)
    labels = torch.randint(0, 3, (2, 90), generator=g)
    scores[0] = INVALID_SCORE
    index, valid = module(boxes, scores, labels)
    o_index, o_valid = sess.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy()})
    np.testing.assert_array_equal(o_valid, valid.numpy())
    np.testing.assert_array_equal(o_index, index.numpy())
    assert not valid[0].any() and valid[1].sum() > 0


class _TopK(nn.Module):
    def __init__(self, k: int, threshold) -> None:
        super().__init__()
        self.k, self.threshold = k, threshold

    def forward(self, x):
        return topk_padded(x, self.k, fill=INVALID_SCORE, threshold=self.threshold)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_topk_padded_pads_short_rows_and_exports(threshold):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 50, generator=g)
    values, index, valid = topk_padded(x, 80, fill=INVALID_SCORE, threshold=threshold)  # N < k
    assert values.shape == index.shape == valid.shape == (2, 80)
    for b in range(2):
        keep = x[b] > threshold if threshold is not None else torch.ones(50, dtype=torch.bool)
        n = int(keep.sum())
        assert int(valid[b].sum()) == n and valid[b, :n].all()
        assert torch.equal(values[b, :n], x[b][keep].sort(descending=True).values)
        assert (values[b, n:] == INVALID_SCORE).all() and not index[b, n:].any()
        assert torch.equal(x[b, index[b, :n]], values[b, :n])
    module = _TopK(20, threshold)
    _, sess = _onnx_run(module, (x,), ["x"])
    y = torch.rand(3, 70, generator=g)
    for got, want in zip(sess.run(None, {"x": y.numpy()}), module(y)):
        np.testing.assert_array_equal(got, want.numpy())


class _Select(nn.Module):
    def forward(self, scores):
        return select_candidates(scores, 8)


def test_select_candidates_keeps_index_order():
    scores = torch.tensor(
        [
            [0.1, -1.0, 0.9, 0.3, -1.0, 0.2],  # 4 candidates <= k: all, in index order
            [0.5, 0.1, 0.9, 0.3, 0.7, 0.2],
        ]
    )
    index, valid = select_candidates(scores, 4)
    assert index.tolist() == [[0, 2, 3, 5], [0, 2, 3, 4]]  # the 4 best of row 1, ascending index
    assert valid.all()
    g = torch.Generator().manual_seed(4)
    module = _Select()
    _, sess = _onnx_run(module, (torch.rand(1, 20, generator=g),), ["scores"])
    s = torch.rand(2, 30, generator=g)
    s[0, 3:] = INVALID_SCORE  # fewer candidates than k
    for got, want in zip(sess.run(None, {"scores": s.numpy()}), module(s)):
        np.testing.assert_array_equal(got, want.numpy())
