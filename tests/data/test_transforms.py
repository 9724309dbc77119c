"""Transforms: resize rules, flip geometry, normalisation, padding; boxes stay on their pixels."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    build_transforms,
    pad_to_divisor,
    rescale_size,
)

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
BOX_COLOUR = np.array([250, 20, 230], dtype=np.float32)


def _target(boxes, w, h, ignore=None):
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.arange(len(boxes), dtype=np.int64),
        "ignore_boxes": np.asarray(ignore or [], dtype=np.float32).reshape(-1, 4),
        "image_id": 7,
        "file_name": "img7.jpg",
        "orig_size": (h, w),
    }


def _box_image(w, h, box, seed=0):
    """Noisy dark background (values 0..90) with the pixels of integer box x1y1x2y2 filled."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 90, size=(h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = BOX_COLOUR.astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# ------------------------------------------------------------------------------------ resize
@pytest.mark.parametrize(
    "w,h,scale,expected",
    [
        (640, 480, (800, 1333), (1067, 800)),  # short side binds
        (2000, 500, (800, 1333), (1333, 333)),  # long side cap binds
        (480, 640, (800, 1333), (800, 1067)),  # portrait
        (211, 137, (100, 120), (120, 78)),  # downscale, long side binds: 137 * 120/211 = 77.9
        (1333, 800, (800, 1333), (1333, 800)),  # already at scale
        (640, 480, (1333, 800), (1067, 800)),  # scale order does not matter (as in mmcv)
    ],
)
def test_rescale_size_known_cases(w, h, scale, expected):
    assert rescale_size(w, h, scale) == expected
    img, tgt = Resize(scale=scale)(Image.new("RGB", (w, h)), _target([], w, h))
    assert img.size == expected
    assert tgt["img_size"] == (expected[1], expected[0])
    assert tgt["scale_factor"] == (expected[0] / w, expected[1] / h)


def test_resize_scales_boxes_per_axis_and_clips():
    w, h = 640, 480
    boxes = [[10, 20, 330, 470], [600, 400, 700, 500]]  # second pokes outside the image
    target = _target(boxes, w, h, ignore=[[0, 0, 64, 48]])
    img, tgt = Resize(scale=(800, 1333))(Image.new("RGB", (w, h)), target)
    sx, sy = 1067 / 640, 800 / 480
    np.testing.assert_allclose(tgt["boxes"][0], [10 * sx, 20 * sy, 330 * sx, 470 * sy], rtol=1e-6)
    np.testing.assert_allclose(tgt["boxes"][1], [600 * sx, 400 * sy, 1067, 800], rtol=1e-6)
    np.testing.assert_allclose(tgt["ignore_boxes"][0], [0, 0, 64 * sx, 48 * sy], rtol=1e-6)
    assert tgt["boxes"].dtype == np.float32


def test_resize_multiscale_draws_from_scales():
    resize = Resize(scales=[(100, 1000), (200, 1000)])
    random.seed(0)
    sizes = {resize(Image.new("RGB", (400, 300)), _target([], 400, 300))[0].size for _ in range(30)}
    assert sizes == {(133, 100), (267, 200)}


def test_resize_bad_arguments():
    with pytest.raises(ValueError, match="either scale or scales"):
        Resize(scale=(800, 1333), scales=[(800, 1333)])
    with pytest.raises(ValueError, match="two positive integers"):
        Resize(scale=(800,))
    with pytest.raises(TypeError, match="img7.jpg.*PIL image"):
        Resize()(torch.zeros(3, 4, 4), _target([], 4, 4))


