"""Export a whole detector to one ONNX file (+ ``model.json``) for ONNX Runtime and TensorRT.

``libra-export --checkpoint P [--config C] [--set k=v ...] [--out DIR] [--opset N] [--max-dets K] [--simplify]``
(also ``python -m export.onnx_export``) writes ``DIR/model.onnx`` and ``DIR/model.json``. Without
``--checkpoint`` it exports the config's randomly initialised model (for latency work); the class
count then comes from ``--set model.num_classes=N`` or the config's training annotation file.

Graph I/O (see ``export/deploy_graph.py``):

* inputs ``images`` float32 [batch, 3, height, width] (resized + padded, 0..255, RGB) and
  ``image_sizes`` int32 [batch, 2] (valid h, w of each image: boxes are clipped to it);
* outputs ``num_dets`` int32 [batch, 1], ``boxes`` float32 [batch, K, 4] (x1y1x2y2 input pixels),
  ``scores`` float32 [batch, K], ``labels`` int32 [batch, K] (0-based); rows >= num_dets are 0.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``, chosen deliberately. The
dynamo exporter (the default since torch 2.9) cannot trace data-dependent detector code such as
NMS (``GuardOnDataDependentSymNode``, measured on torchvision's detectors, ``../shared/env_facts.md``
sections 3 and 6), while the TorchScript exporter maps our ops' ``symbolic`` methods to standard
ONNX ``NonMaxSuppression``/``TopK``/``RoiAlign``. The choice is recorded in ``model.json``.

After export the graph must pass ``onnx.checker`` (full check), strict shape inference and
``export.check_ops`` (TensorRT 10 parser rules); otherwise :class:`ExportError` is raised.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import onnx
import torch
from torch import nn

from training.config import (
    Config,
    ConfigError,
    add_config_args,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from training.models import build_model
from training.models.checkpoint import CheckpointError, config_from_checkpoint, load_checkpoint, load_checkpoint_model

from .check_ops import check_model
from .deploy_graph import INPUT_NAMES, OUTPUT_NAMES, DeployGraph

__all__ = ["ExportError", "EXPORTER", "export_model", "config_mismatches", "main"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_OPSET = 17
FORMAT_VERSION = 1
EXPORTER = {
    "name": "torchscript",
    "dynamo": False,
    "reason": (
        "torch.onnx.export(dynamo=False): the dynamo exporter fails on data-dependent detector "
        "post-processing (NMS: GuardOnDataDependentSymNode); the TorchScript exporter maps the "
        "models' NMS/TopK/RoIAlign ops to standard ONNX ops through their symbolic functions"
    ),
}
# TensorRT limits the graph must respect (``export/trt_ops.json``)
TOPK_MAX_K = 3840  # exclusive
NMS_MAX_CANDIDATES = 5000
# torch >= 2.5 has the dynamo argument (its default became True in 2.9); older versions only have
# the TorchScript exporter
_EXPORT_HAS_DYNAMO_ARG = "dynamo" in inspect.signature(torch.onnx.export).parameters
# data-section keys that change what the graph computes or how its input must be prepared
DATA_KEYS = ("mean", "std", "to_rgb", "scale", "pad_divisor")


class ExportError(ValueError):
    """The model cannot be exported as asked (bad input, config mismatch, graph check failure)."""


# --------------------------------------------------------------------------------------------
# Resolving the model and its config
# --------------------------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(d, dict):
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def config_mismatches(checkpoint_cfg: Config, given: Config) -> List[str]:
    """Dotted keys of ``model.*`` and the input-policy ``data.*`` keys whose values differ, as
    ``"key: checkpoint X vs config Y"``; a null ``model.num_classes``/``class_names`` in ``given``
    (filled from data at train time) matches anything."""
    ours = _flatten({"model": config_to_dict(checkpoint_cfg.model), "data": {k: config_to_dict(getattr(checkpoint_cfg.data, k)) for k in DATA_KEYS}})
    theirs = _flatten({"model": config_to_dict(given.model), "data": {k: config_to_dict(getattr(given.data, k)) for k in DATA_KEYS}})
    out = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key, "<absent>"), theirs.get(key, "<absent>")
        if key in ("model.num_classes", "model.class_names") and b is None:
            continue
        if a != b:
            out.append(f"{key}: checkpoint {a!r} vs config {b!r}")
    return out


def _load_config(config: Union[None, Config, PathLike], overrides: Sequence[str]) -> Optional[Config]:
    """A Config from a Config or YAML path, with ``--set`` overrides applied."""
    try:
        if config is None or isinstance(config, Config):
            if overrides and config is not None:
                return config_from_dict(apply_overrides(config_to_dict(config), overrides), where="--set")
            return config
        return load_config(config, overrides)
    except ConfigError as e:
        raise ExportError(str(e)) from e


def _classes_from_annotations(cfg: Config) -> Tuple[List[str], List[int]]:
    """Class names and dataset category ids (sorted by id, the training label order)."""
    from training.data.coco import read_annotation_json

    ann = cfg.data.train.ann_file
    if not ann or not Path(ann).is_file():
        raise ExportError(
            f"model.num_classes is not set and the training annotation file '{ann}' (data.train.ann_file) "
            "does not exist: pass --set model.num_classes=N (random init) or --checkpoint"
        )
    cats = sorted(read_annotation_json(ann).get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise ExportError(f"{ann}: no categories to take model.num_classes from")
    return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve(
    model_or_checkpoint: Union[None, nn.Module, PathLike], config: Union[None, Config, PathLike], overrides: Sequence[str]
) -> Tuple[nn.Module, Config, Dict[str, Any]]:
    """(model in eval mode, its config, provenance: checkpoint path/sha256 and category ids)."""
    given = _load_config(config, overrides)
    info: Dict[str, Any] = {"checkpoint": None, "checkpoint_sha256": None, "category_ids": None}
    if isinstance(model_or_checkpoint, nn.Module):
        if given is None:
            raise ExportError("export_model: a model object needs config= (the Config it was built from) for the metadata")
        return model_or_checkpoint.eval(), given, info
    if model_or_checkpoint is None:
        if given is None:
            raise ExportError("export_model: give a checkpoint, or a config to export a randomly initialised model")
        cfg = copy.deepcopy(given)
        if cfg.model.num_classes is None:
            names, ids = _classes_from_annotations(cfg)
            cfg.model.num_classes, cfg.model.class_names = len(names), names
            info["category_ids"] = ids
        torch.manual_seed(0)  # reproducible random weights
        try:
            model = build_model(cfg, pretrained=False)
        except ValueError as e:
            raise ExportError(f"cannot build the model of the config: {e}") from e
        return model.eval(), cfg, info
    path = Path(model_or_checkpoint)
    try:
        ckpt = load_checkpoint(path)
        cfg = config_from_checkpoint(ckpt, path)
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    if given is not None:
        diffs = config_mismatches(cfg, given)
        if diffs:
            raise ExportError(
                f"{path}: the checkpoint does not match the config "
                f"({len(diffs)} mismatching key(s)): " + "; ".join(diffs[:12]) + (" ..." if len(diffs) > 12 else "")
            )
    try:
        model = load_checkpoint_model(path)
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    meta = ckpt.get("meta") or {}
    ids = meta.get("category_ids", meta.get("cat_ids"))
    info.update(checkpoint=str(path), checkpoint_sha256=_sha256(path), category_ids=list(ids) if ids is not None else None)
    return model, cfg, info


# --------------------------------------------------------------------------------------------
# TensorRT limits of the detector's post-processing
# --------------------------------------------------------------------------------------------
def _post_params(model: nn.Module) -> Dict[str, Any]:
    """Thresholds and the selection sizes of the eval path, read from the built modules."""
    if hasattr(model, "roi_head"):
        rpn, roi = model.rpn, model.roi_head
        levels = len(rpn.anchor_generator.strides)
        return {
            "arch": "faster_rcnn",
            "score_thresh": roi.score_thresh,
            "nms_thresh": roi.nms_thresh,
            "max_per_img": roi.max_per_img,
            "topk": {"rpn.pre_nms_top_n_test": rpn.pre_nms_top_n[False], "rpn.post_nms_top_n_test": rpn.post_nms_top_n[False], "roi_head.nms_pre": roi.nms_pre},
            "nms_candidates": {"rpn (levels x pre_nms_top_n_test)": levels * rpn.pre_nms_top_n[False], "roi_head.nms_pre": roi.nms_pre},
        }
    head = model.head
    levels = model.anchor_generator.num_levels
    return {
        "arch": "retinanet",
        "score_thresh": head.score_thresh,
        "nms_thresh": head.nms_thresh,
        "max_per_img": head.max_per_img,
        "topk": {"retina_head.pre_nms_top_n": head.pre_nms_top_n},
        "nms_candidates": {"retina_head (levels x pre_nms_top_n)": levels * head.pre_nms_top_n},
    }


def _check_limits(post: Dict[str, Any], max_dets: int) -> None:
    problems = [f"{k} = {v} (TopK K must be < {TOPK_MAX_K})" for k, v in {**post["topk"], "max_dets": max_dets}.items() if v >= TOPK_MAX_K]
    problems += [
        f"{k} = {v} candidates per image into NMS (at most {NMS_MAX_CANDIDATES})"
        for k, v in post["nms_candidates"].items()
        if v > NMS_MAX_CANDIDATES
    ]
    if max_dets < 1:
        problems.append(f"max_dets = {max_dets} (must be >= 1)")
    if problems:
        raise ExportError("the model's post-processing exceeds TensorRT's limits: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def _torch_onnx_export(module: nn.Module, args: Tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript exporter pinned (``dynamo=False``)."""
    kwargs: Dict[str, Any] = dict(
        opset_version=opset,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={
            "images": {0: "batch", 2: "height", 3: "width"},
            "image_sizes": {0: "batch"},
            **{name: {0: "batch"} for name in OUTPUT_NAMES},
        },
        do_constant_folding=True,
    )
    if _EXPORT_HAS_DYNAMO_ARG:
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        # TracerWarnings (Python values taken as constants are sizes that are constant by design)
        # and the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), **kwargs)


