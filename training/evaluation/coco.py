"""COCO bbox evaluation kept apart from any model or loop: ``COCOEvaluator`` (no torch needed).

The same evaluator scores PyTorch, ONNX Runtime and TensorRT outputs, so it takes plain arrays:
NumPy arrays, lists, or anything ``np.asarray`` understands (torch tensors are converted through
their ``.numpy()``, duck-typed: torch is never imported here). Typical use::

    evaluator = COCOEvaluator("instances_val.json", label_to_cat_id=dataset.label_to_cat_id)
    for image_ids, predictions in batches:        # predictions in ORIGINAL image pixels
        evaluator.process(image_ids, predictions)
    metrics = evaluator.evaluate()                # dict, see COCOEvaluator.evaluate
    evaluator.write_results("results.json")       # COCO results format
    write_metrics(metrics, "work_dir/eval")       # metrics.json + metrics.md

AP/AR come from ``COCOeval`` of pycocotools (the reference) or, when installed and enabled, of
faster-coco-eval, whose C++ matching gives the same numbers (a test checks it) several times
faster. Only the images passed to ``process`` are scored (``params.imgIds``), so a partial run
(``--max-images``) is scored on the images it saw; an image with no detections must still be
passed, with empty arrays. A COCO value that is undefined (e.g. ``APs`` when the ground truth has
no small object: pycocotools' -1) is reported as ``None``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from training.data.annotation_file import read_annotation_json
from training.data.errors import AnnotationError
from training.evaluation.concept_metrics import ImageDetections, ImageGroundTruth, concept_metrics

__all__ = [
    "STAT_KEYS",
    "EvaluationError",
    "COCOEvaluator",
    "faster_coco_eval_available",
    "format_metrics_markdown",
    "write_metrics",
]

logger = logging.getLogger(__name__)

# The 12 numbers of COCOeval.summarize() for bbox, in its order.
STAT_KEYS: Tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)

GroundTruth = Union[str, "os.PathLike[str]", Mapping[str, Any], Any]


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the ground-truth file or the image at fault."""


def faster_coco_eval_available() -> bool:
    """Whether ``faster_coco_eval`` (``COCO``, ``COCOeval_faster``) can be imported."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster  # noqa: F401
    except ImportError:
        return False
    return True


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    """An array of ``dtype`` from a NumPy array, list or (duck-typed) torch tensor on any device."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _read_ground_truth(coco_gt: GroundTruth, source: Optional[str]) -> Tuple[dict, str]:
    """The COCO dict of ``coco_gt`` (file path, dict, or COCO object with ``.dataset``)."""
    if isinstance(coco_gt, (str, os.PathLike)):
        path = os.fspath(coco_gt)
        try:
            data = read_annotation_json(path)
        except AnnotationError as e:
            raise EvaluationError(f"ground truth: {e}") from None
        name = source or path
    elif isinstance(coco_gt, Mapping):
        data, name = coco_gt, source or "ground-truth dict"
    elif isinstance(getattr(coco_gt, "dataset", None), Mapping):
        data, name = coco_gt.dataset, source or f"ground truth ({type(coco_gt).__name__} object)"
    else:
        raise EvaluationError(
            "coco_gt must be an annotation file path, a COCO dict, or a COCO object with "
            f".dataset; got {type(coco_gt).__name__}"
        )
    if not isinstance(data, Mapping):
        raise EvaluationError(f"{name}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvaluationError(f"{name}: missing or non-list top-level key '{key}'")
    return data, name


_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


def _copy_ground_truth(data: Mapping[str, Any], name: str) -> dict:
    """A copy COCOeval may mutate (it adds keys to annotations), with ``area``/``iscrowd`` filled.

    Annotation dicts are copied one level deep; segmentations are shared, not copied.
    """
    anns = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, Mapping) or any(k not in ann for k in _ANN_KEYS):
            raise EvaluationError(
                f"{name}: annotations[{i}] needs keys id, image_id, category_id, bbox"
            )
        a = dict(ann)
        a.setdefault("iscrowd", 0)
        if "area" not in a:  # COCOeval's area ranges need it; the box area is the usual fallback
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        anns.append(a)
    return {
        "images": [dict(img) for img in data["images"]],
        "categories": [dict(cat) for cat in data["categories"]],
        "annotations": anns,
    }


