"""The built-in synthetic COCO-format detection dataset: textured shapes on cluttered backgrounds.

``python -m training.data.synthetic --out DIR --train N --val M --seed S`` writes::

    DIR/train/000000.jpg ...                 real JPEG files (quality 90)
    DIR/val/000000.jpg ...
    DIR/annotations/instances_train.json     COCO detection format, loadable by pycocotools
    DIR/annotations/instances_val.json

What an image holds:

* Objects of the six ``CATEGORIES`` (circle, square, triangle, star, hexagon, cross) with
  non-contiguous ids 1, 2, 3, 5, 7, 9, so that a detector's contiguous label mapping is exercised.
  Each category has its own hue (jittered, and random for ~15% of objects) and every shape is
  randomly stretched and rotated, then filled with a texture (solid, stripes, checker, smooth
  noise or gradient) and per-pixel colour noise.
* Sizes from COCO-small to COCO-large: target areas are drawn from the three COCO buckets
  (area < 32**2, 32**2..96**2, > 96**2) at 320 px and scale with the image's shorter side.
* A cluttered background (two-colour gradient, smooth noise, faint lines and ellipses) and
  unannotated distractors that are hard negatives: irregular blobs, rings, arcs and thick lines,
  often in a category's hue and texture.
* Image sizes: ``image_size`` (width, height), default 320x320. With ``vary_aspect`` (default)
  a quarter of the images are landscape (height * 3/4) and a quarter portrait (width * 3/4),
  e.g. 320x240 and 240x320, so aspect-ratio grouping matters.
* Shapes may be cut by the image border (at most 30% of the shape). The annotation is the
  visible part's polygon (the shape clipped to the image); its ``bbox`` is the polygon's extent
  and ``area`` the polygon's area.
* Occlusion: later shapes are drawn over earlier ones. Annotations are amodal: the polygon, box
  and area of a partly covered shape still describe the whole shape. A shape never ends up more
  than ``max_occluded`` (default 60%) hidden: a placement (or a thin line drawn over the objects)
  that would hide more of an earlier shape is tried elsewhere or dropped, so no annotation is
  of a shape that is mostly invisible.
* By construction, in each split image ``i`` has no objects when ``i % 20 == 7`` (5% empty
  images, distractors only), 20-28 smaller objects when ``i % 10 == 3`` (crowded images), and one
  ``iscrowd=1`` annotation when ``i % 25 == 12``: a cluster of 6-12 tiny shapes of one category
  annotated as a single rectangular region (polygon segmentation, which pycocotools accepts)
  that the other objects keep clear of. Crowd regions are not counted in the area buckets.
  Other images hold ``min_objects..max_objects`` objects (fewer when placement fails).

Everything is deterministic for a seed: image ``i`` of a split is drawn from
``numpy.random.default_rng(SeedSequence([seed, split, i]))`` (split 0 = train, 1 = val), so the
same seed gives byte-identical JSON and identical JPEG files (for the same numpy and Pillow
versions), and any image can be reproduced on its own.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES: list[dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 5, "name": "star", "supercategory": "shape"},
    {"id": 7, "name": "hexagon", "supercategory": "shape"},
    {"id": 9, "name": "cross", "supercategory": "shape"},
]
_CATEGORY_HUE = {1: 0.0, 2: 225.0, 3: 120.0, 5: 55.0, 7: 290.0, 9: 180.0}  # degrees
_CATEGORY_IDS = [c["id"] for c in CATEGORIES]

AREA_SMALL = 32**2  # COCO: small < 32**2 <= medium < 96**2 <= large
AREA_LARGE = 96**2
_REFERENCE_SIDE = 320  # object sizes below are given at this image side and scaled with it
# Target object areas at the reference side: (low, high) side lengths of the equal-area square.
_SIZE_BUCKETS = ((16.0, 30.0), (34.0, 92.0), (100.0, 160.0))
_BUCKET_PROBS = (0.25, 0.5, 0.25)
_CROWDED_BUCKET_PROBS = (0.45, 0.55, 0.0)

_EMPTY_PERIOD, _EMPTY_OFFSET = 20, 7
_CROWDED_PERIOD, _CROWDED_OFFSET = 10, 3
_CROWD_PERIOD, _CROWD_OFFSET = 25, 12
_CROWDED_COUNT = (20, 28)
_MAX_TRUNCATION = 0.3
_SPLIT_CODES = {"train": 0, "val": 1}
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Pillow >= 9.1 names it Image.Resampling


@dataclass
class _Placed:
    """An annotated shape or crowd region in the image (``polygon`` is (N, 2) x, y, clipped to the image)."""

    category_id: int
    polygon: np.ndarray
    pixels: int  # pixels it covered when drawn
    visible: int  # pixels still showing
    iscrowd: int = 0


# ----------------------------------------------------------------------------- geometry


def _polygon_area(pts: np.ndarray) -> float:
    """Shoelace area of an (N, 2) polygon."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip_polygon(pts: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman clip of an (N, 2) polygon to [0, width] x [0, height]; (M, 2), M may be 0."""
    out = [tuple(p) for p in pts.tolist()]
    for axis, bound, keep_above in ((0, 0.0, True), (0, width, False), (1, 0.0, True), (1, height, False)):
        src, out = out, []
        if not src:
            break
        prev = src[-1]
        for cur in src:
            cur_in = cur[axis] >= bound if keep_above else cur[axis] <= bound
            prev_in = prev[axis] >= bound if keep_above else prev[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                out.append((bound, cross[1]) if axis == 0 else (cross[0], bound))
            if cur_in:
                out.append(cur)
            prev = cur
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _shape_template(category_id: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of a randomly stretched and rotated shape centred on the origin."""
    if category_id == 1:  # circle, drawn and annotated as a 32-gon
        t = np.linspace(0.0, 2 * math.pi, 32, endpoint=False)
        pts, stretch = np.stack([np.cos(t), np.sin(t)], 1), rng.uniform(0.9, 1.1)
    elif category_id == 2:  # square
        pts, stretch = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), rng.uniform(0.85, 1.18)
    elif category_id == 3:  # triangle
        t = -math.pi / 2 + np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.normal(0.0, 0.08, 3)
        pts, stretch = np.stack([np.cos(t), np.sin(t)], 1), rng.uniform(0.85, 1.15)
    elif category_id == 5:  # five-pointed star
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        pts, stretch = np.stack([r * np.cos(t), r * np.sin(t)], 1), rng.uniform(0.9, 1.1)
    elif category_id == 7:  # hexagon
        t = np.arange(6) * math.pi / 3
        pts, stretch = np.stack([np.cos(t), np.sin(t)], 1), rng.uniform(0.88, 1.12)
    elif category_id == 9:  # plus-shaped cross
        a = rng.uniform(0.28, 0.38)
        pts = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
                        [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)
        stretch = rng.uniform(0.88, 1.12)
    else:
        raise ValueError(f"unknown synthetic category id {category_id}")
    pts = pts * np.array([stretch, 1.0 / stretch])
    angle = rng.uniform(0.0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _scaled(template: np.ndarray, area: float) -> np.ndarray:
    """``template`` scaled about the origin to the given polygon area."""
    return template * math.sqrt(area / _polygon_area(template))


# ----------------------------------------------------------------------------- colour and texture


def _hsv(hue_deg: float, sat: float, val: float) -> np.ndarray:
    """RGB (3,) float32 in 0..255 of a hue in degrees and saturation/value in 0..1."""
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val), dtype=np.float32) * 255.0


def _object_colour(rng: np.random.Generator, category_id: int) -> np.ndarray:
    """Category hue with jitter; ~15% of objects get a random hue so shape must carry the class."""
    hue = rng.uniform(0.0, 360.0) if rng.random() < 0.15 else _CATEGORY_HUE[category_id] + rng.normal(0.0, 8.0)
    return _hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def _distractor_colour(rng: np.random.Generator) -> np.ndarray:
    """Saturated colour; half the time in some category's hue (hard negatives)."""
    if rng.random() < 0.5:
        hue = _CATEGORY_HUE[_CATEGORY_IDS[rng.integers(len(_CATEGORY_IDS))]] + rng.normal(0.0, 8.0)
    else:
        hue = rng.uniform(0.0, 360.0)
    return _hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """(height, width) float32 in about -1..1: a random grid of ``cells`` per side, bilinearly upsampled."""
    grid = rng.integers(0, 256, size=(cells, cells), dtype=np.uint8)
    up = Image.fromarray(grid).resize((width, height), _BILINEAR)
    return np.asarray(up, dtype=np.float32) / 127.5 - 1.0


def _texture(rng: np.random.Generator, width: int, height: int, colour: np.ndarray) -> np.ndarray:
    """(height, width, 3) uint8 fill: solid, stripes, checker, smooth noise or gradient in ``colour`` and a shade."""
    if rng.random() < 0.5:
        shade = colour * rng.uniform(0.45, 0.75)
    else:
        shade = colour + (255.0 - colour) * rng.uniform(0.3, 0.6)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    kind = rng.choice(5, p=(0.3, 0.2, 0.15, 0.2, 0.15))
    if kind == 0:  # solid
        mix = np.zeros((height, width), dtype=np.float32)
    elif kind == 1:  # stripes
        angle, period = rng.uniform(0.0, math.pi), rng.uniform(4.0, 12.0)
        mix = (np.floor((xs * math.cos(angle) + ys * math.sin(angle)) / period) % 2).astype(np.float32)
    elif kind == 2:  # checker
        cell = rng.uniform(3.0, 10.0)
        mix = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(np.float32)
    elif kind == 3:  # smooth noise
        mix = 0.5 + 0.5 * _smooth_noise(rng, width, height, int(rng.integers(3, 7)))
    else:  # gradient
        angle = rng.uniform(0.0, 2 * math.pi)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        mix = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    tex = colour + (shade - colour) * mix[..., None]
    tex = tex + rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(0.0, 10.0)
    return np.clip(tex, 0, 255).astype(np.uint8)


def _rasterise(pts: np.ndarray, width: int, height: int) -> tuple[Image.Image, tuple[int, int, int, int]] | None:
    """Mask ("L", 255 inside) of (N, 2) polygon ``pts`` over its box (x0, y0, x1, y1) clipped to the image."""
    x0, y0 = max(int(math.floor(pts[:, 0].min())), 0), max(int(math.floor(pts[:, 1].min())), 0)
    x1, y1 = min(int(math.ceil(pts[:, 0].max())) + 1, width), min(int(math.ceil(pts[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in pts.tolist()], fill=255)
    return mask, (x0, y0, x1, y1)


def _paste_texture(image: Image.Image, rng: np.random.Generator,
                   raster: tuple[Image.Image, tuple[int, int, int, int]], colour: np.ndarray) -> None:
    """Fill the rasterised shape ``raster`` (from ``_rasterise``) with a texture in ``colour``."""
    mask, (x0, y0, x1, y1) = raster
    image.paste(Image.fromarray(_texture(rng, x1 - x0, y1 - y0, colour)), (x0, y0), mask)


def _fill_polygon(image: Image.Image, rng: np.random.Generator, pts: np.ndarray, colour: np.ndarray) -> None:
    """Draw (N, 2) polygon ``pts`` filled with a texture (parts outside the image are cut)."""
    raster = _rasterise(pts, *image.size)
    if raster is not None:
        _paste_texture(image, rng, raster, colour)


# ----------------------------------------------------------------------------- scene layers


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Low-saturation two-colour gradient plus smooth noise and faint clutter lines/ellipses."""
    c1 = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.4), rng.uniform(0.25, 0.9))
    c2 = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.4), rng.uniform(0.25, 0.9))
    angle = rng.uniform(0.0, 2 * math.pi)
    t = (np.arange(width, dtype=np.float32)[None, :] * math.cos(angle)
         + np.arange(height, dtype=np.float32)[:, None] * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    bg = c1 + (c2 - c1) * t[..., None]
    bg = bg + _smooth_noise(rng, width, height, int(rng.integers(4, 10)))[..., None] * rng.uniform(5.0, 30.0)
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    mean = (c1 + c2) / 2
    for _ in range(int(rng.integers(3, 12))):
        colour = tuple(int(v) for v in np.clip(mean + rng.normal(0.0, 30.0, 3), 0, 255))
        x, y = rng.uniform(0, width, 2), rng.uniform(0, height, 2)
        if rng.random() < 0.5:
            draw.line([(x[0], y[0]), (x[1], y[1])], fill=colour, width=int(rng.integers(1, 4)))
        else:
            box = [min(x), min(y), max(x), max(y)]
            if rng.random() < 0.5:
                draw.ellipse(box, fill=colour)
            else:
                draw.ellipse(box, outline=colour, width=int(rng.integers(1, 3)))
    return image


def _draw_distractors(image: Image.Image, rng: np.random.Generator, count: int, scale: float) -> None:
    """Unannotated hard negatives: irregular textured blobs, rings, arcs and thick lines."""
    w, h = image.size
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        colour = _distractor_colour(rng)
        fill = tuple(int(v) for v in colour)
        size = math.exp(rng.uniform(math.log(12.0), math.log(110.0))) * scale
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        kind = rng.integers(4)
        if kind == 0:  # irregular spiky blob
            n = int(rng.integers(7, 13))
            t = np.sort(rng.uniform(0.0, 2 * math.pi, n))
            r = size / 2 * rng.uniform(0.45, 1.0, n)
            pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
            _fill_polygon(image, rng, pts, colour)
        elif kind == 1:  # ring
            rx, ry = size / 2 * rng.uniform(0.7, 1.0), size / 2 * rng.uniform(0.7, 1.0)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=fill,
                         width=max(2, int(size * rng.uniform(0.06, 0.15))))
        elif kind == 2:  # arc
            start = rng.uniform(0.0, 360.0)
            draw.arc([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], start,
                     start + rng.uniform(60.0, 240.0), fill=fill, width=max(2, int(size * 0.1)))
        else:  # thick line
            angle = rng.uniform(0.0, math.pi)
            dx, dy = math.cos(angle) * size, math.sin(angle) * size
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fill,
                      width=int(rng.integers(3, 9)))


def _sample_area(rng: np.random.Generator, probs: Sequence[float], scale: float) -> float:
    """A target polygon area drawn log-uniformly within a COCO size bucket, scaled by ``scale``**2 (>= 4x4)."""
    lo, hi = _SIZE_BUCKETS[int(rng.choice(3, p=probs))]
    side = max(math.exp(rng.uniform(math.log(lo), math.log(hi))) * scale, 4.0)
    return side * side


def _would_hide(placed: list[_Placed], lost: np.ndarray, min_visible: float) -> bool:
    """True if losing ``lost[1 + i]`` pixels leaves shape i under ``min_visible`` or touches a crowd region."""
    for i, p in enumerate(placed):
        if lost[i + 1] and (p.iscrowd or p.visible - lost[i + 1] < min_visible * p.pixels):
            return True
    return False


def _try_place(image: Image.Image, idmap: np.ndarray, placed: list[_Placed], rng: np.random.Generator,
               category_id: int, area: float, min_visible: float, attempts: int) -> bool:
    """Draw one shape where it keeps every earlier shape ``min_visible`` visible; False if no spot is found."""
    h, w = idmap.shape
    template = _scaled(_shape_template(category_id, rng), area)
    for _ in range(attempts):
        pts = template + np.array([rng.uniform(0, w), rng.uniform(0, h)])
        clipped = _clip_polygon(pts, w, h)
        if len(clipped) < 3 or _polygon_area(clipped) < (1.0 - _MAX_TRUNCATION) * area:
            continue
        if min(clipped.max(0) - clipped.min(0)) < 2.0:
            continue
        raster = _rasterise(pts, w, h)
        if raster is None:
            continue
        x0, y0, x1, y1 = raster[1]
        mask = np.asarray(raster[0]) > 0
        region = idmap[y0:y1, x0:x1]
        lost = np.bincount(region[mask], minlength=len(placed) + 1)
        if _would_hide(placed, lost, min_visible):
            continue
        _paste_texture(image, rng, raster, _object_colour(rng, category_id))
        for i, p in enumerate(placed):
            p.visible -= int(lost[i + 1])
        region[mask] = len(placed) + 1
        pixels = int(mask.sum())
        placed.append(_Placed(category_id, clipped, pixels, pixels))
        return True
    return False


def _draw_crowd(image: Image.Image, idmap: np.ndarray, rng: np.random.Generator, scale: float) -> _Placed:
    """A cluster of 6-12 tiny shapes of one category, entered in ``idmap`` as one iscrowd=1 region."""
    w, h = image.size
    category_id = _CATEGORY_IDS[rng.integers(len(_CATEGORY_IDS))]
    rw, rh = rng.uniform(50.0, 90.0, 2) * scale
    x0, y0 = rng.uniform(0, w - rw), rng.uniform(0, h - rh)
    boxes = []
    for _ in range(int(rng.integers(6, 13))):
        side = rng.uniform(6.0, 11.0) * scale
        pts = _scaled(_shape_template(category_id, rng), side * side)
        half = np.abs(pts).max(0)
        pts = pts + [rng.uniform(x0 + half[0], x0 + rw - half[0]), rng.uniform(y0 + half[1], y0 + rh - half[1])]
        _fill_polygon(image, rng, pts, _object_colour(rng, category_id))
        boxes.append(np.concatenate([pts.min(0), pts.max(0)]))
    b = np.stack(boxes)
    x0, y0 = max(float(b[:, 0].min()) - 1.0, 0.0), max(float(b[:, 1].min()) - 1.0, 0.0)
    x1, y1 = min(float(b[:, 2].max()) + 1.0, w), min(float(b[:, 3].max()) + 1.0, h)
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    ix0, iy0, ix1, iy1 = int(x0), int(y0), int(math.ceil(x1)), int(math.ceil(y1))
    idmap[iy0:iy1, ix0:ix1] = 1
    pixels = (iy1 - iy0) * (ix1 - ix0)
    return _Placed(category_id, rect, pixels, pixels, iscrowd=1)


def _draw_overlay_lines(image: Image.Image, idmap: np.ndarray, placed: list[_Placed],
                        rng: np.random.Generator, min_visible: float) -> None:
    """Thin 'wire' lines drawn over the objects, skipped where they would hide too much of one."""
    h, w = idmap.shape
    for _ in range(int(rng.integers(0, 3))):
        x, y = rng.uniform(0, w, 2), rng.uniform(0, h, 2)
        width = int(rng.integers(1, 4))
        mask_img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask_img).line([(x[0], y[0]), (x[1], y[1])], fill=255, width=width)
        mask = np.asarray(mask_img) > 0
        lost = np.bincount(idmap[mask], minlength=len(placed) + 1)
        if _would_hide(placed, lost, min_visible):
            continue
        for i, p in enumerate(placed):
            p.visible -= int(lost[i + 1])
        idmap[mask] = 0
        colour = tuple(int(v) for v in _distractor_colour(rng))
        ImageDraw.Draw(image).line([(x[0], y[0]), (x[1], y[1])], fill=colour, width=width)


def _annotation(category_id: int, polygon: np.ndarray, iscrowd: int = 0) -> dict:
    """COCO annotation fields (without ids) of an (N, 2) polygon; bbox and area follow the rounded polygon."""
    poly = np.round(polygon, 2)
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    return {
        "category_id": int(category_id),
        "segmentation": [[float(v) for v in poly.reshape(-1)]],
        "area": round(_polygon_area(poly), 2),
        "bbox": [float(x0), float(y0), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        "iscrowd": int(iscrowd),
    }


def _render_image(rng: np.random.Generator, width: int, height: int, *, num_objects: int, crowded: bool,
                  with_crowd: bool, max_occluded: float) -> tuple[Image.Image, list[dict]]:
    """One scene of ``width`` x ``height``; returns the RGB image and its annotations (without ids)."""
    scale = min(width, height) / _REFERENCE_SIDE
    image = _background(rng, width, height)
    _draw_distractors(image, rng, int(rng.integers(1, 6)), scale)
    idmap = np.zeros((height, width), dtype=np.uint8)  # 1 + index in `placed` of what shows at each pixel
    # Later shapes stay off the crowd region.
    placed = [_draw_crowd(image, idmap, rng, scale)] if with_crowd else []
    min_visible = 1.0 - max_occluded
    probs = _CROWDED_BUCKET_PROBS if crowded else _BUCKET_PROBS
    tries = 0
    num_objects += len(placed)
    while len(placed) < num_objects and tries < 4 * num_objects + 10:
        tries += 1
        category_id = _CATEGORY_IDS[rng.integers(len(_CATEGORY_IDS))]
        _try_place(image, idmap, placed, rng, category_id, _sample_area(rng, probs, scale), min_visible, 12)
    _draw_overlay_lines(image, idmap, placed, rng, min_visible)

    rgb = np.asarray(image, dtype=np.float32)
    rgb = rgb + rng.standard_normal(rgb.shape, dtype=np.float32) * rng.uniform(2.0, 7.0)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return image, [_annotation(p.category_id, p.polygon, p.iscrowd) for p in placed]


# ----------------------------------------------------------------------------- dataset


def _image_size_for(rng: np.random.Generator, image_size: tuple[int, int], vary_aspect: bool) -> tuple[int, int]:
    """(width, height): the base size, or with ``vary_aspect`` a 3/4-shortened side for half the images."""
    w, h = image_size
    if not vary_aspect:
        return w, h
    r = rng.random()
    if r < 0.25:
        return w, round(h * 3 / 4)
    if r < 0.5:
        return round(w * 3 / 4), h
    return w, h


def _split_stats(images: list[dict], annotations: list[dict]) -> dict:
    """Counts per category (by name), per COCO area bucket (non-crowd), and image emptiness."""
    names = {c["id"]: c["name"] for c in CATEGORIES}
    per_image = {img["id"]: 0 for img in images}
    per_category = {c["name"]: 0 for c in CATEGORIES}
    buckets = {"small": 0, "medium": 0, "large": 0}
    crowd = 0
    for ann in annotations:
        per_image[ann["image_id"]] += 1
        if ann["iscrowd"]:
            crowd += 1
            continue
        per_category[names[ann["category_id"]]] += 1
        area = ann["area"]
        buckets["small" if area < AREA_SMALL else "medium" if area < AREA_LARGE else "large"] += 1
    return {
        "num_images": len(images),
        "num_annotations": len(annotations),
        "num_crowd": crowd,
        "num_empty_images": sum(1 for n in per_image.values() if n == 0),
        "max_objects_per_image": max(per_image.values(), default=0),
        "per_category": per_category,
        "area_buckets": buckets,
    }


def _write_split(out_dir: Path, split: str, num_images: int, seed: int, image_size: tuple[int, int], *,
                 vary_aspect: bool, min_objects: int, max_objects: int, max_occluded: float,
                 jpeg_quality: int) -> dict:
    """Render one split's JPEGs and COCO JSON; returns its paths and stats."""
    image_dir = out_dir / split
    ann_path = out_dir / "annotations" / f"instances_{split}.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))
        width, height = _image_size_for(rng, image_size, vary_aspect)
        crowded = index % _CROWDED_PERIOD == _CROWDED_OFFSET
        if index % _EMPTY_PERIOD == _EMPTY_OFFSET:
            num_objects = 0
        elif crowded:
            num_objects = int(rng.integers(_CROWDED_COUNT[0], _CROWDED_COUNT[1] + 1))
        else:
            num_objects = int(rng.integers(min_objects, max_objects + 1))
        image, anns = _render_image(
            rng, width, height, num_objects=num_objects, crowded=crowded,
            with_crowd=num_objects > 0 and index % _CROWD_PERIOD == _CROWD_OFFSET, max_occluded=max_occluded)
        image_id = index + 1
        file_name = f"{index:06d}.jpg"
        image.save(image_dir / file_name, format="JPEG", quality=jpeg_quality)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height, "license": 1})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    coco = {
        "info": {
            "description": f"libra-rcnn synthetic shapes ({split}, seed {seed})",
            "version": "1.0",
            "year": 2025,
            "contributor": "training.data.synthetic",
            "url": "",
            "date_created": "2025-01-01",
        },
        "licenses": [{"id": 1, "name": "CC0-1.0 (generated data)",
                      "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }
    ann_path.write_text(json.dumps(coco) + "\n", encoding="utf-8")
    return {"images_dir": str(image_dir), "annotations": str(ann_path), **_split_stats(images, annotations)}


def generate_dataset(out_dir: str | Path, num_train: int, num_val: int, seed: int = 0,
                     image_size: tuple[int, int] = (320, 320), *, vary_aspect: bool = True,
                     min_objects: int = 1, max_objects: int = 10, max_occluded: float = 0.6,
                     jpeg_quality: int = 90) -> dict:
    """Write the synthetic dataset under ``out_dir`` (see the module docstring for its content).

    ``image_size`` is (width, height) in pixels. Returns ``{"out_dir": str, "train": {...}, "val": {...}}``
    where each split has ``images_dir``, ``annotations`` (JSON path) and the stats printed by the CLI
    (``num_images``, ``num_annotations``, ``num_crowd``, ``num_empty_images``, ``max_objects_per_image``,
    ``per_category``, ``area_buckets``). Existing files of the same names are overwritten.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed),
                        ("min_objects", min_objects), ("max_objects", max_objects)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"synthetic dataset: {name} must be a non-negative integer, got {value!r}")
    if min_objects > max_objects:
        raise ValueError(f"synthetic dataset: min_objects ({min_objects}) > max_objects ({max_objects})")
    if max_objects > 200:
        raise ValueError(f"synthetic dataset: max_objects must be <= 200, got {max_objects}")
    if len(image_size) != 2 or min(image_size) < 64:
        raise ValueError(f"synthetic dataset: image_size must be (width, height) with both >= 64, got {image_size!r}")
    if not 0.0 <= max_occluded < 1.0:
        raise ValueError(f"synthetic dataset: max_occluded must be in [0, 1), got {max_occluded!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"synthetic dataset: jpeg_quality must be in 1..100, got {jpeg_quality!r}")
    out = Path(out_dir)
    size = (int(image_size[0]), int(image_size[1]))
    options = dict(vary_aspect=vary_aspect, min_objects=int(min_objects), max_objects=int(max_objects),
                   max_occluded=float(max_occluded), jpeg_quality=int(jpeg_quality))
    return {
        "out_dir": str(out),
        "train": _write_split(out, "train", int(num_train), int(seed), size, **options),
        "val": _write_split(out, "val", int(num_val), int(seed), size, **options),
    }


def _format_summary(result: dict, seconds: float) -> str:
    """Human-readable per-split summary for the CLI."""
    lines = [f"synthetic dataset in {result['out_dir']} ({seconds:.1f} s)"]
    for split in ("train", "val"):
        s = result[split]
        cats = ", ".join(f"{k} {v}" for k, v in s["per_category"].items())
        areas = ", ".join(f"{k} {v}" for k, v in s["area_buckets"].items())
        lines += [
            f"  {split}: {s['num_images']} images ({s['num_empty_images']} empty, up to "
            f"{s['max_objects_per_image']} objects), {s['num_annotations']} annotations "
            f"({s['num_crowd']} crowd) -> {s['annotations']}",
            f"    per category: {cats}",
            f"    area buckets: {areas}",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.data.synthetic",
        description="Write the built-in synthetic COCO-format shapes dataset (train/val JPEGs + annotations).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=400, help="number of training images (default 400)")
    parser.add_argument("--val", type=int, default=100, help="number of validation images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=320, help="base image width and height in pixels (default 320)")
    parser.add_argument("--width", type=int, default=None, help="base image width (overrides --size)")
    parser.add_argument("--height", type=int, default=None, help="base image height (overrides --size)")
    parser.add_argument("--fixed-size", action="store_true",
                        help="every image at the base size (default: a quarter landscape 4:3, a quarter portrait)")
    parser.add_argument("--min-objects", type=int, default=1, help="objects per ordinary image, at least (default 1)")
    parser.add_argument("--max-objects", type=int, default=10, help="objects per ordinary image, at most (default 10)")
    parser.add_argument("--max-occluded", type=float, default=0.6,
                        help="largest hidden fraction of an annotated shape (default 0.6)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (default 90)")
    args = parser.parse_args(argv)
    size = (args.width if args.width is not None else args.size, args.height if args.height is not None else args.size)
    start = time.perf_counter()
    try:
        result = generate_dataset(args.out, args.train, args.val, args.seed, size, vary_aspect=not args.fixed_size,
                                  min_objects=args.min_objects, max_objects=args.max_objects,
                                  max_occluded=args.max_occluded, jpeg_quality=args.jpeg_quality)
    except ValueError as err:
        parser.error(str(err))
    print(_format_summary(result, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
