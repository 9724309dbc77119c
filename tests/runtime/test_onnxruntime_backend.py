"""ONNX Runtime backend on hand-made graphs with the export I/O (no exporter, no torch needed);
the graph's outputs are predictable by hand, see ``tests/runtime/toy_graph.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from runtime.backends import Backend, Detections, ModelLoadError, detect_model_kind
from runtime.backends.base import model_info_from_metadata, read_export_metadata
from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend, choose_providers
from tests.runtime.toy_graph import INPUT, META, toy_graph, write_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("toy"), toy_graph())


def _uniform(w, h, value):
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_predict_maps_to_original_pixels(toy_path):
    backend = Backend.from_path(toy_path, intra_op_threads=1)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.name == "onnxruntime"
    assert backend.class_names == ("circle", "square") and backend.category_ids == (3, 7)
    assert backend.providers == ["CPUExecutionProvider"] and backend.device == "cpu"
    # 200x100 -> 96x48 (sx = sy = 0.48); 50x80 -> 60x96 (sx = 1.2); batch padded to 96x96
    images = [_uniform(200, 100, 100), Image.fromarray(_uniform(50, 80, 50))]
    dets = backend.predict(images)
    assert len(dets) == 2 and all(isinstance(d, Detections) and len(d) == 2 for d in dets)
    for det, (w, h) in zip(dets, [(200, 100), (50, 80)]):
        np.testing.assert_allclose(det.boxes[0], [0, 0, w / 2, h / 2], rtol=1e-5)
        np.testing.assert_allclose(det.boxes[1], [w / 4, h / 4, w, h], rtol=1e-5)  # clipped
        np.testing.assert_array_equal(det.labels, [1, 0])
        np.testing.assert_array_equal(det.category_ids, [7, 3])
        assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32 and det.labels.dtype == np.int64
        assert det.scores[1] == pytest.approx(0.5)
    # the graph sees the whole padded batch, padding = mean pixel: the two images' means differ
    batch, metas = backend.preprocess(images)
    assert batch.shape == (2, 3, 96, 96) and metas[0].img_size == (48, 96)
    np.testing.assert_allclose([d.scores[0] for d in dets], batch.mean(axis=(1, 2, 3)) / 255, rtol=1e-5)
    filtered = backend.predict(images, score_thr=0.45)
    assert [len(d) for d in filtered] == [1, 1] and all(d.scores[0] == pytest.approx(0.5) for d in filtered)
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(batch, metas)


def test_infer_returns_batch_pixels_and_split_equals_predict(toy_path):
    with OnnxRuntimeBackend(path=toy_path) as backend:
        images = [_uniform(200, 100, 10)]
        batch, metas = backend.preprocess(images)
        raw = backend.infer(batch, metas)
        np.testing.assert_allclose(raw[0].boxes, [[0, 0, 48, 24], [24, 12, 96, 48]])  # input pixels
        assert raw[0].category_ids is None
        post = backend.postprocess(raw, metas)
        direct = backend.predict(images)
        np.testing.assert_array_equal(post[0].boxes, direct[0].boxes)
        assert post[0].to_coco(5)[0] == {
            "image_id": 5, "category_id": 7, "bbox": [0.0, 0.0, 100.0, 50.0], "score": pytest.approx(float(direct[0].scores[0]))
        }


def test_graph_without_image_sizes_is_clipped_to_the_valid_region(tmp_path):
    path = write_model(tmp_path, toy_graph(with_sizes=False))
    with Backend.from_path(path) as backend:
        det = backend.predict([_uniform(200, 100, 10)])[0]
        # boxes derive from the padded 96x64 input; the backend clips them to the valid 96x48
        np.testing.assert_allclose(det.boxes[1], [50, 64 / 4 / 0.48, 200, 100], rtol=1e-5)


def test_int32_image_sizes_and_metadata_props(tmp_path):
    path = write_model(tmp_path, toy_graph(sizes_type=TensorProto.INT32), props=True)
    assert not (tmp_path / "model.json").exists()
    with Backend.from_path(path) as backend:
        assert backend.category_ids == (3, 7) and backend.info.scale == (64, 96)
        assert "metadata_props" in read_export_metadata(path, {"a": "1"})[1]
        assert len(backend.predict([_uniform(30, 30, 1)])[0]) == 2


def test_export_folder_and_stem_sidecar(tmp_path):
    path = write_model(tmp_path / "exp", toy_graph())
    assert detect_model_kind(tmp_path / "exp") == ("onnxruntime", path)
    with Backend.from_path(tmp_path / "exp") as backend:
        assert backend.info.source == str(path)
    # <stem>.json beats model.json
    other = dict(META, class_names=["x", "y"])
    (tmp_path / "exp" / "model.json").rename(tmp_path / "exp" / "unused.json")
    (tmp_path / "exp" / "model.json").write_text(json.dumps(META))
    (tmp_path / "exp" / "model_fp16.json").write_text(json.dumps(other))
    os.link(path, tmp_path / "exp" / "model_fp16.onnx")
    with Backend.from_path(tmp_path / "exp" / "model_fp16.onnx") as backend:
        assert backend.class_names == ("x", "y")


def test_metadata_errors_name_file_and_key(tmp_path):
    path = write_model(tmp_path / "a", toy_graph(), meta=None)
    with pytest.raises(ModelLoadError, match=r"model.onnx: no model metadata.*libra-export"):
        Backend.from_path(path)
    (tmp_path / "a" / "model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"a/model.json: cannot read the model metadata JSON"):
        Backend.from_path(path)
    (tmp_path / "a" / "model.json").write_text(json.dumps({k: v for k, v in META.items() if k != "input"}))
    with pytest.raises(ModelLoadError, match=r"a/model.json: model metadata needs 'class_names' and an 'input' object"):
        Backend.from_path(path)
    no_scale = {k: v for k, v in INPUT.items() if k != "scale"}
    (tmp_path / "a" / "model.json").write_text(json.dumps(dict(META, input=no_scale)))
    with pytest.raises(ModelLoadError, match=r"a/model.json: model metadata lacks key\(s\) \['input.scale'\]"):
        Backend.from_path(path)
    (tmp_path / "a" / "model.json").write_text(json.dumps(dict(META, input=dict(INPUT, mean=[1.0, 2.0]))))
    with pytest.raises(ModelLoadError, match="model.json: input.mean must have 3 values"):
        Backend.from_path(path)
    (tmp_path / "a" / "model.json").write_text(json.dumps(dict(META, category_ids=[1, 2, 3])))
    with pytest.raises(ModelLoadError, match="3 category ids for 2 class names"):
        Backend.from_path(path)


def test_wrong_and_corrupt_files_are_named(tmp_path, toy_path):
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"\x08\x07 this is not a protobuf at all" * 10)
    with pytest.raises(ModelLoadError, match=r"broken.onnx: ONNX Runtime cannot load this model"):
        Backend.from_path(garbage)
    zipped = tmp_path / "ckpt.onnx"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a torch.save zip renamed
    with pytest.raises(ModelLoadError, match=r"ckpt.onnx: named like an ONNX model .* but the file is a PyTorch checkpoint"):
        Backend.from_path(zipped)
    with pytest.raises(ModelLoadError, match=r"nothing.onnx: model file not found"):
        Backend.from_path(tmp_path / "nothing.onnx")
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"\x00\x01")
    with pytest.raises(ModelLoadError, match=r"weights.bin: cannot tell the model kind"):
        Backend.from_path(odd)
    with pytest.raises(ModelLoadError, match=r"model.onnx: is an ONNX model .* the torch backend needs a PyTorch checkpoint"):
        Backend.from_path(toy_path, backend="torch")
    with pytest.raises(ModelLoadError, match="folder without a model.onnx"):
        Backend.from_path(tmp_path)
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        Backend.from_path(toy_path, backend="tflite")


def test_not_a_detector_graph_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = write_model(tmp_path, model)
    with pytest.raises(ModelLoadError, match=r"not a libra-export detector graph: needs input 'images'.*has inputs \['x'\]"):
        Backend.from_path(path)


def test_fixed_batch_graph_gives_a_clear_error(tmp_path):
    path = write_model(tmp_path, toy_graph(fixed_batch=1))
    with Backend.from_path(path) as backend:
        assert len(backend.predict([_uniform(20, 20, 3)])) == 1
        with pytest.raises(ValueError, match=r"fixed shape \[1, 3, 'height', 'width'\]; got a batch of shape \[2, 3"):
            backend.predict([_uniform(20, 20, 3)] * 2)


def test_providers():
    assert choose_providers("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cuda:1", avail, tensorrt=True) == [
        ("TensorrtExecutionProvider", {"device_id": 1}), ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"
    ]
    with pytest.raises(ModelLoadError, match=r"\['CUDAExecutionProvider'\] not available here.*onnxruntime-gpu"):
        choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match="unknown device 'tpu'"):
        choose_providers("tpu", avail)


def test_cuda_request_on_a_cpu_build_names_the_file(toy_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")  # the GPU path is covered by the gpu-marked parity run
    with pytest.raises(ModelLoadError, match=r"model.onnx: ONNX Runtime provider\(s\) \['CUDAExecutionProvider'\]"):
        Backend.from_path(toy_path, device="cuda")


def test_model_info_from_metadata_keeps_extra_keys():
    info = model_info_from_metadata(dict(META, onnx_opset=17), "m.json", "m.onnx")
    assert info.extra["max_dets"] == 3 and info.extra["onnx_opset"] == 17 and info.score_thr == 0.05
    assert info.pad_pixel == tuple(INPUT["mean"])  # input.pad_value "mean": the mean pixel


def test_backends_import_without_torch():
    """The ONNX Runtime backend (and the package) must import, and run, with torch blocked."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import runtime.backends, runtime.backends.onnxruntime_backend, runtime.preprocess\n"
        "import runtime.backends.tensorrt_backend, runtime.cli\n"
        "assert sys.modules['torch'] is None\n"
        "assert not any(m.startswith('training') for m in sys.modules), 'runtime imported training'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_predict_runs_without_torch(toy_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from runtime.backends import Backend\n"
        f"b = Backend.from_path({str(toy_path)!r})\n"
        "d = b.predict([np.zeros((40, 50, 3), np.uint8)])[0]\n"
        "print(len(d), d.category_ids.tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2 [7, 3]"
