"""CocoDetection / load_image: good input decodes correctly, bad input fails naming the file."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.coco import CocoDetection, load_image
from training.data.errors import AnnotationError, DatasetError, DatasetWarning, ImageError


def write_image(path: Path, size=(64, 48), color=(120, 60, 30), mode="RGB", **save_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save_kw)
    return path


def write_coco(path: Path, images, annotations, categories=None, drop=()) -> Path:
    data = {
        "images": images,
        "annotations": annotations,
        "categories": categories if categories is not None else [{"id": 1, "name": "thing"}],
    }
    for key in drop:
        del data[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def image_record(i: int, w=64, h=48) -> dict:
    return {"id": i, "file_name": f"{i:06d}.jpg", "width": w, "height": h}


def ann(i: int, image_id: int, bbox, category_id=1, **extra) -> dict:
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


@pytest.fixture
def dataset_dir(tmp_path: Path):
    """Three 64x48 JPEGs; image 3 has no annotations; categories 3/10/7 (non-contiguous)."""
    img_dir = tmp_path / "images"
    for i in (1, 2, 3):
        write_image(img_dir / f"{i:06d}.jpg")
    cats = [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    anns = [  # not grouped by image, as in real files
        ann(3, 2, [0, 0, 8, 8], category_id=7),
        ann(1, 1, [10, 5, 20, 10], category_id=10),
        ann(4, 2, [1, 2, 30, 20], category_id=3, iscrowd=1),
        ann(2, 1, [50, 40, 30, 30], category_id=3),  # past the right and bottom edges: clipped
    ]
    ann_file = write_coco(tmp_path / "ann.json", [image_record(i) for i in (1, 2, 3)], anns, cats)
    return ann_file, img_dir


# ----------------------------------------------------------------- targets and label mapping


def test_contiguous_labels_from_non_contiguous_category_ids(dataset_dir):
    ds = CocoDetection(*dataset_dir)
    assert ds.cat_ids == [3, 7, 10]
    assert ds.class_names == ["three", "seven", "ten"]
    assert ds.num_classes == 3
    assert ds.cat_id_to_label == {3: 0, 7: 1, 10: 2}
    assert ds.label_to_cat_id == {0: 3, 1: 7, 2: 10}
    _, target = ds[0]
    assert target["labels"].dtype == np.int64
    assert target["labels"].tolist() == [2, 0]  # category 10 -> 2, category 3 -> 0


def test_boxes_xywh_to_xyxy_clipped_and_target_fields(dataset_dir):
    ds = CocoDetection(*dataset_dir)
    image, target = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 48)
    assert target["boxes"].dtype == np.float32 and target["boxes"].shape == (2, 4)
    np.testing.assert_array_equal(target["boxes"], [[10, 5, 30, 15], [50, 40, 64, 48]])
    assert target["image_id"] == 1 and isinstance(target["image_id"], int)
    assert target["file_name"] == "000001.jpg"
    assert target["orig_size"] == (48, 64)
    assert target["ignore_boxes"].shape == (0, 4) and target["ignore_boxes"].dtype == np.float32


def test_crowd_boxes_become_ignore_boxes_not_targets(dataset_dir):
    _, target = CocoDetection(*dataset_dir)[1]
    np.testing.assert_array_equal(target["boxes"], [[0, 0, 8, 8]])
    assert target["labels"].tolist() == [1]
    np.testing.assert_array_equal(target["ignore_boxes"], [[1, 2, 31, 22]])


def test_targets_are_copies(dataset_dir):
    ds = CocoDetection(*dataset_dir)
    _, target = ds[0]
    target["boxes"][:] = -1
    target["labels"][:] = -1
    _, again = ds[0]
    assert again["boxes"][0].tolist() == [10, 5, 30, 15] and again["labels"].tolist() == [2, 0]


def test_len_aspect_ratios_and_filter_empty(dataset_dir, tmp_path):
    ds = CocoDetection(*dataset_dir)
    assert len(ds) == 3 and ds.ids == [1, 2, 3]
    assert ds.aspect_ratios() == pytest.approx([0.75, 0.75, 0.75])
    filtered = CocoDetection(*dataset_dir, filter_empty=True)
    assert len(filtered) == 2 and filtered.ids == [1, 2]
    assert [filtered[i][1]["image_id"] for i in range(2)] == [1, 2]
    assert filtered[-1][1]["image_id"] == 2
    with pytest.raises(IndexError):
        filtered[2]


def test_filter_empty_drops_images_with_only_crowd_boxes(tmp_path):
    img_dir = tmp_path / "img"
    write_image(img_dir / "000001.jpg")
    write_image(img_dir / "000002.jpg", size=(30, 60))
    ann_file = write_coco(tmp_path / "a.json", [image_record(1), image_record(2, 30, 60)],
                          [ann(1, 1, [0, 0, 5, 5], iscrowd=1), ann(2, 2, [1, 1, 5, 5])])
    ds = CocoDetection(ann_file, img_dir, filter_empty=True)
    assert ds.ids == [2] and ds.aspect_ratios() == [2.0]


def test_transforms_receive_image_and_target(dataset_dir):
    seen = []

    def transforms(image, target):
        seen.append((image.size, target["image_id"]))
        return "image", {**target, "extra": True}

    ds = CocoDetection(*dataset_dir, transforms=transforms)
    image, target = ds[1]
    assert image == "image" and target["extra"] and target["image_id"] == 2
    assert seen == [((64, 48), 2)]


def test_degenerate_boxes_dropped_with_one_warning_counting_them(tmp_path):
    img_dir = tmp_path / "img"
    write_image(img_dir / "000001.jpg")
    anns = [
        ann(1, 1, [10, 10, 0.5, 20]),  # too narrow
        ann(2, 1, [100, 10, 10, 10]),  # entirely right of the 64 px wide image
        ann(3, 1, [10, 10, 10, -4]),  # negative height
        ann(4, 1, [5, 5, 10, 10]),
    ]
    ann_file = write_coco(tmp_path / "deg.json", [image_record(1)], anns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(ann_file, img_dir)
    dataset_warnings = [w for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(dataset_warnings) == 1
    text = str(dataset_warnings[0].message)
    assert "dropped 3 degenerate box" in text and "deg.json" in text
    np.testing.assert_array_equal(ds[0][1]["boxes"], [[5, 5, 15, 15]])


# ----------------------------------------------------------------- image decoding


def test_exif_rotated_jpeg_loads_rotated(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    top, bottom = loaded.getpixel((10, 5)), loaded.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 50  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 50


@pytest.mark.parametrize(
    "mode, color, suffix, expected",
    [
        ("L", 100, ".png", (100, 100, 100)),
        ("RGBA", (10, 20, 30, 0), ".png", (10, 20, 30)),
        ("LA", (70, 255), ".png", (70, 70, 70)),
        ("1", 1, ".png", (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), ".jpg", (255, 255, 255)),
    ],
)
def test_non_rgb_images_come_back_rgb(tmp_path, mode, color, suffix, expected):
    path = write_image(tmp_path / f"img{suffix}", size=(8, 6), color=color, mode=mode)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (8, 6)
    assert loaded.getpixel((3, 3)) == pytest.approx(expected, abs=2)


def test_palette_image_comes_back_rgb(tmp_path):
    image = Image.new("P", (8, 6), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    path = tmp_path / "pal.png"
    image.save(path, transparency=0)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (200, 100, 50)


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def noisy_jpeg(path: Path, size=(64, 48)) -> Path:
    """A JPEG with enough entropy data that cutting it in half truncates the scan."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_truncated_jpeg_raises_naming_the_file(tmp_path):
    path = truncate(noisy_jpeg(tmp_path / "cut.jpg"))
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)
    assert info.value.path == str(path)


