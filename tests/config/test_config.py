"""Config loading: _base_ inheritance, --set overrides, unknown-key and wrong-type errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_base_inheritance_merges_nested_keys(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  lr: 0.02\n  epochs: 12\nmodel:\n  rpn:\n    nms_thresh: 0.7\n    sampler:\n      num: 256\n")
    child = write(
        tmp_path / "child.yaml",
        "_base_: base.yaml\ntrain:\n  lr: 0.01\nmodel:\n  rpn:\n    sampler:\n      pos_fraction: 0.4\n",
    )
    cfg = load_config(child)
    assert cfg.train.lr == 0.01  # child wins
    assert cfg.train.epochs == 12  # inherited
    assert cfg.model.rpn.nms_thresh == 0.7
    assert cfg.model.rpn.sampler.num == 256  # sibling key of the overridden one survives
    assert cfg.model.rpn.sampler.pos_fraction == 0.4
    assert cfg.name == "child"


def test_base_chain_and_list(tmp_path):
    write(tmp_path / "a.yaml", "train:\n  lr: 1.0\n  seed: 3\n")
    write(tmp_path / "b.yaml", "train:\n  lr: 2.0\n")
    (tmp_path / "sub").mkdir()
    c = write(tmp_path / "sub" / "c.yaml", "_base_: [../a.yaml, ../b.yaml]\ntrain:\n  momentum: 0.5\n")
    cfg = load_config(c)
    assert (cfg.train.lr, cfg.train.seed, cfg.train.momentum) == (2.0, 3, 0.5)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_overrides_parse_yaml_scalars_and_nested_keys(tmp_path):
    f = write(tmp_path / "c.yaml", "train:\n  lr: 0.02\n")
    cfg = load_config(
        f,
        [
            "train.lr=0.01",
            "model.loss_weights.rcnn_bbox=0.5",
            "train.lr_steps=[16, 22]",
            "train.grad_clip=null",
            "data.flip_prob=0",
            "train.amp=true",
        ],
    )
    assert cfg.train.lr == 0.01
    assert cfg.model.loss_weights == {"rcnn_bbox": 0.5}
    assert cfg.train.lr_steps == [16, 22]
    assert cfg.train.grad_clip is None
    assert cfg.data.flip_prob == 0.0 and isinstance(cfg.data.flip_prob, float)
    assert cfg.train.amp is True


def test_unknown_key_names_key_and_lists_valid_ones(tmp_path):
    f = write(tmp_path / "bad.yaml", "train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "bad.yaml" in msg and "train.learning_rate" in msg
    assert "lr" in msg and "momentum" in msg  # valid keys listed


def test_unknown_key_in_override(tmp_path):
    f = write(tmp_path / "c.yaml", "")
    with pytest.raises(ConfigError, match=r"model\.rpn\.nms_threshold"):
        load_config(f, ["model.rpn.nms_threshold=0.6"])


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("train:\n  lr: fast\n", "train.lr", "float"),
        ("train:\n  epochs: 1.5\n", "train.epochs", "int"),
        ("train:\n  amp: 1\n", "train.amp", "bool"),
        ("data:\n  scale: [800]\n", "data.scale", "Tuple[int, int]"),
        ("data:\n  train: data/x.json\n", "data.train", "DataSplitConfig"),
        ("train:\n  lr_steps: 8\n", "train.lr_steps", "List[int]"),
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, text, key, expected):
    f = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert key in str(e.value) and expected in str(e.value) and "bad.yaml" in str(e.value)


def test_malformed_override_and_missing_file(tmp_path):
    f = write(tmp_path / "c.yaml", "")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(f, ["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = config_from_dict({"name": "rt", "model": {"arch": "retinanet"}, "train": {"lr": 0.01}})
    assert config_from_dict(config_to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


def test_data_paths_may_point_at_a_real_coco_tree(tmp_path):
    f = write(
        tmp_path / "coco.yaml",
        "data:\n  train:\n    ann_file: /coco/annotations/instances_train2017.json\n    img_dir: /coco/train2017\n",
    )
    cfg = load_config(f)
    assert cfg.data.train.img_dir == "/coco/train2017"
    assert cfg.data.val.ann_file.endswith("instances_val.json")  # default: the synthetic set


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        cfg = load_config(f)
        assert isinstance(cfg, Config), f
