"""``make demo``: the main job end to end on the built-in synthetic dataset.

1. generate the synthetic COCO-format dataset (unless it is already there),
2. train the tiny Faster R-CNN from scratch (``libra-train``; evaluation on the val set at the end),
3. print the COCO AP table,
4. draw the predictions on a few val images and print the picture's path.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

DEFAULT_CONFIG = "configs/tiny_faster_rcnn.yaml"


def _ensure_dataset(data_dir: Path, num_train: int, num_val: int, seed: int) -> None:
    from training.data.synthetic import generate_dataset

    if (data_dir / "annotations" / "instances_val.json").is_file():
        print(f"[demo] synthetic dataset found in {data_dir}")
        return
    print(f"[demo] generating the synthetic dataset in {data_dir} ...")
    generate_dataset(data_dir, num_train, num_val, seed=seed)


def draw_predictions(checkpoint: Path, cfg_overrides: Sequence[str], out_png: Path, num_images: int = 6) -> Path:
    """Run the trained model on the first val images and save them with boxes drawn."""
    import torch
    from PIL import Image

    from training.config import apply_overrides, config_from_dict, config_to_dict
    from training.evaluation.inference import build_eval_dataset, predictions_to_original
    from training.models import load_checkpoint_model
    from runtime.visualize import draw_detections, make_grid

    model = load_checkpoint_model(checkpoint)
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = config_from_dict(apply_overrides(payload["config"], list(cfg_overrides)))
    dataset = build_eval_dataset(cfg, "val")
    class_names = dataset.class_names
    pictures = []
    with torch.no_grad():
        for i in range(min(num_images, len(dataset))):
            image, target = dataset[i]
            pred = model.predict(image[None], [tuple(image.shape[-2:])])[0]
            pred = predictions_to_original(pred, target)
            original = Image.open(dataset.image_path(i)).convert("RGB")
            pictures.append(
                draw_detections(original, pred["boxes"], pred["scores"], pred["labels"], class_names,
                                score_thr=cfg.eval.concept_score_thr)
            )
    make_grid(pictures, cols=3).save(out_png)
    return out_png


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/demo")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--data-dir", default="data/synthetic")
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir)
    work_dir = Path(args.work_dir)
    _ensure_dataset(data_dir, args.train_images, args.val_images, args.seed)
    overrides = [
        f"data.train.ann_file={data_dir / 'annotations' / 'instances_train.json'}",
        f"data.train.img_dir={data_dir / 'train'}",
        f"data.val.ann_file={data_dir / 'annotations' / 'instances_val.json'}",
        f"data.val.img_dir={data_dir / 'val'}",
        *args.overrides,
    ]

    from training.train import main as train_main

    print(f"[demo] training {args.config} -> {work_dir}")
    rc = train_main(["--config", args.config, "--work-dir", str(work_dir), "--set", *overrides])
    if rc:
        return rc

    metrics_md = work_dir / "eval" / "metrics.md"
    metrics = json.loads((work_dir / "eval" / "metrics.json").read_text())
    print()
    print(metrics_md.read_text() if metrics_md.is_file() else json.dumps(metrics, indent=2))
    picture = draw_predictions(work_dir / "model_final.pth", overrides, work_dir / "predictions.png")
    print(f"[demo] AP50 on the synthetic val set: {metrics['AP50']:.3f}  (AP {metrics['AP']:.3f})")
    print(f"[demo] predictions drawn on val images: {picture}")
    print(f"[demo] checkpoint: {work_dir / 'model_final.pth'}; metrics: {work_dir / 'eval' / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
