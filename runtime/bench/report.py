"""Markdown and a bar chart from benchmark records (no measurement here).

- :func:`latency_markdown` / :func:`accuracy_markdown`: one ``libra-bench latency`` /
  ``accuracy`` record;
- :func:`suite_markdown`: the ``make bench`` results (``runtime.bench.suite``): tables in the form
  of MMDeploy's published benchmark (a row per model, a column per backend x precision, cells of
  latency, then of AP with its delta to PyTorch), every run in long form, the torchvision peer and
  our/peer ratios, the targets with pass/fail, what was skipped and why, and the machine;
- :func:`latency_chart`: a PNG bar chart of the batch-1 latencies (matplotlib, Agg).

A value that was not measured is printed as "–" and explained below its table; no cell is ever
filled with a number that does not come from a record.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

from runtime.bench.accuracy import AP_KEYS

__all__ = [
    "accuracy_markdown",
    "batch_entry",
    "fmt",
    "latency_chart",
    "latency_markdown",
    "markdown_table",
    "suite_markdown",
]

PathLike = Union[str, "os.PathLike[str]"]
DASH = "–"


def fmt(value: Optional[float], digits: int = 1, *, signed: bool = False) -> str:
    """A number with ``digits`` decimals ("–" for None); ``signed`` adds "+" to positives."""
    if value is None:
        return DASH
    text = f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"
    return text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells converted with ``str``; "|" escaped)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def batch_entry(record: Optional[Mapping[str, Any]], batch: int = 1) -> Optional[Mapping[str, Any]]:
    """The ``results`` entry of a latency record for ``batch`` (None when absent)."""
    if not record:
        return None
    for entry in record.get("results", []):
        if int(entry["batch"]) == int(batch):
            return entry
    return None


def _split(entry: Mapping[str, Any]) -> str:
    s = entry["split_ms"]
    return " / ".join(fmt(s[k]["p50"]) for k in ("preprocess", "infer", "postprocess"))


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape) if shape else DASH


# ---------------------------------------------------------------------------- single records
def latency_markdown(record: Mapping[str, Any]) -> str:
    """One latency record: what ran where, then a row per batch size."""
    head = [
        f"### Latency: `{record['model']}`",
        "",
        f"- backend **{record['backend']}** {record['precision']} on {record['device']}"
        + (f" ({', '.join(record['providers'])})" if record.get("providers") else "")
        + f", {record['threads']} thread(s); warmup {record['warmup']}, {record['iters']} timed iterations",
        f"- inputs: {record['inputs']}" + (f" (model resize policy {record['model_scale']})" if record.get("model_scale") else ""),
        f"- load {fmt(record.get('load_s'), 2)} s; RSS {fmt(record.get('rss_before_load_mb'), 0)} MiB before load, "
        f"{fmt(record.get('rss_after_load_mb'), 0)} MiB after",
        "",
    ]
    rows = []
    for e in record["results"]:
        lat = e["latency_ms"]
        rows.append([
            e["batch"], _shape(e["input_shape"]), fmt(lat["p50"]), fmt(lat["p90"]), fmt(lat["p99"]), fmt(lat["mean"]),
            fmt(e["per_image_ms"]["p50"]), fmt(e["throughput_ips"], 2), _split(e), fmt(e["detections_per_image"]),
            fmt(e["peak_rss_mb"], 0), fmt(e.get("cuda_max_memory_allocated_mb"), 0),
        ])
    table = markdown_table(
        ["batch", "network input", "p50 ms", "p90 ms", "p99 ms", "mean ms", "per image p50 ms", "images/s",
         "pre / infer / post p50 ms", "dets/image", "peak RSS MiB", "CUDA peak MiB"],
        rows,
    )
    return "\n".join(head) + "\n" + table + "\n"


def accuracy_markdown(record: Mapping[str, Any]) -> str:
    """One accuracy record: AP row, the reference's row and the delta row when present."""
    rows = [[f"{record['backend']} {record['precision']} ({record['device']})",
             *(fmt(record["metrics"].get(k)) for k in AP_KEYS)]]
    ref = record.get("reference")
    if ref:
        rows.append([f"reference: torch fp32 ({record['device']})", *(fmt(ref["metrics"].get(k)) for k in AP_KEYS)])
        rows.append(["delta (this - reference)", *(fmt(record["delta"].get(k), 2, signed=True) for k in AP_KEYS)])
    head = [
        f"### Accuracy: `{record['model']}`",
        "",
        f"- data: `{record['data']}` ({record['num_images']} images from `{record['images']}`), "
        f"{record['num_detections']} detections; {record['ap_unit']}; evaluator {record['evaluator']}",
        "",
    ]
    return "\n".join(head) + "\n" + markdown_table(["backend", *AP_KEYS], rows) + "\n"


# ---------------------------------------------------------------------------- the suite
def _column_note(col: Mapping[str, Any]) -> Optional[str]:
    return None if col.get("available") else f"{col['label']}: not measured: {col.get('reason') or 'unavailable'}"