# -------------------------------------------------------------------------------------- flip
def test_flip_exact_pixels_and_boxes():
    w, h, box = 211, 137, (30, 40, 90, 100)
    target = _target([box], w, h, ignore=[[0, 0, 10, 5]])
    img, tgt = RandomHorizontalFlip(prob=1.0)(_box_image(w, h, box), target)
    assert tgt["flipped"] is True
    np.testing.assert_array_equal(tgt["boxes"], [[w - 90, 40, w - 30, 100]])
    np.testing.assert_array_equal(tgt["ignore_boxes"], [[w - 10, 0, w, 5]])
    arr = np.asarray(img)
    x1, y1, x2, y2 = tgt["boxes"][0].astype(int)
    assert (arr[y1:y2, x1:x2] == BOX_COLOUR).all()
    # the columns right next to the flipped box are background, so no off-by-one
    assert not (arr[y1:y2, x1 - 1] == BOX_COLOUR).all(axis=1).any()
    assert not (arr[y1:y2, x2] == BOX_COLOUR).all(axis=1).any()


def test_flip_prob_zero_keeps_everything():
    w, h, box = 50, 40, (1, 2, 30, 20)
    image = _box_image(w, h, box)
    img, tgt = RandomHorizontalFlip(prob=0.0)(image, _target([box], w, h))
    assert tgt["flipped"] is False
    np.testing.assert_array_equal(np.asarray(img), np.asarray(image))
    np.testing.assert_array_equal(tgt["boxes"], [box])


# ------------------------------------------------------------------- boxes cover their pixels
def _denormalise(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x * std + mean).permute(1, 2, 0).numpy()  # [H, W, 3] RGB, 0..255


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(
    "scale",
    [
        (800, 1333),  # upscale x5.8, short side binds
        (200, 250),  # upscale, long side cap binds (250/211 < 200/137)
        (100, 120),  # downscale x0.57, long side cap binds
    ],
)
@pytest.mark.parametrize(
    "size,box", [((211, 137), (37, 29, 141, 101)), ((137, 211), (20, 50, 97, 190))]
)
def test_box_covers_same_pixels_after_resize_flip_pad(size, box, scale, flip):
    w, h = size
    transforms = build_transforms(
        scale=scale, flip_prob=float(flip), mean=MEAN, std=STD, to_rgb=True, train=True
    )
    image, tgt = transforms(_box_image(w, h, box), _target([box], w, h))
    batch = pad_to_divisor([image], 32)
    new_h, new_w = tgt["img_size"]
    assert tuple(image.shape) == (3, new_h, new_w)
    assert batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
    assert tgt["flipped"] is flip

    pixels = _denormalise(batch[0])
    is_box = np.abs(pixels - BOX_COLOUR).max(axis=2) < 40  # [H, W]
    bx1, by1, bx2, by2 = tgt["boxes"][0].tolist()
    m = 1.5  # interpolation margin, in output pixels
    xs_in = np.arange(int(np.ceil(bx1 + m)), int(np.floor(bx2 - m)))
    ys_in = np.arange(int(np.ceil(by1 + m)), int(np.floor(by2 - m)))
    assert len(xs_in) > 10 and len(ys_in) > 10
    assert is_box[np.ix_(ys_in, xs_in)].mean() > 0.99

    # 2-pixel bands just outside each side of the box (beyond the margin), within the image
    left = np.arange(int(np.floor(bx1 - m)) - 2, int(np.floor(bx1 - m)))
    right = np.arange(int(np.ceil(bx2 + m)), int(np.ceil(bx2 + m)) + 2)
    top = np.arange(int(np.floor(by1 - m)) - 2, int(np.floor(by1 - m)))
    bottom = np.arange(int(np.ceil(by2 + m)), int(np.ceil(by2 + m)) + 2)
    for band in (left, right):
        assert band.min() >= 0 and band.max() < new_w
        assert not is_box[np.ix_(ys_in, band)].any()
    for band in (top, bottom):
        assert band.min() >= 0 and band.max() < new_h
        assert not is_box[np.ix_(band, xs_in)].any()
    # padding is zero (the mean pixel) and carries no box colour
    assert (batch[0, :, new_h:, :] == 0).all() and (batch[0, :, :, new_w:] == 0).all()


