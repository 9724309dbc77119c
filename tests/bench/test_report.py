"""The markdown tables and the chart, from hand-made records."""
from __future__ import annotations

from runtime.bench.report import accuracy_markdown, latency_chart, latency_markdown, suite_markdown
from tests.bench.fake_results import accuracy_record, latency_record, results

COLUMN_LABELS = ["PyTorch fp32 (CPU)", "ONNX Runtime fp32 (CPU)", "PyTorch fp32 (CUDA)", "ONNX Runtime fp32 (CUDA)",
                 "TensorRT fp32 (CUDA)", "TensorRT fp16 (CUDA)", "TensorRT int8 (CUDA)"]


def _table_after(md: str, heading: str) -> list:
    """The rows (lists of cells) of the first table after ``heading``."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split(" | ")])
    return rows


def test_suite_markdown_has_the_mmdeploy_form_tables():
    md = suite_markdown(results())
    lat = _table_after(md, "## Latency (ms per image, batch 1, p50)")
    assert lat[0] == ["model", "network input", *COLUMN_LABELS]
    rows = {r[0]: r for r in lat[2:]}
    assert rows["tiny_faster_rcnn"][1:4] == ["192x320", "20.0", "12.0"]
    assert rows["libra_faster_rcnn_r50_fpn_1x"][2:4] == ["3000.0", "1500.0"]
    assert rows["retinanet_r50_fpn_1x"][3] == "failed"  # its export failed: no ONNX Runtime number
    assert rows["peer: torchvision fasterrcnn_resnet50_fpn"][2:4] == ["2500.0", "2000.0"]
    # nothing was measured on CUDA / TensorRT: dashes, and the reasons under the table
    assert all(r[4:] == ["–"] * 5 for r in lat[2:])
    assert "TensorRT int8 (CUDA): not measured: TensorRT is not installed" in md
    assert "retinanet_r50_fpn_1x: ONNX export failed: ExportError: boom" in md

    acc = _table_after(md, "## Accuracy")
    assert acc[0] == ["model", "weights", *COLUMN_LABELS]
    acc_rows = {r[0]: r for r in acc[2:]}
    assert acc_rows["tiny_faster_rcnn"][2:4] == ["40.0", "40.0 (+0.02)"]
    assert acc_rows["libra_faster_rcnn_r50_fpn_1x"][2] == "latency only (random weights)"

    runs = _table_after(md, "## All runs")
    assert runs[0][:5] == ["model", "backend", "batch", "network input", "p50 ms"] and "ΔAP" in runs[0]
    assert "Machine: **AMD EPYC**, 2 core(s) available" in md and "GPU: **none**" in md
    assert "torch 2.14.1" in md and "tensorrt none" not in md
    assert "Load average (1 / 5 / 15 min) at start 0.1 / 0.2 / 0.3" in md and "Warning" not in md
    busy = results()
    busy["load_average"]["end"] = [2.0, 1.0, 0.5]  # the run's own load: no warning
    assert "Warning" not in suite_markdown(busy)
    busy["load_average"]["start"] = [1.5, 1.0, 0.5]  # > half of the 2 cores busy before the run
    assert "Warning: the CPU was busy when the run started" in suite_markdown(busy)


def test_targets_and_ratios_are_rendered_with_verdicts():
    md = suite_markdown(results(libra_ort=2600.0, peer_torch=2500.0, ap_delta=0.3))
    targets = {r[0]: r for r in _table_after(md, "## Targets")[2:]}
    (vs_peer,) = [r for k, r in targets.items() if k.startswith("R-50 Libra Faster R-CNN, ONNX Runtime")]
    assert vs_peer[1:] == ["1.04", "<= 1.0", "FAIL"]
    (speedup,) = [r for k, r in targets.items() if k.startswith("R-50 Libra Faster R-CNN, PyTorch eager")]
    assert speedup[1:] == ["1.15", ">= 1.3", "FAIL"]
    (ap,) = [r for k, r in targets.items() if "AP delta" in k]
    assert ap[1:] == ["0.30", "<= 0.1", "FAIL"]
    good = {r[0]: r for r in _table_after(suite_markdown(results()), "## Targets")[2:]}
    assert all(r[3].startswith("PASS") for r in good.values())
    speedups = _table_after(md, "## PyTorch eager vs ONNX Runtime")
    assert speedups[0][0] == "model" and speedups[0][-1] == "eager / ONNX Runtime"
    assert [r[0] for r in speedups[2:]] == ["tiny_faster_rcnn", "libra_faster_rcnn_r50_fpn_1x"]  # retinanet: no ORT
    assert speedups[2][1:] == ["20.0", "22.0", "12.0", "13.2", "1.67"]
    ratios = _table_after(md, "## Ours / peer")
    assert ratios[0] == ["ours", "backend", "peer backend", "ours ms", "peer ms", "ratio"]
    assert ["libra_faster_rcnn_r50_fpn_1x", "ONNX Runtime fp32 (CPU)", "PyTorch fp32 (CPU)", "2600.0", "2500.0",
            "1.04"] in ratios


def test_single_record_markdown():
    md = latency_markdown(latency_record(100.0, batch=4))
    header, _, row = md.strip().splitlines()[-3:]
    assert header.startswith("| batch | network input | p50 ms | p90 ms | p99 ms | mean ms | per image p50 ms | images/s")
    assert row.startswith("| 4 | 4x3x800x1344 | 100.0 | 110.0 | 120.0 | 100.0 | 25.0 | 40.00 |")
    acc = dict(accuracy_record(41.0, 0.05, 40.95), model="m.onnx", backend="onnxruntime", precision="fp32",
               device="cpu", data="ann.json", images="val", ap_unit="AP points", evaluator="pycocotools")
    md = accuracy_markdown(acc)
    assert "| onnxruntime fp32 (cpu) | 41.0 | 61.0 | 36.0 | – | 41.0 | 41.0 |" in md
    assert "| delta (this - reference) | +0.05 |" in md


def test_latency_chart_writes_a_png(tmp_path):
    path = latency_chart(results(), tmp_path / "sub" / "latency.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
