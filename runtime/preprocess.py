"""Deployment pre-processing in NumPy + Pillow (no torch): the training eval policy, re-written.

Same steps, same library calls as ``training.data.transforms`` (``build_transforms(train=False)``
then ``pad_to_divisor``); ``tests/runtime/test_preprocess.py`` checks that both give the same
tensor. The runtime must not import ``training/``, hence this second copy.

Shapes: B images in a batch; an original image is ``w x h`` pixels, resized to ``nw x nh``; the
batch is padded to ``H x W`` (multiples of the pad divisor).

1. **Load** (:func:`load_image`, for files): decode fully, apply the EXIF orientation, convert any
   mode (grayscale, RGBA -- alpha dropped, palette, CMYK) to RGB. In-memory inputs
   (:func:`to_rgb_image`) are taken as given: PIL images of any mode are converted to RGB; arrays
   must be uint8 ``[h, w]``, ``[h, w, 1]``, ``[h, w, 3]`` (RGB) or ``[h, w, 4]`` (RGBA).
2. **Resize** keep-ratio to ``scale = (short, long)`` (mmcv ``rescale``):
   ``factor = min(long / max(h, w), short / min(h, w))``, ``nw, nh = int(w * factor + 0.5),
   int(h * factor + 0.5)``, with ``PIL.Image.resize((nw, nh), BILINEAR)`` on the uint8 RGB image.
   ``scale_factor = (sx, sy) = (nw / w, nh / h)``.
3. **To array**: float32 ``[3, nh, nw]`` RGB, values 0..255.
4. **Pad** bottom/right into a ``[B, 3, H, W]`` batch, ``H``/``W`` the batch maxima rounded up to
   ``pad_divisor``. The fill is ``pad_pixel`` in raw 0..255 RGB units. Training pads with 0
   *after* normalisation, i.e. with the mean pixel: pass :func:`mean_pixel_rgb` so that a model
   which normalises inside (the exported ONNX graph) sees exactly what training's batches hold.
5. **Normalise** (:func:`normalize`, for backends whose model does not normalise itself):
   ``to_rgb=False`` reverses the channels to BGR, then ``(x - mean[c]) / std[c]`` in the model's
   channel order.

Detections come back in batch (resized-input) pixels; :func:`boxes_to_original` divides by
``(sx, sy, sx, sy)`` and clips to the original ``w x h``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageInput",
    "ImageLoadError",
    "ImageMeta",
    "boxes_to_original",
    "load_image",
    "mean_pixel_rgb",
    "normalize",
    "preprocess",
    "rescale_size",
    "resize_image",
    "to_rgb_image",
]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

_BILINEAR = Image.Resampling.BILINEAR if hasattr(Image, "Resampling") else Image.BILINEAR

PathLike = Union[str, "os.PathLike[str]"]
ImageInput = Union[Image.Image, np.ndarray, str, "os.PathLike[str]"]


class ImageLoadError(ValueError):
    """An image file is missing or cannot be decoded, or an in-memory image has a bad layout.

    ``path`` (the file, or a name such as ``images[3]``) and ``reason`` are kept apart for reports
    (the CLI lists failed images); the message holds both.
    """

    def __init__(self, message: str, *, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ImageMeta:
    """Where one image sits in a pre-processed batch.

    ``orig_size``: (h, w) of the input image; ``img_size``: (nh, nw) of its valid, resized region
    at the top-left of the batch; ``scale_factor``: (sx, sy) = (nw / w, nh / h).
    """

    orig_size: Tuple[int, int]
    img_size: Tuple[int, int]
    scale_factor: Tuple[float, float]


def load_image(path: PathLike) -> Image.Image:
    """Decode an image file into an RGB PIL image with its EXIF orientation applied.

    The rule of ``training.data.coco.load_image`` (a test checks both give the same pixels).
    Raises :class:`ImageLoadError` naming the file when it is missing, unreadable or corrupt.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageLoadError(f"image file not found: {path}", path=path, reason="image file not found")
    try:
        with Image.open(path) as raw:
            raw.load()  # decode now, so a truncated file fails here and not in resize
            image = ImageOps.exif_transpose(raw)
        if image.mode != "RGB":
            image = image.convert("RGB")
    # Pillow's decoders raise many unrelated types on corrupt input (OSError, SyntaxError,
    # ValueError, struct.error, EOFError, DecompressionBombError...): all mean "bad image file".
    except Exception as exc:
        reason = f"cannot decode image: {type(exc).__name__}: {exc}"
        raise ImageLoadError(f"{path}: {reason}", path=path, reason=reason) from exc
    return image


