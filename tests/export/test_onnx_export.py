"""``export_model`` / ``libra-export``: metadata, checkpoint handling, the pinned exporter, options."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from export.onnx_export import EXPORTER, ExportError, export_model, main
from training.models.checkpoint import make_checkpoint, save_checkpoint

from .conftest import CLASS_NAMES, EXPORT_SIZE, REPO, make_model, run_ort, smooth_images

TINY_FRCNN = REPO / "configs" / "tiny_faster_rcnn.yaml"
TINY_RETINA = REPO / "configs" / "tiny_retinanet.yaml"
CAT_IDS = [3, 7, 11]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, cfg = make_model("retinanet")
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    save_checkpoint(path, make_checkpoint(model, cfg, meta={"cat_ids": CAT_IDS}))
    return path


@pytest.fixture(scope="module")
def exported_checkpoint(checkpoint, tmp_path_factory):
    """The checkpoint exported through the CLI, with the exporter call recorded."""
    out = tmp_path_factory.mktemp("export")
    calls = []
    real = torch.onnx.export

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.onnx, "export", spy)
    try:
        rc = main(["--checkpoint", str(checkpoint), "--config", str(TINY_RETINA), "--set", "model.retina_head.score_thresh=0.6",
                   "--out", str(out), "--max-dets", "50", "--size", *map(str, EXPORT_SIZE)])
    finally:
        mp.undo()
    assert rc == 0
    return out, calls


def test_exporter_is_pinned_to_torchscript(exported_checkpoint):
    """dynamo=False is passed explicitly (the dynamo default fails on NMS); the file is the
    TorchScript exporter's, at the requested opset."""
    out, calls = exported_checkpoint
    assert len(calls) == 1 and calls[0]["dynamo"] is False and calls[0]["opset_version"] == 17
    proto = onnx.load(str(out / "model.onnx"))
    assert proto.producer_name == "pytorch"
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    assert EXPORTER["dynamo"] is False and "NMS" in EXPORTER["reason"]


def test_metadata_in_json_and_metadata_props(exported_checkpoint, checkpoint):
    out, _ = exported_checkpoint
    meta = json.loads((out / "model.json").read_text())
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert set(props) <= set(meta) and {"class_names", "input", "exporter", "config"} <= set(props)
    for key in props:
        if key != "created":
            assert props[key] == meta[key], key
    assert meta["arch"] == "retinanet" and meta["class_names"] == CLASS_NAMES and meta["category_ids"] == CAT_IDS
    assert meta["input"]["scale"] == [320, 320] and meta["input"]["pad_divisor"] == 32 and meta["input"]["to_rgb"] is True
    assert meta["input"]["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert meta["score_thresh"] == pytest.approx(0.6) and meta["nms_thresh"] == pytest.approx(0.5) and meta["max_dets"] == 50
    assert meta["outputs"][1]["shape"] == ["batch", 50, 4]
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["exporter"]["name"] == "torchscript" and meta["exporter"]["dynamo"] is False
    assert meta["torch_version"] == torch.__version__ and meta["onnx_opset"] == 17 and meta["created"]
    assert meta["config"]["model"]["retina_head"]["score_thresh"] == pytest.approx(0.6)


def test_checkpoint_export_runs_with_max_dets(exported_checkpoint):
    out, _ = exported_checkpoint
    sizes = [(256, 320)]
    num, boxes, scores, labels = run_ort(out / "model.onnx", smooth_images(1, 256, 320, sizes, seed=4), sizes)
    assert boxes.shape == (1, 50, 4) and 0 < num[0, 0] <= 50


def test_checkpoint_config_mismatch_names_the_keys(checkpoint, tmp_path, capsys):
    with pytest.raises(ExportError, match=r"model\.pth: the checkpoint does not match the config") as e:
        export_model(checkpoint, tmp_path, config=TINY_FRCNN)
    msg = str(e.value)
    assert "model.arch: checkpoint 'retinanet' vs config 'faster_rcnn'" in msg and "model.fpn.min_level" in msg
    with pytest.raises(ExportError, match=r"model.fpn.out_channels: checkpoint 64 vs config 32") as e:
        export_model(checkpoint, tmp_path, config=TINY_RETINA, overrides=["model.retina_head.score_thresh=0.6", "model.fpn.out_channels=32"])
    assert "mismatching key(s)" in str(e.value)
    rc = main(["--checkpoint", str(checkpoint), "--config", str(TINY_RETINA), "--set", "data.to_rgb=false", "--out", str(tmp_path)])
    assert rc == 2
    assert "data.to_rgb: checkpoint True vs config False" in capsys.readouterr().err
    assert not (tmp_path / "model.onnx").exists()


def test_random_init_cli_and_errors(tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["--config", str(TINY_FRCNN), "--set", "model.num_classes=2", "--out", str(out), "--size", "128", "160"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["num_classes"] == 2 and meta["class_names"] == ["class_0", "class_1"] and meta["checkpoint"] is None
    # no num_classes and no annotation file to take it from
    rc = main(["--config", str(TINY_FRCNN), "--set", "data.train.ann_file=missing.json", "--out", str(tmp_path / "x")])
    assert rc == 2 and "missing.json" in capsys.readouterr().err
    with pytest.raises(ExportError, match="bad.pth: checkpoint file not found"):
        export_model(tmp_path / "bad.pth", tmp_path)
    with pytest.raises(ExportError, match="opset 13: RoiAlign"):
        export_model(None, tmp_path, config=TINY_FRCNN, overrides=["model.num_classes=2"], opset=13)
    with pytest.raises(ExportError, match=r"rpn.pre_nms_top_n_test = 4000 \(TopK K must be < 3840\).*20000 candidates"):
        export_model(None, tmp_path, config=TINY_FRCNN, overrides=["model.num_classes=2", "model.rpn.pre_nms_top_n_test=4000"])


def test_simplify_and_opset_option(tmp_path):
    """--simplify (ONNX Runtime basic optimisations) keeps the detections; opset 18 is honoured."""
    model, cfg = make_model("faster_rcnn")
    plain = export_model(model, tmp_path / "plain", config=cfg, size_hint=EXPORT_SIZE)
    simple = export_model(model, tmp_path / "simple", config=cfg, size_hint=EXPORT_SIZE, simplify=True, opset=18)
    a, b = onnx.load(str(plain)), onnx.load(str(simple))
    assert len(b.graph.node) < 0.8 * len(a.graph.node)
    assert [o.version for o in b.opset_import if o.domain == ""] == [18]
    sizes = [(288, 352), (200, 300)]
    images = smooth_images(2, 288, 352, sizes, seed=5)
    ra, rb = run_ort(plain, images, sizes), run_ort(simple, images, sizes)
    np.testing.assert_array_equal(ra[0], rb[0])
    assert ra[0].min() > 0
    for x, y in zip(ra[1:], rb[1:]):
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=0)
