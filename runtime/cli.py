"""``libra-detect``: run a detector on images with any backend and write COCO-format results.

    libra-detect MODEL INPUTS... [--backend auto|torch|onnxruntime|tensorrt] [--score-thr 0.3]
                 [--batch 4] [--out DIR] [--save-vis] [--device cpu|cuda] [--images DIR]

MODEL is a checkpoint (``.pth``), an ``.onnx`` (or a ``libra-export`` folder) or a TensorRT
engine; with ``--backend auto`` the file decides. INPUTS are image files, folders (their image
files, sorted, not recursive) or one COCO annotation file (``.json``) whose images are read from
``--images DIR``.

Writes ``DIR/results.json``: a COCO results list, one entry per detection with ``image_id`` (the
COCO file's id, else a running index over the inputs), ``file_name``, ``category_id`` (the
dataset's id: from the model file, else from the COCO file's categories, else the contiguous
label), ``bbox`` [x, y, w, h] in original image pixels and ``score``; and ``DIR/summary.json``:
``images`` (done), ``detections``, ``failed`` (``{file, reason}`` of each unreadable image, skipped),
and ``timings`` (seconds per stage, per image and in total). ``--save-vis`` also writes annotated
images to ``DIR/vis/``. Exit status: 0 when the run finished (even with skipped images), 2 for a
bad model file or bad arguments (a one-line message, no traceback).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from runtime.backends.base import BACKEND_NAMES, Backend, Detections, ModelLoadError
from runtime.preprocess import ImageLoadError, load_image

__all__ = ["main", "collect_inputs", "InputImage"]

logger = logging.getLogger("libra-detect")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class InputError(ValueError):
    """Bad INPUTS (missing path, unreadable COCO file); the message names the path."""


@dataclass(frozen=True)
class InputImage:
    """One image to run: its file, its id in the results, and its name there."""

    path: Path
    image_id: int
    file_name: str


def _read_coco_images(ann: Path, images_dir: Optional[str]) -> Tuple[List[InputImage], List[int]]:
    if images_dir is None:
        raise InputError(f"{ann}: a COCO annotation file as input needs --images DIR (the folder of its images)")
    try:
        data = json.loads(ann.read_text(encoding="utf-8"))
        records = data["images"]
        cat_ids = sorted(int(c["id"]) for c in data.get("categories", []))
        items = [InputImage(Path(images_dir) / r["file_name"], int(r["id"]), str(r["file_name"])) for r in records]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{ann}: cannot read the COCO annotation file: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{ann}: not a COCO annotation file (images need id and file_name): {exc!r}") from None
    return items, cat_ids


def collect_inputs(inputs: Sequence[str], images_dir: Optional[str] = None) -> Tuple[List[InputImage], Optional[List[int]]]:
    """The images named by INPUTS, and the COCO file's sorted category ids when one was given.

    A ``.json`` input is a COCO annotation file (only one, and not mixed with images); folders
    contribute their image files, sorted. A missing path raises :class:`InputError`.
    """
    jsons = [p for p in inputs if p.lower().endswith(".json")]
    if jsons:
        if len(inputs) != 1:
            raise InputError(f"give one COCO annotation file alone, got {list(inputs)}")
        ann = Path(jsons[0])
        if not ann.is_file():
            raise InputError(f"{ann}: COCO annotation file not found")
        return _read_coco_images(ann, images_dir)
    files: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return [InputImage(p, i, str(p)) for i, p in enumerate(files)], None


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="libra-detect", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint (.pth), ONNX model (.onnx or export folder) or TensorRT engine")
    parser.add_argument("inputs", nargs="+", help="image files, folders, or one COCO annotation file (.json)")
    parser.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES)
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cpu; cuda for engines)")
    parser.add_argument("--score-thr", type=float, default=0.3, help="keep detections scoring at least this")
    parser.add_argument("--batch", type=int, default=4, help="images per inference call")
    parser.add_argument("--out", default="detections", help="output folder (default: ./detections)")
    parser.add_argument("--images", default=None, help="image folder of a COCO annotation file input")
    parser.add_argument("--save-vis", action="store_true", help="also write annotated images to OUT/vis/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    return args


def _progress(total: int, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the runtime does not require tqdm
        tqdm = None
    if tqdm is None or not enabled:
        class _Silent:
            def update(self, n: int) -> None:
                pass

            def close(self) -> None:
                pass

        return _Silent()
    return tqdm(total=total, desc="detect", unit="img")


def _vis_path(out_dir: Path, item: InputImage, used: set) -> Path:
    stem = Path(item.file_name).stem or f"image{item.image_id}"
    name = f"{stem}.jpg" if stem not in used else f"{stem}_{item.image_id}.jpg"
    used.add(stem)
    return out_dir / name


def _category_lut(backend: Backend, coco_cat_ids: Optional[List[int]]) -> Optional[List[int]]:
    """Contiguous label -> category id when the model file does not record them."""
    if backend.category_ids is not None or coco_cat_ids is None:
        return None
    if len(coco_cat_ids) != len(backend.class_names):
        logger.warning("the COCO file has %d categories but the model %d classes: category_id = label",
                       len(coco_cat_ids), len(backend.class_names))
        return None
    return coco_cat_ids


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """The whole run; returns the summary dict (also written to OUT/summary.json)."""
    items, coco_cat_ids = collect_inputs(args.inputs, args.images)
    options: Dict[str, Any] = {}
    if args.device is not None:
        options["device"] = args.device
    start = time.perf_counter()
    backend = Backend.from_path(args.model, backend=args.backend, **options)
    load_model_s = time.perf_counter() - start
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.save_vis:
        from runtime.visualize import draw_detections

        (out_dir / "vis").mkdir(exist_ok=True)
    lut = _category_lut(backend, coco_cat_ids)

    results: List[dict] = []
    failed: List[dict] = []
    per_image: List[dict] = []
    totals = {"read_s": 0.0, "preprocess_s": 0.0, "infer_s": 0.0, "postprocess_s": 0.0}
    used_names: set = set()
    bar = _progress(len(items), not args.no_progress)
    run_start = time.perf_counter()
    try:
        for first in range(0, len(items), args.batch):
            chunk = items[first:first + args.batch]
            t0 = time.perf_counter()
            loaded: List[Tuple[InputImage, Any]] = []
            for item in chunk:
                try:
                    loaded.append((item, load_image(item.path)))
                except ImageLoadError as exc:
                    logger.warning("skipping %s: %s", item.path, exc.reason)
                    failed.append({"file": str(item.path), "reason": exc.reason})
            t1 = time.perf_counter()
            totals["read_s"] += t1 - t0
            if loaded:
                batch, metas = backend.preprocess([image for _, image in loaded])
                t2 = time.perf_counter()
                raw = backend.infer(batch, metas)
                t3 = time.perf_counter()
                dets = [d.above(args.score_thr) for d in backend.postprocess(raw, metas)]
                t4 = time.perf_counter()
                totals["preprocess_s"] += t2 - t1
                totals["infer_s"] += t3 - t2
                totals["postprocess_s"] += t4 - t3
                share = (t4 - t0) / len(loaded)
                for (item, image), det in zip(loaded, dets):
                    results += _results(item, det, lut)
                    per_image.append({"file": str(item.path), "image_id": item.image_id,
                                      "detections": len(det), "seconds": round(share, 6)})
                    if args.save_vis:
                        vis = draw_detections(image, det.boxes, det.scores, det.labels, backend.class_names,
                                              score_thr=args.score_thr)
                        vis.save(_vis_path(out_dir / "vis", item, used_names), quality=90)
            bar.update(len(chunk))
    finally:
        bar.close()
        backend.close()
    total_s = time.perf_counter() - run_start
    done = len(per_image)
    summary = {
        "model": str(args.model),
        "backend": backend.name,
        "device": backend.device,
        "score_thr": args.score_thr,
        "batch": args.batch,
        "images": done,
        "detections": len(results),
        "failed": failed,
        "timings": {
            "load_model_s": round(load_model_s, 4),
            "total_s": round(total_s, 4),
            **{k: round(v, 4) for k, v in totals.items()},
            "per_image_ms": round(1000 * total_s / done, 3) if done else None,
        },
        "per_image": per_image,
    }
    (out_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _results(item: InputImage, det: Detections, lut: Optional[List[int]]) -> List[dict]:
    entries = det.to_coco(item.image_id)
    for entry, label in zip(entries, det.labels.tolist()):
        if lut is not None:
            entry["category_id"] = int(lut[label])
        entry["file_name"] = item.file_name
    return entries


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (ModelLoadError, InputError) as exc:
        print(f"libra-detect: error: {exc}", file=sys.stderr)
        return 2
    t = summary["timings"]
    print(
        f"{summary['images']} image(s), {summary['detections']} detection(s) >= {summary['score_thr']}, "
        f"{len(summary['failed'])} skipped; {summary['backend']} on {summary['device']}: "
        f"{t['total_s']:.2f} s total, {t['per_image_ms'] or 0:.1f} ms/image "
        f"(read {t['read_s']:.2f} s, pre {t['preprocess_s']:.2f} s, infer {t['infer_s']:.2f} s, "
        f"post {t['postprocess_s']:.2f} s); wrote {Path(args.out) / 'results.json'}"
    )
    for fail in summary["failed"]:
        print(f"  skipped {fail['file']}: {fail['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
