"""COCO-format detection dataset over pycocotools, with input checks that name the bad file.

The checks are plain functions (``read_annotation_json``, ``check_annotations``, ``convert_boxes``,
``inspect_images``) so that the dataset check CLI (``training.data.validate``) runs exactly the
checks the dataset runs, collecting every problem instead of stopping at the first.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch.utils.data
from PIL import Image, ImageOps
from pycocotools.coco import COCO

from training.data.annotation_file import TOP_LEVEL_KEYS, read_annotation_json
from training.data.errors import (
    AnnotationError,
    DatasetError,
    DatasetProblem,
    DatasetWarning,
    ImageError,
)

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Transforms = Callable[[Image.Image, dict], tuple]

REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
_NOUN = {"images": "image", "annotations": "annotation", "categories": "category"}
MIN_BOX_SIZE = 1.0  # px; boxes narrower or shorter than this after clipping are dropped
OUTSIDE_TOLERANCE = 1.0  # px past an image edge before a (clipped) box is reported as outside
MAX_LISTED = 5  # problems quoted in an exception message


# --------------------------------------------------------------------------- annotation file




def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _record_name(record: dict, section: str, index: int) -> str:
    """'annotation id 17' when the record has a usable id, else 'annotations[5]'."""
    rid = record.get("id")
    if _is_int(rid) or isinstance(rid, str):
        return f"{_NOUN[section]} id {rid}"
    return f"{section}[{index}]"


def check_annotations(
    data: dict, ann_file: PathLike
) -> tuple[list[DatasetProblem], dict]:
    """Checks the COCO schema and cross references of a parsed annotation file.

    Returns every problem found and a cleaned shallow copy of ``data`` whose ``images``,
    ``annotations`` and ``categories`` lists hold only the records that passed (the same record
    dicts), so callers can go on past bad records. Box geometry is checked by ``convert_boxes``.
    """
    path = os.fspath(ann_file)
    problems: list[DatasetProblem] = []

    def error(kind: str, message: str) -> None:
        problems.append(DatasetProblem("error", kind, path, f"{path}: {message}"))

    sections: dict[str, list] = {}
    for key in TOP_LEVEL_KEYS:
        value = data.get(key)
        if key not in data:
            error("missing-key", f"missing top-level key '{key}'")
            value = []
        elif not isinstance(value, list):
            error("bad-value", f"top-level key '{key}' must be a list, got {type(value).__name__}")
            value = []
        sections[key] = value

    # ids of every record that had one, even if the record is bad otherwise: a reference to a bad
    # record is not reported a second time as "unknown".
    seen_ids: dict[str, set] = {}
    valid: dict[str, list[dict]] = {}
    for section in ("categories", "images"):
        valid[section], seen_ids[section] = _valid_records(sections[section], section, error)

    categories = []
    names: dict[str, int] = {}
    for cat in valid["categories"]:
        if not isinstance(cat["name"], str) or not cat["name"]:
            error("bad-value", f"category id {cat['id']}: 'name' must be a non-empty string, "
                  f"got {_short_repr(cat['name'])}")
            continue
        if cat["name"] in names:
            problems.append(DatasetProblem(
                "warning", "duplicate-category-name", path,
                f"{path}: category id {cat['id']}: name '{cat['name']}' is also used by "
                f"category id {names[cat['name']]}"))
        names.setdefault(cat["name"], cat["id"])
        categories.append(cat)

    images = []
    for img in valid["images"]:
        name = f"image id {img['id']}"
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            error("bad-value", f"{name}: 'file_name' must be a non-empty string, "
                  f"got {_short_repr(img['file_name'])}")
            continue
        bad = [k for k in ("width", "height") if not (_is_number(img[k]) and img[k] > 0)]
        if bad:
            error("bad-value", f"{name} ({img['file_name']}): "
                  + ", ".join(f"'{k}' must be a positive number, got {_short_repr(img[k])}"
                              for k in bad))
            continue
        images.append(img)

    image_ids = {img["id"] for img in images}
    category_ids = {cat["id"] for cat in categories}
    annotations = []
    raw_annotations, _ = _valid_records(sections["annotations"], "annotations", error)
    for ann in raw_annotations:
        name = f"annotation id {ann['id']}"
        ok = True
        for key, known, seen, noun in (
            ("image_id", image_ids, seen_ids["images"], "image"),
            ("category_id", category_ids, seen_ids["categories"], "category"),
        ):
            ref = ann[key]
            if _is_int(ref) and ref in known:
                continue
            ok = False
            if not _is_int(ref):
                error("bad-value", f"{name}: '{key}' must be an integer, got {_short_repr(ref)}")
            elif ref not in seen:  # a reference to a bad record: that record was reported
                error(f"unknown-{noun}-id",
                      f"{name}: unknown {key} {ref} (no {noun} record with that id)")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            ok = False
            error("bad-bbox", f"{name}: 'bbox' must be 4 finite numbers [x, y, width, height], "
                  f"got {_short_repr(bbox)}")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            ok = False
            error("bad-value", f"{name}: 'iscrowd' must be 0 or 1, got {_short_repr(crowd)}")
        if "area" in ann and not _is_number(ann["area"]):
            ok = False
            error("bad-value", f"{name}: 'area' must be a number, got {_short_repr(ann['area'])}")
        if ok:
            annotations.append(ann)

    clean = dict(data)
    clean.update(images=images, annotations=annotations, categories=categories)
    return problems, clean


def _valid_records(
    records: list, section: str, error: Callable[[str, str], None]
) -> tuple[list[dict], set]:
    """Records that are objects holding every required key and a unique integer id.

    Returns (kept records, every integer id seen, including those of rejected records).
    """
    kept: list[dict] = []
    seen: set = set()
    noun = _NOUN[section]
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            error("bad-record", f"{section}[{index}] must be a JSON object, "
                  f"got {type(record).__name__}")
            continue
        name = _record_name(record, section, index)
        rid = record.get("id")
        duplicate = _is_int(rid) and rid in seen
        if _is_int(rid):
            seen.add(rid)
        missing = [k for k in REQUIRED_KEYS[section] if k not in record]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            error("missing-key", f"{name}: missing key{plural} "
                  + ", ".join(f"'{k}'" for k in missing))
            continue
        if not _is_int(rid):
            error("bad-value", f"{name}: 'id' must be an integer, got {_short_repr(rid)}")
            continue
        if duplicate:
            error("duplicate-id", f"{name}: duplicate {noun} id (ids must be unique)")
            continue
        kept.append(record)
    return kept, seen


# --------------------------------------------------------------------------- boxes


@dataclass(frozen=True)
class BoxTable:
    """Boxes of all images in one array, image ``i`` owning rows ``offsets[i]:offsets[i+1]``.

    boxes: float32 [K, 4] x1y1x2y2 clipped to the image; labels: int64 [K] contiguous 0-based
    (meaningless for ignore boxes); offsets: int64 [num_images + 1].
    """

    boxes: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    def count(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i``'s boxes [N, 4] and labels [N], copied: transforms may write in place."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.boxes[lo:hi].copy(), self.labels[lo:hi].copy()


def convert_boxes(
    images: Sequence[dict],
    annotations: Sequence[dict],
    cat_id_to_label: dict[int, int],
    ann_file: PathLike,
) -> tuple[BoxTable, BoxTable, list[DatasetProblem]]:
    """Converts checked COCO annotations to per-image x1y1x2y2 boxes clipped to the image.

    ``images``/``annotations`` must have passed ``check_annotations``; image ``i`` of the tables is
    ``images[i]``. Returns (training boxes of non-crowd annotations, ignore boxes of ``iscrowd=1``
    annotations, problems): a box with width or height < 1 px after clipping is dropped and
    reported as a "degenerate-box" warning; a kept box reaching more than 1 px past an image edge is
    reported as a "box-outside-image" warning (it is clipped).
    """
    path = os.fspath(ann_file)
    n = len(annotations)
    index_of = {img["id"]: i for i, img in enumerate(images)}
    pos = np.fromiter((index_of[a["image_id"]] for a in annotations), np.int64, n)
    xywh = np.array([a["bbox"] for a in annotations], np.float64).reshape(n, 4)
    crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in annotations), bool, n)
    labels = np.fromiter((cat_id_to_label[a["category_id"]] for a in annotations), np.int64, n)
    image_wh = np.array([(img["width"], img["height"]) for img in images], np.float64)
    wh = image_wh.reshape(-1, 2)[pos]

    x1y1, x2y2 = xywh[:, :2], xywh[:, :2] + xywh[:, 2:]
    clipped = np.concatenate([np.clip(x1y1, 0, wh), np.clip(x2y2, 0, wh)], axis=1)
    degenerate = ((clipped[:, 2:] - clipped[:, :2]) < MIN_BOX_SIZE).any(axis=1)
    outside = (
        (x1y1 < -OUTSIDE_TOLERANCE) | (x2y2 > wh + OUTSIDE_TOLERANCE)
    ).any(axis=1) & ~degenerate

    problems: list[DatasetProblem] = []
    for kind, mask, what in (
        ("degenerate-box", degenerate,
         "width or height < 1 px after clipping to the image; dropped"),
        ("box-outside-image", outside, "extends past the image edge; clipped"),
    ):
        for k in np.flatnonzero(mask):
            ann, img = annotations[k], images[pos[k]]
            problems.append(DatasetProblem(
                "warning", kind, path,
                f"{path}: annotation id {ann['id']} (image {img['file_name']}, "
                f"{img['width']}x{img['height']}): bbox {_short_repr(ann['bbox'])} {what}"))

    def table(mask: np.ndarray) -> BoxTable:
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(pos[idx], kind="stable")]  # group by image, keep file order within
        offsets = np.searchsorted(pos[idx], np.arange(len(images) + 1)).astype(np.int64)
        return BoxTable(clipped[idx].astype(np.float32), labels[idx], offsets)

    return table(~crowd & ~degenerate), table(crowd & ~degenerate), problems


# --------------------------------------------------------------------------- images


def load_image(path: PathLike) -> Image.Image:
    """Fully decodes an image file into an RGB PIL image with its EXIF orientation applied.

    Grayscale, RGBA (alpha dropped), palette, CMYK, ... images are converted to RGB. Raises
    ImageError naming the file when it is missing, unreadable, corrupt or truncated.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"image file not found: {path}", path=path, reason="image file not found")
    try:
        with Image.open(path) as raw:
            raw.load()  # decode now, so a truncated file fails here rather than in a transform
            image = ImageOps.exif_transpose(raw)
        if image.mode != "RGB":
            image = image.convert("RGB")
    # Pillow's decoders raise many unrelated types on corrupt input (OSError, SyntaxError,
    # ValueError, struct.error, EOFError, DecompressionBombError...): all mean "bad image file".
    except Exception as exc:
        reason = f"cannot decode image: {type(exc).__name__}: {exc}"
        raise ImageError(f"{path}: {reason}", path=path, reason=reason) from exc
    return image


