"""Reading a COCO annotation file: JSON with errors that name the file (and line/column).

Torch-free, so the dataset reader and the (numpy-only) evaluator share it.
"""
from __future__ import annotations

import json
import os
from typing import Union

from training.data.errors import AnnotationError

__all__ = ["TOP_LEVEL_KEYS", "read_annotation_json"]

PathLike = Union[str, "os.PathLike[str]"]
TOP_LEVEL_KEYS = ("images", "annotations", "categories")


def read_annotation_json(ann_file: PathLike) -> dict:
    """Parses a COCO annotation file; raises AnnotationError naming the file (and line/column)."""
    path = os.fspath(ann_file)
    if os.path.isdir(path):
        raise AnnotationError(f"annotation file is a directory, not a JSON file: {path}")
    if not os.path.isfile(path):
        raise AnnotationError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise AnnotationError(
            f"{path}: cannot read annotation file: {exc.strerror or exc}"
        ) from None
    if not isinstance(data, dict):
        raise AnnotationError(
            f"{path}: top level must be a JSON object with keys {', '.join(TOP_LEVEL_KEYS)}; "
            f"got a JSON {type(data).__name__}"
        )
    return data
