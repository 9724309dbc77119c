"""Convert torchvision detector weights into this project's checkpoints.

    python -m training.models.convert.torchvision IN.pth OUT.pth --arch faster_rcnn --num-classes 91 \
        [--class-names a,b,...] [--config configs/tv_faster_rcnn_r50_fpn.yaml]

``IN.pth`` is the state dict of torchvision's ``fasterrcnn_resnet50_fpn`` (or any torchvision
``FasterRCNN`` on a ``resnet_fpn_backbone``: the ResNet depth is read from the weights), either bare
or under a ``"model"`` key. ``--num-classes`` counts as torchvision does, background included
(91 for COCO). Our classifier puts background last, so torchvision's label ``j`` (1..N-1) becomes
our label ``j - 1`` and the background row moves from 0 to N-1; torchvision's background box
regression (the first 4 outputs) is dropped. For N = 91 the class names default to torchvision's
COCO names (its unused "N/A" slots renamed ``unused_<id>`` so names stay unique), and
``meta["category_ids"]`` records the original COCO id of each label (our label + 1).

The embedded config is ``configs/tv_faster_rcnn_r50_fpn.yaml`` (torchvision's conventions). The
output is written with ``save_checkpoint`` and loads with ``load_checkpoint_model``.

With ``--arch retinanet`` the input is torchvision's ``retinanet_resnet50_fpn`` (v1 head); RetinaNet
has no background class, so ``--num-classes`` K (91 for COCO) is our class count and torchvision's
label j is our label j (for COCO weights the COCO category id; the unused ids stay as classes that
never fire), embedded with ``configs/tv_retinanet_r50_fpn.yaml``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ...config import Config, config_to_dict, load_config
from ..checkpoint import save_checkpoint

__all__ = [
    "ConversionError",
    "convert_faster_rcnn_state_dict",
    "convert_retinanet_state_dict",
    "resnet_depth_from_state_dict",
    "default_class_names",
    "convert_checkpoint",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
TV_FASTER_RCNN_CONFIG = REPO_ROOT / "configs" / "tv_faster_rcnn_r50_fpn.yaml"
TV_RETINANET_CONFIG = REPO_ROOT / "configs" / "tv_retinanet_r50_fpn.yaml"

_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34, ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101}


class ConversionError(ValueError):
    """The input weights are not what the chosen conversion expects."""


def resnet_depth_from_state_dict(sd: Dict[str, Tensor], prefix: str = "backbone.body.") -> int:
    """ResNet depth (18/34/50/101) from the block counts and block type of a state dict."""
    blocks = []
    for layer in range(1, 5):
        ids = {int(m.group(1)) for k in sd for m in [re.match(rf"{re.escape(prefix)}layer{layer}\.(\d+)\.", k)] if m}
        blocks.append(len(ids))
    kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in sd else "basic"
    depth = _DEPTHS.get((kind, tuple(blocks)))  # type: ignore[arg-type]
    if depth is None:
        raise ConversionError(f"unsupported ResNet under '{prefix}': {kind} blocks per stage {blocks}")
    return depth


def _strip_model_key(sd: Dict) -> Dict[str, Tensor]:
    if "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    return sd


# (pattern, replacement): the replacement is an ``re.sub`` template or a function of the match
_Rule = Tuple[str, Union[str, Callable[["re.Match[str]"], str]]]

# ResNet trunk and the FPN's lateral/output convs: the same layout in both torchvision detectors
# (v1 ``inner_blocks.i.*`` or v2 ``inner_blocks.i.0.*``).
_RESNET_FPN_RULES: List[_Rule] = [
    (r"^backbone\.body\.(.*)$", r"backbone.\1"),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?(weight|bias)$", r"necks.0.lateral_convs.\1.\2"),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?(weight|bias)$", r"necks.0.fpn_convs.\1.\2"),
]


def _require_keys(sd: Dict[str, Tensor], needed: Sequence[str], detector: str) -> None:
    """Raise ConversionError when ``sd`` lacks any of ``needed`` (so it is not a torchvision ``detector``)."""
    absent = [k for k in needed if k not in sd]
    if absent:
        raise ConversionError(f"not a torchvision {detector} state dict: no {absent}; first keys: {list(sd)[:5]}")


def _rename_keys(sd: Dict[str, Tensor], rules: Sequence[_Rule], *, what: str, hint: str) -> Dict[str, Tensor]:
    """Copy of ``sd`` (tensors cloned) under our keys, each renamed by the first rule it matches.

    ``num_batches_tracked`` entries are dropped; a key no rule matches raises ConversionError
    ``unexpected <what> '<key>' (<hint>)``.
    """
    out: Dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, repl in rules:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value.clone()
                break
        else:
            raise ConversionError(f"unexpected {what} '{key}' ({hint})")
    return out


def convert_faster_rcnn_state_dict(sd: Dict[str, Tensor], num_classes: int) -> Dict[str, Tensor]:
    """torchvision ``FasterRCNN`` (ResNet-FPN) keys/tensors -> ours.

    Args:
        sd: torchvision state dict (v1 or v2 key layout of the FPN and RPN convs).
        num_classes: N, torchvision's count with background (rows of ``cls_score``).

    Returns:
        Our state dict for a model with ``num_classes = N - 1`` (background last, no background
        box regression). ``num_batches_tracked`` entries are dropped (the backbone uses FrozenBN).
    """
    needed = ["backbone.body.conv1.weight", "roi_heads.box_predictor.cls_score.weight", "rpn.head.cls_logits.weight"]
    _require_keys(sd, needed, "FasterRCNN")
    rows = sd["roi_heads.box_predictor.cls_score.weight"].shape[0]
    if rows != num_classes:
        raise ConversionError(f"--num-classes {num_classes} but the weights classify {rows} classes (background included)")
    if num_classes < 2:
        raise ConversionError(f"--num-classes must be >= 2 (background + 1 class), got {num_classes}")
    rules = _RESNET_FPN_RULES + [
        (r"^rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)$", r"rpn.head.conv.\1"),
        (r"^rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)$", r"rpn.head.\1.\2"),
        (r"^roi_heads\.box_head\.(fc6|fc7)\.(weight|bias)$", r"roi_head.box_head.\1.\2"),
        (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", r"roi_head.box_predictor.\1.\2"),
    ]
    out = _rename_keys(sd, rules, what="torchvision key", hint="masks/keypoints heads are not supported")
    # background row 0 -> last; background box regression (rows 0..3) dropped
    order = list(range(1, num_classes)) + [0]
    for name in ("weight", "bias"):
        k = f"roi_head.box_predictor.cls_score.{name}"
        out[k] = out[k][order].contiguous()
        k = f"roi_head.box_predictor.bbox_pred.{name}"
        out[k] = out[k][4:].contiguous()
    return out


def convert_retinanet_state_dict(sd: Dict[str, Tensor], num_classes: int) -> Dict[str, Tensor]:
    """torchvision ``RetinaNet`` (ResNet-FPN, P6/P7 from P5) keys/tensors -> ours.

    Args:
        sd: torchvision state dict (v1 ``conv.{2i}`` or v2 ``conv.{i}.0`` layout of the head towers).
        num_classes: K, torchvision's count; RetinaNet has no background class, so our model has K
            classes and torchvision's label j is our label j (for COCO weights, K = 91 and label j is
            COCO category id j; the unused ids stay as never-trained classes).

    Returns:
        Our state dict (``num_batches_tracked`` dropped: the backbone uses FrozenBN).
    """
    needed = [
        "backbone.body.conv1.weight",
        "head.classification_head.cls_logits.weight",
        "head.regression_head.bbox_reg.weight",
    ]
    _require_keys(sd, needed, "RetinaNet")
    if num_classes < 1:
        raise ConversionError(f"--num-classes must be >= 1, got {num_classes}")
    num_anchors = sd["head.regression_head.bbox_reg.weight"].shape[0] // 4
    rows = sd["head.classification_head.cls_logits.weight"].shape[0]
    if rows != num_anchors * num_classes:
        raise ConversionError(
            f"--num-classes {num_classes} but the weights classify {rows // max(num_anchors, 1)} classes "
            f"({rows} logits for {num_anchors} anchors per location)"
        )
    towers = {"classification": "cls_convs", "regression": "reg_convs"}

    def tower_key(m: "re.Match[str]") -> str:
        # tower conv i: v2 ``conv.{i}.0.*`` (Conv2dNormActivation); v1 ``conv.{2i}.*`` (conv, relu, ...)
        layer = int(m.group(2)) if m.group(3) else int(m.group(2)) // 2
        return f"head.{towers[m.group(1)]}.{layer}.{m.group(4)}"

    rules: List[_Rule] = [(r"^head\.(classification|regression)_head\.conv\.(\d+)\.(0\.)?(weight|bias)$", tower_key)]
    rules += _RESNET_FPN_RULES + [
        (r"^backbone\.fpn\.extra_blocks\.p6\.(weight|bias)$", r"necks.0.extra_convs.0.\1"),
        (r"^backbone\.fpn\.extra_blocks\.p7\.(weight|bias)$", r"necks.0.extra_convs.1.\1"),
        (r"^head\.classification_head\.cls_logits\.(weight|bias)$", r"head.cls_logits.\1"),
        (r"^head\.regression_head\.bbox_reg\.(weight|bias)$", r"head.bbox_reg.\1"),
    ]
    return _rename_keys(sd, rules, what="torchvision RetinaNet key", hint="a GroupNorm v2 head is not supported")


def _retinanet_class_names(num_classes: int) -> List[str]:
    """Names of RetinaNet labels 0..K-1: torchvision's COCO list for K = 91, else ``class_<j>``."""
    if num_classes == 91:
        from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

        cats = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
        return [name if name not in ("N/A", "__background__") else f"unused_{i}" for i, name in enumerate(cats)]
    return [f"class_{j}" for j in range(num_classes)]