def _size_mismatch(size: tuple[int, int], record_wh: tuple[float, float]) -> Optional[str]:
    """Reason text when a decoded (w, h) differs from the annotation record's, else None."""
    w, h = size
    rw, rh = record_wh
    if (w, h) == (rw, rh):
        return None
    hint = " (width and height swapped: EXIF orientation?)" if (w, h) == (rh, rw) else ""
    return (f"decoded size {w}x{h} (after EXIF orientation) differs from the annotation record "
            f"{rw:g}x{rh:g}{hint}; boxes are used as given in the annotation file")


def _inspect_one(item: tuple[str, float, float]) -> Optional[tuple[str, str, str]]:
    path, rw, rh = item
    if not os.path.isfile(path):
        return "error", "missing-image", "image file not found"
    try:
        image = load_image(path)
    except ImageError as exc:
        return "error", "corrupt-image", exc.reason
    mismatch = _size_mismatch(image.size, (rw, rh))
    return ("warning", "image-size-mismatch", mismatch) if mismatch else None


def default_workers() -> int:
    """Threads for decoding images (Pillow releases the GIL while decoding)."""
    return max(1, min(8, os.cpu_count() or 1))


def inspect_images(
    items: Sequence[tuple[str, float, float]],
    *,
    workers: Optional[int] = None,
    progress: bool = False,
) -> list[DatasetProblem]:
    """Decodes every image of ``items`` = [(path, record width, record height)].

    Returns problems in ``items`` order: "missing-image" and "corrupt-image" errors, and
    "image-size-mismatch" warnings when the decoded size differs from the record.
    """
    results: Iterable = ()
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        results = pool.map(_inspect_one, items)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(items), desc="decoding images", unit="img")
        found = list(results)
    problems = []
    for (path, _, _), result in zip(items, found):
        if result is not None:
            severity, kind, reason = result
            problems.append(DatasetProblem(severity, kind, path, f"{path}: {reason}"))
    return problems