def _io_spec(max_dets: int) -> Tuple[List[dict], List[dict]]:
    inputs = [
        {"name": "images", "dtype": "float32", "shape": ["batch", 3, "height", "width"]},
        {"name": "image_sizes", "dtype": "int32", "shape": ["batch", 2]},
    ]
    outputs = [
        {"name": "num_dets", "dtype": "int32", "shape": ["batch", 1]},
        {"name": "boxes", "dtype": "float32", "shape": ["batch", max_dets, 4]},
        {"name": "scores", "dtype": "float32", "shape": ["batch", max_dets]},
        {"name": "labels", "dtype": "int32", "shape": ["batch", max_dets]},
    ]
    return inputs, outputs


def _metadata(cfg: Config, model: nn.Module, info: Dict[str, Any], post: Dict[str, Any], max_dets: int, opset: int) -> Dict[str, Any]:
    import torchvision

    num_classes = int(model.num_classes)
    names = list(cfg.model.class_names) if cfg.model.class_names else [f"class_{i}" for i in range(num_classes)]
    inputs, outputs = _io_spec(max_dets)
    return {
        "format_version": FORMAT_VERSION,
        "arch": post["arch"],
        "num_classes": num_classes,
        "class_names": names,
        "category_ids": info["category_ids"],
        "input": {
            "scale": list(cfg.data.scale),
            "pad_divisor": cfg.data.pad_divisor,
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
            "to_rgb": cfg.data.to_rgb,
            "channel_order": "RGB",
            "pixel_range": [0, 255],
            "pad_value": "mean",  # pad with the mean pixel: 0 after the in-graph normalisation, as in training
            "layout": "NCHW",
        },
        "inputs": inputs,
        "outputs": outputs,
        "padding_rows": "rows >= num_dets have boxes 0, scores 0, labels 0",
        "score_thresh": post["score_thresh"],
        "nms_thresh": post["nms_thresh"],
        "max_dets": max_dets,
        "config": config_to_dict(cfg),
        "checkpoint": info["checkpoint"],
        "checkpoint_sha256": info["checkpoint_sha256"],
        "exporter": dict(EXPORTER),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "onnx_version": onnx.__version__,
        "onnx_opset": opset,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _declare_io_shapes(path: Path, max_dets: int) -> None:
    """Write the documented, fully known I/O shapes into the graph (the tracer leaves K symbolic)."""
    proto = onnx.load(str(path))
    inputs, outputs = _io_spec(max_dets)
    for value, spec in zip(list(proto.graph.input) + list(proto.graph.output), inputs + outputs):
        if value.name != spec["name"]:
            raise ExportError(f"graph I/O '{value.name}' where '{spec['name']}' was expected")
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in spec["shape"]:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d
    onnx.save(proto, str(path))


def _verify(path: Path) -> onnx.ModelProto:
    """Full checker, strict shape inference and the TensorRT op check; ExportError on failure."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path}: the exported graph fails the ONNX checks: {e}") from e
    report = check_model(model)
    if not report.ok:
        raise ExportError(f"{path}: the exported graph fails the TensorRT op check:\n{report.format()}")
    return model


def export_model(
    model_or_checkpoint: Union[None, nn.Module, PathLike],
    out_dir: PathLike,
    *,
    config: Union[None, Config, PathLike] = None,
    overrides: Sequence[str] = (),
    opset: int = DEFAULT_OPSET,
    max_dets: Optional[int] = None,
    batch_hint: int = 1,
    size_hint: Optional[Tuple[int, int]] = None,
    simplify: bool = False,
) -> Path:
    """Export a detector to ``out_dir/model.onnx`` and ``out_dir/model.json``; returns the .onnx path.

    Args:
        model_or_checkpoint: a checkpoint path (its embedded config is used; ``config``, when also
            given, must match it), a built detector (``config`` required), or None to export the
            randomly initialised model of ``config``.
        config: a :class:`Config` or a YAML path; ``overrides`` are ``key=value`` ``--set`` items.
        opset: ONNX opset (>= 16: RoiAlign needs ``coordinate_transformation_mode``).
        max_dets: K output rows per image (default: the model's ``max_per_img``).
        batch_hint, size_hint: shape of the example input used for tracing (the graph is dynamic
            in batch, height and width); default size (384, 512) rounded up to the pad divisor.
        simplify: run ``export.simplify`` (ONNX Runtime's basic, provider-independent graph
            optimisations: constant folding, redundant-node elimination) on the graph.

    Raises:
        ExportError: unreadable checkpoint, checkpoint/config mismatch (naming the keys), limits
            of TensorRT exceeded, or a graph that fails the ONNX/TensorRT checks.
    """
    if opset < 16:
        raise ExportError(f"opset {opset}: RoiAlign's coordinate_transformation_mode (aligned RoIs) needs opset >= 16")
    model, cfg, info = _resolve(model_or_checkpoint, config, overrides)
    post = _post_params(model)
    k = int(max_dets) if max_dets is not None else int(post["max_per_img"])
    _check_limits(post, k)

    div = max(1, int(cfg.data.pad_divisor))
    h, w = size_hint or (384, 512)
    h, w = -(-int(h) // div) * div, -(-int(w) // div) * div
    g = torch.Generator().manual_seed(0)
    images = torch.rand(int(batch_hint), 3, h, w, generator=g) * 255
    sizes = torch.tensor([[h, w]] * int(batch_hint), dtype=torch.int32)
    graph = DeployGraph(detector=model, mean=cfg.data.mean, std=cfg.data.std, to_rgb=cfg.data.to_rgb, max_dets=k).eval()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".model.", suffix=".onnx", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        start = time.perf_counter()
        with torch.no_grad():
            _torch_onnx_export(graph, (images, sizes), tmp, opset)
        if simplify:
            from .simplify import simplify_onnx

            simplify_onnx(tmp, tmp)
        _declare_io_shapes(tmp, k)
        proto = _verify(tmp)
        meta = _metadata(cfg, model, info, post, k, opset)
        onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in meta.items()})
        onnx.save(proto, str(tmp))
        onnx_path = out_dir / "model.onnx"
        os.replace(tmp, onnx_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    meta["export_seconds"] = round(time.perf_counter() - start, 2)
    with open(out_dir / "model.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    logger.info("wrote %s (%.1f s)", onnx_path, meta["export_seconds"])
    return onnx_path


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="libra-export",
        description="Export a detector (checkpoint, or a config's random init) to ONNX: DIR/model.onnx + DIR/model.json.",
    )
    parser.add_argument("--checkpoint", help="checkpoint (.pth); omitted: the config's randomly initialised model")
    add_config_args(parser, required=False)
    parser.add_argument("--out", help="output folder (default: <checkpoint dir>/export, or export_out/<config name>)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--max-dets", type=int, help="detections per image K (default: the model's max_per_img)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="example input size for tracing")
    parser.add_argument("--simplify", action="store_true", help="simplify the graph (ONNX Runtime basic optimisations)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.checkpoint is None and args.config is None:
        parser.error("give --checkpoint and/or --config")
    if args.out:
        out = Path(args.out)
    elif args.checkpoint:
        out = Path(args.checkpoint).resolve().parent / "export"
    else:
        out = Path("export_out") / Path(args.config).stem
    try:
        path = export_model(
            args.checkpoint,
            out,
            config=args.config,
            overrides=args.overrides,
            opset=args.opset,
            max_dets=args.max_dets,
            size_hint=tuple(args.size) if args.size else None,
            simplify=args.simplify,
        )
    except (ExportError, ConfigError) as e:
        print(f"libra-export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.with_name('model.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
