"""PyTorch backend: the same detections as training's eval pipeline (transforms, padding,
``model.predict``, ``predictions_to_original``), the shared Detections structure, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.backends import Backend, Detections, ModelLoadError
from runtime.backends.torch_backend import TorchBackend
from tests.parity.tiny_models import CAT_IDS, CLASS_NAMES, make_checkpoint_file
from training.data.transforms import build_transforms, pad_to_divisor
from training.evaluation.inference import predictions_to_original
from training.models import load_checkpoint_model
from training.models.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint_file("faster_rcnn", tmp_path_factory.mktemp("torch_backend") / "frcnn.pth")


def _images():
    rng = np.random.default_rng(3)
    # (w, h): landscape, portrait, small (upscaled); smooth blobs so the features are not pure noise
    out = []
    for w, h in [(320, 240), (150, 200), (90, 64)]:
        base = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        out.append(Image.fromarray(base).resize((w, h), Image.BILINEAR))
    return out


def _reference(path, images):
    """Detections through training's eval pipeline, one batch."""
    model = load_checkpoint_model(path)
    cfg = load_checkpoint(path)["config"]["data"]
    transforms = build_transforms(scale=cfg["scale"], mean=cfg["mean"], std=cfg["std"], to_rgb=cfg["to_rgb"], train=False)
    tensors, targets = [], []
    for img in images:
        t, target = transforms(img, {"orig_size": (img.height, img.width)})
        tensors.append(t)
        targets.append(target)
    batch = pad_to_divisor(tensors, cfg["pad_divisor"])
    with torch.no_grad():
        outputs = model.predict(batch, [t["img_size"] for t in targets])
    return [predictions_to_original(o, t) for o, t in zip(outputs, targets)]


def test_predict_equals_training_eval_pipeline(checkpoint):
    images = _images()
    expected = _reference(checkpoint, images)
    with Backend.from_path(checkpoint) as backend:
        assert isinstance(backend, TorchBackend) and backend.name == "torch" and backend.device == "cpu"
        assert backend.class_names == tuple(CLASS_NAMES) and backend.category_ids == tuple(CAT_IDS)
        assert backend.info.scale == (320, 320) and backend.info.score_thr == 0.4
        dets = backend.predict(images)
    assert len(dets) == 3 and sum(len(d) for d in dets) > 10  # the weights do detect things
    for det, ref in zip(dets, expected):
        assert isinstance(det, Detections)
        assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32 and det.labels.dtype == np.int64
        np.testing.assert_array_equal(det.boxes, ref["boxes"])  # same ops, same order: bit-identical
        np.testing.assert_array_equal(det.scores, ref["scores"])
        np.testing.assert_array_equal(det.labels, ref["labels"])
        np.testing.assert_array_equal(det.category_ids, np.asarray(CAT_IDS)[ref["labels"]])


def test_split_calls_equal_predict(checkpoint):
    images = _images()[:2]
    with TorchBackend(path=checkpoint) as backend:
        batch, metas = backend.preprocess(images)
        raw = backend.infer(batch, metas)
        assert all(d.category_ids is None for d in raw)
        h, w = metas[0].img_size
        assert (raw[0].boxes[:, 2] <= w).all() and (raw[0].boxes[:, 3] <= h).all()
        post = backend.postprocess(raw, metas)
        direct = backend.predict(images)
        high = backend.predict(images, score_thr=0.7)
    for p, d, hi in zip(post, direct, high):
        np.testing.assert_array_equal(p.boxes, d.boxes)
        assert len(hi) == int((d.scores >= 0.7).sum()) and (hi.scores >= 0.7).all()


def test_checkpoint_without_cat_ids_gives_none(checkpoint, tmp_path):
    payload = torch.load(checkpoint, weights_only=True)
    payload["meta"] = {}
    save_checkpoint(tmp_path / "plain.pth", payload)
    with TorchBackend(path=tmp_path / "plain.pth") as backend:
        assert backend.category_ids is None
        dets = backend.predict(_images()[:1])
        assert dets[0].category_ids is None and len(dets[0]) > 0
        assert dets[0].to_coco(3)[0]["category_id"] == int(dets[0].labels[0])  # falls back to labels


def test_bad_checkpoints_are_named(checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match=r"corrupt.pth: not a readable torch checkpoint"):
        Backend.from_path(corrupt)
    payload = torch.load(checkpoint, weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if "cls_score" not in k}
    save_checkpoint(tmp_path / "partial.pth", payload)
    with pytest.raises(ModelLoadError, match=r"partial.pth: state dict does not match .*missing keys"):
        Backend.from_path(tmp_path / "partial.pth")
    with pytest.raises(ModelLoadError, match=r"frcnn.pth: is a PyTorch checkpoint .* the onnxruntime backend needs an ONNX model .*libra-export"):
        Backend.from_path(checkpoint, backend="onnxruntime")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(checkpoint):
    with pytest.raises(ModelLoadError, match=r"frcnn.pth: device 'cuda' asked for, but CUDA is not available"):
        TorchBackend(path=checkpoint, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(checkpoint):
    images = _images()
    with TorchBackend(path=checkpoint) as cpu, TorchBackend(path=checkpoint, device="cuda") as gpu:
        assert gpu.device == "cuda"
        for a, b in zip(cpu.predict(images), gpu.predict(images)):
            assert len(a) == len(b)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)
