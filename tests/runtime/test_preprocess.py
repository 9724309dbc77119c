"""runtime.preprocess (NumPy + Pillow) gives the tensors of training's eval transforms + padding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.preprocess import (
    ImageLoadError,
    ImageMeta,
    boxes_to_original,
    load_image,
    mean_pixel_rgb,
    normalize,
    preprocess,
    rescale_size,
)
from training.data.coco import load_image as training_load_image
from training.data.errors import ImageError
from training.data.transforms import Compose, Resize, ToTensor, build_transforms, pad_to_divisor
from training.data.transforms import rescale_size as training_rescale_size
from training.evaluation.inference import predictions_to_original

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
CAFFE_MEAN = (103.53, 116.28, 123.675)  # BGR order, to_rgb=False
CAFFE_STD = (1.0, 1.0, 1.0)


def _noise(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Files in the modes the loading rule has to handle: EXIF-rotated JPEG, grayscale, RGBA,
    palette, CMYK, 16-bit grayscale."""
    d = tmp_path_factory.mktemp("images")
    files = {}
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    Image.fromarray(_noise(60, 40, 0)).save(d / "exif6.jpg", exif=exif.tobytes(), quality=95)
    files["exif"] = d / "exif6.jpg"
    Image.fromarray(_noise(50, 70, 1, channels=1), "L").save(d / "gray.png")
    files["gray"] = d / "gray.png"
    Image.fromarray(_noise(45, 33, 2, channels=4), "RGBA").save(d / "rgba.png")
    files["rgba"] = d / "rgba.png"
    Image.fromarray(_noise(64, 48, 3)).convert("P", palette=Image.ADAPTIVE).save(d / "palette.png")
    files["palette"] = d / "palette.png"
    Image.fromarray(_noise(30, 50, 4)).convert("CMYK").save(d / "cmyk.jpg")
    files["cmyk"] = d / "cmyk.jpg"
    Image.fromarray(_noise(41, 29, 5, channels=1).astype(np.uint16) * 250).save(d / "gray16.png")
    files["gray16"] = d / "gray16.png"
    Image.fromarray(_noise(333, 100, 6)).save(d / "wide.png")
    files["wide"] = d / "wide.png"
    return files


# ------------------------------------------------------------------------------ loading rule
@pytest.mark.parametrize("kind", ["exif", "gray", "rgba", "palette", "cmyk", "gray16", "wide"])
def test_load_image_matches_training_loader(image_files, kind):
    ours = load_image(image_files[kind])
    theirs = training_load_image(image_files[kind])
    assert ours.mode == "RGB" and ours.size == theirs.size
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_load_image_applies_exif_orientation(image_files):
    assert load_image(image_files["exif"]).size == (40, 60)  # stored 60x40, displayed rotated


def test_load_image_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg: cannot decode image") as info:
        load_image(bad)
    assert info.value.path == str(bad) and "cannot decode" in info.value.reason
    with pytest.raises(ImageLoadError, match="image file not found: .*missing.png"):
        load_image(tmp_path / "missing.png")
    # training's loader refuses the same file, so both rules agree on what is an image
    with pytest.raises(ImageError):
        training_load_image(bad)


def test_truncated_image_is_rejected(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_noise(64, 64, 7)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(path)


# ------------------------------------------------------------------------------ resize rule
def test_rescale_size_matches_training():
    rng = np.random.default_rng(0)
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(1, 3000, size=2))
        scale = tuple(int(v) for v in rng.integers(16, 1400, size=2))
        assert rescale_size(w, h, scale) == training_rescale_size(w, h, scale), (w, h, scale)


# ------------------------------------------------------------------------------ batch tensors
def _training_unnormalised(image: Image.Image, scale):
    tensor, target = Compose([Resize(scale=scale), ToTensor()])(image, {"file_name": "x"})
    return tensor, target


CASES = [
    # (image kinds in one batch, scale, pad divisor)
    (["exif", "gray", "rgba"], (320, 320), 32),
    (["palette", "wide"], (64, 100), 32),  # 333x100 downscaled: Pillow's widened bilinear support
    (["cmyk", "gray16"], (800, 1333), 32),  # upscaled a lot
    (["wide", "exif"], (200, 333), 1),  # no padding divisor
    (["gray"], (37, 53), 16),  # odd sizes
]


@pytest.mark.parametrize("kinds,scale,divisor", CASES)
def test_batch_equals_training_before_normalisation(image_files, kinds, scale, divisor):
    pils = [training_load_image(image_files[k]) for k in kinds]
    pad = mean_pixel_rgb(MEAN, True)
    batch, metas = preprocess([image_files[k] for k in kinds], scale=scale, pad_divisor=divisor, pad_pixel=pad)
    expected = [_training_unnormalised(p, scale) for p in pils]
    reference = pad_to_divisor([t for t, _ in expected], divisor, pad_value=-1.0).numpy()
    assert batch.dtype == np.float32 and batch.shape == reference.shape
    assert batch.shape[2] % divisor == 0 and batch.shape[3] % divisor == 0
    for i, (tensor, target) in enumerate(expected):
        h, w = tensor.shape[1:]
        np.testing.assert_array_equal(batch[i, :, :h, :w], tensor.numpy())  # bit-identical pixels
        assert metas[i].img_size == target["img_size"] == (h, w)
        assert metas[i].scale_factor == target["scale_factor"]
        assert metas[i].orig_size == (pils[i].height, pils[i].width)
        # padding: the mean pixel, RGB order
        padded = batch[i][:, reference[i, 0] == -1.0]
        np.testing.assert_array_equal(padded, np.broadcast_to(np.float32(pad)[:, None], padded.shape))


