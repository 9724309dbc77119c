"""One inference interface over every backend: PyTorch checkpoint, ONNX Runtime, TensorRT engine.

``Backend.from_path(path)`` picks the backend from the file; every backend then answers
``predict(images) -> list[Detections]`` with the same structure: boxes in ORIGINAL image pixels,
contiguous labels, and the dataset's category ids when the model file records them.

The call is split so that a benchmark can time each part (``predict`` runs the three in order)::

    batch, metas = backend.preprocess(images)   # NumPy/Pillow: resize, pad -> [B, 3, H, W] 0..255
    raw = backend.infer(batch, metas)           # the model: detections in batch pixels
    dets = backend.postprocess(raw, metas)      # to original pixels, category ids

Shapes: B images; N detections of an image; H, W the padded batch size.
Nothing here imports torch, onnxruntime or tensorrt; ``from_path`` imports the chosen backend only.
"""
from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from runtime.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageInput,
    ImageMeta,
    boxes_to_original,
    mean_pixel_rgb,
    preprocess,
)

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "Detections",
    "ModelInfo",
    "ModelLoadError",
    "detect_model_kind",
    "detections_from_outputs",
    "model_info_from_metadata",
    "read_export_metadata",
]

PathLike = Union[str, "os.PathLike[str]"]

# The values of ``backend=`` (and of ``Backend.name``), besides "auto".
BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")

_SUFFIX_KIND = {
    ".pth": "torch", ".pt": "torch", ".ckpt": "torch",
    ".onnx": "onnxruntime",
    ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt",
}
_KIND_WORDS = {
    "torch": "a PyTorch checkpoint (.pth)",
    "onnxruntime": "an ONNX model (.onnx)",
    "tensorrt": "a TensorRT engine (.engine / .plan)",
}


class ModelLoadError(ValueError):
    """A model file is missing, of the wrong kind for the backend, or cannot be loaded.

    The message names the file and the problem.
    """


