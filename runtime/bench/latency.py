"""Latency of one model on one backend: percentiles, throughput, peak memory, pre/infer/post split.

Anything with the three steps of :class:`runtime.backends.Backend` can be timed (the torchvision
peer of :mod:`runtime.bench.peer` too)::

    batch, metas = runner.preprocess(images)   # resize + pad (NumPy/Pillow; the peer: to tensor)
    raw = runner.infer(batch, metas)           # the model
    dets = runner.postprocess(raw, metas)      # to original pixels; one sized item per image

Each timed iteration runs the three on ``batch`` images, drawn in turn from a pool of inputs
(seeded random images of one size, or files), with ``time.perf_counter`` around each step. The
backends return host (NumPy) arrays, so a GPU run is synchronised by the time ``infer`` returns.
Times are milliseconds; ``latency_ms`` is per batch, ``per_image_ms`` per image (batch / B),
``throughput_ips`` = images / total timed seconds.

Shapes: B images per batch; images are uint8 ``[h, w, 3]`` RGB arrays or file paths.
"""
from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from runtime.bench.machine import available_cores, current_rss_mb, machine_info, peak_rss_mb

__all__ = [
    "IMAGE_SUFFIXES",
    "LATENCY_KEYS",
    "Runner",
    "backend_options",
    "images_from_dir",
    "measure_latency",
    "open_backend",
    "parse_batches",
    "parse_size",
    "precision_of",
    "run_latency",
    "summarize",
    "synthetic_images",
    "time_runner",
]

PathLike = Union[str, "os.PathLike[str]"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# keys of every entry of a latency record's ``results`` (documented in bench/README.md)
LATENCY_KEYS = (
    "batch", "input_shape", "latency_ms", "per_image_ms", "throughput_ips", "split_ms",
    "detections_per_image", "peak_rss_mb", "cuda_max_memory_allocated_mb", "samples_ms",
)
STAT_NAMES = ("p50", "p90", "p99", "mean", "min", "max", "std")


class Runner(Protocol):
    """The three timed steps (see the module docstring)."""

    def preprocess(self, images: Sequence[Any]) -> Tuple[Any, Sequence[Any]]: ...

    def infer(self, batch: Any, metas: Sequence[Any]) -> Any: ...

    def postprocess(self, raw: Any, metas: Sequence[Any]) -> Sequence[Any]: ...


# ---------------------------------------------------------------------------- arguments
def parse_size(text: str) -> Tuple[int, int]:
    """``"800x1333"`` -> ``(800, 1333)`` (height, width); ValueError naming the text otherwise."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 800x1333") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size {text!r}: height and width must be positive")
    return h, w


def parse_batches(text: Union[str, Sequence[int]]) -> List[int]:
    """``"1,4"`` -> ``[1, 4]``; ValueError naming the text for anything but positive integers."""
    items = str(text).split(",") if isinstance(text, str) else list(text)
    try:
        out = [int(b) for b in items if str(b).strip()]
    except ValueError:
        raise ValueError(f"batch sizes {text!r}: expected positive integers such as 1,4") from None
    if not out or min(out) < 1:
        raise ValueError(f"batch sizes {text!r}: expected positive integers such as 1,4")
    return out


# ---------------------------------------------------------------------------- inputs
def synthetic_images(size: Tuple[int, int], count: int, *, seed: int = 0) -> List[np.ndarray]:
    """``count`` uint8 RGB images ``[h, w, 3]`` of uniform random pixels, reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = size
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(int(count))]


def images_from_dir(directory: PathLike, count: Optional[int] = None) -> List[Path]:
    """The image files of ``directory`` (sorted by name, first ``count``); ValueError naming the
    folder when it is missing or holds no image."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files[:count] if count else files


# ---------------------------------------------------------------------------- timing
def summarize(samples_ms: Sequence[float]) -> Dict[str, float]:
    """``{p50, p90, p99, mean, min, max, std}`` of the samples (linear-interpolated percentiles)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize: no samples")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    values = (p50, p90, p99, x.mean(), x.min(), x.max(), x.std())
    return {k: round(float(v), 3) for k, v in zip(STAT_NAMES, values)}