@pytest.mark.parametrize("kinds,scale,divisor", CASES)
@pytest.mark.parametrize("mean,std,to_rgb", [(MEAN, STD, True), (CAFFE_MEAN, CAFFE_STD, False)])
def test_batch_equals_training_after_normalisation(image_files, kinds, scale, divisor, mean, std, to_rgb):
    transforms = build_transforms(scale=scale, mean=mean, std=std, to_rgb=to_rgb, train=False)
    tensors = [transforms(training_load_image(image_files[k]), {"file_name": k})[0] for k in kinds]
    reference = pad_to_divisor(tensors, divisor).numpy()  # pads 0 after normalisation
    batch, _ = preprocess(
        [image_files[k] for k in kinds], scale=scale, pad_divisor=divisor, pad_pixel=mean_pixel_rgb(mean, to_rgb)
    )
    ours = normalize(batch, mean=mean, std=std, to_rgb=to_rgb)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
    assert np.abs(ours).max() > 1.0  # not trivially all-zero


def test_mean_pixel_rgb_order():
    assert mean_pixel_rgb(MEAN, True) == MEAN
    assert mean_pixel_rgb(CAFFE_MEAN, False) == (123.675, 116.28, 103.53)
    with pytest.raises(ValueError, match="3 values"):
        mean_pixel_rgb((1.0, 2.0), True)


def test_min_shape_pads_further():
    batch, metas = preprocess([_noise(64, 48, 0)], scale=(48, 64), pad_divisor=32, min_shape=(100, 130))
    assert batch.shape == (1, 3, 128, 160)
    assert metas[0].img_size == (48, 64)
    assert (batch[0, :, 48:, :] == 0).all() and (batch[0, :, :, 64:] == 0).all()


# ------------------------------------------------------------------------------ in-memory inputs
def test_arrays_and_pil_images_follow_the_file_rule(image_files):
    rgba = _noise(45, 33, 2, channels=4)
    gray = _noise(50, 70, 1, channels=1)
    rgb = _noise(40, 30, 8)
    inputs = [rgba, gray, gray[:, :, None], rgb, Image.fromarray(rgba, "RGBA"), Image.fromarray(gray, "L")]
    batch, metas = preprocess(inputs, scale=(64, 64), pad_divisor=32)
    files, _ = preprocess([image_files["rgba"], image_files["gray"], image_files["gray"]], scale=(64, 64), pad_divisor=32)
    np.testing.assert_array_equal(batch[0], files[0])  # RGBA array == RGBA file (alpha dropped)
    np.testing.assert_array_equal(batch[1], files[1])  # grayscale array == grayscale file
    np.testing.assert_array_equal(batch[2], files[1])
    np.testing.assert_array_equal(batch[4], batch[0])
    np.testing.assert_array_equal(batch[5], batch[1])
    assert metas[3].orig_size == (30, 40)


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((10, 10, 3), np.float32), r"images\[1\]: array images must be uint8"),
        (np.zeros((10, 10, 2), np.uint8), r"images\[1\]: array images must be .*got shape \[10, 10, 2\]"),
        (np.zeros((2, 10, 10, 3), np.uint8), r"images\[1\]: array images must be"),
        (12, r"images\[1\]: expected a file path, PIL image or uint8 array, got int"),
    ],
)
def test_bad_in_memory_images_are_named(bad, message):
    with pytest.raises(ImageLoadError, match=message):
        preprocess([np.zeros((8, 8, 3), np.uint8), bad], scale=(32, 32))


def test_preprocess_argument_errors():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="empty image list"):
        preprocess([], scale=(32, 32))
    with pytest.raises(ValueError, match="scale must be two positive integers"):
        preprocess([img], scale=(32, 0))
    with pytest.raises(ValueError, match="pad_divisor must be >= 1"):
        preprocess([img], scale=(32, 32), pad_divisor=0)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        normalize(np.zeros((3, 8, 8), np.float32), mean=MEAN, std=STD)


# ------------------------------------------------------------------------------ boxes back
def test_boxes_to_original_matches_training_mapping():
    rng = np.random.default_rng(1)
    for w, h, scale in [(40, 30, (64, 100)), (333, 100, (64, 100)), (500, 700, (320, 320))]:
        nw, nh = rescale_size(w, h, scale)
        meta = ImageMeta((h, w), (nh, nw), (nw / w, nh / h))
        xy = rng.uniform(-5, max(nw, nh) + 5, size=(20, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 40, size=(20, 2))], axis=1).astype(np.float32)
        target = {"scale_factor": meta.scale_factor, "orig_size": (h, w), "img_size": (nh, nw)}
        expected = predictions_to_original(
            {"boxes": torch.from_numpy(boxes), "scores": torch.ones(20), "labels": torch.zeros(20)}, target
        )["boxes"]
        ours = boxes_to_original(boxes, meta)
        np.testing.assert_array_equal(ours, expected)
        assert ours.min() >= 0 and ours[:, 2].max() <= w and ours[:, 3].max() <= h