def test_garbage_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match="garbage.jpg.*cannot decode image"):
        load_image(path)


def test_missing_image_file_raises_naming_the_file(tmp_path):
    with pytest.raises(ImageError, match=r"image file not found: .*nothere\.jpg"):
        load_image(tmp_path / "nothere.jpg")


# ----------------------------------------------------------------- bad annotation files


def test_missing_annotation_file(tmp_path):
    path = tmp_path / "annotations" / "instances_missing.json"
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path)
    assert "annotation file not found" in str(info.value) and str(path) in str(info.value)


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path)
    message = str(info.value)
    assert str(path) in message and "malformed JSON" in message
    assert "line 3, column 19" in message


def test_top_level_not_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    with pytest.raises(AnnotationError, match=r"list\.json: top level must be a JSON object"):
        CocoDetection(path, tmp_path)


def test_missing_top_level_key(tmp_path):
    path = write_coco(tmp_path / "a.json", [], [], drop=("annotations",))
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path)
    assert str(path) in str(info.value) and "missing top-level key 'annotations'" in str(info.value)


def test_missing_annotation_key_names_record_and_key(tmp_path):
    bad = {"id": 17, "image_id": 1, "category_id": 1}  # no bbox
    path = write_coco(tmp_path / "a.json", [image_record(1)], [bad])
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path, check_images=False)
    assert str(path) in str(info.value)
    assert "annotation id 17: missing key 'bbox'" in str(info.value)


