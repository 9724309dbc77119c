"""``make bench``'s planning and bookkeeping: backend columns (TensorRT / CUDA skipped with a reason
when absent), checkpoint discovery, pooled rounds, ratios and targets; one end-to-end run (slow)."""
from __future__ import annotations

import json
import shutil

import pytest

from runtime.bench import suite
from runtime.bench.suite import SPECS_BY_NAME, compute_targets, find_checkpoint, merge_latency, plan_columns
from tests.bench.fake_results import NO_GPU_ENV, latency_record, results


def _by_key(cols):
    return {c.key: c for c in cols}


def test_tensorrt_and_cuda_columns_are_skipped_with_reasons_without_them():
    cols = _by_key(plan_columns(NO_GPU_ENV))
    assert list(cols) == ["torch/fp32/cpu", "onnxruntime/fp32/cpu", "torch/fp32/cuda", "onnxruntime/fp32/cuda",
                          "tensorrt/fp32/cuda", "tensorrt/fp16/cuda", "tensorrt/int8/cuda"]
    assert cols["torch/fp32/cpu"].available and cols["onnxruntime/fp32/cpu"].available
    for key in ("tensorrt/fp32/cuda", "tensorrt/fp16/cuda", "tensorrt/int8/cuda"):
        assert not cols[key].available
        assert "TensorRT is not installed" in cols[key].reason and "No module named 'tensorrt'" in cols[key].reason
    assert "no CUDA GPU" in cols["torch/fp32/cuda"].reason and not cols["onnxruntime/fp32/cuda"].available


def test_tensorrt_columns_need_a_gpu_and_an_engine():
    env = dict(NO_GPU_ENV, tensorrt="10.15.1", tensorrt_error=None)
    assert "no CUDA GPU" in _by_key(plan_columns(env))["tensorrt/fp16/cuda"].reason
    gpu = dict(env, cuda=True, gpu="NVIDIA H100")
    cols = _by_key(plan_columns(gpu, {"tiny_faster_rcnn": {"fp16": "m.engine"}}))
    assert cols["tensorrt/fp16/cuda"].available and cols["torch/fp32/cuda"].available
    assert "no fp32 engine given" in cols["tensorrt/fp32/cuda"].reason
    assert "onnxruntime-gpu" in cols["onnxruntime/fp32/cuda"].reason  # CPU-only onnxruntime
    cuda_ort = dict(gpu, ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert _by_key(plan_columns(cuda_ort))["onnxruntime/fp32/cuda"].available


def test_skipped_columns_get_no_runs_and_no_numbers():
    res = results()
    for model in [*res["models"], res["peer"]]:
        assert not any(key.startswith(("tensorrt/", "torch/fp32/cuda", "onnxruntime/fp32/cuda")) for key in model["runs"])
    assert len(res["skipped"]) == 5 and all("(no number written)" in s for s in res["skipped"])


def test_targets_pass_fail_and_not_measured():
    res = results(libra_ort=1500.0, libra_torch=3000.0, peer_torch=2500.0, ap_delta=-0.05)
    t = {x["name"]: x for x in res["targets"]}
    assert t["ours_vs_peer"]["measured"] == pytest.approx(0.6) and t["ours_vs_peer"]["passed"] is True
    assert t["ort_speedup"]["measured"] == pytest.approx(2.0) and t["ort_speedup"]["passed"] is True
    assert t["ap_delta:tiny_faster_rcnn"]["measured"] == pytest.approx(0.05) and t["ap_delta:tiny_faster_rcnn"]["passed"]
    no_libra = [m for m in res["models"] if m["name"] != "libra_faster_rcnn_r50_fpn_1x"]
    t = {x["name"]: x for x in compute_targets(no_libra, None)}
    assert t["ours_vs_peer"]["passed"] is None and "not in this run" in t["ours_vs_peer"]["note"]
    untrained = [dict(m, accuracy=False) for m in no_libra]
    (ap,) = [x for x in compute_targets(untrained, res["peer"]) if x["name"].startswith("ap_delta")]
    assert ap["passed"] is None and "no model with trained weights" in ap["note"]


def test_ratios_compare_r50_models_with_the_peer():
    ratios = results(libra_ort=1500.0, peer_torch=2500.0)["ratios"]
    pairs = {(r["ours"], r["ours_backend"], r["peer_backend"]): r["ratio"] for r in ratios}
    assert pairs[("libra_faster_rcnn_r50_fpn_1x", "ONNX Runtime fp32 (CPU)", "PyTorch fp32 (CPU)")] == pytest.approx(0.6)
    assert pairs[("libra_faster_rcnn_r50_fpn_1x", "ONNX Runtime fp32 (CPU)", "ONNX Runtime fp32 (CPU)")] == pytest.approx(0.75)
    assert not any(r["ours"].startswith("tiny") for r in ratios)  # the peer is an R-50 model
    assert ("retinanet_r50_fpn_1x", "ONNX Runtime fp32 (CPU)", "PyTorch fp32 (CPU)") not in pairs  # not measured


def test_merge_latency_pools_the_rounds():
    a, b = latency_record(100.0), latency_record(300.0)
    b["results"][0]["peak_rss_mb"] = 950.0
    merged = merge_latency([a, b])
    entry = merged["results"][0]
    assert entry["samples_ms"] == [100.0] * 3 + [300.0] * 3 and entry["latency_ms"]["p50"] == 200.0
    assert entry["peak_rss_mb"] == 950.0 and merged["rounds"] == 2 and merged["iters"] == 6
    assert entry["throughput_ips"] == pytest.approx(6 / 1.2)


def test_find_checkpoint(tiny_checkpoint, tmp_path):
    spec = SPECS_BY_NAME["tiny_faster_rcnn"]
    runs = tmp_path / "runs"
    assert find_checkpoint(spec, {}, runs) is None
    (runs / "demo").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, runs / "demo" / "model_final.pth")
    path, how = find_checkpoint(spec, {}, runs)
    assert path == runs / "demo" / "model_final.pth" and "runs/demo" in how
    # a checkpoint of another config in the model's folder is not taken
    (runs / "tiny_retinanet").mkdir()
    shutil.copy(tiny_checkpoint, runs / "tiny_retinanet" / "model_final.pth")
    assert find_checkpoint(SPECS_BY_NAME["tiny_retinanet"], {}, runs) is None
    with pytest.raises(ValueError, match="nope.pth: file not found"):
        find_checkpoint(spec, {"tiny_faster_rcnn": tmp_path / "nope.pth"}, runs)


