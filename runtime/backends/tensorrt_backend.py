"""TensorRT backend: a serialized engine (``.engine`` / ``.plan``) built from the exported ONNX.

Written against the TensorRT 10.8+ / 11 Python API as NVIDIA documents it: name-based I/O
(``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``), ``set_input_shape`` +
``set_tensor_address`` + ``execute_async_v3`` on a CUDA stream, device memory through cuda-python
(``cuda.bindings.runtime``, as NVIDIA's samples since 10.13), no PyCUDA. The exported graph has
fixed-size padded outputs (``num_dets`` [B, 1], ``boxes`` [B, K, 4], ``scores`` / ``labels``
[B, K]), so no ``IOutputAllocator`` is needed: output shapes follow from the input shapes.

Both libraries come with the ``tensorrt`` extra (``pip install 'libra-rcnn[tensorrt]'``) and are
imported when a backend is created; without them that raises :class:`ModelLoadError`. Metadata
comes from the sidecar JSON beside the engine (``<stem>.json`` or ``model.json``, the keys of the
ONNX export's ``model.json``).

Not exercised on real TensorRT in this repository's CI (no GPU there); the unit tests drive it
through a fake ``tensorrt`` / ``cuda`` pair that follows the documented API.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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

__all__ = ["TensorRTBackend"]

PathLike = Union[str, "os.PathLike[str]"]
_INSTALL = "pip install 'libra-rcnn[tensorrt]' (TensorRT >= 10.8 and cuda-python, on a CUDA machine)"


def _import_tensorrt(path: Path) -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ModelLoadError(f"{path}: the tensorrt backend needs TensorRT: {_INSTALL} ({exc})") from exc
    return trt


def _import_cudart(path: Path) -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python layout
        except ImportError as exc:
            raise ModelLoadError(f"{path}: the tensorrt backend needs cuda-python: {_INSTALL} ({exc})") from exc
    return cudart


class _Cuda:
    """The few cuda-python runtime calls used here, each checked (calls return (err, *values))."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def __call__(self, fn: str, *args: Any) -> Any:
        result = getattr(self.rt, fn)(*args)
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(err) != int(self.rt.cudaError_t.cudaSuccess):
            _, text = self.rt.cudaGetErrorString(err)
            name = text.decode() if isinstance(text, bytes) else str(text)
            raise RuntimeError(f"CUDA {fn} failed: {name}")
        return values[0] if len(values) == 1 else values