def _cuda_memory() -> Optional[Any]:
    """torch.cuda when torch is already imported and has a GPU (never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda


def measure_latency(
    runner: Runner,
    images: Sequence[Any],
    *,
    batch_sizes: Sequence[int] = (1,),
    warmup: int = 3,
    iters: int = 20,
    cuda_memory: bool = False,
) -> List[Dict[str, Any]]:
    """Time ``runner`` for each batch size; one dict per batch size with :data:`LATENCY_KEYS`.

    ``images`` is the pool the batches are drawn from, in turn (wrapping around). ``warmup``
    untimed iterations precede ``iters`` timed ones. ``peak_rss_mb`` is the process's high-water
    mark after that batch size's loop (model loading and earlier batch sizes included);
    ``cuda_max_memory_allocated_mb`` is torch's peak CUDA allocation during the loop when
    ``cuda_memory`` and torch has a GPU, else None.
    """
    if not images:
        raise ValueError("measure_latency: no input images")
    if iters < 1 or warmup < 0:
        raise ValueError(f"measure_latency: need iters >= 1 and warmup >= 0, got {iters} and {warmup}")
    cuda = _cuda_memory() if cuda_memory else None
    pool = list(images)
    results = []
    for b in parse_batches(list(batch_sizes)):
        cursor = 0

        def next_batch() -> List[Any]:
            nonlocal cursor
            picked = [pool[(cursor + i) % len(pool)] for i in range(b)]
            cursor = (cursor + b) % len(pool)
            return picked

        for _ in range(warmup):
            batch, metas = runner.preprocess(next_batch())
            runner.postprocess(runner.infer(batch, metas), metas)
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        pre, inf, post, total, dets = [], [], [], [], []
        shape: List[int] = []
        for _ in range(iters):
            chosen = next_batch()
            t0 = time.perf_counter()
            batch, metas = runner.preprocess(chosen)
            t1 = time.perf_counter()
            raw = runner.infer(batch, metas)
            t2 = time.perf_counter()
            out = runner.postprocess(raw, metas)
            t3 = time.perf_counter()
            pre.append((t1 - t0) * 1e3)
            inf.append((t2 - t1) * 1e3)
            post.append((t3 - t2) * 1e3)
            total.append((t3 - t0) * 1e3)
            dets.extend(len(d) for d in out)
            shape = _shape_of(batch)
        stats = summarize(total)
        results.append({
            "batch": b,
            "input_shape": shape,
            "latency_ms": stats,
            "per_image_ms": {k: round(stats[k] / b, 3) for k in ("p50", "p90", "mean", "min")},
            "throughput_ips": round(b * iters / (sum(total) / 1e3), 3),
            "split_ms": {
                name: {"p50": summarize(s)["p50"], "mean": summarize(s)["mean"]}
                for name, s in (("preprocess", pre), ("infer", inf), ("postprocess", post))
            },
            "detections_per_image": round(float(np.mean(dets)), 2) if dets else 0.0,
            "peak_rss_mb": peak_rss_mb(),
            "cuda_max_memory_allocated_mb": (
                round(cuda.max_memory_allocated() / 2**20, 1) if cuda is not None else None
            ),
            "samples_ms": [round(t, 3) for t in total],
        })
    return results


def _shape_of(batch: Any) -> List[int]:
    """Shape of a batch array, or of the first image of a list of tensors (the peer's input)."""
    if hasattr(batch, "shape"):
        return [int(s) for s in batch.shape]
    if isinstance(batch, (list, tuple)) and batch and hasattr(batch[0], "shape"):
        return [len(batch), *(int(s) for s in batch[0].shape)]
    return []


# ---------------------------------------------------------------------------- backends
def backend_options(backend: str, *, device: str = "cpu", threads: Optional[int] = None) -> Dict[str, Any]:
    """Constructor options of ``backend`` for ``device`` with ``threads`` intra-op CPU threads
    (torch ``set_num_threads``; ONNX Runtime intra-op threads, one inter-op thread)."""
    if backend == "torch":
        return {"device": device, "num_threads": threads}
    if backend == "onnxruntime":
        return {"device": device, "intra_op_threads": threads, "inter_op_threads": 1 if threads else None}
    if backend == "tensorrt":
        return {} if device == "cpu" else {"device": device}
    raise ValueError(f"unknown backend {backend!r}; choose torch, onnxruntime or tensorrt")


def open_backend(model: PathLike, *, backend: str = "auto", device: str = "cpu", threads: Optional[int] = None) -> Any:
    """``Backend.from_path`` with :func:`backend_options` (``backend="auto"``: from the file)."""
    from runtime.backends.base import Backend, detect_model_kind

    kind = detect_model_kind(model)[0] if backend == "auto" else backend
    if kind == "tensorrt" and device == "cpu":
        raise ValueError(f"{model}: the tensorrt backend needs --device cuda")
    return Backend.from_path(model, backend=kind, **backend_options(kind, device=device, threads=threads))


def precision_of(backend: Any) -> str:
    """The numeric precision a backend runs: fp32 for torch / ONNX Runtime (as exported) and the
    peer; for an engine, its metadata's ``precision`` when recorded, else "unknown"."""
    info = getattr(backend, "info", None)
    if backend.name in ("torch", "onnxruntime") or info is None:
        return "fp32"
    return str(info.extra.get("precision", "unknown"))


def run_latency(
    model: PathLike,
    *,
    backend: str = "auto",
    device: str = "cpu",
    threads: Optional[int] = None,
    **settings: Any,
) -> Dict[str, Any]:
    """Load ``model`` on ``backend`` and time it: :func:`time_runner`'s record (what
    ``libra-bench latency --json`` writes). ``settings``: the keyword arguments of
    :func:`time_runner` (batch_sizes, size, warmup, iters, images_dir, pool, seed)."""
    threads = int(threads) if threads else available_cores()
    return time_runner(
        lambda: open_backend(model, backend=backend, device=device, threads=threads),
        model=os.fspath(model), device=device, threads=threads, **settings,
    )


def time_runner(
    open_runner: Callable[[], Any],
    *,
    model: str,
    device: str = "cpu",
    threads: Optional[int] = None,
    batch_sizes: Sequence[int] = (1,),
    size: Tuple[int, int] = (800, 1333),
    warmup: int = 3,
    iters: int = 20,
    images_dir: Optional[PathLike] = None,
    pool: int = 8,
    seed: int = 0,
) -> Dict[str, Any]:
    """Open a runner with ``open_runner()`` and time it (:func:`measure_latency`).

    Returns the latency record: ``kind`` ("latency"), ``model``, ``backend``, ``precision``,
    ``device``, ``providers``, ``threads``, ``image_size`` [h, w] (None for files), ``inputs``,
    ``model_scale`` (the model's resize policy, None for the peer), ``warmup``, ``iters``,
    ``load_s``, ``rss_before_load_mb``, ``rss_after_load_mb``, ``results`` (one per batch size,
    :data:`LATENCY_KEYS`), ``machine`` (:func:`runtime.bench.machine.machine_info`), ``created``.
    Inputs: ``pool`` seeded random images of ``size`` (h, w), or the files of ``images_dir``.
    """
    threads = int(threads) if threads else available_cores()
    if images_dir is not None:
        images: List[Any] = list(images_from_dir(images_dir, pool))
        source = os.fspath(images_dir)
    else:
        images = synthetic_images(size, pool, seed=seed)
        source = f"synthetic uniform random uint8, seed {seed}, {len(images)} images of {size[0]}x{size[1]}"
    rss_before = current_rss_mb()
    start = time.perf_counter()
    runner = open_runner()
    load_s = time.perf_counter() - start
    rss_after = current_rss_mb()
    try:
        results = measure_latency(
            runner, images, batch_sizes=batch_sizes, warmup=warmup, iters=iters, cuda_memory=device != "cpu"
        )
        info = getattr(runner, "info", None)
        record = {
            "kind": "latency",
            "model": model,
            "backend": runner.name,
            "precision": precision_of(runner),
            "device": device,
            "providers": list(getattr(runner, "providers", []) or []),
            "threads": threads,
            "image_size": list(size) if images_dir is None else None,
            "inputs": source,
            "model_scale": list(info.scale) if info is not None else None,
            "warmup": int(warmup),
            "iters": int(iters),
            "load_s": round(load_s, 3),
            "rss_before_load_mb": rss_before,
            "rss_after_load_mb": rss_after,
            "results": results,
        }
    finally:
        runner.close()
    record["machine"] = machine_info()
    record["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record