def to_rgb_image(image: ImageInput, *, name: str = "image") -> Image.Image:
    """An RGB PIL image from a file path, a PIL image (any mode) or a uint8 array.

    Arrays: ``[h, w]`` / ``[h, w, 1]`` grayscale, ``[h, w, 3]`` RGB (not BGR: convert OpenCV
    images first), ``[h, w, 4]`` RGBA (alpha dropped). ``name`` is used in error messages.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            reason = f"array images must be uint8 (0..255), got dtype {image.dtype}"
            raise ImageLoadError(f"{name}: {reason}", path=name, reason=reason)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(image), "L").convert("RGB")
        if image.ndim == 3 and image.shape[2] in (3, 4):
            mode = "RGB" if image.shape[2] == 3 else "RGBA"
            pil = Image.fromarray(np.ascontiguousarray(image), mode)
            return pil if mode == "RGB" else pil.convert("RGB")
        reason = f"array images must be [h, w], [h, w, 1], [h, w, 3] or [h, w, 4]; got shape {list(image.shape)}"
        raise ImageLoadError(f"{name}: {reason}", path=name, reason=reason)
    reason = f"expected a file path, PIL image or uint8 array, got {type(image).__name__}"
    raise ImageLoadError(f"{name}: {reason}", path=name, reason=reason)


def _check_scale(scale: Sequence[int]) -> Tuple[int, int]:
    if len(scale) != 2 or not all(int(s) == s and s > 0 for s in scale):
        raise ValueError(f"scale must be two positive integers (short, long), got {scale!r}")
    return int(scale[0]), int(scale[1])


def rescale_size(w: int, h: int, scale: Sequence[int]) -> Tuple[int, int]:
    """``(nw, nh)`` of a keep-ratio resize of a ``w x h`` image to ``scale`` (order-insensitive)."""
    long_target, short_target = max(scale), min(scale)
    factor = min(long_target / max(h, w), short_target / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def resize_image(image: Image.Image, scale: Sequence[int]) -> Tuple[Image.Image, Tuple[float, float]]:
    """Keep-ratio bilinear resize of an RGB PIL image; returns it and ``(sx, sy)``."""
    w, h = image.size
    nw, nh = rescale_size(w, h, _check_scale(scale))
    return image.resize((nw, nh), _BILINEAR), (nw / w, nh / h)


def mean_pixel_rgb(mean: Sequence[float], to_rgb: bool) -> Tuple[float, float, float]:
    """The raw RGB pixel that normalises to 0: ``mean`` in RGB order (reversed when ``to_rgb`` is
    False, since ``mean`` is then in the model's BGR order). Use it as ``pad_pixel``."""
    if len(mean) != 3:
        raise ValueError(f"mean needs 3 values, got {mean!r}")
    values = tuple(float(m) for m in mean)
    return values if to_rgb else values[::-1]


def preprocess(
    images: Sequence[ImageInput],
    *,
    scale: Sequence[int],
    pad_divisor: int = 32,
    pad_pixel: Sequence[float] = (0.0, 0.0, 0.0),
    min_shape: Optional[Tuple[int, int]] = None,
) -> Tuple[np.ndarray, List[ImageMeta]]:
    """Resize and pad images into one batch (see the module docstring for the policy).

    Args:
        images: B file paths, PIL images or uint8 arrays (:func:`to_rgb_image`).
        scale: ``(short, long)`` keep-ratio target.
        pad_divisor: H and W are rounded up to a multiple of it.
        pad_pixel: raw RGB fill of the padding (:func:`mean_pixel_rgb` reproduces training).
        min_shape: optional (H, W) the batch is padded to at least (for fixed-shape engines).
    Returns:
        ``batch`` float32 ``[B, 3, H, W]`` RGB 0..255 (not normalised) and B :class:`ImageMeta`.
    """
    if len(images) == 0:
        raise ValueError("preprocess: empty image list")
    if int(pad_divisor) < 1:
        raise ValueError(f"preprocess: pad_divisor must be >= 1, got {pad_divisor}")
    if len(pad_pixel) != 3:
        raise ValueError(f"preprocess: pad_pixel needs 3 values (R, G, B), got {pad_pixel!r}")
    scale = _check_scale(scale)
    arrays: List[np.ndarray] = []
    metas: List[ImageMeta] = []
    for i, image in enumerate(images):
        rgb = to_rgb_image(image, name=f"images[{i}]")
        resized, (sx, sy) = resize_image(rgb, scale)
        arrays.append(np.asarray(resized, dtype=np.uint8))  # [nh, nw, 3]
        metas.append(ImageMeta((rgb.height, rgb.width), (resized.height, resized.width), (sx, sy)))
    divisor = int(pad_divisor)
    max_h = max(a.shape[0] for a in arrays)
    max_w = max(a.shape[1] for a in arrays)
    if min_shape is not None:
        max_h, max_w = max(max_h, int(min_shape[0])), max(max_w, int(min_shape[1]))
    pad_h = -(-max_h // divisor) * divisor
    pad_w = -(-max_w // divisor) * divisor
    batch = np.empty((len(arrays), 3, pad_h, pad_w), dtype=np.float32)
    batch[:] = np.asarray(pad_pixel, dtype=np.float32).reshape(1, 3, 1, 1)
    for i, array in enumerate(arrays):
        nh, nw = array.shape[:2]
        batch[i, :, :nh, :nw] = array.transpose(2, 0, 1)  # (nh, nw, 3) -> (3, nh, nw)
    return batch, metas


def normalize(
    batch: np.ndarray, *, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True
) -> np.ndarray:
    """``(x - mean[c]) / std[c]`` on a float32 ``[B, 3, H, W]`` RGB batch, BGR first if not
    ``to_rgb``; mean/std in 0..255 units and the model's channel order. Returns a new array."""
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"normalize: expected a [B, 3, H, W] batch, got shape {list(batch.shape)}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"normalize: mean and std need 3 values, std positive; got {mean!r}, {std!r}")
    x = batch.astype(np.float32, copy=False)
    if not to_rgb:
        x = x[:, ::-1]
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - m) / s)


def boxes_to_original(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Boxes float32 ``[N, 4]`` x1y1x2y2 in batch pixels -> original image pixels.

    Divides by ``(sx, sy, sx, sy)`` and clips to ``[0, w] x [0, h]`` of ``meta.orig_size``.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    sx, sy = meta.scale_factor
    out = boxes / np.array([sx, sy, sx, sy], dtype=np.float32)
    h, w = meta.orig_size
    return np.clip(out, 0.0, np.array([w, h, w, h], dtype=np.float32)).astype(np.float32)
