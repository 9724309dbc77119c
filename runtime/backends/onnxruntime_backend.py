"""ONNX Runtime backend: a ``model.onnx`` written by ``libra-export``; needs no torch.

The graph's I/O (``export/onnx_export.py``): input ``images`` float32 [B, 3, H, W] resized and
padded, raw RGB 0..255 (normalisation is inside the graph), optionally ``image_sizes`` int
[B, 2] (h, w of each valid region); outputs ``num_dets`` int32 [B, 1], ``boxes`` float32
[B, K, 4] x1y1x2y2 in input pixels, ``scores`` float32 [B, K], ``labels`` int32 [B, K], the first
``num_dets[b]`` rows of image b valid (K = max detections per image).

Metadata (class names, resize/pad policy, normalisation, category ids) is read from the sidecar
JSON (``<stem>.json`` or ``model.json`` beside the model) or, without one, from the model's
``metadata_props``; see :func:`read_export_metadata`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np

from runtime.backends.base import (
    INPUT_IMAGES,
    INPUT_SIZES,
    OUTPUTS,
    Backend,
    Detections,
    ModelLoadError,
    detections_from_outputs,
    model_info_from_metadata,
    read_export_metadata,
)
from runtime.preprocess import ImageMeta

__all__ = ["OnnxRuntimeBackend", "choose_providers"]

PathLike = Union[str, "os.PathLike[str]"]


_ORT_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def choose_providers(
    device: str, available: Sequence[str], *, providers: Optional[Sequence[Any]] = None, tensorrt: bool = False
) -> List[Any]:
    """Execution providers for ``device``: "cpu" -> CPU; "cuda[:N]" -> CUDA (device N) then CPU,
    with TensorRT first when ``tensorrt``. An explicit ``providers`` list wins. Raises
    :class:`ModelLoadError` when a provider is not in ``available``."""
    if providers is None:
        dev = str(device)
        if dev == "cpu":
            if tensorrt:
                raise ModelLoadError("the TensorRT execution provider needs device='cuda'")
            providers = ["CPUExecutionProvider"]
        elif dev == "cuda" or dev.startswith("cuda:"):
            device_id = int(dev.split(":", 1)[1]) if ":" in dev else 0
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
            if tensorrt:
                providers.insert(0, ("TensorrtExecutionProvider", {"device_id": device_id}))
        else:
            raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
    absent = [n for n in names if n not in available]
    if absent:
        hint = " (install onnxruntime-gpu, not onnxruntime, for CUDA/TensorRT)" if any(
            n in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for n in absent
        ) else ""
        raise ModelLoadError(
            f"ONNX Runtime provider(s) {absent} not available here; available: {list(available)}{hint}"
        )
    return list(providers)


class OnnxRuntimeBackend(Backend):
    """An exported ``model.onnx`` in an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file (its metadata beside it, see :func:`read_export_metadata`).
        device: "cpu" or "cuda[:N]" (CUDA execution provider, CPU fallback for unsupported ops).
        providers: explicit ONNX Runtime providers (names or (name, options)); overrides device.
        tensorrt: put ONNX Runtime's TensorRT execution provider first (device "cuda").
        intra_op_threads / inter_op_threads: thread pools (None: ONNX Runtime's defaults, i.e.
            one intra-op thread per physical core).
        optimization: graph optimisation level: "all" (default), "extended", "basic" or "disable".
        metadata: metadata dict to use instead of reading it from the files.
    """

    name = "onnxruntime"

    def __init__(
        self,
        *,
        path: PathLike,
        device: str = "cpu",
        providers: Optional[Sequence[Any]] = None,
        tensorrt: bool = False,
        intra_op_threads: Optional[int] = None,
        inter_op_threads: Optional[int] = None,
        optimization: str = "all",
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError(
                f"{path}: the onnxruntime backend needs onnxruntime (pip install 'libra-rcnn[onnx]'): {exc}"
            ) from exc
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: ONNX model file not found")
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if optimization not in levels:
            raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
        try:
            chosen = choose_providers(device, ort.get_available_providers(), providers=providers, tensorrt=tensorrt)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None

        options = ort.SessionOptions()
        options.graph_optimization_level = levels[optimization]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: shape-inference warnings are noise here
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            options.inter_op_num_threads = int(inter_op_threads)
        try:
            session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=chosen)
        # onnxruntime raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        except Exception as exc:
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load this model: {type(exc).__name__}: {exc}") from exc
        wanted = [p[0] if isinstance(p, (tuple, list)) else p for p in chosen]
        # ONNX Runtime falls back to CPU (with a log line) when a GPU provider fails to initialise
        lost = [p for p in wanted if p not in session.get_providers()]
        if lost:
            raise ModelLoadError(
                f"{path}: ONNX Runtime could not start provider(s) {lost} (got {session.get_providers()}); "
                "check the CUDA/cuDNN/TensorRT libraries"
            )

        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if INPUT_IMAGES not in inputs or any(n not in outputs for n in OUTPUTS):
            raise ModelLoadError(
                f"{path}: not a libra-export detector graph: needs input {INPUT_IMAGES!r} and outputs "
                f"{list(OUTPUTS)}; has inputs {list(inputs)} and outputs {outputs}"
            )
        extra_inputs = [n for n in inputs if n not in (INPUT_IMAGES, INPUT_SIZES)]
        if extra_inputs:
            raise ModelLoadError(f"{path}: unexpected graph input(s) {extra_inputs}")
        self._sizes_dtype = None
        if INPUT_SIZES in inputs:
            type_name = inputs[INPUT_SIZES].type
            if type_name not in _ORT_INT_TYPES:
                raise ModelLoadError(f"{path}: input {INPUT_SIZES!r} must be int32/int64, got {type_name}")
            self._sizes_dtype = _ORT_INT_TYPES[type_name]
        self._image_shape = list(inputs[INPUT_IMAGES].shape)  # ints for fixed dims, names/None for dynamic

        if metadata is None:
            meta_map = session.get_modelmeta().custom_metadata_map
            metadata, source = read_export_metadata(path, meta_map)
        else:
            source = f"{path} [metadata argument]"
        info = model_info_from_metadata(metadata, source, path)
        super().__init__(info=info, device=str(device))
        self.session = session
        self.providers = session.get_providers()

    def _check_shape(self, batch: np.ndarray) -> None:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"infer: expected a [B, 3, H, W] batch, got shape {list(batch.shape)}")
        fixed = [
            (axis, dim) for axis, dim in enumerate(self._image_shape) if isinstance(dim, int) and dim != batch.shape[axis]
        ]
        if fixed:
            raise ValueError(
                f"{self.info.source}: the graph input {INPUT_IMAGES!r} has fixed shape {self._image_shape}; "
                f"got a batch of shape {list(batch.shape)} (export with dynamic axes, or pad with min_shape)"
            )

    def infer(self, batch: np.ndarray, metas: Sequence[ImageMeta]) -> List[Detections]:
        """One session run; detections in batch pixels, clipped to each valid region."""
        if self.session is None:
            raise RuntimeError(f"{self.info.source}: backend is closed")
        self._check_shape(batch)
        if len(metas) != batch.shape[0]:
            raise ValueError(f"infer: {len(metas)} metas for a batch of {batch.shape[0]} images")
        feeds = {INPUT_IMAGES: np.ascontiguousarray(batch, dtype=np.float32)}
        if self._sizes_dtype is not None:
            feeds[INPUT_SIZES] = np.array([m.img_size for m in metas], dtype=self._sizes_dtype).reshape(-1, 2)
        num_dets, boxes, scores, labels = self.session.run(list(OUTPUTS), feeds)
        return detections_from_outputs(num_dets, boxes, scores, labels, metas)

    def close(self) -> None:
        self.session = None
