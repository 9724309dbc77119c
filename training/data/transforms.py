"""Image/box transforms for detection: resize, flip, to-tensor, normalise, pad.

Pre-processing policy (the deployment runtime re-implements it in NumPy and a test checks that
both agree, so every step is plain arithmetic on a named library call):

1. **Resize** (:class:`Resize`), mmcv ``rescale`` "keep ratio" semantics. For an image of
   ``w x h`` pixels and a scale ``(short, long)``::

       factor = min(short / min(h, w), long / max(h, w))
       new_w, new_h = int(w * factor + 0.5), int(h * factor + 0.5)

   so the short side becomes ``short`` unless the long side would exceed ``long``. The uint8 RGB
   image is resized with ``PIL.Image.resize((new_w, new_h), BILINEAR)`` (Pillow's bilinear filter,
   which widens its support when downscaling). Boxes are scaled by the actual per-axis factors
   ``sx = new_w / w``, ``sy = new_h / h`` and clipped to ``[0, new_w] x [0, new_h]``.
   ``target["scale_factor"] = (sx, sy)`` -- two Python floats, x then y; a box predicted on the
   resized image maps back to the original with ``box / (sx, sy, sx, sy)``.
   ``target["img_size"] = (new_h, new_w)``.
2. **Horizontal flip** (:class:`RandomHorizontalFlip`, training only): boxes are continuous pixel
   coordinates (pixel ``i`` covers ``[i, i + 1)``), so with ``W`` the image width
   ``x1' = W - x2`` and ``x2' = W - x1``.
3. **To tensor** (:class:`ToTensor`): the uint8 image becomes float32 ``[3, H, W]`` in RGB order
   with values 0..255 (no division by 255).
4. **Normalise** (:class:`Normalize`): with ``to_rgb=False`` the channels are first reversed to
   BGR (Detectron/caffe-style weights); then ``(x - mean[c]) / std[c]`` with mean/std in 0..255
   units and in the model's channel order. torchvision's ``[0.485, ...]`` / ``[0.229, ...]``
   convention is the same thing multiplied by 255.
5. **Pad** (:func:`pad_to_divisor`, at batching time): bottom/right padding of every image to the
   batch's largest height and width, each rounded up to a multiple of ``divisor`` (32 suffices
   for FPN levels up to P6/P7 with stride-2 convolutions). The pad value is 0 *after*
   normalisation, i.e. the mean pixel.

Transforms are callables ``(image, target) -> (image, target)``. Before :class:`ToTensor` the
image is a ``PIL.Image`` in RGB mode and the target holds NumPy arrays: ``boxes`` float32
``[N, 4]`` x1y1x2y2 pixels, ``labels`` int64 ``[N]``, ``ignore_boxes`` float32 ``[M, 4]``, plus
``image_id``, ``file_name`` and ``orig_size`` ``(h, w)``; :class:`ToTensor` turns the arrays into
torch tensors. Random choices are drawn from Python's :mod:`random` module; the data loader
(:mod:`training.data.loader`) seeds it per sample so augmentations are reproducible.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = [
    "Compose",
    "Resize",
    "RandomHorizontalFlip",
    "ToTensor",
    "Normalize",
    "build_transforms",
    "pad_to_divisor",
    "rescale_size",
]

Target = Dict[str, Any]
Transform = Callable[[Any, Target], Tuple[Any, Target]]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

_BILINEAR = Image.Resampling.BILINEAR if hasattr(Image, "Resampling") else Image.BILINEAR
_FLIP_LEFT_RIGHT = (
    Image.Transpose.FLIP_LEFT_RIGHT if hasattr(Image, "Transpose") else Image.FLIP_LEFT_RIGHT
)


def _where(target: Target) -> str:
    """Name of the sample for error messages."""
    return str(target.get("file_name", target.get("image_id", "<unknown image>")))


def _require_pil(image: Any, target: Target, who: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"{_where(target)}: {who} expects a PIL image (place it before ToTensor), "
            f"got {type(image).__name__}"
        )
    return image


def _check_scale(scale: Sequence[int], what: str) -> Tuple[int, int]:
    if len(scale) != 2 or not all(int(s) == s and s > 0 for s in scale):
        raise ValueError(f"{what} must be two positive integers (short, long), got {scale!r}")
    return int(scale[0]), int(scale[1])


def rescale_size(w: int, h: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """Output ``(new_w, new_h)`` of a keep-ratio resize of a ``w x h`` image to ``scale``.

    ``scale`` is ``(short, long)`` (order-insensitive, as in mmcv): the factor is
    ``min(max(scale) / max(h, w), min(scale) / min(h, w))`` and sizes round half up.
    """
    long_target, short_target = max(scale), min(scale)
    factor = min(long_target / max(h, w), short_target / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def _scale_clip(boxes: np.ndarray, sx: float, sy: float, w: int, h: int) -> np.ndarray:
    """Boxes ``[K, 4]`` x1y1x2y2 scaled per axis and clipped to a ``w x h`` image."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


