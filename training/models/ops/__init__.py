"""Export-friendly building blocks of the detectors' eval path (fixed-size, padded, batched).

The same code runs in eager PyTorch and in the exported ONNX graph. The selections whose sizes
depend on the data (top-k among valid entries, NMS) are autograd Functions: their eager ``forward``
makes torchvision's own calls, their ``symbolic`` emits standard ONNX ops (``TopK`` with a constant
K, ``NonMaxSuppression`` with a constant ``max_output_boxes_per_class``) and returns fixed-size,
padded tensors. Everything else is plain tensor code.
"""
from .nms import INVALID_SCORE, nms_topk
from .padded import Detections, clip_boxes, detections_from_index, gather_rows, trim_detections
from .topk import select_candidates, topk_padded

__all__ = [
    "INVALID_SCORE",
    "nms_topk",
    "topk_padded",
    "select_candidates",
    "Detections",
    "clip_boxes",
    "gather_rows",
    "detections_from_index",
    "trim_detections",
]
