"""``libra-train``: train a detector from a config, with exact resume and multi-process DDP.

Usage::

    libra-train --config configs/tiny_faster_rcnn.yaml --work-dir runs/tiny [--resume] \\
        [--set train.max_iters=200 data.workers=0 ...]
    python -m torch.distributed.run --nproc_per_node 2 -m training.train --config ... --work-dir ...

``model.num_classes`` / ``model.class_names`` left null are filled from the categories of
``data.train.ann_file``. The work dir receives:

* ``config.yaml``: the resolved config (classes filled, overrides applied)
* ``metrics.jsonl``: one JSON record per ``train.log_interval`` updates (see
  :mod:`training.engine.metrics_log`); ``loss_curves.png``: redrawn at checkpoints and the end
* ``latest.pth``: the resumable state, atomically replaced every ``train.checkpoint_interval``
  updates, at each epoch end and at the last update (``--resume`` continues from it)
* ``model_final.pth``: weights + config + class names, loadable with
  ``training.models.load_checkpoint_model`` without any YAML
* ``eval/metrics.json`` (and ``metrics.md``, ``results.json``): COCO AP and concept metrics on
  ``data.val`` when ``train.eval_at_end``

Exit status 1 with a one-line ``libra-train: error: ...`` for bad configs, data, checkpoints or
a non-finite loss (whose message holds the iteration and every loss value).

Test hooks (environment variables): ``LIBRA_TRAIN_DEBUG_PAUSE_AT_ITER=N`` pauses update N until
the process is killed (:data:`training.engine.trainer.DEBUG_PAUSE_ENV`);
``LIBRA_TRAIN_DEBUG_SAVE_RANK_WEIGHTS=1`` makes every rank save its final weights to
``rank{r}.pth`` so replicas can be compared.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from training.config import (
    Config,
    ConfigError,
    add_config_args,
    config_to_dict,
    load_config,
    save_config,
)
from training.engine.checkpointer import CheckpointError, Checkpointer
from training.engine.distributed import (
    DistInfo,
    all_gather_object,
    barrier,
    cleanup,
    dist_info_from_env,
    init_distributed,
    select_device,
    unwrap_model,
    wrap_model,
)
from training.engine.lr_schedule import build_lr_schedule
from training.engine.metrics_log import MetricsLog
from training.engine.trainer import NonFiniteLossError, Trainer, TrainState, build_optimizer

__all__ = ["main", "train", "resolve_classes", "evaluate_at_end"]

logger = logging.getLogger("training.train")

SAVE_RANK_WEIGHTS_ENV = "LIBRA_TRAIN_DEBUG_SAVE_RANK_WEIGHTS"


def resolve_classes(cfg: Config, dataset: Any) -> None:
    """Fill ``cfg.model.num_classes`` / ``class_names`` from the training dataset's categories.

    Raises:
        ConfigError: the config states a class count or names that disagree with the file.
    """
    ann_file = cfg.data.train.ann_file
    names: List[str] = list(dataset.class_names)
    if cfg.model.num_classes is None:
        cfg.model.num_classes = len(names)
    elif cfg.model.num_classes != len(names):
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but {ann_file} defines {len(names)} "
            f"categories ({', '.join(names)}); set model.num_classes: null to take them from the file"
        )
    if cfg.model.class_names is None:
        cfg.model.class_names = names
    elif len(cfg.model.class_names) != cfg.model.num_classes:
        raise ConfigError(
            f"model.class_names has {len(cfg.model.class_names)} names but model.num_classes is "
            f"{cfg.model.num_classes} ({ann_file} defines {', '.join(names)})"
        )


def _check_train_config(cfg: Config) -> None:
    """ConfigError naming the key for trainer settings out of range (the schedule checks its own)."""
    t = cfg.train
    for key, value in (("log_interval", t.log_interval), ("checkpoint_interval", t.checkpoint_interval)):
        if value < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {value}")
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be > 0 (or null to disable clipping), got {t.grad_clip}")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {cfg.data.batch_size}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _config_differences(a: Any, b: Any, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two plain config trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: List[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _config_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _warn_on_resume_changes(cfg: Config, data_state: Dict[str, int], ckpt: Dict[str, Any]) -> None:
    """Log what makes this resumed run differ from the interrupted one (it still runs)."""
    changed = _config_differences(config_to_dict(cfg), ckpt["config"])
    if changed:
        logger.warning("resuming with a config that differs from the checkpoint's in: %s", ", ".join(changed))
    then = ckpt.get("meta", {}).get("data", {})
    if then and then != data_state:
        logger.warning("data order differs from the interrupted run (%s now, %s then): the resumed "
                       "run will not be identical to an uninterrupted one", data_state, then)


def _build_train_loader(cfg: Config, info: DistInfo, device: torch.device) -> Any:
    from training.data.coco import CocoDetection
    from training.data.loader import build_dataloader
    from training.data.transforms import build_transforms

    d = cfg.data
    transforms = build_transforms(
        scale=d.scale,
        flip_prob=d.flip_prob,
        mean=d.mean,
        std=d.std,
        to_rgb=d.to_rgb,
        train=True,
        train_scales=d.train_scales,
    )
    dataset = CocoDetection(
        d.train.ann_file,
        d.train.img_dir,
        transforms=transforms,
        skip_bad_images=d.skip_bad_images,
        filter_empty=d.filter_empty,
    )
    return build_dataloader(
        dataset,
        batch_size=d.batch_size,
        num_workers=d.workers,
        shuffle=True,
        seed=cfg.train.seed,
        divisor=d.pad_divisor,
        aspect_ratio_grouping=d.aspect_ratio_grouping,
        drop_last=False,
        distributed=info.distributed,
        rank=info.rank,
        world_size=info.world_size,
        pin_memory=device.type == "cuda",
    )


class _Collector:
    """Stands in for a COCOEvaluator in ``run_inference``: keeps ``(image_id, prediction)`` pairs."""

    def __init__(self) -> None:
        self.items: List[tuple] = []

    def process(self, image_ids: Sequence[int], predictions: Sequence[Dict[str, Any]]) -> None:
        self.items.extend(zip((int(i) for i in image_ids), predictions))


def evaluate_at_end(
    model: torch.nn.Module, cfg: Config, work_dir: Path, info: DistInfo, device: torch.device
) -> Optional[Dict[str, Any]]:
    """COCO evaluation of ``model`` on ``data.val``; rank 0 writes ``work_dir/eval/metrics.json``.

    In a distributed run every rank predicts its share of the images; the predictions are
    gathered (``all_gather_object``) and scored on rank 0. Returns the metrics on rank 0, None
    elsewhere.
    """
    from training.data.loader import build_dataloader
    from training.evaluation import COCOEvaluator, write_metrics
    from training.evaluation.inference import build_eval_dataset, evaluate_model, run_inference

    net = unwrap_model(model)
    dataset = build_eval_dataset(cfg, "val")
    if not info.distributed:
        return evaluate_model(
            net,
            dataset,
            work_dir=work_dir,
            eval_cfg=cfg.eval,
            device=device,
            num_workers=cfg.data.workers,
            pad_divisor=cfg.data.pad_divisor,
        )
    loader = build_dataloader(
        dataset,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.workers,
        shuffle=False,
        seed=0,
        divisor=cfg.data.pad_divisor,
        aspect_ratio_grouping=True,
        distributed=True,
        rank=info.rank,
        world_size=info.world_size,
    )
    collector = _Collector()
    run_inference(net, loader, collector, device=device, progress=False)
    gathered = all_gather_object(collector.items)
    if not info.is_main:
        return None
    evaluator = COCOEvaluator(
        dataset.coco,
        label_to_cat_id=dataset.label_to_cat_id,
        use_faster_coco_eval=cfg.eval.use_faster_coco_eval,
        concept_score_thr=cfg.eval.concept_score_thr,
        concept_iou_thr=cfg.eval.concept_iou_thr,
        source=dataset.ann_file,
    )
    for items in gathered:  # padded shards repeat images; the evaluator keeps the first copy
        for image_id, pred in items:
            evaluator.process([image_id], [pred])
    metrics = evaluator.evaluate()
    out_dir = work_dir / "eval"
    write_metrics(metrics, out_dir)
    evaluator.write_results(out_dir / "results.json")
    return metrics


def train(cfg: Config, work_dir: Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train ``cfg`` in ``work_dir`` (a new run, or ``resume`` from its ``latest.pth``).

    Joins the torchrun process group when launched by torchrun. Returns the path of
    ``model_final.pth``. Raises ConfigError, DatasetError, CheckpointError or NonFiniteLossError
    (each naming the file, key or iteration at fault).
    """
    from training.models import build_model

    _check_train_config(cfg)
    info = dist_info_from_env()
    try:
        device = select_device(cfg.train.device, info.local_rank)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(str(exc)) from None
    init_distributed(info, device)
    work_dir = Path(work_dir)
    checkpointer = Checkpointer(work_dir=work_dir, enabled=info.is_main)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    if not resume and checkpointer.latest_path.exists():
        raise CheckpointError(
            f"{checkpointer.latest_path}: the work dir already holds a run; pass --resume to "
            "continue it or choose another --work-dir"
        )
    if cfg.train.amp and device.type != "cuda":
        logger.info("train.amp is on but the device is %s: training in float32", device)

    _seed_everything(cfg.train.seed + info.rank)
    loader = _build_train_loader(cfg, info, device)
    dataset = loader.dataset.dataset
    resolve_classes(cfg, dataset)

    data_state = {"seed": cfg.train.seed, "world_size": info.world_size, "batch_size": cfg.data.batch_size}
    ckpt: Optional[Dict[str, Any]] = None
    if resume:
        ckpt = checkpointer.load_latest()
        _warn_on_resume_changes(cfg, data_state, ckpt)
    if info.is_main:
        save_config(cfg, work_dir / "config.yaml")
    barrier()  # the work dir exists before any rank opens files in it

    try:
        model = build_model(cfg).to(device)
    except ValueError as exc:  # the builder names the config key at fault
        raise ConfigError(f"{cfg.name or 'config'}: cannot build the model: {exc}") from exc
    net = wrap_model(model, info, device)
    total_batch = cfg.data.batch_size * info.world_size
    schedule = build_lr_schedule(cfg.train, iters_per_epoch=len(loader), total_batch_size=total_batch)
    optimizer = build_optimizer(
        model, lr=schedule.base_lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )
    cfg_dict = config_to_dict(cfg)
    meta = {
        "class_names": list(cfg.model.class_names),
        "cat_ids": [dataset.label_to_cat_id[i] for i in range(len(cfg.model.class_names))],
        "data": data_state,
        "torch": str(torch.__version__),
    }
    metrics = MetricsLog(
        path=work_dir / "metrics.jsonl",
        enabled=info.is_main,
        resume_iter=int(ckpt["iteration"]) if ckpt is not None else None,
    )
    trainer = Trainer(
        model=net,
        optimizer=optimizer,
        schedule=schedule,
        data_loader=loader,
        device=device,
        checkpointer=checkpointer,
        checkpoint_extra={"config": cfg_dict, "meta": meta},
        metrics=metrics,
        curves_path=work_dir / "loss_curves.png",
        amp=cfg.train.amp,
        grad_clip=cfg.train.grad_clip,
        log_interval=cfg.train.log_interval,
        checkpoint_interval=cfg.train.checkpoint_interval,
        dist=info,
        progress=progress,
    )
    if info.is_main:
        logger.info(
            "%s: %d images, %d batches/epoch of %d image(s) x %d process(es) on %s; %s",
            cfg.name, len(dataset), len(loader), cfg.data.batch_size, info.world_size, device, schedule,
        )
    state = trainer.load_state_dict(ckpt) if ckpt is not None else TrainState()
    if ckpt is not None and info.is_main:
        logger.info("resumed from %s at iteration %d (epoch %d, batch %d)",
                    checkpointer.latest_path, state.iteration, state.epoch, state.batch_in_epoch)
    state = trainer.train(state)

    meta = {**meta, "iteration": state.iteration, "epoch": state.epoch}
    checkpointer.save_final({"model": model.state_dict(), "config": cfg_dict, "meta": meta})
    if os.environ.get(SAVE_RANK_WEIGHTS_ENV):
        torch.save(model.state_dict(), work_dir / f"rank{info.rank}.pth")
    if info.is_main:
        logger.info("wrote %s", checkpointer.final_path)
    if cfg.train.eval_at_end:
        results = evaluate_at_end(net, cfg, work_dir, info, device)
        if results is not None:
            logger.info("eval on %s: AP %s, AP50 %s", cfg.data.val.ann_file, results.get("AP"), results.get("AP50"))
    barrier()
    return checkpointer.final_path


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="libra-train",
        description="Train a detector; writes config.yaml, metrics.jsonl, loss_curves.png, "
        "latest.pth, model_final.pth and eval/metrics.json to the work dir.",
    )
    add_config_args(parser)
    parser.add_argument("--work-dir", required=True, help="output directory of the run")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pth")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="log and skip corrupt/unreadable images instead of stopping (= --set data.skip_bad_images=true)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (0, or 1 with a one-line error on stderr)."""
    from training.data.errors import DatasetError
    from training.evaluation import EvaluationError

    args = _parse_args(argv)
    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    try:
        overrides = list(args.overrides) + (["data.skip_bad_images=true"] if args.skip_bad_images else [])
        cfg = load_config(args.config, overrides)
        train(cfg, Path(args.work_dir), resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DatasetError, CheckpointError, NonFiniteLossError, EvaluationError) as exc:
        print(f"libra-train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
