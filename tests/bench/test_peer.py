"""The torchvision peer (random weights) at a small size: eager timing record, detections counted
per box; its own ONNX export through ONNX Runtime gives the same detections (slow)."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.bench import cli
from runtime.bench.latency import synthetic_images
from runtime.bench.peer import PEER_NAME, PeerEager, PeerOnnx, export_peer_onnx, run_peer_latency

SMALL = dict(min_size=64, max_size=96)


def test_peer_eager_record_counts_boxes():
    record = run_peer_latency("torch", threads=1, size=(64, 96), warmup=0, iters=1, batch_sizes=[1, 2], **SMALL)
    assert record["model"] == PEER_NAME and record["backend"] == "torch" and record["model_scale"] is None
    assert record["peer"]["box_score_thresh"] == 0.05 and record["peer"]["min_size"] == 64
    assert [e["batch"] for e in record["results"]] == [1, 2]
    assert record["results"][1]["input_shape"] == [2, 3, 64, 96]

    peer = PeerEager(threads=1, **SMALL)
    batch, metas = peer.preprocess(synthetic_images((64, 96), 2))
    assert [tuple(t.shape) for t in batch] == [(3, 64, 96)] * 2 and float(batch[0].max()) <= 1.0
    dets = peer.postprocess(peer.infer(batch, metas), metas)
    for d in dets:  # len() is the number of boxes, not of the dict's keys
        assert len(d) == len(d["boxes"]) == len(d["scores"]) and isinstance(d["boxes"], np.ndarray)
        assert (d["scores"] >= 0.05).all()


def test_onnx_peer_needs_a_path(capsys):
    assert cli.main(["peer", "--backend", "onnxruntime", "--iters", "1"]) == 2
    assert "--onnx" in capsys.readouterr().err


@pytest.mark.slow
def test_peer_onnx_export_matches_eager(tmp_path):
    path = export_peer_onnx(tmp_path / "peer.onnx", size=(64, 96), **SMALL)
    assert path.with_suffix(".json").is_file()
    eager, ort = PeerEager(threads=1, **SMALL), PeerOnnx(path=path, threads=1)
    image = synthetic_images((64, 96), 1, seed=4)
    ref = eager.postprocess(eager.infer(*eager.preprocess(image)), [None])[0]
    batch, metas = ort.preprocess(image)
    got = ort.postprocess(ort.infer(batch, metas), metas)[0]
    assert len(got) == len(ref)
    np.testing.assert_allclose(np.sort(got["scores"]), np.sort(ref["scores"]), atol=1e-4)
    with pytest.raises(ValueError, match="one image per run"):
        ort.preprocess(synthetic_images((64, 96), 2))
