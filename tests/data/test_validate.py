"""libra-check-data (training.data.validate): counts, collected problems, exit status."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.validate import main, validate_dataset


def write_jpeg(path: Path, size=(64, 48), noisy=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if noisy:  # enough entropy data that cutting the file in half truncates the scan
        pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    else:
        Image.new("RGB", size, (90, 90, 90)).save(path)
    return path


def build(tmp_path: Path, annotations=None, images=None) -> tuple[Path, Path]:
    """Four 64x48 JPEGs, categories 5 'cat' and 2 'dog'; image 4 has no annotations."""
    img_dir = tmp_path / "train"
    records = images or [
        {"id": i, "file_name": f"{i:03d}.jpg", "width": 64, "height": 48} for i in (1, 2, 3, 4)
    ]
    for r in records:
        write_jpeg(img_dir / r["file_name"])
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10]},  # small
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 40]},  # medium
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 60, 47], "area": 9500},
            {"id": 4, "image_id": 3, "category_id": 5, "bbox": [0, 0, 50, 40], "iscrowd": 1},
        ]
    data = {
        "images": records,
        "annotations": annotations,
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    ann_file = tmp_path / "annotations" / "instances_train.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return ann_file, img_dir


def run(ann_file, img_dir, *extra) -> int:
    return main(["--ann", str(ann_file), "--images", str(img_dir), "--workers", "2", *extra])


def test_clean_dataset_exits_0_and_prints_counts(tmp_path, capsys):
    ann_file, img_dir = build(tmp_path)
    assert run(ann_file, img_dir) == 0
    out = capsys.readouterr().out
    assert "images:          4" in out
    assert "annotations:     4 (crowd: 1)" in out
    assert "images without annotations: 1" in out
    assert "images without training boxes (dropped by filter_empty): 2" in out
    assert "categories (2):" in out
    # label order (category id ascending): dog (2) before cat (5)
    assert out.index("dog  1") < out.index("cat  3")
    assert "small (< 32^2): 1, medium: 1, large (> 96^2): 1" in out
    assert "problems: 0 error(s), 0 warning(s)" in out and "result: OK" in out


def test_corrupt_and_missing_images_exit_1_naming_both(tmp_path, capsys):
    ann_file, img_dir = build(tmp_path)
    corrupt = write_jpeg(img_dir / "002.jpg", noisy=True)
    corrupt.write_bytes(corrupt.read_bytes()[:400])
    (img_dir / "003.jpg").unlink()
    assert run(ann_file, img_dir) == 1
    out = capsys.readouterr().out
    assert "ERROR corrupt-image (1):" in out and "002.jpg: cannot decode image" in out
    assert "ERROR missing-image (1):" in out and "003.jpg: image file not found" in out
    assert "result: FAILED" in out


def test_collects_every_annotation_problem_and_keeps_counting(tmp_path, capsys):
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10]},
        {"id": 17, "image_id": 1, "category_id": 5},  # no bbox
        {"id": 18, "image_id": 99, "category_id": 5, "bbox": [0, 0, 10, 10]},
        {"id": 19, "image_id": 1, "category_id": 77, "bbox": [0, 0, 10, 10]},
        {"id": 20, "image_id": 2, "category_id": 2, "bbox": [0, 0, 0.2, 10]},  # degenerate
        {"id": 21, "image_id": 2, "category_id": 2, "bbox": [30, 30, 50, 10]},  # outside
    ]
    ann_file, img_dir = build(tmp_path, annotations)
    assert run(ann_file, img_dir) == 1
    out = capsys.readouterr().out
    assert "annotation id 17: missing key 'bbox'" in out
    assert "annotation id 18: unknown image_id 99" in out
    assert "annotation id 19: unknown category_id 77" in out
    assert "WARNING degenerate-box (1):" in out and "annotation id 20 (image 002.jpg" in out
    assert "WARNING box-outside-image (1):" in out and "annotation id 21" in out
    assert "problems: 3 error(s), 2 warning(s)" in out
    assert "annotations:     3 (crowd: 0)" in out  # the valid records are still counted


def test_warnings_alone_exit_0_but_are_reported(tmp_path, capsys):
    annotations = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 0, 0]}]
    ann_file, img_dir = build(tmp_path, annotations)
    assert run(ann_file, img_dir) == 0
    out = capsys.readouterr().out
    assert "WARNING degenerate-box (1):" in out and "instances_train.json" in out
    assert "result: OK" in out


def test_unreadable_json_exits_1_with_position(tmp_path, capsys):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text('{"images": [\n  {"id": 1}\n  {"id": 2}]}')
    assert run(ann_file, tmp_path) == 1
    err = capsys.readouterr().err
    assert "broken.json" in err and "line 3, column 3" in err


def test_missing_image_directory_is_one_error(tmp_path, capsys):
    ann_file, _ = build(tmp_path)
    assert run(ann_file, tmp_path / "nope") == 1
    out = capsys.readouterr().out
    assert "ERROR missing-image-dir (1):" in out and "nope: image directory not found" in out
    assert "missing-image (" not in out


def test_json_report_lists_every_problem(tmp_path, capsys):
    ann_file, img_dir = build(tmp_path)
    for i in (1, 2, 3):
        (img_dir / f"{i:03d}.jpg").unlink()
    out_file = tmp_path / "reports" / "check.json"
    assert run(ann_file, img_dir, "--json", str(out_file), "--max-listed", "1") == 1
    assert "... and 2 more (use --json for all)" in capsys.readouterr().out
    report = json.loads(out_file.read_text())
    assert report["ok"] is False and report["num_errors"] == 3
    assert [Path(p["file"]).name for p in report["problems"]] == ["001.jpg", "002.jpg", "003.jpg"]
    assert report["category_counts"] == {"dog": 1, "cat": 3}
    assert report["area_buckets"] == {"small": 1, "medium": 1, "large": 1}


def test_size_mismatch_is_a_warning(tmp_path):
    ann_file, img_dir = build(tmp_path)
    write_jpeg(img_dir / "004.jpg", size=(50, 50))
    report = validate_dataset(ann_file, img_dir, workers=1)
    assert not report.errors
    [problem] = report.warnings
    assert problem.kind == "image-size-mismatch" and problem.file.endswith("004.jpg")
    assert "decoded size 50x50" in problem.message and "64x48" in problem.message


def test_module_runs_as_a_script(tmp_path):
    ann_file, img_dir = build(tmp_path)
    (img_dir / "001.jpg").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "training.data.validate", "--ann", str(ann_file),
         "--images", str(img_dir)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "001.jpg: image file not found" in done.stdout


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as info:
        main(["--ann", "x.json"])
    assert info.value.code == 2
