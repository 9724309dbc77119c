"""libra-rcnn runtime: inference backends, CLI and benchmarks (no torch needed for ONNX Runtime / TensorRT)."""
