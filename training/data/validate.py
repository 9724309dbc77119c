"""Dataset check CLI: runs every check of ``CocoDetection`` over a whole COCO dataset, no training.

    python -m training.data.validate --ann FILE --images DIR [--json OUT] [--workers N]
    libra-check-data --ann FILE --images DIR

Decodes every image and prints a report: image / annotation / crowd counts, per-category counts,
COCO area buckets, images without annotations, and every problem found, naming the files. Exit
status: 0 when no error was found (warnings such as degenerate boxes are reported but allowed),
1 when any error was found or the annotation file cannot be read, 2 for bad command-line usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from training.data.coco import (
    PathLike,
    check_annotations,
    convert_boxes,
    inspect_images,
    read_annotation_json,
)
from training.data.errors import AnnotationError, DatasetProblem

SMALL_AREA = 32**2  # COCO area buckets: small < 32^2 <= medium <= 96^2 < large
LARGE_AREA = 96**2


@dataclass
class DatasetReport:
    """What ``validate_dataset`` found. Counts cover the records that passed the checks."""

    ann_file: str
    img_dir: str
    num_images: int = 0
    num_annotations: int = 0
    num_crowd: int = 0
    # category name -> number of annotations, in label order (category id ascending)
    category_counts: dict[str, int] = field(default_factory=dict)
    area_buckets: dict[str, int] = field(default_factory=dict)  # small/medium/large, non-crowd
    images_without_annotations: int = 0  # no annotation record at all
    images_without_boxes: int = 0  # no training box (only crowd / degenerate); filter_empty drops
    problems: list[DatasetProblem] = field(default_factory=list)

    @property
    def errors(self) -> list[DatasetProblem]:
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[DatasetProblem]:
        return [p for p in self.problems if not p.is_error]

    def to_dict(self) -> dict:
        return {
            "ann_file": self.ann_file,
            "img_dir": self.img_dir,
            "ok": not self.errors,
            "num_images": self.num_images,
            "num_annotations": self.num_annotations,
            "num_crowd": self.num_crowd,
            "category_counts": self.category_counts,
            "area_buckets": self.area_buckets,
            "images_without_annotations": self.images_without_annotations,
            "images_without_boxes": self.images_without_boxes,
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            "problems": [p.to_dict() for p in self.problems],
        }

    def format_text(self, max_listed: int = 20) -> str:
        """Human-readable report; lists at most ``max_listed`` problems of each kind."""
        lines = [
            f"annotation file: {self.ann_file}",
            f"image directory: {self.img_dir}",
            f"images:          {self.num_images}",
            f"annotations:     {self.num_annotations} (crowd: {self.num_crowd})",
            f"images without annotations: {self.images_without_annotations}",
            f"images without training boxes (dropped by filter_empty): {self.images_without_boxes}",
            f"categories ({len(self.category_counts)}):",
        ]
        width = max((len(name) for name in self.category_counts), default=0)
        lines += [f"  {name:<{width}}  {count}" for name, count in self.category_counts.items()]
        b = self.area_buckets
        lines.append(
            f"box areas (non-crowd): small (< 32^2): {b.get('small', 0)}, "
            f"medium: {b.get('medium', 0)}, large (> 96^2): {b.get('large', 0)}"
        )
        lines.append(f"problems: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        groups: dict[tuple[str, str], list[DatasetProblem]] = {}
        for p in sorted(self.problems, key=lambda p: not p.is_error):  # errors first
            groups.setdefault((p.severity, p.kind), []).append(p)
        for (severity, kind), group in groups.items():
            lines.append(f"  {severity.upper()} {kind} ({len(group)}):")
            lines += [f"    {p.message}" for p in group[:max_listed]]
            if len(group) > max_listed:
                lines.append(f"    ... and {len(group) - max_listed} more (use --json for all)")
        verdict = "FAILED" if self.errors else "OK"
        lines.append(f"result: {verdict}")
        return "\n".join(lines)


def validate_dataset(
    ann_file: PathLike,
    img_dir: PathLike,
    *,
    workers: Optional[int] = None,
    progress: bool = False,
) -> DatasetReport:
    """Runs every dataset check, decoding every image, and collects all problems.

    Raises AnnotationError only when the annotation file itself is missing or unreadable JSON;
    anything else is collected in the report so one run lists every problem.
    """
    ann_file, img_dir = os.fspath(ann_file), os.fspath(img_dir)
    data = read_annotation_json(ann_file)
    problems, clean = check_annotations(data, ann_file)
    images, annotations = clean["images"], clean["annotations"]
    categories = sorted(clean["categories"], key=lambda c: c["id"])
    cat_id_to_label = {c["id"]: i for i, c in enumerate(categories)}

    boxes, _, box_problems = convert_boxes(images, annotations, cat_id_to_label, ann_file)
    problems += box_problems

    report = DatasetReport(ann_file=ann_file, img_dir=img_dir)
    report.num_images = len(images)
    report.num_annotations = len(annotations)
    report.num_crowd = sum(bool(a.get("iscrowd", 0)) for a in annotations)
    per_cat = {c["id"]: 0 for c in categories}
    buckets = {"small": 0, "medium": 0, "large": 0}
    annotated = set()
    for ann in annotations:
        per_cat[ann["category_id"]] += 1
        annotated.add(ann["image_id"])
        if ann.get("iscrowd", 0):
            continue
        area = ann.get("area", ann["bbox"][2] * ann["bbox"][3])
        bucket = "small" if area < SMALL_AREA else "large" if area > LARGE_AREA else "medium"
        buckets[bucket] += 1
    for c in categories:  # a duplicate name (reported as a warning) gets its id appended
        name = c["name"]
        if name in report.category_counts:
            name = f"{name} (id {c['id']})"
        report.category_counts[name] = per_cat[c["id"]]
    report.area_buckets = buckets
    report.images_without_annotations = sum(img["id"] not in annotated for img in images)
    report.images_without_boxes = sum(boxes.count(i) == 0 for i in range(len(images)))

    if not os.path.isdir(img_dir):
        problems.append(DatasetProblem(
            "error", "missing-image-dir", img_dir,
            f"{img_dir}: image directory not found (images of {ann_file} not checked)"))
    else:
        items = [(os.path.join(img_dir, img["file_name"]), img["width"], img["height"])
                 for img in images]
        problems += inspect_images(items, workers=workers, progress=progress)
    report.problems = problems
    return report


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="libra-check-data",
        description="Check a COCO-format detection dataset (annotations and every image) "
                    "without training. Exit status 0: no errors; 1: errors found.",
    )
    parser.add_argument("--ann", required=True, help="COCO annotation JSON file")
    parser.add_argument("--images", required=True, help="directory holding the image files")
    parser.add_argument("--json", metavar="OUT", help="also write the full report as JSON here")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads decoding images (default: min(8, CPU count))")
    parser.add_argument("--max-listed", type=int, default=20,
                        help="problems of each kind listed in the text report (default 20)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``libra-check-data``); returns the exit status."""
    args = _parse_args(argv)
    try:
        report = validate_dataset(args.ann, args.images, workers=args.workers,
                                  progress=sys.stderr.isatty())
    except AnnotationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("result: FAILED", file=sys.stderr)
        return 1
    print(report.format_text(max_listed=args.max_listed))
    if args.json:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report.to_dict(), f, indent=2)
        except OSError as exc:
            print(f"error: cannot write report {args.json}: {exc}", file=sys.stderr)
            return 1
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
