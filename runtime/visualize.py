"""Draw detections on images (numpy + Pillow only, so every backend and the demo can use it)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["color_for", "draw_detections", "make_grid"]

# A fixed, high-contrast palette; class k gets _PALETTE[k % len].
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
]


def color_for(label: int) -> tuple:
    """The RGB colour used for class ``label``."""
    return _PALETTE[int(label) % len(_PALETTE)]


def draw_detections(
    image: Image.Image,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Optional[Sequence[str]] = None,
    *,
    score_thr: float = 0.3,
    width: int = 2,
) -> Image.Image:
    """Return a copy of ``image`` with boxes, class names and scores drawn.

    Args:
        image: RGB image the boxes refer to.
        boxes: float [N, 4] x1, y1, x2, y2 in the image's pixels.
        scores: float [N]; detections below ``score_thr`` are not drawn.
        labels: int [N] contiguous 0-based class indices into ``class_names``.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    order = np.argsort(scores)  # draw the most confident last, on top
    for i in order:
        if scores[i] < score_thr:
            continue
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        color = color_for(labels[i])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        name = class_names[labels[i]] if class_names is not None and labels[i] < len(class_names) else str(labels[i])
        text = f"{name} {scores[i]:.2f}"
        tx, ty = x1, max(0.0, y1 - 11)
        tw = draw.textlength(text, font=font)
        draw.rectangle([tx, ty, tx + tw + 2, ty + 11], fill=color)
        draw.text((tx + 1, ty), text, fill=(0, 0, 0), font=font)
    return out


def make_grid(images: Sequence[Image.Image], cols: int = 3, pad: int = 4) -> Image.Image:
    """Tile images (top-left aligned in equal cells) into one picture."""
    if not images:
        raise ValueError("make_grid: no images")
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    cw = max(im.width for im in images)
    ch = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cw + (cols + 1) * pad, rows * ch + (rows + 1) * pad), (255, 255, 255))
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        grid.paste(im, (pad + c * (cw + pad), pad + r * (ch + pad)))
    return grid
