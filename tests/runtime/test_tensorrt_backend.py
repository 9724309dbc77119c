"""TensorRT backend: clear errors without TensorRT, and its control flow (name-based I/O, shapes,
device copies, output parsing) driven through a fake ``tensorrt`` / ``cuda.bindings.runtime`` pair
that follows the documented TensorRT 10 / cuda-python API. No real engine is built or run here.

The fake engine computes, per image with valid region (h, w) from ``image_sizes``:
``num_dets = 2``, ``boxes = [[0, 0, w/2, h/2], [w/4, h/4, w + 10, h + 10], padding]``,
``scores = [0.9, 0.6, 0]``, ``labels = [1, 0, 0]``.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import sys
import types
from enum import IntEnum

import numpy as np
import pytest

from runtime.backends import Backend, ModelLoadError
from runtime.backends.tensorrt_backend import TensorRTBackend

META = {
    "format_version": 1, "class_names": ["a", "b"], "category_ids": [5, 9], "score_thresh": 0.05, "max_dets": 3,
    "input": {"scale": [64, 96], "pad_divisor": 32, "mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0], "to_rgb": True},
}
K = 3


def _engine_file(tmp_path, content=b"fake-engine v1"):
    path = tmp_path / "model.engine"
    path.write_bytes(content)
    (tmp_path / "model.json").write_text(json.dumps(META))
    return path


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_clear_error(tmp_path):
    path = _engine_file(tmp_path)
    with pytest.raises(ModelLoadError, match=r"model.engine: the tensorrt backend needs TensorRT: pip install 'libra-rcnn\[tensorrt\]'"):
        Backend.from_path(path)


def test_engine_needs_a_cuda_device(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model.engine: TensorRT engines run on a CUDA device, got device 'cpu'"):
        TensorRTBackend(path=_engine_file(tmp_path), device="cpu")


# ------------------------------------------------------------------------------ the fakes
class _Memory:
    """Device memory of the fake CUDA runtime: host buffers addressed by their real pointers."""

    def __init__(self):
        self.buffers = {}
        self.log = []


def _fake_cudart(memory: _Memory) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStream_t(int):
        pass

    ok = cudaError_t.cudaSuccess

    def cudaMalloc(n):
        buf = np.zeros(int(n), np.uint8)
        memory.buffers[buf.ctypes.data] = buf
        memory.log.append(("malloc", int(n)))
        return ok, buf.ctypes.data

    def cudaFree(ptr):
        memory.buffers.pop(ptr)
        return (ok,)

    def cudaMemcpyAsync(dst, src, n, kind, stream):
        assert isinstance(stream, cudaStream_t)
        device = dst if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else src
        if device not in memory.buffers or memory.buffers[device].nbytes < n:
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, n)
        memory.log.append((kind.name, int(n)))
        return (ok,)

    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = cudaMalloc, cudaFree, cudaMemcpyAsync
    rt.cudaSetDevice = lambda device: (ok,)
    rt.cudaStreamCreate = lambda: (ok, cudaStream_t(4242))
    rt.cudaStreamSynchronize = lambda stream: (ok,)
    rt.cudaStreamDestroy = lambda stream: (ok,)
    rt.cudaGetErrorString = lambda err: (ok, f"error {int(err)}".encode())
    return rt


def _fake_tensorrt(sizes_dtype=np.int32) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99-fake"

    class TensorIOMode(IntEnum):
        INPUT = 1
        OUTPUT = 2

    class DataType(IntEnum):
        FLOAT = 0
        INT32 = 3
        INT64 = 8

    numpy_of = {DataType.FLOAT: np.float32, DataType.INT32: np.int32, DataType.INT64: np.int64}
    io = {  # name -> (mode, dtype)
        "images": (TensorIOMode.INPUT, DataType.FLOAT),
        "image_sizes": (TensorIOMode.INPUT, DataType.INT64 if sizes_dtype == np.int64 else DataType.INT32),
        "num_dets": (TensorIOMode.OUTPUT, DataType.INT32),
        "boxes": (TensorIOMode.OUTPUT, DataType.FLOAT),
        "scores": (TensorIOMode.OUTPUT, DataType.FLOAT),
        "labels": (TensorIOMode.OUTPUT, DataType.INT32),
    }

    def view(ptr, shape, dtype):
        n = int(np.prod(shape))
        raw = (ctypes.c_byte * (n * np.dtype(dtype).itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=n).reshape(shape)

    class Context:
        def __init__(self):
            self.shapes, self.addresses, self.streams = {}, {}, []

        def set_input_shape(self, name, shape):
            assert io[name][0] == TensorIOMode.INPUT
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            b = self.shapes["images"][0]
            return {"num_dets": (b, 1), "boxes": (b, K, 4), "scores": (b, K), "labels": (b, K)}.get(name, self.shapes.get(name))

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            assert type(stream_handle) is int
            self.streams.append(stream_handle)
            b = self.shapes["images"][0]
            sizes = view(self.addresses["image_sizes"], (b, 2), numpy_of[io["image_sizes"][1]]).astype(np.float32)
            h, w = sizes[:, :1], sizes[:, 1:]
            z = np.zeros_like(h)
            boxes = np.concatenate([z, z, w / 2, h / 2, w / 4, h / 4, w + 10, h + 10, z, z, z, z], axis=1).reshape(b, K, 4)
            view(self.addresses["boxes"], (b, K, 4), np.float32)[:] = boxes
            view(self.addresses["scores"], (b, K), np.float32)[:] = [0.9, 0.6, 0.0]
            view(self.addresses["labels"], (b, K), np.int32)[:] = [1, 0, 0]
            view(self.addresses["num_dets"], (b, 1), np.int32)[:] = 2
            return True

    class Engine:
        num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return list(io)[i]

        def get_tensor_mode(self, name):
            return io[name][0]

        def get_tensor_dtype(self, name):
            return io[name][1]

        def get_tensor_profile_shape(self, name, profile):
            return (1, 3, 32, 32), (1, 3, 96, 96), (2, 3, 128, 128)

        def create_execution_context(self):
            self.context = Context()
            return self.context

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return Engine() if data.startswith(b"fake-engine") else None

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    trt.TensorIOMode, trt.DataType, trt.Runtime, trt.Logger = TensorIOMode, DataType, Runtime, Logger
    trt.nptype = lambda dt: numpy_of[dt]
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    memory = _Memory()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    rt = _fake_cudart(memory)
    cuda.bindings, bindings.runtime = bindings, rt
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return memory


def test_engine_run_through_the_documented_api(fake_trt, tmp_path):
    with Backend.from_path(_engine_file(tmp_path), device="cuda:0") as backend:
        assert isinstance(backend, TensorRTBackend) and backend.device == "cuda:0"
        images = [np.zeros((100, 200, 3), np.uint8), np.zeros((80, 50, 3), np.uint8)]
        dets = backend.predict(images)
        assert [len(d) for d in dets] == [2, 2]
        for det, (w, h) in zip(dets, [(200, 100), (50, 80)]):
            np.testing.assert_allclose(det.boxes, [[0, 0, w / 2, h / 2], [w / 4, h / 4, w, h]], rtol=1e-5)
            np.testing.assert_array_equal(det.category_ids, [9, 5])
            np.testing.assert_allclose(det.scores, [0.9, 0.6])
        assert backend.engine.context.streams == [4242]
        # inputs copied host->device, outputs device->host, buffers reused on the next call
        kinds = [k for k, _ in fake_trt.log if k != "malloc"]
        assert kinds.count("cudaMemcpyHostToDevice") == 2 and kinds.count("cudaMemcpyDeviceToHost") == 4
        mallocs = sum(1 for k, _ in fake_trt.log if k == "malloc")
        backend.predict(images[:1])
        assert sum(1 for k, _ in fake_trt.log if k == "malloc") == mallocs
        with pytest.raises(ValueError, match=r"batch shape \[3, 3, 96, 96\] is outside the engine's optimisation profile"):
            backend.predict(images + images[:1])
    assert fake_trt.buffers == {}  # close() freed the device memory


def test_undeserializable_engine_is_named(fake_trt, tmp_path):
    with pytest.raises(ModelLoadError, match=r"model.engine: TensorRT 10.99-fake cannot deserialize this engine"):
        Backend.from_path(_engine_file(tmp_path, b"garbage"))
