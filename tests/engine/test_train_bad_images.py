"""libra-train on a dataset with a corrupt image: a clear error naming it, or skipped with --skip-bad-images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.train import main as train_main

from .conftest import TINY_CONFIG, data_overrides


def _corrupt_copy(src: Path, dst: Path) -> str:
    shutil.copytree(src, dst)
    ann = json.loads((dst / "annotations" / "instances_train.json").read_text())
    # corrupt an image that has boxes, so filter_empty keeps it in the training set
    with_boxes = {a["image_id"] for a in ann["annotations"] if not a.get("iscrowd", 0)}
    victim = next(im["file_name"] for im in ann["images"] if im["id"] in with_boxes)
    path = dst / "train" / victim
    path.write_bytes(path.read_bytes()[:200])  # a truncated JPEG
    return victim


def test_corrupt_image_stops_with_its_name_or_is_skipped(synthetic_dir, tmp_path, capsys):
    data = tmp_path / "data"
    victim = _corrupt_copy(synthetic_dir, data)
    settings = ["--set", *data_overrides(data), "train.max_iters=2", "train.eval_at_end=false",
                "data.workers=0", "data.batch_size=8"]

    rc = train_main(["--config", str(TINY_CONFIG), "--work-dir", str(tmp_path / "a"), "--no-progress", *settings])
    err = capsys.readouterr().err
    assert rc == 1
    assert victim in err and "libra-train: error" in err

    rc = train_main(["--config", str(TINY_CONFIG), "--work-dir", str(tmp_path / "b"), "--no-progress",
                     "--skip-bad-images", *settings])
    assert rc == 0
    assert (tmp_path / "b" / "model_final.pth").is_file()