def test_missing_image_and_category_keys(tmp_path):
    image = {"id": 3, "file_name": "a.jpg", "height": 10}  # no width
    path = write_coco(tmp_path / "a.json", [image], [], [{"id": 1}])  # category without name
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path, check_images=False)
    message = str(info.value)
    assert "2 problems in" in message and str(path) in message
    assert "image id 3: missing key 'width'" in message
    assert "category id 1: missing key 'name'" in message


def test_record_without_id_is_named_by_position(tmp_path):
    path = write_coco(tmp_path / "a.json", [image_record(1)], [{"image_id": 1}])
    expected = r"a\.json: annotations\[0\]: missing keys 'id', 'category_id', 'bbox'"
    with pytest.raises(AnnotationError, match=expected):
        CocoDetection(path, tmp_path, check_images=False)


def test_unknown_image_id_names_annotation(tmp_path):
    path = write_coco(tmp_path / "a.json", [image_record(1)], [ann(5, 999, [0, 0, 4, 4])])
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path, check_images=False)
    assert str(path) in str(info.value)
    assert "annotation id 5: unknown image_id 999" in str(info.value)


def test_unknown_category_id_names_annotation(tmp_path):
    path = write_coco(tmp_path / "a.json", [image_record(1)],
                      [ann(8, 1, [0, 0, 4, 4], category_id=42)])
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path, check_images=False)
    assert str(path) in str(info.value)
    assert "annotation id 8: unknown category_id 42" in str(info.value)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, "3", 4], "1 2 3 4", [1, 2, 3, None]])
def test_bad_bbox_names_annotation(tmp_path, bbox):
    path = write_coco(tmp_path / "a.json", [image_record(1)], [ann(7, 1, bbox)])
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path, check_images=False)
    assert str(path) in str(info.value) and "annotation id 7: 'bbox' must be 4" in str(info.value)


def test_duplicate_and_bad_values(tmp_path):
    images = [image_record(1), image_record(1), {**image_record(2), "width": 0}]
    path = write_coco(tmp_path / "a.json", images, [ann(1, 1, [0, 0, 4, 4], iscrowd=2)])
    with pytest.raises(AnnotationError) as info:
        CocoDetection(path, tmp_path, check_images=False)
    message = str(info.value)
    assert "image id 1: duplicate image id" in message
    assert "image id 2 (000002.jpg): 'width' must be a positive number, got 0" in message
    assert "annotation id 1: 'iscrowd' must be 0 or 1, got 2" in message