class TensorRTBackend(Backend):
    """A serialized TensorRT engine of an exported detector.

    Args:
        path: the engine file (metadata JSON beside it).
        device: "cuda" or "cuda:N".
        metadata: metadata dict to use instead of the sidecar.
    """

    name = "tensorrt"

    def __init__(self, *, path: PathLike, device: str = "cuda", metadata: Optional[Dict[str, Any]] = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: TensorRT engine file not found")
        dev = str(device)
        if not (dev == "cuda" or dev.startswith("cuda:")):
            raise ModelLoadError(f"{path}: TensorRT engines run on a CUDA device, got device {device!r}")
        device_id = int(dev.split(":", 1)[1]) if ":" in dev else 0
        trt = _import_tensorrt(path)
        self._cuda = _Cuda(_import_cudart(path))
        if metadata is None:
            metadata, source = read_export_metadata(path)
        else:
            source = f"{path} [metadata argument]"
        info = model_info_from_metadata(metadata, source, path)
        self._cuda("cudaSetDevice", device_id)
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # RoiAlign is imported as the ROIAlign_TRT plugin
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelLoadError(
                f"{path}: TensorRT {getattr(trt, '__version__', '?')} cannot deserialize this engine "
                "(corrupt, or built by another TensorRT version or for another GPU: rebuild it here)"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if INPUT_IMAGES not in self._inputs or any(n not in outputs for n in OUTPUTS):
            raise ModelLoadError(
                f"{path}: not an engine of a libra-export detector: needs input {INPUT_IMAGES!r} and outputs "
                f"{list(OUTPUTS)}; has inputs {self._inputs} and outputs {outputs}"
            )
        extra = [n for n in self._inputs if n not in (INPUT_IMAGES, INPUT_SIZES)]
        if extra:
            raise ModelLoadError(f"{path}: unexpected engine input(s) {extra}")
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._stream = self._cuda("cudaStreamCreate")
        self._stream_handle = int(self._stream)  # TensorRT takes the raw cudaStream_t as an int
        self._device_buffers: Dict[str, Tuple[int, int]] = {}  # name -> (pointer, bytes)
        super().__init__(info=info, device=dev)

    # ------------------------------------------------------------------ memory
    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for tensor ``name`` (grown, never shrunk)."""
        ptr, size = self._device_buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cuda("cudaFree", ptr)
            ptr = int(self._cuda("cudaMalloc", max(nbytes, 1)))
            self._device_buffers[name] = (ptr, nbytes)
        return ptr

    def _profile_check(self, batch_shape: Tuple[int, ...]) -> None:
        lo, _, hi = self.engine.get_tensor_profile_shape(INPUT_IMAGES, 0)
        if any(not (a <= s <= b) for a, s, b in zip(lo, batch_shape, hi)):
            raise ValueError(
                f"{self.info.source}: batch shape {list(batch_shape)} is outside the engine's optimisation "
                f"profile {list(lo)} .. {list(hi)} (rebuild with a wider profile, or pad with min_shape)"
            )

    # ------------------------------------------------------------------ inference
    def infer(self, batch: np.ndarray, metas: Sequence[ImageMeta]) -> List[Detections]:
        """One engine execution on the stream; detections in batch pixels."""
        if self.context is None:
            raise RuntimeError(f"{self.info.source}: backend is closed")
        if batch.ndim != 4 or batch.shape[1] != 3 or len(metas) != batch.shape[0]:
            raise ValueError(f"infer: expected a [B, 3, H, W] batch and B metas, got {list(batch.shape)} and {len(metas)}")
        cuda, rt = self._cuda, self._cuda.rt
        self._profile_check(tuple(batch.shape))
        host_inputs = {INPUT_IMAGES: np.ascontiguousarray(batch, dtype=self._dtypes[INPUT_IMAGES])}
        if INPUT_SIZES in self._inputs:
            sizes = np.array([m.img_size for m in metas], dtype=self._dtypes[INPUT_SIZES]).reshape(-1, 2)
            host_inputs[INPUT_SIZES] = sizes
        for name, array in host_inputs.items():
            self.context.set_input_shape(name, tuple(array.shape))
            ptr = self._device_buffer(name, array.nbytes)
            cuda("cudaMemcpyAsync", ptr, array.ctypes.data, array.nbytes,
                 rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream)
            self.context.set_tensor_address(name, ptr)
        host_outputs = {}
        for name in OUTPUTS:
            shape = tuple(self.context.get_tensor_shape(name))  # resolved from the input shapes
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.info.source}: output {name!r} has unresolved shape {shape}")
            host_outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            self.context.set_tensor_address(name, self._device_buffer(name, host_outputs[name].nbytes))
        if not self.context.execute_async_v3(self._stream_handle):
            raise RuntimeError(f"{self.info.source}: TensorRT execution failed (see the TensorRT log)")
        for name, array in host_outputs.items():
            ptr, _ = self._device_buffers[name]
            cuda("cudaMemcpyAsync", array.ctypes.data, ptr, array.nbytes,
                 rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream)
        cuda("cudaStreamSynchronize", self._stream)
        return detections_from_outputs(*(host_outputs[n] for n in OUTPUTS), metas)

    def close(self) -> None:
        if getattr(self, "context", None) is None:
            return
        for ptr, _ in self._device_buffers.values():
            self._cuda("cudaFree", ptr)
        self._device_buffers = {}
        self._cuda("cudaStreamDestroy", self._stream)
        self.context = None
        self.engine = None
