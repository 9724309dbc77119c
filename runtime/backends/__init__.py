"""Inference backends behind one interface (``base.Backend``): PyTorch checkpoint, ONNX Runtime,
TensorRT engine. Importing this package imports none of torch, onnxruntime or tensorrt; the
backend modules import their library when a backend is created.

    from runtime.backends import Backend
    with Backend.from_path("runs/tiny/export/model.onnx") as backend:
        dets = backend.predict(["a.jpg", "b.jpg"])   # list[Detections], original image pixels
"""
from runtime.backends.base import BACKEND_NAMES, Backend, Detections, ModelInfo, ModelLoadError, detect_model_kind

__all__ = ["BACKEND_NAMES", "Backend", "Detections", "ModelInfo", "ModelLoadError", "detect_model_kind"]