def _ground_truth_by_image(data: Mapping[str, Any]) -> Dict[int, ImageGroundTruth]:
    """image id -> x1y1x2y2 boxes, category ids and crowd flags of its annotations."""
    anns = data["annotations"]
    if not anns:
        return {}
    image_ids = np.array([a["image_id"] for a in anns], dtype=np.int64)
    xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    order = np.argsort(image_ids, kind="stable")
    uniq, starts = np.unique(image_ids[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    out = {}
    for image_id, lo, hi in zip(uniq.tolist(), starts, ends):
        idx = order[lo:hi]
        out[image_id] = ImageGroundTruth(boxes[idx], cats[idx], crowd[idx])
    return out


def _undefined_to_none(value: float) -> Optional[float]:
    """COCOeval's -1 ("no ground truth in this range") and NaN become None."""
    value = float(value)
    return None if value < 0 or math.isnan(value) else value


# A COCOeval run: (the 12 summary stats, precision array [T, R, K, A, M], category ids of axis K)
EvalOutput = Tuple[np.ndarray, np.ndarray, List[int]]


def _run_pycocotools(gt_data: dict, results: List[dict], image_ids: List[int]) -> EvalOutput:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the table
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes indexes results[0]: build the empty result set by hand
            dt = COCO()
            dt.dataset = dict(gt_data, annotations=[])
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], dtype=np.float64), ev.eval["precision"], list(ev.params.catIds)


def _run_faster_coco_eval(gt_data: dict, results: List[dict], image_ids: List[int]) -> EvalOutput:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(gt_data)
    dt = gt.loadRes(results)
    ev = COCOeval_faster(gt, dt, iouType="bbox")
    ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12], dtype=np.float64), ev.eval["precision"], list(ev.params.catIds)


def _per_class_ap(
    precision: np.ndarray, cat_ids: Sequence[int]
) -> Dict[int, Tuple[Optional[float], Optional[float]]]:
    """cat id -> (AP@[.5:.95], AP50) from COCOeval's precision array [T, R, K, A, M].

    Area range "all" (A index 0) and the largest maxDets (M index -1), as the summary's AP.
    """
    out = {}
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]  # [T, R]
        valid = p[p > -1]
        ap = float(valid.mean()) if valid.size else None
        p50 = p[0][p[0] > -1]
        out[int(cat_id)] = (ap, float(p50.mean()) if p50.size else None)
    return out


