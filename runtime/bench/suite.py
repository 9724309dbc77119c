"""``make bench``: latency and COCO accuracy of every model on every available backend, with the
torchvision peer measured in the same run; writes ``bench/results.json``, ``bench/results.md`` and
``bench/latency.png``.

For each model (tiny and R-50 Faster R-CNN / Libra Faster R-CNN / RetinaNet by default):

1. **weights**: a checkpoint given with ``--checkpoint NAME=PATH``, else found in
   ``runs/NAME/model_final.pth`` (what ``make train CONFIG=configs/NAME.yaml`` writes; for
   ``tiny_faster_rcnn`` also ``runs/demo/model_final.pth`` of ``make demo``), else -- tiny models
   only, with ``--train-iters N`` -- a short ``libra-train`` run; otherwise random weights
   (seed 0), and the model is measured for latency only;
2. **export** the checkpoint with ``export.onnx_export.export_model``;
3. **latency**: ``libra-bench latency`` on each backend column (:func:`plan_columns`: PyTorch
   eager and ONNX Runtime on the CPU; on a GPU PyTorch CUDA, the CUDA execution provider and
   TensorRT engines given with ``--engine``), each in a fresh process, so peak memory and thread
   settings belong to that run alone;
4. **accuracy** (trained weights only): ``libra-bench accuracy`` per column on the synthetic val
   set, the AP delta taken against PyTorch fp32 on the same device.

A column that cannot run here (no GPU, no TensorRT, ...) is kept in the tables with "–" and the
reason; nothing is ever filled in for it. The peer (``runtime.bench.peer``) runs in PyTorch eager
and through its own ONNX export, and the targets (issue 6 and 7) are computed from the runs.

Run from the repository root: ``make bench [BENCH_ARGS="..."]`` or
``python -m runtime.bench.suite --help``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from runtime.bench.accuracy import ap_delta
from runtime.bench.latency import parse_batches, parse_size, summarize
from runtime.bench.machine import available_cores, machine_info

__all__ = [
    "Column",
    "DEFAULT_MODELS",
    "MODEL_SPECS",
    "ModelSpec",
    "build_parser",
    "compute_ratios",
    "compute_speedups",
    "compute_targets",
    "find_checkpoint",
    "main",
    "merge_latency",
    "plan_columns",
    "probe_environment",
]


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: ``name`` (the config's stem), its ``config`` file, its ``group``
    ("tiny" or "r50": which timing settings apply)."""

    name: str
    config: str
    group: str


MODEL_SPECS: Tuple[ModelSpec, ...] = (
    ModelSpec("tiny_faster_rcnn", "configs/tiny_faster_rcnn.yaml", "tiny"),
    ModelSpec("tiny_libra_faster_rcnn", "configs/tiny_libra_faster_rcnn.yaml", "tiny"),
    ModelSpec("tiny_retinanet", "configs/tiny_retinanet.yaml", "tiny"),
    ModelSpec("tiny_libra_retinanet", "configs/tiny_libra_retinanet.yaml", "tiny"),
    ModelSpec("faster_rcnn_r50_fpn_1x", "configs/faster_rcnn_r50_fpn_1x.yaml", "r50"),
    ModelSpec("libra_faster_rcnn_r50_fpn_1x", "configs/libra_faster_rcnn_r50_fpn_1x.yaml", "r50"),
    ModelSpec("retinanet_r50_fpn_1x", "configs/retinanet_r50_fpn_1x.yaml", "r50"),
    ModelSpec("libra_retinanet_r50_fpn_1x", "configs/libra_retinanet_r50_fpn_1x.yaml", "r50"),
)
SPECS_BY_NAME = {s.name: s for s in MODEL_SPECS}
DEFAULT_MODELS = (
    "tiny_faster_rcnn", "tiny_libra_faster_rcnn", "tiny_retinanet",
    "faster_rcnn_r50_fpn_1x", "libra_faster_rcnn_r50_fpn_1x", "retinanet_r50_fpn_1x",
)
TARGET_MODEL = "libra_faster_rcnn_r50_fpn_1x"
R50_NUM_CLASSES = 80  # COCO's, for the random-weights R-50 models
BACKEND_LABELS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}