def _flip_boxes(boxes: np.ndarray, w: int) -> np.ndarray:
    """Horizontally flip boxes ``[K, 4]`` in a width-``w`` image: ``x1' = w - x2, x2' = w - x1``."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = boxes.copy()
    out[:, 0] = w - boxes[:, 2]
    out[:, 2] = w - boxes[:, 0]
    return out


class Compose:
    """Apply transforms in order: ``Compose([Resize(), ToTensor()])(image, target)``."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms: List[Transform] = list(transforms)

    def __call__(self, image: Any, target: Target) -> Tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Resize:
    """Keep-ratio resize of a PIL image and its boxes (see the module docstring for the math).

    ``scale``: ``(short, long)`` target, default ``(800, 1333)``. ``scales``: for multi-scale
    training, a list of such pairs; one is drawn uniformly with :func:`random.choice` per image.
    Give one of the two. Sets ``target["scale_factor"] = (sx, sy)`` and
    ``target["img_size"] = (new_h, new_w)``; scales and clips ``boxes`` and ``ignore_boxes``.
    """

    def __init__(
        self,
        *,
        scale: Optional[Sequence[int]] = None,
        scales: Optional[Sequence[Sequence[int]]] = None,
    ) -> None:
        if scale is not None and scales is not None:
            raise ValueError("Resize: give either scale or scales, not both")
        if scales is not None:
            if len(scales) == 0:
                raise ValueError("Resize: scales is empty")
            self.scales = [_check_scale(s, "Resize scales entry") for s in scales]
        else:
            scale = scale if scale is not None else (800, 1333)
            self.scales = [_check_scale(scale, "Resize scale")]

    def __call__(self, image: Any, target: Target) -> Tuple[Image.Image, Target]:
        image = _require_pil(image, target, "Resize")
        scale = self.scales[0] if len(self.scales) == 1 else random.choice(self.scales)
        w, h = image.size
        new_w, new_h = rescale_size(w, h, scale)
        image = image.resize((new_w, new_h), _BILINEAR)
        sx, sy = new_w / w, new_h / h
        target = dict(target)
        for key in ("boxes", "ignore_boxes"):
            if key in target:
                target[key] = _scale_clip(target[key], sx, sy, new_w, new_h)
        target["scale_factor"] = (sx, sy)
        target["img_size"] = (new_h, new_w)
        return image, target

    def __repr__(self) -> str:
        if len(self.scales) == 1:
            return f"Resize(scale={self.scales[0]})"
        return f"Resize(scales={self.scales})"


