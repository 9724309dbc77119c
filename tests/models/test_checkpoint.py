"""Checkpoints: atomic save, round trip through load_checkpoint_model, and clear errors for bad files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import load_config
from training.models import build_model, load_checkpoint_model, make_checkpoint, save_checkpoint
from training.models.checkpoint import CheckpointError, load_checkpoint

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_faster_rcnn.yaml"


@pytest.fixture()
def cfg_and_model():
    cfg = load_config(TINY)
    cfg.model.num_classes = 2
    cfg.model.class_names = ["cat", "dog"]
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def test_round_trip(tmp_path, cfg_and_model):
    cfg, model = cfg_and_model
    path = save_checkpoint(tmp_path / "sub" / "model.pth", {**make_checkpoint(model, cfg, {"iteration": 7}), "epoch": 1})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pth"]  # no temporary file left
    loaded = load_checkpoint_model(path)
    assert not loaded.training and loaded.num_classes == 2
    images = torch.randn(1, 3, 96, 96)
    expected, got = model.predict(images, [(96, 96)]), loaded.predict(images, [(96, 96)])
    assert torch.equal(expected[0]["boxes"], got[0]["boxes"]) and torch.equal(expected[0]["scores"], got[0]["scores"])
    ckpt = load_checkpoint(path)
    assert ckpt["meta"] == {"iteration": 7} and ckpt["epoch"] == 1
    assert ckpt["config"]["model"]["class_names"] == ["cat", "dog"]


def test_make_checkpoint_requires_class_names(cfg_and_model):
    cfg, model = cfg_and_model
    cfg.model.class_names = None
    with pytest.raises(CheckpointError, match="class_names must list 2 names"):
        make_checkpoint(model, cfg)


def test_bad_files_name_the_file(tmp_path, cfg_and_model):
    cfg, model = cfg_and_model
    with pytest.raises(CheckpointError, match="absent.pth: checkpoint file not found"):
        load_checkpoint_model(tmp_path / "absent.pth")

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(CheckpointError, match="corrupt.pth: not a readable torch checkpoint"):
        load_checkpoint_model(corrupt)

    truncated = tmp_path / "truncated.pth"
    save_checkpoint(truncated, make_checkpoint(model, cfg))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable torch checkpoint"):
        load_checkpoint_model(truncated)

    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError, match=r"bare.pth: checkpoint lacks key\(s\) \['model', 'config'\].*bare state dict"):
        load_checkpoint_model(bare)

    payload = make_checkpoint(model, cfg)
    payload["config"]["model"]["roi_head"]["colour"] = "blue"
    bad_cfg = save_checkpoint(tmp_path / "bad_cfg.pth", payload)
    with pytest.raises(CheckpointError, match=r"bad_cfg.pth \[config\]: unknown key 'model.roi_head.colour'"):
        load_checkpoint_model(bad_cfg)


def test_state_dict_mismatch_lists_keys_and_shapes(tmp_path, cfg_and_model):
    cfg, model = cfg_and_model
    payload = make_checkpoint(model, cfg)
    del payload["model"]["rpn.head.conv.bias"]
    payload["model"]["extra.weight"] = torch.zeros(1)
    payload["model"]["roi_head.box_predictor.cls_score.bias"] = torch.zeros(5)
    path = save_checkpoint(tmp_path / "mismatch.pth", payload)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_model(path)
    msg = str(err.value)
    assert "mismatch.pth: state dict does not match" in msg
    assert "rpn.head.conv.bias" in msg and "extra.weight" in msg
    assert "roi_head.box_predictor.cls_score.bias: checkpoint (5,) vs model (3,)" in msg


def test_save_requires_model_and_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"x.pth: checkpoint payload lacks \['config'\]"):
        save_checkpoint(tmp_path / "x.pth", {"model": {}})
    assert not (tmp_path / "x.pth").exists()
