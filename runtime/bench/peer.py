"""The peer measured beside our models: torchvision's ``fasterrcnn_resnet50_fpn``.

Random weights (``weights=None, weights_backbone=None``: no download; latency does not depend on
the weights' values as long as few boxes pass the score threshold), ``box_score_thresh=0.05``
(0.0 would make the exported graph's NMS run over ~90k boxes, ``../shared/env_facts.md`` §3),
``min_size=800, max_size=1333``, 91 classes. Two ways to run it:

- :class:`PeerEager`: PyTorch eager, ``model(list of [3, H, W] tensors in 0..1)``;
- :class:`PeerOnnx`: its own ONNX export (:func:`export_peer_onnx`, the TorchScript exporter with
  ``dynamo=False``, opset 17, one image ``[3, H, W]`` per run) in ONNX Runtime (no torch import).

Both have the three steps of :class:`runtime.bench.latency.Runner`. The peer resizes and
normalises *inside* its model, so its ``preprocess`` is only the uint8 -> float conversion and its
``infer`` holds what our backends split into preprocess + infer: compare whole-pipeline latency.
"""
from __future__ import annotations

import inspect
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "PEER_NAME", "PeerEager", "PeerOnnx", "build_peer_model", "export_peer_onnx", "open_peer",
    "run_peer_latency",
]

PathLike = Union[str, "os.PathLike[str]"]
PEER_NAME = "torchvision fasterrcnn_resnet50_fpn"
_OUTPUT_NAMES = ["boxes", "labels", "scores"]  # the order of torchvision's detection dict


def _as_array(image: Any) -> np.ndarray:
    """A uint8 ``[h, w, 3]`` RGB array from an array or an image file (Pillow)."""
    if isinstance(image, np.ndarray):
        return image
    from PIL import Image

    with Image.open(image) as im:
        return np.asarray(im.convert("RGB"))


def build_peer_model(
    *, score_thresh: float = 0.05, min_size: int = 800, max_size: int = 1333, seed: int = 0
) -> Any:
    """``fasterrcnn_resnet50_fpn`` with random weights (seeded), in eval mode."""
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(seed)
    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=score_thresh, min_size=min_size, max_size=max_size
    )
    return model.eval()


