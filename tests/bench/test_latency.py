"""``libra-bench latency``: the record's documented keys and self-consistent values (no timing
assertions: the values are checked against each other, never against a clock)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.bench import cli
from runtime.bench.latency import LATENCY_KEYS, measure_latency, parse_batches, parse_size, summarize

RECORD_KEYS = {
    "kind", "model", "backend", "precision", "device", "providers", "threads", "image_size", "inputs",
    "model_scale", "warmup", "iters", "load_s", "rss_before_load_mb", "rss_after_load_mb", "results",
    "machine", "created",
}


def _check_entry(entry: dict, batch: int, iters: int) -> None:
    assert set(entry) == set(LATENCY_KEYS)
    lat = entry["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    samples = entry["samples_ms"]
    assert len(samples) == iters and lat["max"] == pytest.approx(max(samples), abs=1e-3)
    assert entry["per_image_ms"]["p50"] == pytest.approx(lat["p50"] / batch, abs=1e-3)
    assert entry["throughput_ips"] == pytest.approx(batch * iters / (sum(samples) / 1e3), rel=1e-3)
    # the three steps are timed back to back: their means add up to the mean total
    split = entry["split_ms"]
    assert set(split) == {"preprocess", "infer", "postprocess"}
    assert sum(s["mean"] for s in split.values()) == pytest.approx(lat["mean"], abs=0.01)
    assert entry["peak_rss_mb"] > 50 and entry["cuda_max_memory_allocated_mb"] is None


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_latency_json_and_markdown(backend, tiny_checkpoint, tiny_onnx, tmp_path):
    model = tiny_checkpoint if backend == "torch" else tiny_onnx
    out_json, out_md = tmp_path / "lat.json", tmp_path / "lat.md"
    rc = cli.main(["latency", str(model), "--backend", backend, "--batch", "1,2", "--size", "96x128",
                   "--warmup", "1", "--iters", "2", "--threads", "1", "--json", str(out_json), "--md", str(out_md),
                   "--quiet"])
    assert rc == 0
    record = json.loads(out_json.read_text())
    assert set(record) == RECORD_KEYS
    assert record["kind"] == "latency" and record["backend"] == backend and record["precision"] == "fp32"
    assert record["threads"] == 1 and record["image_size"] == [96, 128] and record["model_scale"] == [320, 320]
    assert record["machine"]["cores_available"] >= 1 and record["machine"]["gpu"] == "none"
    assert record["rss_after_load_mb"] >= record["rss_before_load_mb"]
    assert [e["batch"] for e in record["results"]] == [1, 2]
    for entry in record["results"]:
        _check_entry(entry, entry["batch"], 2)
        # 96x128 -> keep-ratio to 320 long side = 240x320, padded to 256x320 (pad divisor 32)
        assert entry["input_shape"] == [entry["batch"], 3, 256, 320]
        assert entry["detections_per_image"] > 0  # the parity checkpoint detects on random images
    md = out_md.read_text()
    assert "| batch | network input | p50 ms | p90 ms | p99 ms |" in md and "pre / infer / post" in md
    assert md.count("\n| 1 |") == 1 and md.count("\n| 2 |") == 1


def test_latency_on_image_folder(tiny_onnx, four_images, tmp_path):
    out = tmp_path / "lat.json"
    assert cli.main(["latency", str(tiny_onnx), "--images", str(four_images["images"]), "--iters", "1",
                     "--warmup", "0", "--json", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert record["inputs"] == str(four_images["images"]) and record["image_size"] is None


def test_bad_model_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    assert cli.main(["latency", str(missing), "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err
    wrong = tmp_path / "model.onnx"
    wrong.write_bytes(b"not a graph")
    assert cli.main(["latency", str(wrong), "--backend", "torch", "--iters", "1"]) == 2
    assert str(wrong) in capsys.readouterr().err


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["latency", "m.onnx", "--size", "800by1333"])
    assert "800by1333" in capsys.readouterr().err
    with pytest.raises(ValueError, match="0,4"):
        parse_batches("0,4")
    assert parse_size("800x1333") == (800, 1333) and parse_batches("1,4") == [1, 4]


def test_summarize_percentiles():
    stats = summarize(list(range(1, 101)))
    assert stats["p50"] == 50.5 and stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
    assert (stats["min"], stats["max"], stats["mean"]) == (1, 100, 50.5)
    with pytest.raises(ValueError):
        summarize([])


class _CountingRunner:
    """Records which images each batch held; detections = one per image."""

    def __init__(self):
        self.batches = []

    def preprocess(self, images):
        self.batches.append(list(images))
        return np.stack(images), [None] * len(images)

    def infer(self, batch, metas):
        return [np.zeros((1, 4))] * len(batch)

    def postprocess(self, raw, metas):
        return raw


def test_measure_latency_cycles_the_pool_and_skips_warmup():
    pool = [np.full((2, 2, 3), i, np.uint8) for i in range(3)]
    runner = _CountingRunner()
    results = measure_latency(runner, pool, batch_sizes=[2], warmup=1, iters=3)
    # 1 warm-up + 3 timed batches of 2, drawn from the pool of 3 in turn
    assert [[int(im[0, 0, 0]) for im in b] for b in runner.batches] == [[0, 1], [2, 0], [1, 2], [0, 1]]
    (entry,) = results
    assert len(entry["samples_ms"]) == 3 and entry["detections_per_image"] == 1.0
    assert entry["input_shape"] == [2, 2, 2, 3]
    with pytest.raises(ValueError, match="iters"):
        measure_latency(runner, pool, iters=0)
