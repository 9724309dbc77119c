"""``libra-eval``: COCO evaluation of a checkpoint on ``data.val``.

    libra-eval --checkpoint work_dirs/run/model_final.pth --work-dir work_dirs/run
    libra-eval --checkpoint P --config configs/x.yaml --set data.val.ann_file=... --work-dir W

The model is built from the config embedded in the checkpoint. ``--config`` supplies the data,
eval and train sections (dataset paths, pre-processing, thresholds, device) in place of the
checkpoint's; the model section always comes from the checkpoint. ``--set key=value`` applies
last, to every section: a ``model.*`` override (e.g. ``model.roi_head.score_thresh=0.0``) rebuilds
the model with that config and loads the checkpoint's weights into it.

Writes ``W/eval/metrics.json``, ``W/eval/metrics.md`` and ``W/eval/results.json`` (COCO results)
and prints the metrics tables.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from training.config import (
    Config,
    ConfigError,
    add_config_args,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)

__all__ = ["main", "resolve_config", "read_checkpoint_config"]

logger = logging.getLogger("libra-eval")


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="libra-eval",
        description="COCO bbox AP/AR and per-class concept recall/precision of a checkpoint "
        "on data.val.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pth) with an embedded config")
    add_config_args(parser, required=False)
    parser.add_argument("--work-dir", required=True, help="outputs go to WORK_DIR/eval/")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: train.device)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: eval.batch_size)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="data loader workers (default: data.workers)"
    )
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def read_checkpoint_config(path: str, model: Any = None) -> Config:
    """The config embedded in checkpoint ``path`` (``model.config`` when the loader attached one)."""
    cfg = getattr(model, "config", None)
    if isinstance(cfg, Config):
        return cfg
    from training.models.checkpoint import config_from_checkpoint, load_checkpoint

    return config_from_checkpoint(load_checkpoint(path, map_location="cpu"), path)


def resolve_config(ckpt_cfg: Config, config_file: Optional[str], overrides: Sequence[str]) -> Config:
    """The evaluation config: the checkpoint's model section; data/eval/train from ``config_file``
    when given (else from the checkpoint); then ``overrides``."""
    data = config_to_dict(ckpt_cfg)
    if config_file:
        data = {**config_to_dict(load_config(config_file)), "model": data["model"]}
    if not overrides:
        return config_from_dict(data, where=config_file or "checkpoint config")
    try:
        return config_from_dict(apply_overrides(data, overrides), where="--set")
    except ConfigError as e:
        raise ConfigError(f"{e} (while applying overrides {list(overrides)})") from None


def _rebuild_model(model: Any, cfg: Config, path: str) -> Any:
    """A model built from ``cfg`` holding ``model``'s weights (after a ``--set model.*``)."""
    from training.models import build_model

    new = build_model(cfg, pretrained=False)
    try:
        new.load_state_dict(model.state_dict())
    except RuntimeError as e:
        raise ConfigError(
            f"{path}: the checkpoint's weights do not fit the overridden model config: {e}"
        ) from None
    return new.eval()


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _check_classes(cfg: Config, dataset: Any) -> None:
    """The model's classes must be the evaluation file's, in the same order."""
    names = cfg.model.class_names
    ann_file = getattr(dataset, "ann_file", "the evaluation annotation file")
    if cfg.model.num_classes is not None and cfg.model.num_classes != dataset.num_classes:
        raise ConfigError(
            f"{ann_file}: has {dataset.num_classes} categories but the checkpoint's model predicts "
            f"{cfg.model.num_classes} classes"
        )
    if names is not None and list(names) != list(dataset.class_names):
        raise ConfigError(
            f"{ann_file}: category names {list(dataset.class_names)} differ from the checkpoint's "
            f"class names {list(names)} (labels would map to the wrong categories)"
        )


def run(args: argparse.Namespace) -> dict:
    """Load, evaluate, write the report files; returns the metrics dict."""
    from training import models
    from training.evaluation.coco import format_metrics_markdown
    from training.evaluation.inference import build_eval_dataset, evaluate_model

    model = models.load_checkpoint_model(args.checkpoint, map_location="cpu")
    ckpt_cfg = read_checkpoint_config(args.checkpoint, model)
    cfg = resolve_config(ckpt_cfg, args.config, args.overrides)
    if cfg.model != ckpt_cfg.model:
        model = _rebuild_model(model, cfg, args.checkpoint)
    device = _device(args.device or cfg.train.device)
    model.to(device)

    dataset = build_eval_dataset(cfg, "val")
    _check_classes(cfg, dataset)
    logger.info(
        "evaluating %s on %s (%d images) on %s", args.checkpoint, dataset.ann_file, len(dataset), device
    )
    metrics = evaluate_model(
        model,
        dataset,
        work_dir=args.work_dir,
        eval_cfg=cfg.eval,
        device=device,
        batch_size=args.batch_size or cfg.eval.batch_size,
        num_workers=cfg.data.workers if args.workers is None else args.workers,
        pad_divisor=cfg.data.pad_divisor,
        progress=not args.no_progress,
        max_images=args.max_images,
    )
    print(format_metrics_markdown(metrics, title=f"{Path(args.checkpoint).name} on {dataset.ann_file}"))
    print(f"wrote {Path(args.work_dir) / 'eval'}/{{metrics.json, metrics.md, results.json}}")
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``libra-eval`` / ``python -m training.evaluate``; returns the exit code."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        run(args)
    except (ValueError, OSError) as e:  # bad config, data, checkpoint or paths: the message says which
        print(f"libra-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