# --------------------------------------------------------------------------- dataset


def _pycocotools_index(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


def _summarize(problems: Sequence[DatasetProblem], ann_file: str) -> str:
    lines = [p.message for p in problems[:MAX_LISTED]]
    if len(problems) == 1:
        return lines[0]
    more = len(problems) - MAX_LISTED
    text = f"{len(problems)} problems in {ann_file}:\n  " + "\n  ".join(lines)
    if more > 0:
        text += f"\n  ... and {more} more (run libra-check-data for the full list)"
    return text


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset: ``dataset[i] -> (image, target)``.

    Without ``transforms``, ``image`` is a PIL RGB image and ``target`` a dict:
      boxes: float32 [N, 4] x1y1x2y2 in pixels, clipped to the image; degenerate boxes dropped
      labels: int64 [N] contiguous 0-based (category ids sorted ascending -> 0..C-1)
      ignore_boxes: float32 [M, 4] x1y1x2y2 of ``iscrowd=1`` annotations (not training targets)
      image_id: int; file_name: str; orig_size: (h, w) of the decoded image
    With ``transforms``, returns ``transforms(image, target)``.

    The annotation file is checked up front (schema, references, bboxes), and with
    ``check_images`` every image file must exist. Corrupt images are only found by decoding: see
    ``verify_images``; with ``skip_bad_images`` a sample whose image cannot be read is replaced by
    the next readable one (with a logged warning naming the file) instead of raising ImageError.
    ``filter_empty`` drops images without any training box (non-crowd, non-degenerate).
    """

    def __init__(
        self,
        ann_file: PathLike,
        img_dir: PathLike,
        *,
        transforms: Optional[Transforms] = None,
        skip_bad_images: bool = False,
        check_images: bool = True,
        filter_empty: bool = False,
    ) -> None:
        self.ann_file = os.fspath(ann_file)
        self.img_dir = os.fspath(img_dir)
        self.transforms = transforms
        self.skip_bad_images = skip_bad_images
        self.filter_empty = filter_empty

        data = read_annotation_json(self.ann_file)
        problems, clean = check_annotations(data, self.ann_file)
        errors = [p for p in problems if p.is_error]
        if errors:
            raise AnnotationError(_summarize(errors, self.ann_file))
        self.coco = _pycocotools_index(clean)

        self.cat_ids: list[int] = sorted(self.coco.getCatIds())
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = dict(enumerate(self.cat_ids))

        images = [self.coco.imgs[i] for i in sorted(self.coco.imgs)]
        self._images = images
        self._boxes, self._ignore, box_problems = convert_boxes(
            images, clean["annotations"], self.cat_id_to_label, self.ann_file)
        self._warn(problems + box_problems)

        rows = range(len(images))
        if filter_empty:
            rows = [i for i in rows if self._boxes.count(i) > 0]
        self._rows = np.asarray(rows, dtype=np.int64)  # dataset index -> index into _images
        self.ids: list[int] = [images[i]["id"] for i in self._rows]

        if check_images:
            self._check_files_exist()
        self._bad_rows: set[int] = set()
        self._size_warned: set[int] = set()

    # ------------------------------------------------------------------ info

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ann_file={self.ann_file!r}, img_dir={self.img_dir!r}, "
                f"images={len(self)}, classes={self.num_classes})")

    def image_path(self, index: int) -> str:
        """Path of the image file of dataset item ``index``."""
        return os.path.join(self.img_dir, self._images[self._rows[index]]["file_name"])

    def aspect_ratios(self) -> list[float]:
        """h / w of every item from the annotation records (no decoding), for batch grouping."""
        return [self._images[r]["height"] / self._images[r]["width"] for r in self._rows]

    # ------------------------------------------------------------------ checks

    def _warn(self, problems: Sequence[DatasetProblem]) -> None:
        """One warning per kind of problem for the whole file, not one per record."""
        by_kind: dict[str, list[DatasetProblem]] = {}
        for p in problems:
            if not p.is_error:
                by_kind.setdefault(p.kind, []).append(p)
        for kind, group in by_kind.items():
            if kind == "box-outside-image":
                continue  # clipping is the fix; the check CLI lists them
            if kind == "degenerate-box":
                text = (f"{self.ann_file}: dropped {len(group)} degenerate box(es) (width or "
                        f"height < {MIN_BOX_SIZE:g} px after clipping to the image); first: "
                        f"{group[0].message.split(': ', 1)[1]}")
            else:
                text = f"{len(group)} x {kind} in {self.ann_file}; first: {group[0].message}"
            warnings.warn(text, DatasetWarning, stacklevel=3)

    def _check_files_exist(self) -> None:
        missing = [self.image_path(i) for i in range(len(self))
                   if not os.path.isfile(self.image_path(i))]
        if missing:
            listed = ", ".join(missing[:MAX_LISTED])
            more = f", ... ({len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
            reason = (f"{len(missing)} of {len(self)} image files referenced by {self.ann_file} "
                      f"are missing: {listed}{more}")
            raise ImageError(f"{self.img_dir}: {reason}", path=self.img_dir, reason=reason)

    def verify_images(
        self, *, workers: Optional[int] = None, progress: bool = False
    ) -> list[tuple[str, str]]:
        """Decodes every image; returns [(file, reason)] of the missing or unreadable ones."""
        items = [(self.image_path(i), self._images[r]["width"], self._images[r]["height"])
                 for i, r in enumerate(self._rows)]
        problems = inspect_images(items, workers=workers, progress=progress)
        return [(p.file, p.message.split(": ", 1)[1]) for p in problems if p.is_error]

    # ------------------------------------------------------------------ items

    def __getitem__(self, index: int) -> tuple[Any, dict]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        if not self.skip_bad_images:
            image, target = self._load(index)
        else:
            image, target = self._load_skipping_bad(index)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def _load_skipping_bad(self, index: int) -> tuple[Image.Image, dict]:
        n = len(self)
        for step in range(n):
            j = (index + step) % n
            if j in self._bad_rows:
                continue
            try:
                return self._load(j)
            except ImageError as exc:
                self._bad_rows.add(j)
                logger.warning("skipping unreadable image %s (%s); using the next image instead",
                               exc.path, exc.reason)
        raise DatasetError(f"{self.img_dir}: none of the {n} images of {self.ann_file} is readable")

    def _load(self, index: int) -> tuple[Image.Image, dict]:
        row = int(self._rows[index])
        record = self._images[row]
        path = self.image_path(index)
        image = load_image(path)
        if row not in self._size_warned:
            mismatch = _size_mismatch(image.size, (record["width"], record["height"]))
            if mismatch:
                self._size_warned.add(row)
                logger.warning("%s: %s", path, mismatch)
        boxes, labels = self._boxes.rows(row)
        ignore_boxes, _ = self._ignore.rows(row)
        target = {
            "boxes": boxes,
            "labels": labels,
            "ignore_boxes": ignore_boxes,
            "image_id": int(record["id"]),
            "file_name": record["file_name"],
            "orig_size": (image.height, image.width),
        }
        return image, target
