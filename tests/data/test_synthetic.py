"""Tests of the built-in synthetic COCO dataset (training/data/synthetic.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from training.data.synthetic import AREA_LARGE, AREA_SMALL, CATEGORIES, generate_dataset, main

NUM_TRAIN, NUM_VAL = 40, 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(out, NUM_TRAIN, NUM_VAL, seed=0, image_size=(320, 320))


def _load(result: dict, split: str) -> dict:
    return json.loads(Path(result[split]["annotations"]).read_text())


def _shoelace(flat: list[float]) -> float:
    pts = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.mark.parametrize("split", ["train", "val"])
def test_output_is_coco_that_pycocotools_loads(dataset: dict, split: str) -> None:
    data = _load(dataset, split)
    assert set(data) >= {"info", "licenses", "images", "annotations", "categories"}
    coco = COCO(dataset[split]["annotations"])
    assert sorted(coco.getCatIds()) == sorted(c["id"] for c in CATEGORIES)
    for img in data["images"]:
        assert set(img) >= {"id", "file_name", "width", "height"}
        path = Path(dataset[split]["images_dir"]) / img["file_name"]
        with Image.open(path) as im:
            assert im.format == "JPEG"
            assert im.size == (img["width"], img["height"])
            assert im.mode == "RGB"
            im.load()  # decodes the whole file
    for ann in data["annotations"]:
        assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
        assert isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6


def test_categories_are_at_least_five_with_non_contiguous_ids(dataset: dict) -> None:
    cats = _load(dataset, "train")["categories"]
    ids = [c["id"] for c in cats]
    assert len(cats) >= 5
    assert len(set(c["name"] for c in cats)) == len(cats)
    assert ids != list(range(1, len(ids) + 1)), "ids must be non-contiguous to exercise label mapping"
    assert all(set(c) >= {"id", "name", "supercategory"} for c in cats)


def test_counts_match_the_request_and_the_returned_stats(dataset: dict) -> None:
    for split, n in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        data = _load(dataset, split)
        assert len(data["images"]) == n == dataset[split]["num_images"]
        assert len(data["annotations"]) == dataset[split]["num_annotations"]
        assert len({i["id"] for i in data["images"]}) == n
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        assert {a["image_id"] for a in data["annotations"]} <= {i["id"] for i in data["images"]}
        assert len(list(Path(dataset[split]["images_dir"]).glob("*.jpg"))) == n
        names = {c["id"]: c["name"] for c in CATEGORIES}
        per_cat = {name: 0 for name in names.values()}
        for a in data["annotations"]:
            per_cat[names[a["category_id"]]] += 0 if a["iscrowd"] else 1
        assert per_cat == dataset[split]["per_category"]
    # every category is present in a modest training set
    assert all(v > 0 for v in dataset["train"]["per_category"].values())


def test_small_medium_and_large_objects_are_all_present(dataset: dict) -> None:
    areas = [a["area"] for a in _load(dataset, "train")["annotations"] if not a["iscrowd"]]
    small = sum(a < AREA_SMALL for a in areas)
    large = sum(a >= AREA_LARGE for a in areas)
    medium = len(areas) - small - large
    assert small > 0 and medium > 0 and large > 0
    assert dataset["train"]["area_buckets"] == {"small": small, "medium": medium, "large": large}


def test_empty_crowded_and_iscrowd_images_are_present(dataset: dict) -> None:
    data = _load(dataset, "train")
    per_image = {img["id"]: [] for img in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]].append(a)
    counts = [sum(not a["iscrowd"] for a in anns) for anns in per_image.values()]
    assert 0 in counts
    assert max(counts) >= 20
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert 0 < len(crowd) <= 0.05 * len(data["annotations"])


def test_images_come_in_several_aspect_ratios(dataset: dict) -> None:
    sizes = {(i["width"], i["height"]) for i in _load(dataset, "train")["images"]}
    assert sizes == {(320, 320), (320, 240), (240, 320)}


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # numpy 2 `copy=` notice in annToMask
@pytest.mark.parametrize("split", ["train", "val"])
def test_boxes_lie_in_the_image_and_match_polygon_and_area(dataset: dict, split: str) -> None:
    data = _load(dataset, split)
    coco = COCO(dataset[split]["annotations"])
    images = {i["id"]: i for i in data["images"]}
    for ann in data["annotations"]:
        img = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w >= 1 and h >= 1
        assert x >= 0 and y >= 0 and x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
        pts = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        assert pts[:, 0].min() == pytest.approx(x) and pts[:, 1].min() == pytest.approx(y)
        assert pts[:, 0].max() == pytest.approx(x + w, abs=0.02) and pts[:, 1].max() == pytest.approx(y + h, abs=0.02)
        assert ann["area"] == pytest.approx(_shoelace(ann["segmentation"][0]), abs=0.05)
        assert 0 < ann["area"] <= w * h + 0.05
        # pycocotools' own rasterisation of the polygon agrees with the area up to the boundary pixels
        drawn = float(coco.annToMask(ann).sum())
        assert abs(drawn - ann["area"]) <= 0.05 * ann["area"] + 2 * (w + h), ann


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    def run(name: str, seed: int) -> Path:
        generate_dataset(tmp_path / name, 8, 4, seed=seed, image_size=(128, 128))
        return tmp_path / name

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = files(run("a", 3)), files(run("b", 3)), files(run("c", 4))
    assert len(a) == 8 + 4 + 2
    assert a == b
    assert a.keys() == c.keys()
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))
    # train and val images with the same index are different scenes
    assert a["train/000000.jpg"] != a["val/000000.jpg"]


def test_cli_writes_the_dataset_and_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path), "--train", "3", "--val", "2", "--seed", "1",
                 "--size", "160", "--fixed-size"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out and "area buckets" in out
    data = json.loads((tmp_path / "annotations" / "instances_val.json").read_text())
    assert [(i["width"], i["height"]) for i in data["images"]] == [(160, 160)] * 2


def test_cli_width_and_height_override_size(tmp_path: Path) -> None:
    main(["--out", str(tmp_path), "--train", "2", "--val", "0", "--width", "200", "--height", "120",
          "--fixed-size"])
    data = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert [(i["width"], i["height"]) for i in data["images"]] == [(200, 120)] * 2
    assert json.loads((tmp_path / "annotations" / "instances_val.json").read_text())["images"] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train": -1}, "num_train must be a non-negative integer"),
        ({"min_objects": 5, "max_objects": 2}, "min_objects (5) > max_objects (2)"),
        ({"image_size": (32, 320)}, "image_size must be (width, height) with both >= 64"),
        ({"max_occluded": 1.0}, "max_occluded must be in [0, 1)"),
    ],
)
def test_bad_arguments_are_rejected_with_the_reason(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"out_dir": tmp_path, "num_train": 1, "num_val": 1, **kwargs}
    with pytest.raises(ValueError, match="synthetic dataset") as err:
        generate_dataset(**args)
    assert message in str(err.value)
    assert not (tmp_path / "annotations").exists()


def test_cli_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--train", "2", "--val", "1", "--min-objects", "4", "--max-objects", "1"])
    assert exc.value.code == 2
    assert "min_objects (4) > max_objects (1)" in capsys.readouterr().err
