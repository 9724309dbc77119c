"""Typed configuration: dataclasses, YAML files with ``_base_`` inheritance, ``--set`` overrides.

A config file is YAML whose keys mirror the dataclasses below. A file may name another with
``_base_: other.yaml`` (a path relative to the file, or a list of them, later ones winning); its own
keys are merged over the base recursively, mappings key by key, everything else replaced.
Command-line overrides ``key.sub=value`` are applied last; values are parsed as YAML scalars
(``0.01``, ``true``, ``[8, 11]``, ``null``).

Every key is checked against the schema: an unknown key raises :class:`ConfigError` naming the
key and listing the valid ones, a value of the wrong type names the key and the expected type.
Nothing here imports torch: the runtime and tools can read configs without it.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

__all__ = [
    "ConfigError",
    "DataSplitConfig",
    "DataConfig",
    "BackboneConfig",
    "FPNConfig",
    "BFPConfig",
    "AnchorConfig",
    "SamplerConfig",
    "RPNConfig",
    "RoIHeadConfig",
    "RetinaHeadConfig",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "save_config",
]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key (and file) at fault."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
@dataclass
class DataSplitConfig:
    """One split of a COCO-format dataset: annotation JSON and image folder."""

    ann_file: str = ""
    img_dir: str = ""


@dataclass
class DataConfig:
    """Datasets and the pre-processing policy shared by training, export and the runtime.

    ``scale`` is (short side, max long side); ``mean``/``std`` are in 0..255 pixel units and in the
    model's channel order (``to_rgb: false`` feeds BGR, as Detectron/caffe-style weights expect).
    """

    train: DataSplitConfig = field(
        default_factory=lambda: DataSplitConfig(
            "data/synthetic/annotations/instances_train.json", "data/synthetic/train"
        )
    )
    val: DataSplitConfig = field(
        default_factory=lambda: DataSplitConfig(
            "data/synthetic/annotations/instances_val.json", "data/synthetic/val"
        )
    )
    scale: Tuple[int, int] = (800, 1333)
    train_scales: Optional[List[Tuple[int, int]]] = None  # multi-scale training; None = [scale]
    flip_prob: float = 0.5
    mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    pad_divisor: int = 32
    batch_size: int = 2  # images per process (per GPU)
    workers: int = 2
    aspect_ratio_grouping: bool = True
    filter_empty: bool = True  # drop training images without annotations, as the 1x recipe does
    skip_bad_images: bool = False  # log and skip corrupt images instead of stopping


@dataclass
class BackboneConfig:
    """Backbone: torchvision ResNet (``kind: resnet``) or the small from-scratch one (``kind: tiny``)."""

    kind: str = "resnet"  # "resnet" | "tiny"
    depth: int = 50  # ResNet depth: 18, 34, 50, 101
    frozen_stages: int = 1  # -1: nothing frozen; 0: stem; 1: stem + stage 1 (the 1x recipe)
    norm: str = "frozen_bn"  # "frozen_bn" (statistics and affine frozen) | "bn" | "gn"
    pretrained: Optional[str] = None  # local torchvision ImageNet ResNet checkpoint (.pth)
    widths: List[int] = field(default_factory=lambda: [32, 64, 128, 256])  # tiny: C2..C5 channels
    gn_groups: int = 8  # groups when norm == "gn"
    # epsilon of the ResNet's norm layers; torchvision's COCO_V1 detector weights were trained with
    # FrozenBatchNorm eps 0.0 (torchvision sets it when loading them), ImageNet ResNets with 1e-5
    norm_eps: float = 1e-5


@dataclass
class FPNConfig:
    """Feature pyramid: P-levels produced and how the levels above P5 are made."""

    out_channels: int = 256
    min_level: int = 2  # 2: P2..; 3: P3.. (RetinaNet)
    max_level: int = 6  # 6: P6 (Faster R-CNN); 7: P7 (RetinaNet)
    # "maxpool": P6 = max_pool(P5, 1, stride 2) (Faster R-CNN). "conv_c5" / "conv_p5": P6 by a
    # stride-2 3x3 conv on C5 (mmdetection RetinaNet) or on P5 (torchvision RetinaNet), P7 from ReLU(P6).
    extra: str = "maxpool"


@dataclass
class BFPConfig:
    """Balanced Feature Pyramid (Libra R-CNN, Sec. 3.2), appended after the FPN when enabled."""

    enabled: bool = False
    refine_level: int = 2  # index into the neck's output levels (2 = P4 for P2..P6)
    refine_type: str = "non_local"  # "non_local" | "conv" | "none"
    init: str = "xavier"  # "xavier" (published checkpoints) | "zero_nonlocal_out"


@dataclass
class AnchorConfig:
    """Anchors per level: sizes = stride * scales (mmdetection) or explicit ``sizes`` (torchvision)."""

    strides: List[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    scales: List[float] = field(default_factory=lambda: [8.0])  # anchor side / stride
    ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # h / w
    sizes: Optional[List[List[float]]] = None  # explicit per-level sizes, overrides scales
    round_base: bool = False  # round base anchors to integers (torchvision)
    center_offset: float = 0.0  # 0.0: anchors centred on pixel corners (mmdet v2 / torchvision)
    # torchvision computes a level's stride as padded image size // feature size, so P6 of an image
    # whose P5 side is odd gets e.g. stride 59 instead of 64; true reproduces that (converted weights).
    stride_from_image: bool = False


@dataclass
class SamplerConfig:
    """Which samples of an assignment enter the loss. ``kind``s: "random"; Libra adds more."""

    kind: str = "random"
    num: int = 512
    pos_fraction: float = 0.25
    neg_pos_ub: int = -1  # cap on negatives per positive; -1 = no cap
    add_gt_as_proposals: bool = True
    # options of the Libra samplers (used when kind names them)
    num_bins: int = 3
    floor_thr: float = -1.0
    floor_fraction: float = 0.0
    binning: str = "reference"  # "reference" (authors' release) | "paper"


@dataclass
class RPNConfig:
    """Region proposal network (Faster R-CNN)."""

    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    feat_channels: int = 256
    pos_iou_thr: float = 0.7
    neg_iou_thr: float = 0.3
    min_pos_iou: float = 0.3
    allow_low_quality_matches: bool = True
    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(
            kind="random", num=256, pos_fraction=0.5, add_gt_as_proposals=False
        )
    )
    target_means: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    target_stds: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    bbox_loss: str = "l1"  # "l1" | "smooth_l1" | "balanced_l1"
    smooth_l1_beta: float = 1.0 / 9.0
    pre_nms_top_n_train: int = 2000  # per level
    pre_nms_top_n_test: int = 1000  # per level
    post_nms_top_n_train: int = 2000  # per image
    post_nms_top_n_test: int = 1000  # per image
    nms_thresh: float = 0.7
    min_box_size: float = 0.0
    score_thresh: float = 0.0


@dataclass
class RoIHeadConfig:
    """Second stage of Faster R-CNN: RoIAlign per FPN level, 2-fc head, box predictor."""

    roi_size: int = 7
    sampling_ratio: int = 0  # 0 = adaptive (mmdetection); torchvision uses 2
    aligned: bool = True  # half-pixel offset (mmdetection); torchvision uses False
    canonical_scale: int = 224  # FPN level assignment k = floor(k0 + log2(sqrt(wh) / 224))
    canonical_level: int = 4
    finest_scale: int = 56  # mmdetection's variant: level = floor(log2(sqrt(wh) / 56 + 1e-6))
    level_mapper: str = "mmdet"  # "mmdet" | "torchvision"
    fc_channels: int = 1024
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.5
    min_pos_iou: float = 0.5
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    target_means: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    target_stds: Tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    bbox_loss: str = "l1"  # "l1" | "smooth_l1" | "balanced_l1"
    smooth_l1_beta: float = 1.0
    balanced_l1_alpha: float = 0.5
    balanced_l1_gamma: float = 1.5
    balanced_l1_beta: float = 1.0
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    max_per_img: int = 100


@dataclass
class RetinaHeadConfig:
    """RetinaNet head: 4-conv towers, focal loss, per-level top-k, NMS."""

    anchors: AnchorConfig = field(
        default_factory=lambda: AnchorConfig(
            strides=[8, 16, 32, 64, 128], scales=[4.0, 4.0 * 2 ** (1 / 3), 4.0 * 2 ** (2 / 3)]
        )
    )
    feat_channels: int = 256
    stacked_convs: int = 4
    prior_prob: float = 0.01
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.4
    min_pos_iou: float = 0.0
    allow_low_quality_matches: bool = True
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    target_means: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    target_stds: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    bbox_loss: str = "l1"  # "l1" | "smooth_l1" | "balanced_l1"
    smooth_l1_beta: float = 0.11
    balanced_l1_alpha: float = 0.5
    balanced_l1_gamma: float = 1.5
    balanced_l1_beta: float = 0.11
    pre_nms_top_n: int = 1000  # per level
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    max_per_img: int = 100


@dataclass
class ModelConfig:
    """The detector. ``loss_weights`` maps every loss name the detector returns to its weight."""

    arch: str = "faster_rcnn"  # "faster_rcnn" | "retinanet"
    num_classes: Optional[int] = None  # None: taken from the training annotation file
    class_names: Optional[List[str]] = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    bfp: BFPConfig = field(default_factory=BFPConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    retina_head: RetinaHeadConfig = field(default_factory=RetinaHeadConfig)
    bbox_clip: float = 4.135166556742356  # log(1000 / 16): clamp of dw/dh before exp
    # e.g. {rpn_cls: 1.0, rpn_bbox: 1.0, rcnn_cls: 1.0, rcnn_bbox: 0.5}; a loss not named here has
    # weight 1.0, a name the detector does not return is an error when the model is built.
    loss_weights: Dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation schedule. ``lr`` is for ``base_batch_size`` images per step, scaled linearly."""

    epochs: int = 12
    max_iters: Optional[int] = None  # overrides epochs; lr steps scale with it
    lr: float = 0.02
    base_batch_size: int = 16
    scale_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    lr_steps: List[int] = field(default_factory=lambda: [8, 11])  # epochs
    lr_gamma: float = 0.1
    grad_clip: Optional[float] = None  # max L2 norm; None = off
    amp: bool = False  # mixed precision (CUDA only)
    checkpoint_interval: int = 500  # iterations; a checkpoint is also written at each epoch end
    log_interval: int = 20
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    eval_at_end: bool = True