class COCOEvaluator:
    """Accumulates detections per image and scores them with COCOeval plus concept metrics.

    Args:
        coco_gt: annotation file path, COCO dict, or a pycocotools / faster-coco-eval ``COCO``
            object (its ``.dataset`` is read; the object itself is not modified).
        label_to_cat_id: contiguous label -> dataset category id, as a mapping or a sequence
            (``label_to_cat_id[label]``). Default: the ground truth's category ids sorted
            ascending, the convention of ``training.data.coco.CocoDetection``.
        use_faster_coco_eval: use faster-coco-eval when installed (pycocotools otherwise).
        concept_score_thr / concept_iou_thr: see :mod:`training.evaluation.concept_metrics`.
        source: name used in error messages (default: the file path or the object type).
    """

    def __init__(
        self,
        coco_gt: GroundTruth,
        *,
        label_to_cat_id: Union[Mapping[int, int], Sequence[int], None] = None,
        use_faster_coco_eval: bool = True,
        concept_score_thr: float = 0.3,
        concept_iou_thr: float = 0.5,
        source: Optional[str] = None,
    ) -> None:
        data, self.source = _read_ground_truth(coco_gt, source)
        self._gt_data = _copy_ground_truth(data, self.source)
        self.cat_ids: List[int] = sorted(int(c["id"]) for c in self._gt_data["categories"])
        self.cat_names: Dict[int, str] = {
            int(c["id"]): str(c.get("name", c["id"])) for c in self._gt_data["categories"]
        }
        self._gt_image_ids = {int(img["id"]) for img in self._gt_data["images"]}
        self._gt_by_image = _ground_truth_by_image(self._gt_data)

        if label_to_cat_id is None:
            label_to_cat_id = dict(enumerate(self.cat_ids))
        elif not isinstance(label_to_cat_id, Mapping):
            label_to_cat_id = dict(enumerate(label_to_cat_id))
        self.label_to_cat_id: Dict[int, int] = {int(k): int(v) for k, v in label_to_cat_id.items()}
        unknown = sorted(set(self.label_to_cat_id.values()) - set(self.cat_ids))
        if unknown:
            raise EvaluationError(
                f"{self.source}: label_to_cat_id maps to category id(s) {unknown} that the file "
                f"does not define (its category ids: {self.cat_ids})"
            )
        if any(k < 0 for k in self.label_to_cat_id):
            raise EvaluationError(f"label_to_cat_id has negative labels: {sorted(self.label_to_cat_id)}")
        # label -> cat id lookup table; -1 marks labels without a category
        self._lut = np.full(max(self.label_to_cat_id, default=-1) + 1, -1, dtype=np.int64)
        for k, v in self.label_to_cat_id.items():
            self._lut[k] = v

        self.use_faster_coco_eval = bool(use_faster_coco_eval)
        self.concept_score_thr = float(concept_score_thr)
        self.concept_iou_thr = float(concept_iou_thr)
        self.reset()

    @property
    def backend(self) -> str:
        """"faster_coco_eval" or "pycocotools": what :meth:`evaluate` will use."""
        if self.use_faster_coco_eval and faster_coco_eval_available():
            return "faster_coco_eval"
        return "pycocotools"

    def reset(self) -> None:
        """Forget every processed image."""
        self._dets: Dict[int, ImageDetections] = {}
        self._duplicates = 0

    def process(self, image_ids: Sequence[int], predictions: Sequence[Mapping[str, Any]]) -> None:
        """Add the detections of a batch of images.

        Args:
            image_ids: dataset image ids [B].
            predictions: [B] mappings with ``boxes`` [N, 4] x1y1x2y2 in ORIGINAL image pixels,
                ``scores`` [N] and ``labels`` [N] contiguous (NumPy arrays, lists or tensors).
        An image seen before is skipped (distributed samplers repeat images to even out ranks).
        """
        if len(image_ids) != len(predictions):
            raise EvaluationError(
                f"process: {len(image_ids)} image ids but {len(predictions)} predictions"
            )
        for image_id, pred in zip(image_ids, predictions):
            image_id = int(image_id)
            if image_id not in self._gt_image_ids:
                raise EvaluationError(f"image id {image_id} is not an image of {self.source}")
            if image_id in self._dets:
                self._duplicates += 1
                continue
            self._dets[image_id] = self._convert(image_id, pred)

    def _convert(self, image_id: int, pred: Mapping[str, Any]) -> ImageDetections:
        missing = [k for k in ("boxes", "scores", "labels") if k not in pred]
        if missing:
            raise EvaluationError(
                f"image {image_id}: prediction lacks {missing} (keys: {sorted(pred)})"
            )
        boxes = _to_numpy(pred["boxes"], np.float64)
        scores = _to_numpy(pred["scores"], np.float64).reshape(-1)
        labels = _to_numpy(pred["labels"], np.int64).reshape(-1)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise EvaluationError(
                f"image {image_id}: boxes must be [N, 4], got shape {list(boxes.shape)}"
            )
        if not len(boxes) == len(scores) == len(labels):
            raise EvaluationError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        known = (labels >= 0) & (labels < len(self._lut))
        cat_ids = np.full(labels.shape, -1, dtype=np.int64)
        cat_ids[known] = self._lut[labels[known]]
        if (cat_ids < 0).any():
            wrong = sorted(set(labels[cat_ids < 0].tolist()))
            raise EvaluationError(
                f"image {image_id}: label(s) {wrong} not in label_to_cat_id "
                f"(labels {sorted(self.label_to_cat_id)})"
            )
        if not np.isfinite(boxes).all() or not np.isfinite(scores).all():
            raise EvaluationError(f"image {image_id}: non-finite box coordinates or scores")
        return ImageDetections(boxes, scores, cat_ids)

    @property
    def num_images(self) -> int:
        return len(self._dets)

    def results(self) -> List[dict]:
        """Processed detections in COCO results format: ``[{image_id, category_id, bbox: [x, y,
        w, h], score}]`` with the dataset's category ids, in processing order."""
        if not self._dets:
            return []
        ids = np.concatenate([np.full(len(d.scores), i, np.int64) for i, d in self._dets.items()])
        boxes = np.concatenate([d.boxes for d in self._dets.values()])
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        cats = np.concatenate([d.cat_ids for d in self._dets.values()])
        scores = np.concatenate([d.scores for d in self._dets.values()])
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(ids.tolist(), cats.tolist(), xywh.tolist(), scores.tolist())
        ]

    def write_results(self, path: Union[str, "os.PathLike[str]"]) -> Path:
        """Write :meth:`results` as JSON (loadable by ``COCO.loadRes``); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.results(), f)
        return path

    def evaluate(self) -> dict:
        """Score the processed images.

        Returns a JSON-ready dict: the 12 ``STAT_KEYS`` (floats in 0..1, None when undefined),
        ``concept_recall`` / ``concept_precision`` (macro means over classes) and their
        ``_micro`` variants, ``per_class`` {class name: {category_id, label, AP, AP50,
        concept_recall, concept_precision, num_gts, num_dets, matched}}, plus ``num_images``,
        ``num_detections``, ``backend``, ``concept_score_thr``, ``concept_iou_thr``.
        """
        if not self._dets:
            raise EvaluationError(
                f"{self.source}: no image was processed; call process() with every evaluated "
                "image (empty arrays for images without detections)"
            )
        if self._duplicates:
            logger.info("skipped %d repeated image(s) (kept the first predictions)", self._duplicates)
        image_ids = sorted(self._dets)
        results = self.results()
        backend = self.backend
        run = _run_faster_coco_eval if backend == "faster_coco_eval" else _run_pycocotools
        # each run gets its own copy: COCOeval adds keys to the ground-truth annotations
        gt_copy = _copy_ground_truth(self._gt_data, self.source)
        stats, precision, eval_cat_ids = run(gt_copy, results, image_ids)

        metrics: Dict[str, Any] = {k: _undefined_to_none(v) for k, v in zip(STAT_KEYS, stats)}
        concept = concept_metrics(
            self._gt_by_image,
            self._dets,
            cat_ids=self.cat_ids,
            image_ids=image_ids,
            score_thr=self.concept_score_thr,
            iou_thr=self.concept_iou_thr,
        )
        for key in ("concept_recall", "concept_precision"):
            metrics[key] = concept[key]
            metrics[f"{key}_micro"] = concept[f"{key}_micro"]
        metrics.update(
            num_images=len(image_ids),
            num_detections=len(results),
            backend=backend,
            concept_score_thr=self.concept_score_thr,
            concept_iou_thr=self.concept_iou_thr,
        )

        ap = _per_class_ap(precision, eval_cat_ids)
        cat_to_label = {c: k for k, c in self.label_to_cat_id.items()}
        names = [self.cat_names[c] for c in self.cat_ids]
        per_class: Dict[str, dict] = {}
        for cat_id, name in zip(self.cat_ids, names):
            key = name if names.count(name) == 1 else f"{name} (id {cat_id})"
            c = concept["per_class"][cat_id]
            per_class[key] = {
                "category_id": cat_id,
                "label": cat_to_label.get(cat_id),
                "AP": ap.get(cat_id, (None, None))[0],
                "AP50": ap.get(cat_id, (None, None))[1],
                "concept_recall": c["recall"],
                "concept_precision": c["precision"],
                "num_gts": c["num_gts"],
                "num_dets": c["num_dets"],
                "matched": c["matched"],
            }
        metrics["per_class"] = per_class
        return metrics


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_metrics_markdown(metrics: Mapping[str, Any], *, title: str = "COCO bbox evaluation") -> str:
    """Markdown tables of :meth:`COCOEvaluator.evaluate`'s dict: AP, AR, concept metrics, per class."""
    lines = [f"## {title}", ""]
    info = [f"{metrics[k]} {k.split('_')[1]}" for k in ("num_images", "num_detections") if k in metrics]
    if "backend" in metrics:
        info.append(f"scored with {metrics['backend']}")
    if info:
        lines += [", ".join(info), ""]
    for keys in (STAT_KEYS[:6], STAT_KEYS[6:]):
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---:|" * len(keys))
        lines.append("| " + " | ".join(_fmt(metrics.get(k)) for k in keys) + " |")
        lines.append("")
    thr = metrics.get("concept_score_thr")
    iou = metrics.get("concept_iou_thr")
    lines.append(
        f"Concept recall / precision at score >= {thr}, IoU >= {iou}: "
        f"macro {_fmt(metrics.get('concept_recall'))} / {_fmt(metrics.get('concept_precision'))}, "
        f"micro {_fmt(metrics.get('concept_recall_micro'))} / "
        f"{_fmt(metrics.get('concept_precision_micro'))}"
    )
    per_class = metrics.get("per_class") or {}
    if per_class:
        lines += [
            "",
            "| class | id | AP | AP50 | concept recall | concept precision | gts | dets |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, c in per_class.items():
            lines.append(
                f"| {name} | {c['category_id']} | {_fmt(c['AP'])} | {_fmt(c['AP50'])} | "
                f"{_fmt(c['concept_recall'])} | {_fmt(c['concept_precision'])} | "
                f"{c['num_gts']} | {c['num_dets']} |"
            )
    return "\n".join(lines) + "\n"


def write_metrics(
    metrics: Mapping[str, Any], out_dir: Union[str, "os.PathLike[str]"]
) -> Dict[str, Path]:
    """Write ``out_dir/metrics.json`` and ``out_dir/metrics.md``; returns {"json": path, "md": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "md": out / "metrics.md"}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    paths["md"].write_text(format_metrics_markdown(metrics), encoding="utf-8")
    return paths
