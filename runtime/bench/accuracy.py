"""COCO box AP of one backend on a COCO-format set, and its difference to a reference (PyTorch).

Every backend is scored by the same NumPy-only :class:`training.evaluation.COCOEvaluator`
(pycocotools / faster-coco-eval) on the detections of ``Backend.predict`` -- boxes in original
image pixels, every detection the model keeps (its own score threshold, no extra cut). AP values
are reported in **AP points** (COCO's 0..1 value x 100), the unit of MMDeploy's and the papers'
tables, so an "AP delta of 0.1" means 0.1 points. COCO's undefined values (e.g. ``APs`` on a
set without small objects) are None.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from runtime.bench.latency import open_backend, precision_of
from runtime.bench.machine import available_cores, machine_info

__all__ = ["AP_KEYS", "AP_UNIT", "ap_delta", "evaluate_backend", "read_image_list", "run_accuracy"]

PathLike = Union[str, "os.PathLike[str]"]
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
AP_UNIT = "AP points (COCO AP x 100)"


def read_image_list(ann_file: PathLike, images_dir: PathLike, max_images: Optional[int] = None) -> List[Tuple[int, Path]]:
    """``[(image id, file path)]`` of a COCO annotation file, sorted by id (first ``max_images``).

    Raises ValueError naming the file for a missing/malformed file or a missing image.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    if not ann_file.is_file():
        raise ValueError(f"{ann_file}: annotation file not found")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
        entries = sorted(((int(im["id"]), str(im["file_name"])) for im in data["images"]), key=lambda e: e[0])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{ann_file}: not a readable JSON file: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{ann_file}: 'images' must be a list of {{id, file_name}} entries ({exc!r})") from exc
    if max_images:
        entries = entries[: int(max_images)]
    out = [(image_id, images_dir / name) for image_id, name in entries]
    missing = [str(p) for _, p in out if not p.is_file()]
    if missing:
        raise ValueError(f"{ann_file}: {len(missing)} image(s) not found under {images_dir}, e.g. {missing[0]}")
    return out


def evaluate_backend(
    backend: Any,
    ann_file: PathLike,
    images_dir: PathLike,
    *,
    batch_size: int = 1,
    max_images: Optional[int] = None,
) -> Dict[str, Any]:
    """Run ``backend.predict`` over the set and score it.

    Returns ``{"metrics": {AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl}`` in
    points (None where COCO leaves a value undefined), ``"num_images"``, ``"num_detections"``,
    ``"seconds"`` (prediction wall time), ``"evaluator"`` (pycocotools / faster-coco-eval)}.
    """
    from training.evaluation.coco import STAT_KEYS, COCOEvaluator

    images = read_image_list(ann_file, images_dir, max_images)
    evaluator = COCOEvaluator(os.fspath(ann_file), label_to_cat_id=backend.category_ids)
    n_dets = 0
    start = time.perf_counter()
    for i in range(0, len(images), max(1, int(batch_size))):
        chunk = images[i: i + max(1, int(batch_size))]
        dets = backend.predict([path for _, path in chunk])
        evaluator.process([image_id for image_id, _ in chunk], [d.as_dict() for d in dets])
        n_dets += sum(len(d) for d in dets)
    seconds = time.perf_counter() - start
    stats = evaluator.evaluate()
    metrics = {k: (None if stats.get(k) is None else round(100.0 * float(stats[k]), 3)) for k in STAT_KEYS}
    return {
        "metrics": metrics,
        "num_images": len(images),
        "num_detections": n_dets,
        "seconds": round(seconds, 3),
        "evaluator": evaluator.backend,
    }


def ap_delta(metrics: Mapping[str, Optional[float]], reference: Mapping[str, Optional[float]]) -> Dict[str, Optional[float]]:
    """``metrics[k] - reference[k]`` (points) for :data:`AP_KEYS`; None where either is None."""
    out: Dict[str, Optional[float]] = {}
    for key in AP_KEYS:
        a, b = metrics.get(key), reference.get(key)
        out[key] = None if a is None or b is None else round(float(a) - float(b), 3)
    return out


def run_accuracy(
    model: PathLike,
    *,
    ann_file: PathLike,
    images_dir: PathLike,
    backend: str = "auto",
    device: str = "cpu",
    threads: Optional[int] = None,
    batch_size: int = 1,
    max_images: Optional[int] = None,
    reference: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """The record written by ``libra-bench accuracy --json``: model, backend, precision, device,
    data, ``ap_unit``, ``metrics`` (see :func:`evaluate_backend`), and with ``reference`` (a
    checkpoint, run on the torch backend on the same device) ``reference`` {model, backend,
    metrics} and ``delta`` (:func:`ap_delta`, this backend minus the reference); else both None.
    """
    threads = int(threads) if threads else available_cores()

    def score(path: PathLike, kind: str) -> Tuple[Dict[str, Any], Any]:
        runner = open_backend(path, backend=kind, device=device, threads=threads)
        try:
            return evaluate_backend(runner, ann_file, images_dir, batch_size=batch_size, max_images=max_images), runner
        finally:
            runner.close()

    result, runner = score(model, backend)
    record: Dict[str, Any] = {
        "kind": "accuracy",
        "model": os.fspath(model),
        "backend": runner.name,
        "precision": precision_of(runner),
        "device": device,
        "threads": threads,
        "data": os.fspath(ann_file),
        "images": os.fspath(images_dir),
        "ap_unit": AP_UNIT,
        **result,
        "reference": None,
        "delta": None,
    }
    if reference is not None:
        ref, _ = score(reference, "torch")
        record["reference"] = {"model": os.fspath(reference), "backend": "torch", "metrics": ref["metrics"]}
        record["delta"] = ap_delta(result["metrics"], ref["metrics"])
    record["machine"] = machine_info()
    record["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record
