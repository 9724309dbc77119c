"""libra-eval: with a stand-in model (config handling, outputs, errors) and with a real tiny one."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import training.models
from training.config import Config, config_to_dict
from training.evaluate import main


def _config(ann_file, img_dir) -> Config:
    cfg = Config()
    cfg.model.num_classes = 2
    cfg.model.class_names = ["a", "b"]
    cfg.data.val.ann_file, cfg.data.val.img_dir = str(ann_file), str(img_dir)
    cfg.data.scale = (64, 100)
    cfg.data.workers = 0
    cfg.eval.use_faster_coco_eval = False
    cfg.train.device = "cpu"
    return cfg


@pytest.fixture
def stand_in(tmp_path, monkeypatch, image_dataset, oracle_detector):
    """A checkpoint file holding only a config; loading it yields the oracle detector."""
    ann_file, img_dir, gt = image_dataset

    def save(cfg):
        path = tmp_path / "model.pth"
        torch.save({"model": {}, "config": config_to_dict(cfg), "meta": {}}, path)
        return path

    monkeypatch.setattr(training.models, "load_checkpoint_model", lambda path, map_location="cpu": oracle_detector(gt))
    return save, ann_file, img_dir


def test_cli_writes_reports_from_the_embedded_config(tmp_path, stand_in, capsys):
    save, ann_file, img_dir = stand_in
    ckpt = save(_config(ann_file, img_dir))
    assert main(["--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "w"), "--no-progress"]) == 0
    out = tmp_path / "w" / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["num_images"] == 4 and metrics["backend"] == "pycocotools"
    assert (out / "metrics.md").is_file() and len(json.loads((out / "results.json").read_text())) == 8
    printed = capsys.readouterr().out
    assert "| AP | AP50 | AP75 | APs | APm | APl |" in printed and "| 1.000 | 1.000 | 1.000 |" in printed


def test_cli_config_file_and_overrides_replace_data_settings(tmp_path, stand_in):
    save, ann_file, img_dir = stand_in
    ckpt = save(_config(tmp_path / "elsewhere.json", tmp_path / "nowhere"))  # paths of another machine
    data = config_to_dict(_config(ann_file, img_dir))
    del data["model"]  # the model section always comes from the checkpoint
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(data))
    argv = ["--checkpoint", str(ckpt), "--config", str(tmp_path / "eval.yaml"), "--work-dir", str(tmp_path / "w"),
            "--no-progress", "--set", "eval.concept_score_thr=0.5", "--max-images", "3"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "w" / "eval" / "metrics.json").read_text())
    assert metrics["concept_score_thr"] == 0.5 and metrics["num_images"] == 3 and metrics["AP"] == pytest.approx(1.0)
    # --set alone works on the embedded config too
    argv = ["--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "w2"), "--no-progress",
            "--set", f"data.val.ann_file={ann_file}", f"data.val.img_dir={img_dir}"]
    assert main(argv) == 0


def test_cli_errors_name_the_file(tmp_path, stand_in, capsys):
    save, ann_file, img_dir = stand_in
    cfg = _config(ann_file, img_dir)
    cfg.model.class_names = ["a", "zebra"]
    ckpt = save(cfg)
    assert main(["--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "w"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "val.json: category names ['a', 'b'] differ from the checkpoint's class names ['a', 'zebra']" in err
    ckpt = save(_config(tmp_path / "missing.json", img_dir))
    assert main(["--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "w"), "--no-progress"]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "w"), "--set", "eval.nope=1"]) == 2
    assert "eval.nope" in capsys.readouterr().err


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.pth"), "--work-dir", str(tmp_path / "w")]) == 2
    assert "none.pth: checkpoint file not found" in capsys.readouterr().err


def test_cli_end_to_end_with_a_tiny_detector(tmp_path, capsys):
    """A real (untrained) tiny Faster R-CNN checkpoint on a few synthetic images."""
    from training.data.synthetic import CATEGORIES, generate_dataset
    from training.models import build_model, make_checkpoint, save_checkpoint

    data = generate_dataset(tmp_path / "data", 0, 3, seed=0, image_size=(96, 96), max_objects=4)
    cfg = Config()
    cfg.data.val.ann_file, cfg.data.val.img_dir = data["val"]["annotations"], data["val"]["images_dir"]
    cfg.data.scale, cfg.data.workers, cfg.train.device = (96, 96), 0, "cpu"
    m = cfg.model
    m.num_classes, m.class_names = len(CATEGORIES), [c["name"] for c in CATEGORIES]
    m.backbone.kind, m.backbone.norm, m.backbone.frozen_stages, m.backbone.widths = "tiny", "bn", -1, [8, 16, 16, 16]
    m.fpn.out_channels, m.rpn.feat_channels, m.roi_head.fc_channels = 16, 16, 32
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pth", make_checkpoint(build_model(cfg, pretrained=False), cfg))
    argv = ["--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "w"), "--no-progress",
            "--set", "model.roi_head.score_thresh=0.0", "model.roi_head.max_per_img=7"]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "w" / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and 0.0 <= metrics["AP"] <= 1.0
    assert metrics["num_detections"] == 3 * 7  # the test-time override took effect (model rebuilt)
    assert set(metrics["per_class"]) == {c["name"] for c in CATEGORIES}