def test_bad_suite_arguments_are_named(tmp_path, capsys):
    assert suite.main(["--models", "tiny_yolo", "--data", str(tmp_path)]) == 2
    assert "tiny_yolo" in capsys.readouterr().err
    assert suite.main(["--models", "tiny", "--data", str(tmp_path)]) == 2
    assert "instances_val.json: synthetic val set not found" in capsys.readouterr().err
    assert suite.main(["--engine", "tiny_faster_rcnn:fp8=x.engine", "--data", str(tmp_path)]) == 2
    assert "fp8" in capsys.readouterr().err


@pytest.mark.slow
def test_suite_end_to_end_tiny(tiny_checkpoint, four_images, tmp_path):
    data = four_images["ann"].parent.parent
    out = tmp_path / "bench"
    rc = suite.main([
        "--models", "tiny_faster_rcnn,tiny_retinanet", "--checkpoint", f"tiny_faster_rcnn={tiny_checkpoint}",
        "--data", str(data), "--out", str(out), "--work-dir", str(tmp_path / "work"), "--runs-dir", str(tmp_path / "none"),
        "--size", "96x128", "--tiny-warmup", "0", "--tiny-iters", "1", "--tiny-batch", "1", "--no-peer", "--threads", "1",
    ])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    models = {m["name"]: m for m in res["models"]}
    assert models["tiny_faster_rcnn"]["accuracy"] and not models["tiny_retinanet"]["accuracy"]
    runs = models["tiny_faster_rcnn"]["runs"]
    assert set(runs) == {"torch/fp32/cpu", "onnxruntime/fp32/cpu"}
    assert runs["onnxruntime/fp32/cpu"]["accuracy"]["delta"]["AP"] is not None
    assert models["tiny_retinanet"]["runs"]["onnxruntime/fp32/cpu"]["latency"]["results"][0]["batch"] == 1
    assert (out / "latency.png").is_file() and "## Targets" in (out / "results.md").read_text()