# ------------------------------------------------------------------ to tensor and normalise
def test_to_tensor_layout_and_target_types():
    arr = np.zeros((5, 7, 3), dtype=np.uint8)
    arr[1, 2] = (10, 20, 30)
    image, tgt = ToTensor()(Image.fromarray(arr), _target([[0, 0, 3, 3]], 7, 5))
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 5, 7)
    assert image[:, 1, 2].tolist() == [10.0, 20.0, 30.0]
    assert tgt["boxes"].dtype == torch.float32 and tuple(tgt["boxes"].shape) == (1, 4)
    assert tgt["labels"].dtype == torch.int64 and tuple(tgt["labels"].shape) == (1,)
    assert tgt["ignore_boxes"].dtype == torch.float32 and tuple(tgt["ignore_boxes"].shape) == (0, 4)
    assert tgt["img_size"] == (5, 7)


def test_to_tensor_rejects_non_rgb():
    with pytest.raises(ValueError, match="img7.jpg.*RGB.*'L'"):
        ToTensor()(Image.new("L", (4, 4)), _target([], 4, 4))


def test_normalize_rgb_and_bgr_exact_on_constant_image():
    rgb = (10.0, 100.0, 200.0)
    image = torch.tensor(rgb).view(3, 1, 1).expand(3, 4, 6).clone()
    mean, std = (1.0, 2.0, 3.0), (2.0, 4.0, 8.0)
    out, _ = Normalize(mean=mean, std=std, to_rgb=True)(image, {})
    assert out[:, 2, 3].tolist() == [(10 - 1) / 2, (100 - 2) / 4, (200 - 3) / 8]
    out_bgr, _ = Normalize(mean=mean, std=std, to_rgb=False)(image, {})
    # model order is BGR: channel 0 is blue, normalised with mean[0]/std[0]
    assert out_bgr[:, 2, 3].tolist() == [(200 - 1) / 2, (100 - 2) / 4, (10 - 3) / 8]
    assert (out_bgr == out_bgr[:, :1, :1]).all()


def test_normalize_defaults_are_imagenet():
    out, _ = Normalize()(torch.tensor(MEAN).view(3, 1, 1).clone(), {})
    assert torch.allclose(out, torch.zeros(3, 1, 1), atol=1e-6)


def test_compose_and_eval_pipeline_has_no_flip():
    common = dict(scale=(32, 64), flip_prob=1.0, mean=MEAN, std=STD, to_rgb=True)
    tfm = build_transforms(**common, train=False)
    assert [type(t) for t in tfm.transforms] == [Resize, ToTensor, Normalize]
    train = build_transforms(**common, train=True, train_scales=[(16, 64), (24, 64)])
    steps = [type(t) for t in train.transforms]
    assert steps == [Resize, RandomHorizontalFlip, ToTensor, Normalize]
    assert train.transforms[0].scales == [(16, 64), (24, 64)]
    image, tgt = tfm(Image.new("RGB", (100, 50)), _target([], 100, 50))
    assert tuple(image.shape) == (3, 32, 64) and "flipped" not in tgt
    assert isinstance(Compose([]), Compose)


# ------------------------------------------------------------------------------------- pad
def test_pad_to_divisor_sizes_content_and_zero_padding():
    a = torch.rand(3, 33, 50) + 1.0
    b = torch.rand(3, 20, 70) + 1.0
    batch = pad_to_divisor([a, b], divisor=32)
    assert tuple(batch.shape) == (2, 3, 64, 96)
    assert torch.equal(batch[0, :, :33, :50], a) and torch.equal(batch[1, :, :20, :70], b)
    assert (batch[0, :, 33:, :] == 0).all() and (batch[0, :, :, 50:] == 0).all()
    assert (batch[1, :, 20:, :] == 0).all() and (batch[1, :, :, 70:] == 0).all()
    assert tuple(pad_to_divisor([torch.ones(3, 64, 32)], divisor=32).shape) == (1, 3, 64, 32)
    assert (pad_to_divisor([a], divisor=8, pad_value=-1.0)[0, :, 33:, :] == -1).all()


def test_pad_to_divisor_bad_input():
    with pytest.raises(ValueError, match="empty"):
        pad_to_divisor([])
    with pytest.raises(ValueError, match="image 1 has shape"):
        pad_to_divisor([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
