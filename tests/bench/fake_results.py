"""Hand-made benchmark records for the report and suite tests (no measurement)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional

from runtime.bench.suite import plan_columns

NO_GPU_ENV = {"cuda": False, "gpu": None, "ort_providers": ["CPUExecutionProvider"], "tensorrt": None,
              "tensorrt_error": "ModuleNotFoundError: No module named 'tensorrt'"}


def latency_record(p50: float, batch: int = 1, shape=(800, 1344)) -> dict:
    stats = {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "mean": p50, "min": p50 * 0.9, "max": p50 * 1.2, "std": 1.0}
    split = {"preprocess": {"p50": 1.0, "mean": 1.0}, "infer": {"p50": p50 - 2, "mean": p50 - 2},
             "postprocess": {"p50": 1.0, "mean": 1.0}}
    entry = {"batch": batch, "input_shape": [batch, 3, *shape], "latency_ms": stats,
             "per_image_ms": {"p50": p50 / batch, "p90": p50 * 1.1 / batch, "mean": p50 / batch, "min": p50 * 0.9 / batch},
             "throughput_ips": 1000.0 * batch / p50, "split_ms": split, "detections_per_image": 5.0,
             "peak_rss_mb": 900.0, "cuda_max_memory_allocated_mb": None, "samples_ms": [p50] * 3}
    return {"kind": "latency", "model": "m", "backend": "x", "precision": "fp32", "device": "cpu", "providers": [],
            "threads": 2, "image_size": [800, 1333], "inputs": "synthetic", "model_scale": [800, 1333], "warmup": 1,
            "iters": 3, "load_s": 1.0, "rss_before_load_mb": 50.0, "rss_after_load_mb": 800.0, "results": [entry],
            "created": "2026-01-01T00:00:00+00:00"}


def accuracy_record(ap: float, delta: Optional[float] = None, ref_ap: Optional[float] = None) -> dict:
    metrics = {"AP": ap, "AP50": ap + 20, "AP75": ap - 5, "APs": None, "APm": ap, "APl": ap}
    record = {"kind": "accuracy", "metrics": metrics, "num_images": 100, "num_detections": 500,
              "delta": None, "reference": None}
    if delta is not None:
        record["delta"] = {"AP": delta, "AP50": 0.0, "AP75": 0.0, "APs": None, "APm": 0.0, "APl": 0.0}
        record["reference"] = {"model": "ckpt", "backend": "torch", "metrics": dict(metrics, AP=ref_ap)}
    return record


def results(*, libra_ort: float = 1500.0, libra_torch: float = 3000.0, peer_torch: float = 2500.0,
            ap_delta: float = 0.02) -> dict:
    cols = plan_columns(NO_GPU_ENV)
    models = [
        {"name": "tiny_faster_rcnn", "config": "configs/tiny_faster_rcnn.yaml", "group": "tiny",
         "weights": "trained (1200 iterations; found in runs/demo)", "checkpoint": "runs/demo/model_final.pth",
         "onnx": "o/model.onnx", "export_error": None, "accuracy": True, "accuracy_note": None,
         "runs": {"torch/fp32/cpu": {"latency": latency_record(20.0, shape=(192, 320)), "accuracy": accuracy_record(40.0),
                                     "error": None},
                  "onnxruntime/fp32/cpu": {"latency": latency_record(12.0, shape=(192, 320)),
                                           "accuracy": accuracy_record(40.0 + ap_delta, ap_delta, 40.0), "error": None}}},
        {"name": "libra_faster_rcnn_r50_fpn_1x", "config": "configs/libra_faster_rcnn_r50_fpn_1x.yaml", "group": "r50",
         "weights": "random (seed 0)", "checkpoint": "c.pth", "onnx": "l/model.onnx", "export_error": None,
         "accuracy": False, "accuracy_note": "latency only (random weights)",
         "runs": {"torch/fp32/cpu": {"latency": latency_record(libra_torch), "accuracy": None, "error": None},
                  "onnxruntime/fp32/cpu": {"latency": latency_record(libra_ort), "accuracy": None, "error": None}}},
        {"name": "retinanet_r50_fpn_1x", "config": "configs/retinanet_r50_fpn_1x.yaml", "group": "r50",
         "weights": "random (seed 0)", "checkpoint": "r.pth", "onnx": None, "export_error": "ExportError: boom",
         "accuracy": False, "accuracy_note": "latency only (random weights)",
         "runs": {"torch/fp32/cpu": {"latency": latency_record(2800.0), "accuracy": None, "error": None},
                  "onnxruntime/fp32/cpu": {"latency": None, "accuracy": None, "error": "not run: ExportError: boom"}}},
    ]
    peer = {"name": "torchvision fasterrcnn_resnet50_fpn", "group": "r50", "onnx": "p.onnx", "export_error": None,
            "runs": {"torch/fp32/cpu": {"latency": latency_record(peer_torch, shape=(800, 1333)), "accuracy": None, "error": None},
                     "onnxruntime/fp32/cpu": {"latency": latency_record(2000.0, shape=(800, 1333)), "accuracy": None,
                                              "error": None}}}
    from runtime.bench.suite import compute_ratios, compute_speedups, compute_targets

    return {
        "schema_version": 1, "created": "2026-01-01T00:00:00+00:00", "command": "python -m runtime.bench.suite",
        "duration_s": 600.0,
        "machine": {"cpu": "AMD EPYC", "cores_logical": 2, "cores_available": 2, "platform": "Linux", "python": "3.11",
                    "gpu": "none", "versions": {"torch": "2.14.1", "onnxruntime": "1.32.0", "tensorrt": "none"}},
        "environment": NO_GPU_ENV, "threads": 2, "load_average": {"start": [0.1, 0.2, 0.3], "end": [0.2, 0.2, 0.3]},
        "settings": {"size": [800, 1333], "rounds": 1,
                     "groups": {"tiny": {"warmup": 3, "iters": 20, "batch": [1, 4]},
                                "r50": {"warmup": 1, "iters": 5, "batch": [1]}},
                     "data": {"ann_file": "data/synthetic/annotations/instances_val.json", "images": "data/synthetic/val",
                              "max_images": None}},
        "columns": [asdict(c) for c in cols],
        "models": models, "peer": peer,
        "ratios": compute_ratios(models, peer, cols),
        "speedups": compute_speedups(models),
        "targets": compute_targets(models, peer),
        "skipped": [f"{c.label}: {c.reason} (no number written)" for c in cols if not c.available],
    }