def _latency_cell(run: Optional[Mapping[str, Any]], batch: int = 1) -> str:
    if not run:
        return DASH
    entry = batch_entry(run.get("latency"), batch)
    if entry is None:
        return "failed" if run.get("error") else DASH
    return fmt(entry["per_image_ms"]["p50"])


def _accuracy_cell(run: Optional[Mapping[str, Any]]) -> str:
    acc = (run or {}).get("accuracy")
    if not acc:
        return "failed" if (run or {}).get("accuracy_error") else DASH
    ap = fmt(acc["metrics"].get("AP"))
    delta = (acc.get("delta") or {}).get("AP")
    return ap if delta is None else f"{ap} ({fmt(delta, 2, signed=True)})"


def _network_input(model: Mapping[str, Any]) -> str:
    for run in model.get("runs", {}).values():
        entry = batch_entry(run.get("latency"), 1)
        if entry is not None:
            return _shape(entry["input_shape"][-2:])
    return DASH


def _groups_used(results: Mapping[str, Any]) -> set:
    return {m["group"] for m in results["models"]} | ({"r50"} if results.get("peer") else set())


def _verdict(target: Mapping[str, Any]) -> str:
    note = target.get("note")
    if target["passed"] is None:
        return f"not measured ({note or 'no data'})"
    return ("PASS" if target["passed"] else "FAIL") + (f" ({note})" if note else "")


