"""COCO evaluation: ``COCOEvaluator`` and concept metrics (NumPy only), ``evaluate_model`` (torch).

``training.evaluation.coco`` and ``training.evaluation.concept_metrics`` never import torch, so the
ONNX Runtime / TensorRT runtime can score its outputs with them; ``evaluate_model`` and the other
names of ``training.evaluation.inference`` are imported lazily, on first use.
"""
from __future__ import annotations

from typing import Any

from training.evaluation.coco import (
    STAT_KEYS,
    COCOEvaluator,
    EvaluationError,
    faster_coco_eval_available,
    format_metrics_markdown,
    write_metrics,
)
from training.evaluation.concept_metrics import concept_metrics

__all__ = [
    "STAT_KEYS",
    "COCOEvaluator",
    "EvaluationError",
    "concept_metrics",
    "evaluate_model",
    "faster_coco_eval_available",
    "format_metrics_markdown",
    "write_metrics",
]

_LAZY = {"evaluate_model", "run_inference", "predictions_to_original", "build_eval_dataset"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from training.evaluation import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
