"""``python -m training.tools.sampling_stats``: the IoU of the R-CNN stage's negatives (Libra R-CNN Fig. 3).

    python -m training.tools.sampling_stats --config configs/libra_faster_rcnn_r50_fpn_1x.yaml \\
        --checkpoint runs/x/model_final.pth --out runs/x/sampling_stats --images 200

Runs a Faster R-CNN (a trained checkpoint, or the config's initialisation without one) over the
first N images of ``data.train`` (eval transforms: resize + normalise, no flip), takes each image's
training-time RPN proposals plus its gts (when ``roi_head.sampler.add_gt_as_proposals``), assigns
them with the R-CNN assigner, and compares the max IoU of

* ``all``: every negative (IoU < ``roi_head.neg_iou_thr``);
* ``random``: the negatives uniform random sampling picks (the baseline, paper Eq. 1);
* ``iou_balanced``: those :class:`IoUBalancedNegSampler` picks with ``roi_head.sampler``'s
  ``num_bins`` / ``floor_thr`` / ``floor_fraction`` / ``binning`` (paper Eq. 2);
* ``hard``: the same number of negatives with the highest R-CNN classification loss under the
  model (the paper's "hard negatives"; meaningful for a trained checkpoint only).

Each image's negative budget is the sampler's: ``num - min(#positives, int(num * pos_fraction))``
(capped by ``neg_pos_ub`` when set), at most all negatives. Writes ``OUT/sampling_stats.json``
(per set: count, mean IoU, share above 0.05 / 0.1 / 0.2 / 0.3, histogram over [0, neg_iou_thr) in
0.05 steps) and ``OUT/sampling_stats.png`` (the histograms as shares of each set).

``--set key=value`` applies to the config; with ``--checkpoint`` the model section comes from the
checkpoint (then the overrides), as in ``libra-eval``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import Config, ConfigError, SamplerConfig, add_config_args, config_to_dict, load_config

__all__ = ["negative_iou_sets", "summarize", "plot_histograms", "run", "main", "SETS", "THRESHOLDS"]

logger = logging.getLogger("sampling_stats")

SETS = ("all", "random", "iou_balanced", "hard")
THRESHOLDS = (0.05, 0.1, 0.2, 0.3)
BIN_WIDTH = 0.05


def _negative_budget(num_pos: int, num_neg: int, sampler: SamplerConfig) -> int:
    """Negatives the R-CNN sampler draws for an image with these candidate counts (BaseSampler flow)."""
    pos = min(num_pos, int(sampler.num * sampler.pos_fraction))
    budget = sampler.num - pos
    if sampler.neg_pos_ub >= 0:
        budget = min(budget, sampler.neg_pos_ub * max(1, pos))
    return min(num_neg, budget)


@torch.no_grad()
def negative_iou_sets(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Dict[str, Any]],
    *,
    sampler_cfg: SamplerConfig,
    iou_sampler: Any,
) -> Dict[str, List[Tensor]]:
    """Max IoUs (float [Qi] per image) of the negatives of each set in :data:`SETS`.

    Args:
        model: a :class:`~training.models.faster_rcnn.FasterRCNN` (its RPN, RoI head and assigner).
        images: padded, normalised batch [B, 3, H, W]; ``targets[i]``: ``boxes`` [M, 4],
            ``labels`` [M], optional ``ignore_boxes`` and ``img_size`` (h, w).
        sampler_cfg: the R-CNN sampler budget (``num``, ``pos_fraction``, ``neg_pos_ub``,
            ``add_gt_as_proposals``).
        iou_sampler: an ``IoUBalancedNegSampler`` (its ``sample(max_overlaps, neg_inds, n)`` form).
    """
    roi_head = model.roi_head
    feats = model.extract_feats(images)
    image_shape = (int(images.shape[-2]), int(images.shape[-1]))
    image_sizes = [tuple(t.get("img_size", image_shape)) for t in targets]
    objectness, deltas = model.rpn(feats)
    anchors = model.rpn.get_anchors(feats, image_shape)
    proposals, _ = model.rpn.get_proposals(objectness, deltas, anchors, image_sizes, training=True)

    out: Dict[str, List[Tensor]] = {name: [] for name in SETS}
    for i, (props, t) in enumerate(zip(proposals, targets)):
        gt = t["boxes"].to(props)
        if sampler_cfg.add_gt_as_proposals:
            props = torch.cat([props, gt])
        result = roi_head.assigner.assign(props, gt, t["labels"], t.get("ignore_boxes"))
        mo = result.max_overlaps
        pos = torch.where(result.gt_inds >= 0)[0]
        neg = torch.where(result.gt_inds == -1)[0]
        k = _negative_budget(pos.numel(), neg.numel(), sampler_cfg)
        out["all"].append(mo[neg])
        out["random"].append(mo[neg[torch.randperm(neg.numel(), device=neg.device)[:k]]])
        out["iou_balanced"].append(mo[iou_sampler.sample(mo, neg, k)])
        # hard negatives: the highest cross-entropy against the background class (index C)
        if neg.numel():
            cls_logits, _ = roi_head([f[i : i + 1] for f in feats], [props[neg]])
            background = torch.full((neg.numel(),), roi_head.num_classes, dtype=torch.int64, device=neg.device)
            ce = F.cross_entropy(cls_logits.float(), background, reduction="none")
            out["hard"].append(mo[neg[ce.topk(k).indices]])
        else:
            out["hard"].append(mo[neg])
    return out


def summarize(ious: Dict[str, List[Tensor]], *, neg_iou_thr: float) -> Dict[str, Any]:
    """Per set: ``count``, ``mean_iou``, ``fraction_above`` {thr: share}, ``histogram`` (counts over
    ``bin_edges``: [0, neg_iou_thr) in steps of 0.05, the last bin closed at neg_iou_thr)."""
    edges = np.arange(0.0, neg_iou_thr + 1e-9, BIN_WIDTH)
    if edges[-1] < neg_iou_thr - 1e-9:
        edges = np.append(edges, neg_iou_thr)
    sets: Dict[str, Any] = {}
    for name, parts in ious.items():
        values = torch.cat(parts).double().cpu().numpy() if parts else np.zeros(0)
        n = int(values.size)
        counts, _ = np.histogram(values, bins=edges)
        sets[name] = {
            "count": n,
            "mean_iou": float(values.mean()) if n else None,
            "fraction_above": {f"{t:g}": (float((values > t).mean()) if n else None) for t in THRESHOLDS},
            "histogram": counts.astype(int).tolist(),
        }
    return {"bin_edges": [round(float(e), 6) for e in edges], "sets": sets}


def plot_histograms(summary: Dict[str, Any], out_path: Path, *, title: str) -> Path:
    """A PNG with each set's histogram as shares of that set (grouped bars), via matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(summary["bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    names = [n for n in SETS if n in summary["sets"]]
    width = (edges[1] - edges[0]) / (len(names) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for j, name in enumerate(names):
        s = summary["sets"][name]
        shares = np.asarray(s["histogram"], dtype=float) / max(s["count"], 1)
        above = s["fraction_above"]["0.05"]
        label = f"{name} (n={s['count']}, {100 * above:.0f}% > 0.05)" if above is not None else f"{name} (n=0)"
        ax.bar(centres + (j - (len(names) - 1) / 2) * width, shares, width=width, label=label)
    ax.set_xlabel("max IoU with the ground truths")
    ax.set_ylabel("share of the set's negatives")
    ax.set_xticks(edges)
    ax.set_xticklabels([f"{e:.2f}" for e in edges], rotation=45, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.tools.sampling_stats",
        description="IoU histograms of the R-CNN negatives: all, random, IoU-balanced and hard "
        "(Libra R-CNN Figure 3) over real RPN proposals.",
    )
    add_config_args(parser, required=True)
    parser.add_argument("--checkpoint", default=None, help="trained checkpoint (default: the config's init)")
    parser.add_argument("--out", required=True, help="output folder for sampling_stats.json / .png")
    parser.add_argument("--images", type=int, default=50, help="number of training images (default 50)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model init and of the sampling")
    return parser.parse_args(argv)


def _resolve(args: argparse.Namespace) -> Tuple[Config, Optional[Dict[str, Any]]]:
    """The config (checkpoint's model section when given) and the checkpoint's state dict."""
    if args.checkpoint is None:
        return load_config(args.config, args.overrides), None
    from training.evaluate import resolve_config
    from training.models.checkpoint import config_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(args.checkpoint, map_location="cpu")
    cfg = resolve_config(config_from_checkpoint(ckpt, args.checkpoint), args.config, args.overrides)
    return cfg, ckpt["model"]


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Collect, summarise, write JSON and PNG; returns the JSON content."""
    from training.data.coco import CocoDetection
    from training.data.loader import collate
    from training.data.transforms import build_transforms
    from training.models import build_model
    from training.models.samplers.iou_balanced import IoUBalancedNegSampler

    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    cfg, state = _resolve(args)
    if cfg.model.arch != "faster_rcnn":
        raise ConfigError(
            f"{args.config}: model.arch is '{cfg.model.arch}'; sampling statistics need the R-CNN stage "
            "of a two-stage detector (model.arch: faster_rcnn)"
        )
    data = cfg.data
    dataset = CocoDetection(
        data.train.ann_file,
        data.train.img_dir,
        transforms=build_transforms(scale=data.scale, mean=data.mean, std=data.std, to_rgb=data.to_rgb, train=False),
        filter_empty=data.filter_empty,
        skip_bad_images=data.skip_bad_images,
    )
    if cfg.model.num_classes is None:
        cfg.model.num_classes = dataset.num_classes
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    torch.manual_seed(args.seed)
    model = build_model(cfg, pretrained=state is None)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"{args.checkpoint}: the weights do not fit the (overridden) model config: {e}") from None
    model.to(device).eval()

    h = cfg.model.roi_head
    s = h.sampler
    iou_sampler = IoUBalancedNegSampler(
        num_bins=s.num_bins, floor_thr=s.floor_thr, floor_fraction=s.floor_fraction,
        binning=s.binning, neg_iou_thr=h.neg_iou_thr,
    )
    num_images = min(args.images, len(dataset))
    ious: Dict[str, List[Tensor]] = {name: [] for name in SETS}
    for i in range(num_images):
        images, targets = collate([dataset[i]])  # one image per batch: no padding beyond its own
        images = images.to(device)
        targets = [{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]
        for name, values in negative_iou_sets(model, images, targets, sampler_cfg=s, iou_sampler=iou_sampler).items():
            ious[name].extend(v.cpu() for v in values)

    summary = summarize(ious, neg_iou_thr=h.neg_iou_thr)
    report = {
        "config": str(args.config),
        "checkpoint": args.checkpoint,
        "num_images": num_images,
        "dataset": data.train.ann_file,
        "neg_iou_thr": h.neg_iou_thr,
        "sampler": {k: v for k, v in config_to_dict(s).items() if k != "kind"},
        **summary,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sampling_stats.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    weights = "untrained (config init)" if args.checkpoint is None else os.path.basename(args.checkpoint)
    plot_histograms(
        summary, out / "sampling_stats.png",
        title=f"R-CNN negatives over {num_images} images, {weights}; binning={s.binning}, K={s.num_bins}",
    )
    for name in SETS:
        st = summary["sets"][name]
        above = st["fraction_above"]["0.05"]
        logger.info("%-12s n=%-7d IoU > 0.05: %s", name, st["count"], "-" if above is None else f"{100 * above:.1f}%")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse_args(argv)
    try:
        run(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'sampling_stats.json'} and {Path(args.out) / 'sampling_stats.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
