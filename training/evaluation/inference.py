"""Run a PyTorch detector over a dataset or loader and score it with :class:`COCOEvaluator`.

The model's ``predict(images [B, 3, H, W], image_sizes) -> [{boxes [N, 4], scores [N],
labels [N]}]`` gives x1y1x2y2 boxes in resized-input pixels; :func:`predictions_to_original`
maps them back to original image pixels with the loader target's ``scale_factor`` ``(sx, sy)``
(and undoes a horizontal flip if the target says one was applied), which is what the evaluator
and the COCO results file expect.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from training.config import Config, EvalConfig
from training.evaluation.coco import COCOEvaluator, write_metrics

__all__ = [
    "predictions_to_original",
    "build_eval_dataset",
    "build_eval_loader",
    "run_inference",
    "evaluate_model",
]

logger = logging.getLogger(__name__)


def predictions_to_original(
    prediction: Mapping[str, Any], target: Mapping[str, Any]
) -> Dict[str, np.ndarray]:
    """One image's prediction as NumPy arrays with boxes in original image pixels.

    Args:
        prediction: ``boxes`` [N, 4] x1y1x2y2 in resized-input pixels, ``scores`` [N],
            ``labels`` [N] (tensors or arrays).
        target: the loader's target with ``scale_factor`` (sx, sy), ``orig_size`` (h, w) and,
            optionally, ``flipped`` and ``img_size`` (h, w).
    Returns:
        ``boxes`` float32 [N, 4] divided by (sx, sy, sx, sy) and clipped to the original image,
        ``scores`` float32 [N], ``labels`` int64 [N].
    """
    boxes = torch.as_tensor(prediction["boxes"]).detach().float().cpu().numpy().reshape(-1, 4)
    scores = torch.as_tensor(prediction["scores"]).detach().float().cpu().numpy().reshape(-1)
    labels = torch.as_tensor(prediction["labels"]).detach().cpu().numpy().astype(np.int64).reshape(-1)
    if target.get("flipped", False):
        width = float(target["img_size"][1])
        boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    sx, sy = (float(v) for v in target["scale_factor"])
    boxes = boxes / np.array([sx, sy, sx, sy], dtype=np.float32)
    h, w = (float(v) for v in target["orig_size"])
    boxes = np.clip(boxes, 0.0, np.array([w, h, w, h], dtype=np.float32)).astype(np.float32)
    return {"boxes": boxes, "scores": scores, "labels": labels}


def build_eval_dataset(cfg: Config, split: str = "val") -> Any:
    """The ``data.<split>`` dataset with the deterministic eval transforms, empty images kept."""
    from training.data.coco import CocoDetection
    from training.data.transforms import build_transforms

    split_cfg = getattr(cfg.data, split)
    transforms = build_transforms(
        scale=cfg.data.scale, mean=cfg.data.mean, std=cfg.data.std, to_rgb=cfg.data.to_rgb, train=False
    )
    return CocoDetection(
        split_cfg.ann_file,
        split_cfg.img_dir,
        transforms=transforms,
        skip_bad_images=cfg.data.skip_bad_images,
        filter_empty=False,
    )


def build_eval_loader(
    dataset: Any, *, batch_size: int, num_workers: int = 0, pad_divisor: int = 32
) -> Any:
    """A non-shuffling loader over every image of ``dataset`` (batches grouped by aspect ratio)."""
    from training.data.loader import build_dataloader

    return build_dataloader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        seed=0,
        divisor=pad_divisor,
        aspect_ratio_grouping=hasattr(dataset, "aspect_ratios"),
    )


def _predictor(model: torch.nn.Module) -> torch.nn.Module:
    """The module with ``predict`` (unwraps DistributedDataParallel-style ``.module``)."""
    if hasattr(model, "predict"):
        return model
    inner = getattr(model, "module", None)
    if inner is not None and hasattr(inner, "predict"):
        return inner
    raise TypeError(f"{type(model).__name__} has no predict(images, image_sizes) method")


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def run_inference(
    model: torch.nn.Module,
    loader: Any,
    evaluator: COCOEvaluator,
    *,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
    max_images: Optional[int] = None,
) -> int:
    """Feed ``model.predict`` on every batch of ``loader`` to ``evaluator.process``.

    ``loader`` yields ``(images [B, 3, H, W], targets)``; the model is put in eval mode under
    ``torch.no_grad()`` and its previous train/eval mode restored afterwards. Stops after
    ``max_images`` images when given. Returns the number of images processed.
    """
    net = _predictor(model)
    device = torch.device(device) if device is not None else _model_device(net)
    was_training = net.training
    net.eval()
    done = 0
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    if max_images is not None and total is not None:
        total = min(total, max_images)
    try:
        with torch.no_grad(), tqdm(total=total, desc="eval", unit="img", disable=not progress) as bar:
            for images, targets in loader:
                if max_images is not None and done >= max_images:
                    break
                if max_images is not None and done + len(targets) > max_images:
                    keep = max_images - done
                    images, targets = images[:keep], targets[:keep]
                images = images.to(device, non_blocking=True)
                sizes = [tuple(int(v) for v in t["img_size"]) for t in targets]
                outputs = net.predict(images, sizes)
                evaluator.process(
                    [int(t["image_id"]) for t in targets],
                    [predictions_to_original(o, t) for o, t in zip(outputs, targets)],
                )
                done += len(targets)
                bar.update(len(targets))
    finally:
        net.train(was_training)
    return done


def evaluate_model(
    model: torch.nn.Module,
    data: Any,
    *,
    work_dir: Union[str, "os.PathLike[str]", None] = None,
    out_dir: Union[str, "os.PathLike[str]", None] = None,
    eval_cfg: Optional[EvalConfig] = None,
    coco_gt: Any = None,
    label_to_cat_id: Union[Mapping[int, int], Sequence[int], None] = None,
    device: Union[str, torch.device, None] = None,
    batch_size: Optional[int] = None,
    num_workers: int = 0,
    pad_divisor: int = 32,
    progress: bool = True,
    max_images: Optional[int] = None,
) -> dict:
    """Evaluate ``model`` on a dataset or loader; optionally write the report files.

    Args:
        data: a ``CocoDetection``-like dataset (with eval transforms) or a loader over one;
            the ground truth (``.coco``) and ``.label_to_cat_id`` are read from it (through
            ``loader.dataset``) unless ``coco_gt`` / ``label_to_cat_id`` are given. A dataset is
            batched with ``batch_size`` (default ``eval_cfg.batch_size``), ``num_workers`` and
            ``pad_divisor``.
        work_dir: writes ``work_dir/eval/{metrics.json, metrics.md, results.json}``;
            ``out_dir`` names that folder directly instead.
        eval_cfg: thresholds and backend choice (default ``EvalConfig()``).
        device: where the images go; default the model's device.
    Returns:
        The metrics dict of :meth:`COCOEvaluator.evaluate`.
    """
    eval_cfg = eval_cfg or EvalConfig()
    is_loader = isinstance(data, torch.utils.data.DataLoader)
    dataset = data.dataset if is_loader else data
    if coco_gt is None:
        coco_gt = getattr(dataset, "coco", None)
        if coco_gt is None:
            raise ValueError(
                f"evaluate_model: {type(dataset).__name__} has no .coco ground truth; pass coco_gt="
            )
    if label_to_cat_id is None:
        label_to_cat_id = getattr(dataset, "label_to_cat_id", None)
    evaluator = COCOEvaluator(
        coco_gt,
        label_to_cat_id=label_to_cat_id,
        use_faster_coco_eval=eval_cfg.use_faster_coco_eval,
        concept_score_thr=eval_cfg.concept_score_thr,
        concept_iou_thr=eval_cfg.concept_iou_thr,
        source=getattr(dataset, "ann_file", None),
    )
    if is_loader:
        loader = data
    else:
        loader = build_eval_loader(
            dataset,
            batch_size=batch_size or eval_cfg.batch_size,
            num_workers=num_workers,
            pad_divisor=pad_divisor,
        )
    start = time.perf_counter()
    n = run_inference(model, loader, evaluator, device=device, progress=progress, max_images=max_images)
    seconds = time.perf_counter() - start
    logger.info("inference on %d images: %.1f s (%.2f img/s)", n, seconds, n / max(seconds, 1e-9))
    metrics = evaluator.evaluate()
    if out_dir is None and work_dir is not None:
        out_dir = Path(work_dir) / "eval"
    if out_dir is not None:
        paths = write_metrics(metrics, out_dir)
        evaluator.write_results(Path(out_dir) / "results.json")
        logger.info("wrote %s, %s and results.json", paths["json"], paths["md"])
    return metrics