def _load_average() -> Optional[List[float]]:
    """The 1/5/15-minute load averages (None where the OS has none): a busy machine skews timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _log(start: float, message: str) -> None:
    print(f"[bench {time.perf_counter() - start:7.1f}s] {message}", flush=True)


# ---------------------------------------------------------------------------- backend columns
@dataclass(frozen=True)
class Column:
    """One backend x precision x device column of the tables; ``reason`` says why it is not
    ``available`` (then nothing is measured for it)."""

    key: str
    backend: str
    precision: str
    device: str
    label: str
    available: bool
    reason: Optional[str] = None


def _column(backend: str, precision: str, device: str, reason: Optional[str]) -> Column:
    label = f"{BACKEND_LABELS[backend]} {precision} ({'CPU' if device == 'cpu' else 'CUDA'})"
    return Column(f"{backend}/{precision}/{device}", backend, precision, device, label, reason is None, reason)


def probe_environment() -> Dict[str, Any]:
    """What can run here: ``{"cuda": bool, "gpu": name or None, "ort_providers": [...],
    "tensorrt": version or None, "tensorrt_error": why not importable}`` (imports torch)."""
    env: Dict[str, Any] = {"cuda": False, "gpu": None, "ort_providers": [], "tensorrt": None, "tensorrt_error": None}
    try:
        import torch

        env["cuda"] = bool(torch.cuda.is_available())
        env["gpu"] = torch.cuda.get_device_name(0) if env["cuda"] else None
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        env["ort_providers"] = list(ort.get_available_providers())
    except ImportError:
        pass
    try:
        import tensorrt as trt

        env["tensorrt"] = str(trt.__version__)
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        env["tensorrt_error"] = f"{type(exc).__name__}: {exc}"
    return env


def plan_columns(env: Mapping[str, Any], engines: Optional[Mapping[str, Mapping[str, str]]] = None) -> List[Column]:
    """The columns of the tables, each available or not with the reason.

    ``env``: :func:`probe_environment`'s dict. ``engines``: ``{model: {precision: engine path}}``
    given with ``--engine``; a TensorRT column is available only when TensorRT imports, a CUDA
    GPU is present and at least one engine of that precision was given (this repository builds
    ONNX files, not engines).
    """
    engines = engines or {}
    providers = list(env.get("ort_providers") or [])
    cuda = bool(env.get("cuda"))
    no_gpu = "no CUDA GPU on this machine (torch.cuda.is_available() is False)"
    cols = [
        _column("torch", "fp32", "cpu", None),
        _column("onnxruntime", "fp32", "cpu",
                None if "CPUExecutionProvider" in providers else "onnxruntime is not installed"),
        _column("torch", "fp32", "cuda", None if cuda else no_gpu),
    ]
    if not cuda:
        ort_cuda = no_gpu
    elif "CUDAExecutionProvider" not in providers:
        ort_cuda = f"onnxruntime has no CUDAExecutionProvider (providers {providers}; install onnxruntime-gpu)"
    else:
        ort_cuda = None
    cols.append(_column("onnxruntime", "fp32", "cuda", ort_cuda))
    for precision in ("fp32", "fp16", "int8"):
        if env.get("tensorrt") is None:
            why = "TensorRT is not installed (`import tensorrt` failed"
            why += f": {env['tensorrt_error']})" if env.get("tensorrt_error") else ")"
        elif not cuda:
            why = no_gpu
        elif not any(precision in by_prec for by_prec in engines.values()):
            why = f"no {precision} engine given (build one from the exported model.onnx, pass --engine MODEL:{precision}=PATH)"
        else:
            why = None
        cols.append(_column("tensorrt", precision, "cuda", why))
    return cols


# ---------------------------------------------------------------------------- weights
def _checkpoint_summary(path: Path) -> Tuple[Optional[str], Optional[int]]:
    """(embedded config name, training iteration) of a checkpoint, (None, None) if unreadable."""
    from training.models.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        return None, None
    name = (ckpt.get("config") or {}).get("name")
    iteration = (ckpt.get("meta") or {}).get("iteration")
    return name, (int(iteration) if iteration is not None else None)


def find_checkpoint(
    spec: ModelSpec, given: Mapping[str, Path], runs_dir: Path = Path("runs")
) -> Optional[Tuple[Path, str]]:
    """``(checkpoint, how it was found)`` for ``spec``: ``given[spec.name]``, else
    ``runs_dir/NAME/model_final.pth`` or (tiny_faster_rcnn) ``runs_dir/demo/model_final.pth``
    whose embedded config name is ``spec.name``; None when there is none."""
    if spec.name in given:
        path = Path(given[spec.name])
        if not path.is_file():
            raise ValueError(f"--checkpoint {spec.name}={path}: file not found")
        return path, "given with --checkpoint"
    candidates = [runs_dir / spec.name / "model_final.pth"]
    if spec.name == "tiny_faster_rcnn":
        candidates.append(runs_dir / "demo" / "model_final.pth")
    for path in candidates:
        if path.is_file() and _checkpoint_summary(path)[0] == spec.name:
            return path, f"found in {path.parent}"
    return None


def _synthetic_classes(ann_file: Path) -> Tuple[List[str], List[int]]:
    cats = sorted(json.loads(ann_file.read_text(encoding="utf-8"))["categories"], key=lambda c: c["id"])
    return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]


def make_random_checkpoint(spec: ModelSpec, path: Path, *, ann_file: Path, seed: int = 0) -> Path:
    """Save ``spec``'s model with random weights (``torch.manual_seed(seed)``): tiny models with the
    synthetic set's classes (so their latency is that of a trained one), R-50 with 80 classes."""
    import torch

    from training.config import load_config
    from training.models import build_model, make_checkpoint, save_checkpoint

    if spec.group == "tiny":
        names, ids = _synthetic_classes(ann_file)
    else:
        names, ids = [f"class_{i}" for i in range(R50_NUM_CLASSES)], None
    cfg = load_config(spec.config, [f"model.num_classes={len(names)}"])
    cfg.model.class_names = names
    torch.manual_seed(seed)
    model = build_model(cfg, pretrained=False).eval()
    meta = {"class_names": names, "random_init_seed": seed}
    if ids is not None:
        meta["cat_ids"] = ids
    save_checkpoint(path, make_checkpoint(model, cfg, meta=meta))
    return path


