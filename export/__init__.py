"""libra-rcnn export: ONNX export of whole detectors and TensorRT engine building."""