def suite_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``bench/results.md`` from the suite's results dict (see runtime.bench.suite)."""
    cols: List[Mapping[str, Any]] = list(results["columns"])
    machine = results["machine"]
    settings = results["settings"]
    size = "x".join(str(v) for v in settings["size"])
    out: List[str] = [
        "# libra-rcnn benchmark (`make bench`)",
        "",
        f"Generated by `{results.get('command', 'python -m runtime.bench.suite')}` on {results['created']} "
        f"in {fmt(results.get('duration_s'), 0)} s. Machine: **{machine['cpu']}**, "
        f"{machine['cores_available']} core(s) available ({machine['cores_logical']} logical), "
        f"GPU: **{machine['gpu']}**; {results['threads']} thread(s) per backend. "
        + "Library versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v != "none") + ".",
        "",
        f"Latency: one image of {size} (seeded random pixels) per batch, resized by each model's own policy "
        "(network input column), whole pipeline (pre-processing + model + post-processing), median (p50) of "
        + "; ".join(f"{g} models: {s['iters']} timed runs after {s['warmup']} warm-up" for g, s in settings["groups"].items()
                    if g in _groups_used(results))
        + f", repeated over {settings.get('rounds', 1)} round(s). Accuracy: COCO box AP on the synthetic val set "
        f"(`{settings['data']['ann_file']}`), in AP points, delta to PyTorch fp32 on the same device in brackets.",
        "",
    ]

    load = results.get("load_average") or {}
    if load.get("start") is not None:
        cores = machine.get("cores_available") or 1
        # the run's own processes load the CPU, so only the load before it started tells of others
        busy = load["start"][0] > 0.5 * cores
        out += [f"Load average (1 / 5 / 15 min) at start {' / '.join(str(v) for v in load['start'])}, at end "
                f"{' / '.join(str(v) for v in load.get('end') or [])} (the end includes this run's own load)."
                + (" **Warning: the CPU was busy when the run started; if other processes kept running, these "
                   "timings are not reliable: run again on a quiet machine.**" if busy else ""), ""]

    # -- MMDeploy-form latency table
    out += ["## Latency (ms per image, batch 1, p50)", ""]
    rows = []
    for m in results["models"]:
        rows.append([m["name"], _network_input(m), *(_latency_cell(m["runs"].get(c["key"])) for c in cols)])
    peer = results.get("peer")
    if peer:
        rows.append([f"peer: {peer['name']}", _network_input(peer), *(_latency_cell(peer["runs"].get(c["key"])) for c in cols)])
    out += [markdown_table(["model", "network input", *(c["label"] for c in cols)], rows), ""]
    notes = [n for n in (_column_note(c) for c in cols) if n]
    notes += [f"{m['name']}: ONNX export failed: {m['export_error']}" for m in results["models"] if m.get("export_error")]
    if peer and peer.get("export_error"):
        notes.append(f"peer ONNX export failed: {peer['export_error']}")
    out += [f"- {n}" for n in notes] + ([""] if notes else [])

    # -- MMDeploy-form accuracy table
    out += ["## Accuracy (box AP on the synthetic val set, AP points; delta to PyTorch fp32)", ""]
    acc_rows = []
    for m in results["models"]:
        if m.get("accuracy"):
            acc_rows.append([m["name"], m["weights"], *(_accuracy_cell(m["runs"].get(c["key"])) for c in cols)])
        else:
            acc_rows.append([m["name"], m["weights"], *([m.get("accuracy_note") or "latency only"] + [DASH] * (len(cols) - 1))])
    out += [markdown_table(["model", "weights", *(c["label"] for c in cols)], acc_rows), ""]

    # -- every run in long form
    out += ["## All runs", ""]
    long_rows = []
    for m in [*results["models"], *([peer] if peer else [])]:
        for c in cols:
            run = m["runs"].get(c["key"])
            if not run:
                continue
            lat = run.get("latency")
            acc = (run.get("accuracy") or {})
            metrics = acc.get("metrics") or {}
            delta = (acc.get("delta") or {}).get("AP")
            entries = (lat or {}).get("results") or [None]
            for e in entries:
                long_rows.append([
                    m["name"], c["label"],
                    DASH if e is None else e["batch"],
                    DASH if e is None else _shape(e["input_shape"]),
                    DASH if e is None else fmt(e["latency_ms"]["p50"]),
                    DASH if e is None else fmt(e["latency_ms"]["p90"]),
                    DASH if e is None else fmt(e["latency_ms"]["p99"]),
                    DASH if e is None else fmt(e["throughput_ips"], 2),
                    DASH if e is None else _split(e),
                    DASH if e is None else fmt(e["detections_per_image"]),
                    DASH if e is None else fmt(e["peak_rss_mb"], 0),
                    *(fmt(metrics.get(k)) for k in AP_KEYS),
                    fmt(delta, 2, signed=True),
                    run.get("error") or run.get("accuracy_error") or "",
                ])
    out += [markdown_table(
        ["model", "backend", "batch", "network input", "p50 ms", "p90 ms", "p99 ms", "images/s",
         "pre / infer / post p50 ms", "dets/image", "peak RSS MiB", *AP_KEYS, "ΔAP", "note"],
        long_rows,
    ), ""]
    out += ["peak RSS: the high-water mark of the measuring process (a fresh process per model and backend; "
            "model loading included). Peer latencies include its own resize and normalisation, done inside "
            "its model.", ""]

    # -- issue 6: eager vs ONNX Runtime
    if results.get("speedups"):
        out += ["## PyTorch eager vs ONNX Runtime (CPU, batch 1, ms per image; ratio > 1: ONNX Runtime faster)", ""]
        out += [markdown_table(
            ["model", "eager p50", "eager p90", "ONNX Runtime p50", "ONNX Runtime p90", "eager / ONNX Runtime"],
            [[s["model"], fmt(s["eager_p50_ms"]), fmt(s["eager_p90_ms"]), fmt(s["ort_p50_ms"]), fmt(s["ort_p90_ms"]),
              fmt(s["ratio"], 2)] for s in results["speedups"]],
        ), ""]

    # -- ratios to the peer
    if results.get("ratios"):
        out += ["## Ours / peer (p50 latency ratio, batch 1; < 1 means ours is faster)", ""]
        out += [markdown_table(
            ["ours", "backend", "peer backend", "ours ms", "peer ms", "ratio"],
            [[r["ours"], r["ours_backend"], r["peer_backend"], fmt(r["ours_ms"]), fmt(r["peer_ms"]), fmt(r["ratio"], 2)]
             for r in results["ratios"]],
        ), ""]

    # -- targets
    out += ["## Targets", ""]
    out += [markdown_table(
        ["target", "measured", "required", "result"],
        [[t["description"], fmt(t["measured"], t.get("digits", 2)), f"{t['op']} {t['threshold']}",
          _verdict(t)]
         for t in results.get("targets", [])],
    ), ""]

    # -- models and what was skipped
    out += ["## Models", ""]
    out += [markdown_table(
        ["model", "config", "weights", "checkpoint", "ONNX"],
        [[m["name"], m["config"], m["weights"], m.get("checkpoint") or DASH, m.get("onnx") or DASH] for m in results["models"]],
    ), ""]
    if results.get("skipped"):
        out += ["## Skipped", ""] + [f"- {s}" for s in results["skipped"]] + [""]
    return "\n".join(out)


def latency_chart(results: Mapping[str, Any], path: PathLike) -> Path:
    """Horizontal bars of the batch-1 p50 latency (ms, log scale) of every model x backend run
    and the peer; one colour per backend column. Writes ``path`` (PNG) and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in results["columns"] if c.get("available")]
    entries = [*results["models"], *([results["peer"]] if results.get("peer") else [])]
    labels, values, colors = [], [], []
    palette = plt.get_cmap("tab10")
    for m in entries:
        for i, c in enumerate(cols):
            e = batch_entry((m["runs"].get(c["key"]) or {}).get("latency"), 1)
            if e is None:
                continue
            labels.append(f"{m['name']} · {c['label']}")
            values.append(e["per_image_ms"]["p50"])
            colors.append(palette(i % 10))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 0.35 * max(4, len(labels)) + 1.5))
    if values:
        y = list(range(len(values)))[::-1]
        ax.barh(y, values, color=colors)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 1.5, max(values) * 2.5)  # room for the value labels
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {v:.1f}", va="center", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
    size = "x".join(str(v) for v in results["settings"]["size"])
    ax.set_xlabel("p50 latency per image, ms (log scale)")
    ax.set_title(f"Latency at batch 1, {size} input; {results['machine']['cpu']}, GPU: {results['machine']['gpu']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