def train_briefly(spec: ModelSpec, work_dir: Path, *, data_dir: Path, iters: int, log: Path) -> Path:
    """``libra-train`` ``spec`` on the synthetic set for ``iters`` iterations (no eval at the end);
    returns ``work_dir/model_final.pth``. RuntimeError naming the log on failure."""
    final = work_dir / "model_final.pth"
    if final.is_file() and _checkpoint_summary(final) == (spec.name, iters):
        return final
    sets = [
        f"train.max_iters={iters}", "train.eval_at_end=false",
        f"data.train.ann_file={data_dir / 'annotations' / 'instances_train.json'}",
        f"data.train.img_dir={data_dir / 'train'}",
        f"data.val.ann_file={data_dir / 'annotations' / 'instances_val.json'}",
        f"data.val.img_dir={data_dir / 'val'}",
    ]
    cmd = [sys.executable, "-m", "training.train", "--config", spec.config, "--work-dir", str(work_dir),
           "--no-progress", "--set", *sets]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not final.is_file():
        raise RuntimeError(f"training {spec.name} failed (exit {rc}); see {log}")
    return final


# ---------------------------------------------------------------------------- measuring
def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


def run_bench_cli(
    args: Sequence[str], json_path: Path, *, threads: int, timeout: Optional[float] = None
) -> Tuple[Optional[dict], Optional[str]]:
    """Run ``python -m runtime.bench.cli ARGS --json JSON --quiet`` in a fresh process (its output in
    ``JSON``'s ``.log``); returns (record, None) or (None, error text)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    log = json_path.with_suffix(".log")
    if json_path.exists():
        json_path.unlink()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "runtime.bench.cli", *args, "--threads", str(threads), "--json", str(json_path), "--quiet"]
    try:
        with open(log, "w", encoding="utf-8") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s (log {log})"
    if rc != 0 or not json_path.is_file():
        return None, f"exit {rc}: {_tail(log)} (log {log})"
    record = json.loads(json_path.read_text(encoding="utf-8"))
    record.pop("machine", None)  # the suite records the machine once
    return record, None


def merge_latency(records: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """One latency record from several rounds of the same run: the timed samples of each batch
    size pooled and their statistics recomputed; peak memory the maximum; the rest from the first."""
    if not records:
        raise ValueError("merge_latency: no records")
    merged = json.loads(json.dumps(records[0]))
    if len(records) == 1:
        return merged
    for entry in merged["results"]:
        same = [e for r in records for e in r["results"] if e["batch"] == entry["batch"]]
        samples = [t for e in same for t in e["samples_ms"]]
        stats = summarize(samples)
        b = int(entry["batch"])
        entry["samples_ms"] = samples
        entry["latency_ms"] = stats
        entry["per_image_ms"] = {k: round(stats[k] / b, 3) for k in ("p50", "p90", "mean", "min")}
        entry["throughput_ips"] = round(b * len(samples) / (sum(samples) / 1e3), 3)
        entry["peak_rss_mb"] = max(e["peak_rss_mb"] for e in same)
    merged["rounds"] = len(records)
    merged["iters"] = sum(int(r["iters"]) for r in records)
    return merged


def _p50(run: Optional[Mapping[str, Any]], batch: int = 1) -> Optional[float]:
    from runtime.bench.report import batch_entry

    entry = batch_entry((run or {}).get("latency"), batch)
    return None if entry is None else float(entry["per_image_ms"]["p50"])


def compute_ratios(models: Sequence[Mapping[str, Any]], peer: Optional[Mapping[str, Any]], columns: Sequence[Column]) -> List[dict]:
    """Our/peer p50 latency ratios at batch 1 for every R-50 model run that has a peer run to
    compare with: against the peer in PyTorch eager on the same device, and against the peer on
    the same backend column (when that differs)."""
    if not peer:
        return []
    by_key = {c.key: c for c in columns}
    out = []
    for m in models:
        if m["group"] != "r50":
            continue
        for key, run in m["runs"].items():
            ours = _p50(run)
            col = by_key.get(key)
            if ours is None or col is None:
                continue
            peer_keys = [f"torch/fp32/{col.device}"] + ([key] if key != f"torch/fp32/{col.device}" else [])
            for pk in peer_keys:
                theirs = _p50(peer["runs"].get(pk))
                if theirs is None or pk not in by_key:
                    continue
                out.append({
                    "ours": m["name"], "ours_backend": col.label, "peer_backend": by_key[pk].label,
                    "ours_ms": ours, "peer_ms": theirs, "ratio": round(ours / theirs, 4),
                })
    return out


def compute_speedups(models: Sequence[Mapping[str, Any]]) -> List[dict]:
    """Issue 6's export benchmark: per model, PyTorch eager vs ONNX Runtime on the CPU at batch 1,
    p50 and p90 per image, and ``ratio`` = eager p50 / ONNX Runtime p50 (> 1: ONNX Runtime faster)."""
    from runtime.bench.report import batch_entry

    out = []
    for m in models:
        eager = batch_entry((m["runs"].get("torch/fp32/cpu") or {}).get("latency"), 1)
        ort = batch_entry((m["runs"].get("onnxruntime/fp32/cpu") or {}).get("latency"), 1)
        if eager is None or ort is None:
            continue
        out.append({
            "model": m["name"],
            "eager_p50_ms": eager["per_image_ms"]["p50"], "eager_p90_ms": eager["per_image_ms"]["p90"],
            "ort_p50_ms": ort["per_image_ms"]["p50"], "ort_p90_ms": ort["per_image_ms"]["p90"],
            "ratio": round(eager["per_image_ms"]["p50"] / ort["per_image_ms"]["p50"], 3),
        })
    return out


def _target(name: str, description: str, measured: Optional[float], op: str, threshold: float, note: str = "") -> dict:
    passed = None if measured is None else (measured <= threshold if op == "<=" else measured >= threshold)
    return {"name": name, "description": description, "measured": measured, "op": op, "threshold": threshold,
            "passed": passed, "note": note or None}


def compute_targets(models: Sequence[Mapping[str, Any]], peer: Optional[Mapping[str, Any]]) -> List[dict]:
    """The targets of issues 6 and 7, from the runs (``passed`` None when not measured):

    - ``ours_vs_peer``: R-50 Libra Faster R-CNN in ONNX Runtime (CPU, batch 1) / torchvision's
      Faster R-CNN R-50-FPN in PyTorch eager (CPU, same run) <= 1.0;
    - ``ort_speedup``: the same model's PyTorch eager / ONNX Runtime latency (CPU) >= 1.3;
    - ``ap_delta:<model>``: |AP(ONNX Runtime) - AP(PyTorch)| on the CPU <= 0.1 AP points, per model
      with trained weights.
    """
    libra = next((m for m in models if m["name"] == TARGET_MODEL), None)
    ort = _p50(libra["runs"].get("onnxruntime/fp32/cpu")) if libra else None
    eager = _p50(libra["runs"].get("torch/fp32/cpu")) if libra else None
    peer_eager = _p50(peer["runs"].get("torch/fp32/cpu")) if peer else None
    why = "" if libra else f"{TARGET_MODEL} not in this run"
    targets = [
        _target("ours_vs_peer",
                "R-50 Libra Faster R-CNN, ONNX Runtime CPU / torchvision Faster R-CNN R-50-FPN, PyTorch eager CPU "
                "(p50, batch 1, same run)",
                None if ort is None or peer_eager is None else round(ort / peer_eager, 3), "<=", 1.0,
                why or ("" if peer_eager is not None else "peer not measured")),
        _target("ort_speedup", "R-50 Libra Faster R-CNN, PyTorch eager CPU / ONNX Runtime CPU (p50, batch 1)",
                None if ort is None or eager is None else round(eager / ort, 3), ">=", 1.3, why),
    ]
    with_acc = [m for m in models if m.get("accuracy")]
    for m in with_acc:
        acc = (m["runs"].get("onnxruntime/fp32/cpu") or {}).get("accuracy") or {}
        d = (acc.get("delta") or {}).get("AP")
        ref_ap = ((acc.get("reference") or {}).get("metrics") or {}).get("AP")
        note = ""
        if ref_ap is not None and ref_ap < 1.0:
            note = f"PyTorch AP is {ref_ap:.2f}: too little trained for the delta to mean much"
        targets.append(_target(f"ap_delta:{m['name']}", f"{m['name']}: |AP delta| ONNX Runtime vs PyTorch, CPU (AP points)",
                               None if d is None else abs(d), "<=", 0.1, note))
    if not with_acc:
        targets.append(_target("ap_delta", "|AP delta| ONNX Runtime vs PyTorch, CPU (AP points)", None, "<=", 0.1,
                               "no model with trained weights in this run: give --checkpoint, make demo, or --train-iters"))
    return targets


# ---------------------------------------------------------------------------- the run
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.bench.suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma list of {', '.join(SPECS_BY_NAME)}, or 'tiny' / 'r50' / 'all' (default: the 6 of issue 7)")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"), help="synthetic dataset root (make data)")
    p.add_argument("--out", type=Path, default=Path("bench"), help="results.json / results.md / latency.png go here")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench"), help="checkpoints, exports, raw records, logs")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where trained checkpoints are looked for")
    p.add_argument("--size", type=parse_size, default=(800, 1333), metavar="HxW", help="latency input size (800x1333)")
    p.add_argument("--threads", type=int, default=None, help="threads per backend (default: available cores)")
    p.add_argument("--tiny-warmup", type=int, default=3)
    p.add_argument("--tiny-iters", type=int, default=20)
    p.add_argument("--tiny-batch", type=parse_batches, default=[1, 4], help="batch sizes of the tiny models (1,4)")
    p.add_argument("--r50-warmup", type=int, default=1)
    p.add_argument("--r50-iters", type=int, default=5)
    p.add_argument("--r50-batch", type=parse_batches, default=[1], help="batch sizes of the R-50 models and the peer (1)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every latency run this many times, samples pooled")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="trained weights of a model")
    p.add_argument("--engine", action="append", default=[], metavar="NAME:PRECISION=PATH",
                   help="a TensorRT engine of a model (built elsewhere from its exported model.onnx)")
    p.add_argument("--train-iters", type=int, default=0,
                   help="train tiny models without a checkpoint for N iterations first (0: latency only for them)")
    p.add_argument("--accuracy-images", type=int, default=None, help="score only the first N val images")
    p.add_argument("--no-peer", action="store_true", help="skip the torchvision peer")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measuring process")
    return p


def _select_models(text: str) -> List[ModelSpec]:
    names: List[str] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item == "all":
            names += [s.name for s in MODEL_SPECS]
        elif item in ("tiny", "r50"):
            names += [s.name for s in MODEL_SPECS if s.group == item]
        elif item in SPECS_BY_NAME:
            names.append(item)
        else:
            raise ValueError(f"--models: unknown model {item!r}; known: {', '.join(SPECS_BY_NAME)}, tiny, r50, all")
    return [SPECS_BY_NAME[n] for n in dict.fromkeys(names)]


def _pairs(items: Sequence[str], flag: str) -> Dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag} {item!r}: expected KEY=PATH")
        out[key.strip()] = value.strip()
    return out


def _engines(items: Sequence[str]) -> Dict[str, Dict[str, str]]:
    out: Dict[str, Dict[str, str]] = {}
    for key, path in _pairs(items, "--engine").items():
        name, sep, precision = key.partition(":")
        if not sep or precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"--engine {key}={path}: expected NAME:fp32|fp16|int8=PATH")
        out.setdefault(name, {})[precision] = path
    return out


def run_suite(args: argparse.Namespace) -> Dict[str, Any]:
    """Measure everything (see the module docstring) and return the results dict."""
    start = time.perf_counter()
    load_start = _load_average()
    specs = _select_models(args.models)
    given = {k: Path(v) for k, v in _pairs(args.checkpoint, "--checkpoint").items()}
    engines = _engines(args.engine)
    unknown = sorted((set(given) | set(engines)) - set(SPECS_BY_NAME))
    if unknown:
        raise ValueError(f"--checkpoint/--engine name(s) {unknown} are not models; known: {', '.join(SPECS_BY_NAME)}")
    ann_file = args.data / "annotations" / "instances_val.json"
    val_dir = args.data / "val"
    if not ann_file.is_file():
        raise ValueError(f"{ann_file}: synthetic val set not found (run `make data` first)")
    threads = int(args.threads) if args.threads else available_cores()
    work = args.work_dir
    raw = work / "raw"
    groups = {
        "tiny": {"warmup": args.tiny_warmup, "iters": args.tiny_iters, "batch": list(args.tiny_batch)},
        "r50": {"warmup": args.r50_warmup, "iters": args.r50_iters, "batch": list(args.r50_batch)},
    }
    env = probe_environment()
    columns = plan_columns(env, engines)
    _log(start, f"{len(specs)} model(s); columns: " + ", ".join(
        f"{c.label}{'' if c.available else ' (skipped)'}" for c in columns))
    size_arg = f"{args.size[0]}x{args.size[1]}"

    def latency_args(group: str) -> List[str]:
        g = groups[group]
        return ["--size", size_arg, "--warmup", str(g["warmup"]), "--iters", str(g["iters"]),
                "--batch", ",".join(str(b) for b in g["batch"])]

    def measure(kind_args: List[str], stem: str) -> Tuple[Optional[dict], Optional[str]]:
        records, errors = [], []
        for r in range(max(1, args.rounds)):
            record, error = run_bench_cli(kind_args, raw / f"{stem}.r{r}.json", threads=threads, timeout=args.timeout)
            if record:
                records.append(record)
            else:
                errors.append(error)
        return (merge_latency(records) if records else None), (errors[0] if errors else None)

    models: List[Dict[str, Any]] = []
    for spec in specs:
        entry: Dict[str, Any] = {"name": spec.name, "config": spec.config, "group": spec.group, "runs": {},
                                 "checkpoint": None, "onnx": None, "export_error": None, "accuracy": False,
                                 "accuracy_note": None}
        found = find_checkpoint(spec, given, args.runs_dir)
        if found is None and spec.group == "tiny" and args.train_iters > 0:
            _log(start, f"{spec.name}: training {args.train_iters} iterations (no checkpoint found)")
            path = train_briefly(spec, work / "train" / spec.name, data_dir=args.data, iters=args.train_iters,
                                 log=work / "logs" / f"train_{spec.name}.log")
            found = (path, "a short run by the suite: AP of a short run, not converged")
        if found is not None:
            path, how = found
            iteration = _checkpoint_summary(path)[1]
            entry["weights"] = f"trained ({iteration if iteration is not None else '?'} iterations; {how})"
            entry["accuracy"] = spec.group == "tiny" or spec.name in given
            if not entry["accuracy"]:
                entry["accuracy_note"] = "latency only (R-50 weights found but not given: pass --checkpoint to score them)"
        else:
            path = make_random_checkpoint(spec, work / "checkpoints" / f"{spec.name}_random.pth", ann_file=ann_file)
            entry["weights"] = "random (seed 0)"
            entry["accuracy_note"] = "latency only (random weights)"
        entry["checkpoint"] = str(path)
        try:
            from export.onnx_export import export_model

            t0 = time.perf_counter()
            onnx_path = export_model(path, work / "onnx" / spec.name)
            entry["onnx"] = str(onnx_path)
            entry["export_s"] = round(time.perf_counter() - t0, 1)
        except Exception as exc:  # any export failure is reported in the table, the rest goes on
            entry["export_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        gc.collect()
        _log(start, f"{spec.name}: weights {entry['weights']}; onnx {entry['onnx'] or entry['export_error']}")

        for col in columns:
            if not col.available:
                continue
            if col.backend == "torch":
                model_file: Optional[str] = str(path)
            elif col.backend == "onnxruntime":
                model_file = entry["onnx"]
            else:
                model_file = engines.get(spec.name, {}).get(col.precision)
            if model_file is None:
                why = entry["export_error"] if col.backend == "onnxruntime" else f"no {col.precision} engine given"
                entry["runs"][col.key] = {"latency": None, "accuracy": None, "error": f"not run: {why}"}
                continue
            stem = f"{spec.name}.{col.backend}.{col.precision}.{col.device}"
            common = ["--backend", col.backend, "--device", col.device]
            latency, error = measure(["latency", model_file, *common, *latency_args(spec.group)], f"latency.{stem}")
            run: Dict[str, Any] = {"latency": latency, "accuracy": None, "error": error}
            if latency:
                _log(start, f"{spec.name} {col.label}: p50 {latency['results'][0]['per_image_ms']['p50']:.1f} ms/image "
                            f"(batch {latency['results'][0]['batch']})")
            else:
                _log(start, f"{spec.name} {col.label}: FAILED {error}")
            if entry["accuracy"]:
                acc_args = ["accuracy", model_file, *common, "--data", str(ann_file), "--images", str(val_dir)]
                if args.accuracy_images:
                    acc_args += ["--max-images", str(args.accuracy_images)]
                acc, acc_error = run_bench_cli(acc_args, raw / f"accuracy.{stem}.json", threads=threads, timeout=args.timeout)
                run["accuracy"], run["accuracy_error"] = acc, acc_error
                _log(start, f"{spec.name} {col.label}: AP {acc['metrics']['AP']:.2f}" if acc else
                     f"{spec.name} {col.label}: accuracy FAILED {acc_error}")
            entry["runs"][col.key] = run
        # AP deltas against PyTorch fp32 on the same device
        for key, run in entry["runs"].items():
            acc = run.get("accuracy")
            ref = (entry["runs"].get(f"torch/fp32/{key.split('/')[-1]}") or {}).get("accuracy")
            if acc and ref:
                acc["delta"] = ap_delta(acc["metrics"], ref["metrics"])
                acc["reference"] = {"model": ref["model"], "backend": "torch", "metrics": ref["metrics"]}
        models.append(entry)

    peer: Optional[Dict[str, Any]] = None
    if not args.no_peer:
        peer = measure_peer(args, columns, groups["r50"], threads=threads, work=work, start=start,
                            measure=measure, size_arg=size_arg)

    results = {
        "schema_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m runtime.bench.suite " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "environment": env,
        "threads": threads,
        "load_average": {"start": load_start, "end": _load_average()},
        "settings": {
            "size": list(args.size), "groups": groups, "rounds": max(1, args.rounds),
            "data": {"ann_file": str(ann_file), "images": str(val_dir), "max_images": args.accuracy_images},
        },
        "columns": [asdict(c) for c in columns],
        "models": models,
        "peer": peer,
        "ratios": compute_ratios(models, peer, columns),
        "speedups": compute_speedups(models),
        "targets": compute_targets(models, peer),
        "skipped": [f"{c.label}: {c.reason} (no number written)" for c in columns if not c.available],
    }
    results["duration_s"] = round(time.perf_counter() - start, 1)
    return results


def measure_peer(args: argparse.Namespace, columns: Sequence[Column], group: Mapping[str, Any], *, threads: int,
                 work: Path, start: float, measure: Any, size_arg: str) -> Dict[str, Any]:
    """The torchvision peer on the PyTorch and ONNX Runtime columns (batch sizes > 1 are not run
    through its one-image ONNX graph)."""
    from runtime.bench.peer import PEER_NAME, export_peer_onnx

    peer: Dict[str, Any] = {"name": PEER_NAME, "group": "r50", "runs": {}, "onnx": None, "export_error": None,
                            "settings": {"weights": None, "weights_backbone": None, "box_score_thresh": 0.05,
                                         "min_size": 800, "max_size": 1333, "num_classes": 91}}
    onnx_path = work / "onnx" / "peer" / "fasterrcnn_resnet50_fpn.onnx"
    if any(c.available and c.backend == "onnxruntime" for c in columns):
        try:
            export_peer_onnx(onnx_path, size=tuple(args.size))
            peer["onnx"] = str(onnx_path)
        except Exception as exc:  # reported in the table
            peer["export_error"] = f"{type(exc).__name__}: {exc}"
        gc.collect()
    timing = ["--size", size_arg, "--warmup", str(group["warmup"]), "--iters", str(group["iters"])]
    for col in columns:
        if not col.available or col.backend == "tensorrt":
            continue
        batches = group["batch"] if col.backend == "torch" else [1]
        cmd = ["peer", "--backend", col.backend, "--device", col.device, *timing,
               "--batch", ",".join(str(b) for b in batches)]
        if col.backend == "onnxruntime":
            if peer["onnx"] is None:
                peer["runs"][col.key] = {"latency": None, "accuracy": None, "error": f"not run: {peer['export_error']}"}
                continue
            cmd += ["--onnx", peer["onnx"]]
        latency, error = measure(cmd, f"latency.peer.{col.backend}.{col.device}")
        peer["runs"][col.key] = {"latency": latency, "accuracy": None, "error": error}
        _log(start, f"peer {col.label}: " + (f"p50 {latency['results'][0]['per_image_ms']['p50']:.1f} ms/image"
                                             if latency else f"FAILED {error}"))
    return peer


def write_outputs(results: Mapping[str, Any], out: Path) -> Dict[str, Path]:
    """``out/results.json``, ``out/results.md``, ``out/latency.png``; returns their paths."""
    from runtime.bench.report import latency_chart, suite_markdown

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "latency.png"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    paths["md"].write_text(suite_markdown(results), encoding="utf-8")
    latency_chart(results, paths["png"])
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = run_suite(args)
    except ValueError as exc:
        print(f"make bench: error: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(results, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']} in {results['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