@dataclass
class EvalConfig:
    """Evaluation: COCO AP plus per-class concept recall/precision at ``concept_score_thr``."""

    concept_score_thr: float = 0.3
    concept_iou_thr: float = 0.5
    batch_size: int = 2
    use_faster_coco_eval: bool = True  # when installed; pycocotools otherwise


@dataclass
class Config:
    """Everything a run needs; saved inside every checkpoint."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------
# Loading, merging, overrides
# --------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, over: Mapping) -> dict:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_with_bases(path: Path, chain: Tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(f"{path}: _base_ cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths")
    merged: dict = {}
    for b in bases:
        merged = _merge(merged, _load_with_bases(path.parent / b, chain + (path,)))
    return _merge(merged, data)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_union(origin: Any) -> bool:
    return origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType"))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against type ``tp`` and convert it (lists to tuples, ints to floats...)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(
        f"{where}{key}: expected {_type_name(tp)}, got {type(value).__name__} ({value!r})"
    )
    if tp is Any:
        return value
    if _is_union(origin):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, where)
            except ConfigError as e:
                errors.append(e)
        raise bad
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return _build_dataclass(tp, value, key + ".", where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"{where}{key}: expected {_type_name(tp)} ({len(args)} items), got {len(value)} items"
            )
        return tuple(_convert(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise bad
        kt, vt = args
        return {_convert(k, kt, key, where): _convert(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise ConfigError(f"{where}{key}: unsupported schema type {_type_name(tp)}")


def _build_dataclass(cls: type, data: Mapping, prefix: str = "", where: str = "") -> Any:
    """Build ``cls`` from ``data``; a mapping given for a nested dataclass or dict field is merged
    over that field's default, so a file only states what it changes."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{where}unknown key '{prefix}{unknown[0]}'; valid keys of "
            f"'{prefix.rstrip('.') or '<root>'}' are: {', '.join(names)}"
        )
    defaults = cls()
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        value = data[name]
        default = getattr(defaults, name)
        if isinstance(value, Mapping) and (dataclasses.is_dataclass(default) or isinstance(default, dict)):
            value = _merge(config_to_dict(default), value)
        kwargs[name] = _convert(value, hints[name], prefix + name, where)
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> Any:
    """A plain dict/list/scalar tree of a config (tuples become lists), as YAML/JSON would hold."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def config_from_dict(data: Mapping, where: str = "") -> Config:
    """Validate a plain dict (e.g. from YAML or a checkpoint) into a :class:`Config`."""
    return _build_dataclass(Config, data, "", f"{where}: " if where else "")


def _parse_override(item: str) -> Tuple[List[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=0.01")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{item}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a plain config dict (validated later by the schema)."""
    out = copy.deepcopy(data)
    for item in overrides:
        parts, value = _parse_override(item)
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (with ``_base_`` inheritance) and apply ``--set`` style overrides.

    Raises:
        ConfigError: file missing or unreadable, unknown key, or a value of the wrong type; the
            message names the file and the key.
    """
    path = Path(path)
    data = _load_with_bases(path)
    cfg = config_from_dict(data, where=str(path))
    if overrides:
        try:
            cfg = config_from_dict(apply_overrides(config_to_dict(cfg), overrides), where="--set")
        except ConfigError as e:
            raise ConfigError(f"{e} (while applying overrides {list(overrides)})") from None
    if not cfg.name:
        cfg.name = path.stem
    return cfg


def save_config(cfg: Config, path: Union[str, os.PathLike]) -> None:
    """Write the resolved config as YAML (loadable again by :func:`load_config`)."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


def add_config_args(parser: Any, *, required: bool = True) -> None:
    """Add ``--config`` and ``--set key=value ...`` to an argparse parser (every CLI uses this)."""
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.lr=0.01 model.loss_weights.rcnn_bbox=0.5",
    )