class RandomHorizontalFlip:
    """Flip a PIL image and its ``boxes``/``ignore_boxes`` with probability ``prob``.

    Sets ``target["flipped"]`` (bool). The draw is ``random.random() < prob``.
    """

    def __init__(self, *, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: prob must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __call__(self, image: Any, target: Target) -> Tuple[Image.Image, Target]:
        image = _require_pil(image, target, "RandomHorizontalFlip")
        target = dict(target)
        flip = random.random() < self.prob
        target["flipped"] = flip
        if flip:
            w = image.width
            image = image.transpose(_FLIP_LEFT_RIGHT)
            for key in ("boxes", "ignore_boxes"):
                if key in target:
                    target[key] = _flip_boxes(target[key], w)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"


class ToTensor:
    """PIL RGB image -> float32 tensor ``[3, H, W]`` with values 0..255; target arrays -> tensors.

    ``boxes`` float32 ``[N, 4]``, ``labels`` int64 ``[N]``, ``ignore_boxes`` float32 ``[M, 4]``
    (empty ``[0, 4]`` when absent). Sets ``img_size = (H, W)`` if no earlier transform did.
    """

    def __call__(self, image: Any, target: Target) -> Tuple[torch.Tensor, Target]:
        image = _require_pil(image, target, "ToTensor")
        if image.mode != "RGB":
            raise ValueError(
                f"{_where(target)}: ToTensor expects an RGB image, got mode {image.mode!r}"
            )
        array = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
        target = dict(target)
        for key, dtype, shape in (
            ("boxes", np.float32, (-1, 4)),
            ("labels", np.int64, (-1,)),
            ("ignore_boxes", np.float32, (-1, 4)),
        ):
            array = np.asarray(target.get(key, ()), dtype=dtype).reshape(shape)
            target[key] = torch.tensor(array)  # a copy: never alias a dataset's cached arrays
        if len(target["boxes"]) != len(target["labels"]):
            raise ValueError(
                f"{_where(target)}: {len(target['boxes'])} boxes but {len(target['labels'])} labels"
            )
        target.setdefault("img_size", (int(tensor.shape[1]), int(tensor.shape[2])))
        return tensor, target

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """``(x - mean) / std`` per channel on a float ``[3, H, W]`` tensor in RGB order, 0..255.

    ``to_rgb=False``: reverse the channels to BGR first (the model expects BGR); ``mean``/``std``
    are in the model's channel order and in 0..255 units.
    """

    def __init__(
        self,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = True,
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"Normalize: mean and std need 3 values, got {mean!r} and {std!r}")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: std must be positive, got {std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.to_rgb = bool(to_rgb)

    def __call__(self, image: Any, target: Target) -> Tuple[torch.Tensor, Target]:
        if not (isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3):
            raise TypeError(
                f"{_where(target)}: Normalize expects a [3, H, W] tensor (place it after ToTensor)"
            )
        if not self.to_rgb:
            image = image.flip(0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (image.float() - mean) / std, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std}, to_rgb={self.to_rgb})"


def build_transforms(
    *,
    scale: Sequence[int] = (800, 1333),
    flip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    to_rgb: bool = True,
    train: bool,
    train_scales: Optional[Sequence[Sequence[int]]] = None,
) -> Compose:
    """The standard pipeline.

    train: ``Resize`` (one of ``train_scales`` at random when given, else ``scale``) ->
    ``RandomHorizontalFlip(flip_prob)`` -> ``ToTensor`` -> ``Normalize``.
    eval: ``Resize(scale)`` -> ``ToTensor`` -> ``Normalize`` (no randomness).
    """
    if train and train_scales:
        resize = Resize(scales=train_scales)
    else:
        resize = Resize(scale=scale)
    steps: List[Transform] = [resize]
    if train:
        steps.append(RandomHorizontalFlip(prob=flip_prob))
    steps += [ToTensor(), Normalize(mean=mean, std=std, to_rgb=to_rgb)]
    return Compose(steps)


def pad_to_divisor(
    images: Sequence[torch.Tensor], divisor: int = 32, pad_value: float = 0.0
) -> torch.Tensor:
    """Stack images ``[C, Hi, Wi]`` into ``[B, C, H, W]``, padding bottom/right.

    ``H``/``W`` are the batch maxima rounded up to a multiple of ``divisor``; each image sits at
    the top-left. ``pad_value`` 0 after normalisation is the mean pixel.
    """
    if len(images) == 0:
        raise ValueError("pad_to_divisor: empty image list")
    if divisor < 1:
        raise ValueError(f"pad_to_divisor: divisor must be >= 1, got {divisor}")
    channels = images[0].shape[0]
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != channels:
            raise ValueError(
                f"pad_to_divisor: image {i} has shape {tuple(img.shape)}, "
                f"expected [{channels}, H, W]"
            )
    max_h = max(int(img.shape[1]) for img in images)
    max_w = max(int(img.shape[2]) for img in images)
    pad_h = -(-max_h // divisor) * divisor
    pad_w = -(-max_w // divisor) * divisor
    batch = images[0].new_full((len(images), channels, pad_h, pad_w), pad_value)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]].copy_(img)
    return batch