def default_class_names(num_tv_classes: int) -> List[str]:
    """Names of our labels 0..N-2: torchvision's COCO names for N = 91, else ``class_<j>``."""
    if num_tv_classes == 91:
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

        cats = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:]
        return [name if name != "N/A" else f"unused_{i + 1}" for i, name in enumerate(cats)]
    return [f"class_{j}" for j in range(1, num_tv_classes)]


def _tv_config(sd: Dict[str, Tensor], config_path: Path, arch: str) -> Config:
    """The config at ``config_path`` for ``arch``, with the ResNet depth of the torchvision weights ``sd``."""
    cfg = load_config(config_path)
    cfg.model.arch = arch
    cfg.model.backbone.depth = resnet_depth_from_state_dict(sd)
    cfg.model.backbone.pretrained = None
    return cfg


def convert_checkpoint(
    in_path: str | Path,
    out_path: str | Path,
    *,
    arch: str,
    num_classes: int,
    class_names: Optional[Sequence[str]] = None,
    config_path: Optional[str | Path] = None,
) -> Path:
    """Read torchvision weights from ``in_path``, write our checkpoint to ``out_path``.

    The result is checked by building the model from the embedded config and loading the
    converted state dict strictly before it is written.
    """
    from ..build import build_model

    in_path = Path(in_path)
    if not in_path.is_file():
        raise ConversionError(f"{in_path}: input weights not found")
    try:
        sd = _strip_model_key(torch.load(in_path, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any unpickling failure
        raise ConversionError(f"{in_path}: cannot read as a torch state dict: {e}") from e
    if not isinstance(sd, dict):
        raise ConversionError(f"{in_path}: expected a state dict, got {type(sd).__name__}")
    try:
        if arch == "faster_rcnn":
            new_sd = convert_faster_rcnn_state_dict(sd, num_classes)
            cfg = _tv_config(sd, Path(config_path) if config_path else TV_FASTER_RCNN_CONFIG, arch)
        elif arch == "retinanet":
            new_sd = convert_retinanet_state_dict(sd, num_classes)
            cfg = _tv_config(sd, Path(config_path) if config_path else TV_RETINANET_CONFIG, arch)
        else:
            raise ConversionError(f"--arch must be 'faster_rcnn' or 'retinanet', got '{arch}'")
    except ConversionError as e:
        raise ConversionError(f"{in_path}: {e}") from e
    # Faster R-CNN: torchvision's count includes background (dropped); RetinaNet has none.
    num_ours = num_classes - 1 if arch == "faster_rcnn" else num_classes
    first_tv_label = 1 if arch == "faster_rcnn" else 0
    if class_names:
        names = list(class_names)
    else:
        names = default_class_names(num_classes) if arch == "faster_rcnn" else _retinanet_class_names(num_classes)
    if len(names) != num_ours:
        raise ConversionError(
            f"--class-names: {len(names)} names given but --num-classes {num_classes} means {num_ours} "
            + ("classes without background" if arch == "faster_rcnn" else "classes (RetinaNet has no background)")
        )
    cfg.model.num_classes = num_ours
    cfg.model.class_names = names
    model = build_model(cfg, pretrained=False)
    missing, unexpected = model.load_state_dict(new_sd, strict=False)
    if missing or unexpected:
        raise ConversionError(f"{in_path}: converted weights do not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    meta = {
        "source": "torchvision",
        "source_file": str(in_path),
        "arch": arch,
        "torchvision_num_classes": num_classes,
        "category_ids": list(range(first_tv_label, num_classes)),  # torchvision label of each of our labels
    }
    return save_checkpoint(out_path, {"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta})


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Convert torchvision detector weights into a libra-rcnn checkpoint.")
    parser.add_argument("input", help="torchvision state dict (.pth)")
    parser.add_argument("output", help="checkpoint to write (.pth)")
    parser.add_argument("--arch", required=True, choices=["faster_rcnn", "retinanet"])
    parser.add_argument("--num-classes", type=int, required=True, help="as torchvision counts (91 for COCO)")
    parser.add_argument("--class-names", default=None, help="comma-separated names of the N-1 foreground classes")
    parser.add_argument("--config", default=None, help="config to embed (default: the torchvision-convention one)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    try:
        out = convert_checkpoint(
            args.input, args.output, arch=args.arch, num_classes=args.num_classes, class_names=names, config_path=args.config
        )
    except (ConversionError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
