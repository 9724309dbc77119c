"""Error and warning types for bad dataset input, and the problem record the checks collect."""
from __future__ import annotations

from dataclasses import asdict, dataclass


class DatasetError(ValueError):
    """Bad dataset input. The message names the file (and record) and the problem."""


class AnnotationError(DatasetError):
    """The annotation file is missing, unreadable JSON, or breaks the COCO schema."""


class ImageError(DatasetError):
    """An image file is missing, unreadable, corrupt or truncated.

    ``path`` and ``reason`` are kept apart for reports; the message holds both. The message is the
    only positional argument so that DataLoader workers can re-raise it in the main process.
    """

    def __init__(self, message: str, *, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class DatasetWarning(UserWarning):
    """Recoverable dataset issue (e.g. degenerate boxes dropped); training can go on."""


@dataclass(frozen=True)
class DatasetProblem:
    """One problem found by a dataset check.

    severity: "error" (training would fail or silently lose data) or "warning" (recoverable).
    kind: short slug grouping similar problems, e.g. "missing-image", "degenerate-box".
    file: the file the problem is in (annotation file or image file).
    message: human-readable text naming the file, the record and the problem.
    """

    severity: str
    kind: str
    file: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)