@dataclass
class Detections:
    """Detections of one image.

    ``boxes`` float32 [N, 4] x1y1x2y2, ``scores`` float32 [N], ``labels`` int64 [N] contiguous
    0..C-1, ``category_ids`` int64 [N] (the dataset's ids of ``labels``) or None when the model
    file does not record them. From ``Backend.predict`` the boxes are in original image pixels;
    from ``Backend.infer`` they are in batch (resized-input) pixels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    category_ids: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels).astype(np.int64, copy=False).reshape(-1)
        if self.category_ids is not None:
            self.category_ids = np.asarray(self.category_ids).astype(np.int64, copy=False).reshape(-1)
        n = len(self.boxes)
        sizes = [len(self.scores), len(self.labels)]
        if self.category_ids is not None:
            sizes.append(len(self.category_ids))
        if any(s != n for s in sizes):
            raise ValueError(
                f"Detections: {n} boxes but {len(self.scores)} scores, {len(self.labels)} labels"
                + ("" if self.category_ids is None else f", {len(self.category_ids)} category ids")
            )

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, index: Any) -> "Detections":
        """The detections at ``index`` (a boolean mask or integer indices)."""
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.labels[index],
            None if self.category_ids is None else self.category_ids[index],
        )

    def above(self, score_thr: float) -> "Detections":
        """The detections with ``score >= score_thr``."""
        return self.select(self.scores >= score_thr)

    def as_dict(self) -> Dict[str, np.ndarray]:
        """``{"boxes", "scores", "labels"}``: what ``COCOEvaluator.process`` takes."""
        return {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}

    def to_coco(self, image_id: int) -> List[dict]:
        """COCO results entries ``{image_id, category_id, bbox: [x, y, w, h], score}``.

        ``category_id`` is the dataset's id when known, else the contiguous label.
        """
        cats = self.labels if self.category_ids is None else self.category_ids
        xywh = np.concatenate([self.boxes[:, :2], self.boxes[:, 2:] - self.boxes[:, :2]], axis=1)
        return [
            {"image_id": int(image_id), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
            for c, b, s in zip(cats.tolist(), xywh.tolist(), self.scores.tolist())
        ]


@dataclass(frozen=True)
class ModelInfo:
    """What a backend knows about its model, read from the checkpoint config or export metadata.

    ``scale`` (short, long) and ``pad_divisor``: the resize/pad policy; ``mean``/``std`` (0..255,
    model channel order) and ``to_rgb``: the normalisation; ``category_ids[label]``: the dataset's
    id of each contiguous label, None when unknown; ``score_thr``: the model's own score threshold
    (informational); ``source``: the model file; ``extra``: anything else the metadata holds.
    """

    class_names: Tuple[str, ...]
    scale: Tuple[int, int]
    pad_divisor: int = 32
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    to_rgb: bool = True
    category_ids: Optional[Tuple[int, ...]] = None
    score_thr: Optional[float] = None
    source: str = ""
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        where = self.source or "model metadata"
        if self.category_ids is not None and len(self.category_ids) != len(self.class_names):
            raise ModelLoadError(
                f"{where}: {len(self.category_ids)} category ids for {len(self.class_names)} class names"
            )
        if len(self.scale) != 2 or min(self.scale) <= 0:
            raise ModelLoadError(f"{where}: scale must be (short, long) > 0, got {self.scale!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelLoadError(f"{where}: mean/std need 3 values, std > 0; got {self.mean!r}, {self.std!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def pad_pixel(self) -> Tuple[float, float, float]:
        """Raw RGB fill of the batch padding: the mean pixel (0 after normalisation, as in training)."""
        return mean_pixel_rgb(self.mean, self.to_rgb)


# ---------------------------------------------------------------------------- export metadata
# What the runtime reads of an exported model's metadata (model.json, the ONNX metadata_props or
# an engine's sidecar; format_version 1 of export/onnx_export.py): top-level ``class_names``,
# optional ``category_ids`` / ``score_thresh`` / ``max_dets``, and the input policy under ``input``.
METADATA_INPUT_KEYS = ("scale", "pad_divisor", "mean", "std", "to_rgb")


def _sidecar(path: Path) -> Optional[Path]:
    for candidate in (path.with_suffix(".json"), path.parent / "model.json"):
        if candidate.is_file():
            return candidate
    return None


def read_export_metadata(path: PathLike, props: Optional[Mapping[str, str]] = None) -> Tuple[Dict[str, Any], str]:
    """The export metadata of ``path`` and where it came from.

    Looks for ``<stem>.json``, then ``model.json`` beside the model, then ``props`` (the model's
    ``metadata_props``, values JSON-encoded or plain strings). Raises :class:`ModelLoadError`
    naming the file when none exists or the JSON is malformed.
    """
    path = Path(path)
    side = _sidecar(path)
    if side is not None:
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{side}: cannot read the model metadata JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelLoadError(f"{side}: model metadata must be a JSON object, got {type(data).__name__}")
        return data, os.fspath(side)
    if props:
        data = {}
        for key, value in props.items():
            try:
                data[key] = json.loads(value)
            except (TypeError, json.JSONDecodeError):
                data[key] = value
        return data, f"{path} [metadata_props]"
    raise ModelLoadError(
        f"{path}: no model metadata: neither {path.with_suffix('.json').name} nor model.json beside it, "
        "and no metadata_props in the model (export it with libra-export)"
    )


def model_info_from_metadata(data: Mapping[str, Any], source: str, model_path: PathLike) -> ModelInfo:
    """:class:`ModelInfo` from export metadata (see ``METADATA_INPUT_KEYS``); a missing or malformed
    key is a :class:`ModelLoadError` naming ``source`` and the key.

    The runtime pads with the mean pixel (the metadata's ``input.pad_value: "mean"``), which the
    in-graph normalisation turns into training's 0 (see :mod:`runtime.preprocess`).
    """
    policy = data.get("input")
    if "class_names" not in data or not isinstance(policy, Mapping):
        raise ModelLoadError(
            f"{source}: model metadata needs 'class_names' and an 'input' object "
            f"({', '.join(METADATA_INPUT_KEYS)}); has keys {sorted(data)}"
        )
    missing = [f"input.{k}" for k in METADATA_INPUT_KEYS if k not in policy]
    if missing:
        raise ModelLoadError(f"{source}: model metadata lacks key(s) {missing}")

    def seq(key: str, value: Any, kind: type, length: Optional[int] = None) -> Tuple[Any, ...]:
        try:
            out = tuple(kind(v) for v in value)
        except (TypeError, ValueError):
            raise ModelLoadError(f"{source}: {key} must be a list of {kind.__name__}, got {value!r}") from None
        if length is not None and len(out) != length:
            raise ModelLoadError(f"{source}: {key} must have {length} values, got {value!r}")
        return out

    cat_ids = data.get("category_ids")
    score_thr = data.get("score_thresh")
    try:
        pad_divisor = int(policy["pad_divisor"])
    except (TypeError, ValueError):
        raise ModelLoadError(f"{source}: input.pad_divisor must be an integer, got {policy['pad_divisor']!r}") from None
    return ModelInfo(
        class_names=seq("class_names", data["class_names"], str),
        scale=seq("input.scale", policy["scale"], int, 2),
        pad_divisor=pad_divisor,
        mean=seq("input.mean", policy["mean"], float, 3),
        std=seq("input.std", policy["std"], float, 3),
        to_rgb=bool(policy["to_rgb"]),
        category_ids=None if cat_ids is None else seq("category_ids", cat_ids, int),
        score_thr=None if score_thr is None else float(score_thr),
        source=os.fspath(model_path),
        extra={k: v for k, v in data.items() if k not in ("class_names", "category_ids", "input")},
    )


# ---------------------------------------------------------------------------- exported graphs
# I/O names of an exported detector (export/onnx_export.py), shared by ONNX Runtime and TensorRT.
INPUT_IMAGES = "images"
INPUT_SIZES = "image_sizes"
OUTPUTS = ("num_dets", "boxes", "scores", "labels")


def detections_from_outputs(
    num_dets: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, metas: Sequence[ImageMeta]
) -> List[Detections]:
    """Fixed-size graph outputs -> B :class:`Detections` in batch pixels.

    ``num_dets`` int [B, 1], ``boxes`` float [B, K, 4], ``scores`` [B, K], ``labels`` int [B, K]:
    image b keeps its first ``num_dets[b]`` rows, boxes clipped to ``metas[b].img_size`` (a no-op
    when the graph clipped to ``image_sizes`` itself, needed when it had only the padded size).
    """
    if len(num_dets) != len(metas):
        raise ValueError(f"graph returned {len(num_dets)} images' detections for {len(metas)} images")
    out = []
    for i, meta in enumerate(metas):
        n = int(np.asarray(num_dets[i]).reshape(-1)[0])
        h, w = meta.img_size
        b = np.clip(boxes[i, :n], 0.0, np.array([w, h, w, h], dtype=np.float32))
        out.append(Detections(b, scores[i, :n], labels[i, :n]))
    return out


# ---------------------------------------------------------------------------- model files
def _sniff(path: Path) -> Optional[str]:
    """"torch" when the file starts like a torch.save file (zip archive or legacy pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return None


def detect_model_kind(path: PathLike) -> Tuple[str, Path]:
    """``(backend name, model file)`` for ``path``: a checkpoint, an ``.onnx``, an engine, or an
    export folder holding ``model.onnx``. Raises :class:`ModelLoadError` naming the file."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.onnx").is_file():
            return "onnxruntime", path / "model.onnx"
        raise ModelLoadError(f"{path}: is a folder without a model.onnx; give a .pth, .onnx or .engine file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    by_name = _SUFFIX_KIND.get(path.suffix.lower())
    by_content = _sniff(path)
    if by_name is None and by_content is None:
        raise ModelLoadError(
            f"{path}: cannot tell the model kind from the name {path.name!r}; expected "
            + ", ".join(_KIND_WORDS.values())
        )
    if by_name is not None and by_content is not None and by_name != by_content:
        raise ModelLoadError(
            f"{path}: named like {_KIND_WORDS[by_name]} but the file is {_KIND_WORDS[by_content]}"
        )
    return (by_name or by_content), path


class Backend(abc.ABC):
    """A loaded model that turns images into :class:`Detections` (see the module docstring).

    Subclasses implement :meth:`infer` (and :meth:`close` when they hold resources) and set
    ``name`` and ``info``; pre- and post-processing are shared.
    """

    name: str = ""

    def __init__(self, *, info: ModelInfo, device: str = "cpu") -> None:
        self.info = info
        self.device = str(device)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_path(path: PathLike, *, backend: str = "auto", **options: Any) -> "Backend":
        """Load ``path`` with ``backend`` ("auto" picks it from the file: ``.pth`` -> torch,
        ``.onnx`` (or an export folder) -> onnxruntime, ``.engine``/``.plan`` -> tensorrt).

        ``options`` go to the backend's constructor (e.g. ``device="cuda"``,
        ``intra_op_threads=2``). Raises :class:`ModelLoadError` naming the file for a missing,
        corrupt or wrong-kind file.
        """
        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKEND_NAMES)}")
        kind, file = detect_model_kind(path)
        if backend != "auto" and backend != kind:
            raise ModelLoadError(
                f"{file}: is {_KIND_WORDS[kind]}, but the {backend} backend needs {_KIND_WORDS[backend]}"
                + (" (export it with libra-export)" if kind == "torch" else "")
            )
        if kind == "torch":
            from runtime.backends.torch_backend import TorchBackend

            return TorchBackend(path=file, **options)
        if kind == "onnxruntime":
            from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(path=file, **options)
        from runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path=file, **options)

    # ------------------------------------------------------------------ model facts
    @property
    def class_names(self) -> Tuple[str, ...]:
        return self.info.class_names

    @property
    def category_ids(self) -> Optional[Tuple[int, ...]]:
        return self.info.category_ids

    # ------------------------------------------------------------------ the three steps
    def preprocess(
        self, images: Sequence[ImageInput], *, min_shape: Optional[Tuple[int, int]] = None
    ) -> Tuple[np.ndarray, List[ImageMeta]]:
        """Images -> (``batch`` float32 [B, 3, H, W] RGB 0..255 padded with the mean pixel, metas)."""
        return preprocess(
            images,
            scale=self.info.scale,
            pad_divisor=self.info.pad_divisor,
            pad_pixel=self.info.pad_pixel,
            min_shape=min_shape,
        )

    @abc.abstractmethod
    def infer(self, batch: np.ndarray, metas: Sequence[ImageMeta]) -> List[Detections]:
        """Run the model on a pre-processed batch; B :class:`Detections` in batch pixels, boxes
        clipped to each image's valid region ``meta.img_size``; ``category_ids`` left None."""

    def postprocess(self, raw: Sequence[Detections], metas: Sequence[ImageMeta]) -> List[Detections]:
        """Map :meth:`infer`'s detections to original image pixels and add category ids."""
        if len(raw) != len(metas):
            raise ValueError(f"postprocess: {len(raw)} detection sets for {len(metas)} images")
        lut = None if self.info.category_ids is None else np.asarray(self.info.category_ids, np.int64)
        out = []
        for det, meta in zip(raw, metas):
            cats = None
            if lut is not None:
                bad = det.labels[(det.labels < 0) | (det.labels >= len(lut))]
                if len(bad):
                    raise ValueError(
                        f"{self.info.source}: label {int(bad[0])} outside the model's "
                        f"{len(lut)} classes"
                    )
                cats = lut[det.labels]
            out.append(Detections(boxes_to_original(det.boxes, meta), det.scores, det.labels, cats))
        return out

    def predict(self, images: Sequence[ImageInput], *, score_thr: Optional[float] = None) -> List[Detections]:
        """Detections of each image (file paths, PIL images or uint8 RGB arrays), boxes in
        original image pixels; with ``score_thr``, only those scoring at least that."""
        images = list(images)
        if not images:
            return []
        batch, metas = self.preprocess(images)
        dets = self.postprocess(self.infer(batch, metas), metas)
        if score_thr is not None:
            dets = [d.above(score_thr) for d in dets]
        return dets

    # ------------------------------------------------------------------ resources
    def close(self) -> None:
        """Release the model (sessions, device memory). The backend is unusable afterwards."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.info.source!r}, device={self.device!r})"
