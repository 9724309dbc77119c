"""``libra-detect`` on the hand-made ONNX graph (tests/runtime/toy_graph.py): result files, COCO
inputs, skipped bad images, clear errors for bad models and inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from runtime.cli import collect_inputs, main
from tests.runtime.toy_graph import META, toy_graph, write_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("cli_model"), toy_graph())


def _save(path, w, h, value):
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _save(folder / "b.png", 200, 100, 250)  # bright: the toy graph's first score ~0.98
    _save(folder / "a.jpg", 50, 80, 250)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def test_folder_run_writes_results_and_summary(model, images, tmp_path, capsys):
    out = tmp_path / "out"
    extra = _save(tmp_path / "c.png", 64, 64, 250)
    code = main([str(model), str(images), str(extra), "--out", str(out), "--batch", "2", "--save-vis", "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["detections"] == len(results) == 6
    assert summary["backend"] == "onnxruntime" and summary["device"] == "cpu"
    assert [f["file"] for f in summary["failed"]] == [str(images / "broken.png")]
    assert "cannot decode image" in summary["failed"][0]["reason"]
    assert summary["timings"]["total_s"] > 0 and summary["timings"]["per_image_ms"] > 0
    # running ids over the inputs: folder files sorted (a.jpg 0, b.png 1, broken.png 2), then c.png 3
    by_file = {r["file_name"]: r for r in results if r["score"] == pytest.approx(0.5)}
    assert by_file[str(images / "b.png")]["image_id"] == 1 and by_file[str(extra)]["image_id"] == 3
    first = [r for r in results if r["file_name"] == str(images / "b.png") and r["score"] != pytest.approx(0.5)][0]
    assert first["category_id"] == 7  # label 1 -> the model's category id
    np.testing.assert_allclose(first["bbox"], [0, 0, 100, 50], rtol=1e-5)  # xywh, original pixels
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    printed = capsys.readouterr().out
    assert "3 image(s), 6 detection(s)" in printed and "skipped" in printed and "broken.png" in printed


def test_score_threshold_filters(model, tmp_path):
    img = _save(tmp_path / "dark.png", 64, 64, 0)
    assert main([str(model), str(img), "--out", str(tmp_path / "o"), "--score-thr", "0.49", "--no-progress"]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["score"] for r in results] == [pytest.approx(0.5)]


def test_coco_file_input_uses_its_ids(model, tmp_path):
    img_dir = tmp_path / "val"
    img_dir.mkdir()
    _save(img_dir / "x.png", 40, 30, 200)
    _save(img_dir / "y.png", 30, 40, 200)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({
        "images": [{"id": 17, "file_name": "x.png", "width": 40, "height": 30},
                   {"id": 4, "file_name": "y.png", "width": 30, "height": 40}],
        "annotations": [], "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}],
    }))
    out = tmp_path / "out"
    assert main([str(model), str(ann), "--images", str(img_dir), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted({r["image_id"] for r in results}) == [4, 17]
    assert {r["file_name"] for r in results} == {"x.png", "y.png"}


def test_coco_ids_fill_in_when_the_model_has_none(tmp_path):
    meta = {k: v for k, v in META.items() if k != "category_ids"}
    model = write_model(tmp_path / "m", toy_graph(), meta=meta)
    _save(tmp_path / "x.png", 40, 30, 200)
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}], "annotations": [],
                               "categories": [{"id": 12, "name": "b"}, {"id": 5, "name": "a"}]}))
    assert main([str(model), str(ann), "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert sorted(r["category_id"] for r in results) == [5, 12]  # labels 0, 1 -> sorted ids


def test_bad_model_and_inputs_exit_2_with_a_message(model, images, tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01 nonsense" * 20)
    assert main([str(broken), str(images), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "broken.onnx: ONNX Runtime cannot load this model" in err and "Traceback" not in err
    assert main([str(model), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.jpg: no such file or folder" in capsys.readouterr().err
    ann = tmp_path / "gt.json"
    ann.write_text("{}")
    assert main([str(model), str(ann), "--out", str(tmp_path / "o")]) == 2
    assert "gt.json: a COCO annotation file as input needs --images DIR" in capsys.readouterr().err
    assert main([str(model), str(ann), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "gt.json: not a COCO annotation file" in capsys.readouterr().err
    assert main([str(model), str(images), "--backend", "torch", "--out", str(tmp_path / "o")]) == 2
    assert "the torch backend needs a PyTorch checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(model), str(images), "--batch", "0"])


def test_collect_inputs_rules(images, tmp_path):
    items, cats = collect_inputs([str(images)])
    assert [p.path.name for p in items] == ["a.jpg", "b.png", "broken.png"] and cats is None
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="give one COCO annotation file alone"):
        collect_inputs([str(ann), str(images)])