def export_peer_onnx(
    path: PathLike, *, size: Tuple[int, int] = (800, 1333), score_thresh: float = 0.05,
    min_size: int = 800, max_size: int = 1333, seed: int = 0,
) -> Path:
    """Export the peer to ``path`` (TorchScript exporter, ``dynamo=False``, opset 17, dynamic H/W)
    traced on one random ``size`` image; writes ``<path stem>.json`` with the settings and
    ``export_seconds``. Returns ``path``."""
    import torch

    model = build_peer_model(score_thresh=score_thresh, min_size=min_size, max_size=max_size, seed=seed)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: Dict[str, Any] = dict(
        opset_version=17,
        input_names=["images"],
        output_names=list(_OUTPUT_NAMES),
        dynamic_axes={"images": [1, 2], "boxes": [0], "labels": [0], "scores": [0]},
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the dynamo exporter fails on torchvision detectors (env_facts §3)
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings and the TorchScript exporter's notice
        torch.onnx.export(model, ([image],), os.fspath(path), **kwargs)
    meta = {
        "peer": PEER_NAME,
        "box_score_thresh": score_thresh, "min_size": min_size, "max_size": max_size, "seed": seed,
        "traced_size": list(size), "opset": 17, "exporter": "torchscript (dynamo=False)",
        "torch_version": torch.__version__, "export_seconds": round(time.perf_counter() - start, 2),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return path


class PeerEager:
    """The peer in PyTorch eager mode on ``device`` with ``threads`` CPU threads."""

    name = "torch"

    def __init__(
        self, *, device: str = "cpu", threads: Optional[int] = None, score_thresh: float = 0.05,
        min_size: int = 800, max_size: int = 1333, seed: int = 0,
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self._torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"peer: device {device!r} asked for, but CUDA is not available")
        self.model = build_peer_model(score_thresh=score_thresh, min_size=min_size, max_size=max_size, seed=seed)
        self.model.to(self.device)
        self.providers: List[str] = []

    def preprocess(self, images: Sequence[Any]) -> Tuple[List[Any], List[None]]:
        """uint8 ``[h, w, 3]`` -> float ``[3, h, w]`` in 0..1 on the device (one tensor per image)."""
        torch = self._torch
        tensors = [
            torch.from_numpy(np.ascontiguousarray(_as_array(im).transpose(2, 0, 1))).to(self.device).float().div_(255.0)
            for im in images
        ]
        return tensors, [None] * len(tensors)

    def infer(self, batch: List[Any], metas: Sequence[None]) -> List[Dict[str, Any]]:
        """``model(batch)``: torchvision resizes, normalises, detects, maps back to input pixels."""
        with self._torch.inference_mode():
            out = self.model(batch)
        if self.device.type == "cuda":
            self._torch.cuda.synchronize()
        return out

    def postprocess(self, raw: List[Dict[str, Any]], metas: Sequence[None]) -> List["_Dets"]:
        """Host NumPy arrays ``boxes`` [N, 4], ``labels`` [N], ``scores`` [N] per image."""
        return [_Dets((k, v.cpu().numpy()) for k, v in o.items()) for o in raw]

    def close(self) -> None:
        self.model = None


class _Dets(dict):
    """A detection dict whose ``len`` is the number of boxes."""

    def __len__(self) -> int:
        return len(self["boxes"])


class PeerOnnx:
    """The peer's ONNX export in an ONNX Runtime session (one image per run; no torch needed)."""

    name = "onnxruntime"

    def __init__(self, *, path: PathLike, device: str = "cpu", threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        from runtime.backends.onnxruntime_backend import choose_providers

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        providers = choose_providers(device, ort.get_available_providers())
        self.session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)
        self.providers = self.session.get_providers()
        self.device = device

    def preprocess(self, images: Sequence[Any]) -> Tuple[np.ndarray, List[None]]:
        if len(images) != 1:
            raise ValueError(f"the peer's ONNX graph takes one image per run, got a batch of {len(images)}")
        x = _as_array(images[0]).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray(x), [None]

    def infer(self, batch: np.ndarray, metas: Sequence[None]) -> List[np.ndarray]:
        return self.session.run(list(_OUTPUT_NAMES), {"images": batch})

    def postprocess(self, raw: List[np.ndarray], metas: Sequence[None]) -> List[_Dets]:
        return [_Dets(zip(_OUTPUT_NAMES, raw))]

    def close(self) -> None:
        self.session = None


def open_peer(
    backend: str, *, device: str = "cpu", threads: Optional[int] = None, onnx_path: Optional[PathLike] = None,
    size: Tuple[int, int] = (800, 1333), **settings: Any,
) -> Any:
    """:class:`PeerEager` (``backend="torch"``) or :class:`PeerOnnx` (``"onnxruntime"``; exports
    to ``onnx_path`` first when that file does not exist). ``settings``: score_thresh, min_size,
    max_size, seed."""
    if backend == "torch":
        return PeerEager(device=device, threads=threads, **settings)
    if backend == "onnxruntime":
        if onnx_path is None:
            raise ValueError("peer: the onnxruntime peer needs an ONNX path (--onnx FILE)")
        if not Path(onnx_path).is_file():
            export_peer_onnx(onnx_path, size=size, **settings)
        return PeerOnnx(path=onnx_path, device=device, threads=threads)
    raise ValueError(f"peer: unknown backend {backend!r}; choose torch or onnxruntime")


def run_peer_latency(
    backend: str = "torch",
    *,
    device: str = "cpu",
    threads: Optional[int] = None,
    onnx_path: Optional[PathLike] = None,
    score_thresh: float = 0.05,
    min_size: int = 800,
    max_size: int = 1333,
    **settings: Any,
) -> Dict[str, Any]:
    """Time the peer on ``backend`` (what ``libra-bench peer --json`` writes): the record of
    :func:`runtime.bench.latency.time_runner` with ``model`` = :data:`PEER_NAME` and a ``peer``
    entry holding its settings. ``settings``: time_runner's keyword arguments."""
    from runtime.bench.latency import time_runner
    from runtime.bench.machine import available_cores

    threads = int(threads) if threads else available_cores()
    size = tuple(settings.get("size", (800, 1333)))
    knobs = {"score_thresh": score_thresh, "min_size": min_size, "max_size": max_size}
    record = time_runner(
        lambda: open_peer(backend, device=device, threads=threads, onnx_path=onnx_path, size=size, **knobs),
        model=PEER_NAME, device=device, threads=threads, **settings,
    )
    record["peer"] = {
        "name": PEER_NAME, "weights": "random (weights=None, weights_backbone=None)", "num_classes": 91,
        "box_score_thresh": score_thresh, "min_size": min_size, "max_size": max_size,
        "onnx": None if onnx_path is None else os.fspath(onnx_path),
    }
    return record