def test_annotation_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        CocoDetection(tmp_path / "nope.json", tmp_path)


# ----------------------------------------------------------------- bad images


def test_missing_image_files_checked_up_front(dataset_dir):
    ann_file, img_dir = dataset_dir
    (img_dir / "000002.jpg").unlink()
    (img_dir / "000003.jpg").unlink()
    with pytest.raises(ImageError) as info:
        CocoDetection(ann_file, img_dir)
    message = str(info.value)
    assert "2 of 3 image files" in message and "missing" in message
    assert "000002.jpg" in message and "000003.jpg" in message and "000001.jpg" not in message


def test_missing_image_without_up_front_check_fails_at_getitem(dataset_dir):
    ann_file, img_dir = dataset_dir
    (img_dir / "000002.jpg").unlink()
    ds = CocoDetection(ann_file, img_dir, check_images=False)
    with pytest.raises(ImageError, match=r"image file not found: .*000002\.jpg"):
        ds[1]


def test_corrupt_image_raises_naming_the_file(dataset_dir):
    ann_file, img_dir = dataset_dir
    truncate(noisy_jpeg(img_dir / "000002.jpg"))
    ds = CocoDetection(ann_file, img_dir)
    assert ds[0][1]["image_id"] == 1
    with pytest.raises(DatasetError) as info:
        ds[1]
    assert "000002.jpg" in str(info.value) and "cannot decode image" in str(info.value)


def test_skip_bad_images_logs_and_returns_next_good_sample(dataset_dir, caplog):
    ann_file, img_dir = dataset_dir
    truncate(noisy_jpeg(img_dir / "000002.jpg"))
    ds = CocoDetection(ann_file, img_dir, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="training.data.coco"):
        _, target = ds[1]
    assert target["image_id"] == 3
    assert len(caplog.records) == 1
    assert "000002.jpg" in caplog.text and "skipping unreadable image" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.data.coco"):
        assert ds[1][1]["image_id"] == 3  # known bad: skipped without decoding or logging again
    assert not caplog.records


def test_skip_bad_images_wraps_around_and_fails_when_nothing_readable(tmp_path):
    img_dir = tmp_path / "img"
    for i in (1, 2):
        truncate(noisy_jpeg(img_dir / f"{i:06d}.jpg"))
    ann_file = write_coco(tmp_path / "a.json", [image_record(1), image_record(2)], [])
    ds = CocoDetection(ann_file, img_dir, skip_bad_images=True)
    with pytest.raises(DatasetError, match="none of the 2 images"):
        ds[1]


def test_verify_images_lists_corrupt_and_missing(dataset_dir):
    ann_file, img_dir = dataset_dir
    truncate(noisy_jpeg(img_dir / "000001.jpg"))
    (img_dir / "000003.jpg").unlink()
    ds = CocoDetection(ann_file, img_dir, check_images=False)
    found = ds.verify_images(workers=2)
    assert [Path(f).name for f, _ in found] == ["000001.jpg", "000003.jpg"]
    assert "cannot decode image" in found[0][1]
    assert found[1][1] == "image file not found"


def test_decoded_size_mismatch_logs_a_warning(tmp_path, caplog):
    img_dir = tmp_path / "img"
    write_image(img_dir / "000001.jpg", size=(48, 64))  # record says 64x48
    ann_file = write_coco(tmp_path / "a.json", [image_record(1)], [ann(1, 1, [0, 0, 10, 10])])
    ds = CocoDetection(ann_file, img_dir)
    with caplog.at_level(logging.WARNING, logger="training.data.coco"):
        _, target = ds[0]
        ds[0]
    assert target["orig_size"] == (64, 48)
    assert len(caplog.records) == 1  # once per image
    assert "000001.jpg" in caplog.text and "swapped" in caplog.text
