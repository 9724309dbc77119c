"""COCOEvaluator against pycocotools run directly on the same files, and faster-coco-eval."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from training.evaluation.coco import (
    STAT_KEYS,
    COCOEvaluator,
    EvaluationError,
    faster_coco_eval_available,
    format_metrics_markdown,
    write_metrics,
)

CAT_IDS = [2, 5, 9]  # the category ids of conftest.make_ground_truth

BACKENDS = [
    pytest.param(False, id="pycocotools"),
    pytest.param(
        True, id="faster_coco_eval",
        marks=pytest.mark.skipif(not faster_coco_eval_available(), reason="faster-coco-eval not installed"),
    ),
]


def _evaluator(gt_file, use_faster, **kw):
    return COCOEvaluator(gt_file, label_to_cat_id=dict(enumerate(CAT_IDS)), use_faster_coco_eval=use_faster, **kw)


def _process_all(ev, preds):
    ids = sorted(preds)
    ev.process(ids, [preds[i] for i in ids])


def reference_stats(gt_file, results, image_ids=None):
    """The 12 numbers of pycocotools COCOeval, run by hand on the file and the results list."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _as_stats(metrics):
    return np.array([-1.0 if metrics[k] is None else metrics[k] for k in STAT_KEYS])


@pytest.mark.parametrize("use_faster", BACKENDS)
def test_perfect_detections_give_ap_one(gt_file, gt, use_faster, perfect_predictions):
    ev = _evaluator(gt_file, use_faster)
    _process_all(ev, perfect_predictions(gt))
    m = ev.evaluate()
    assert m["backend"] == ("faster_coco_eval" if use_faster else "pycocotools")
    for key in STAT_KEYS[:6] + ("AR100",):  # the file has small, medium and large objects
        assert m[key] == pytest.approx(1.0, abs=1e-12), key
    assert m["concept_recall"] == 1.0 and m["concept_precision"] == 1.0
    assert m["num_images"] == len(gt["images"])
    assert all(c["AP"] == pytest.approx(1.0) and c["concept_recall"] == 1.0 for c in m["per_class"].values())


def test_shifted_boxes_give_the_pycocotools_reference(tmp_path, gt_file, gt, noisy_predictions):
    ev = _evaluator(gt_file, False)
    _process_all(ev, noisy_predictions(gt))
    m = ev.evaluate()
    ev.write_results(tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    expected = reference_stats(gt_file, results)
    assert 0.05 < expected[0] < 0.95  # a non-trivial case
    np.testing.assert_array_equal(_as_stats(m), expected)


def test_faster_coco_eval_matches_pycocotools(gt_file, gt, noisy_predictions):
    pytest.importorskip("faster_coco_eval")
    metrics = {}
    for use_faster in (False, True):
        ev = _evaluator(gt_file, use_faster)
        _process_all(ev, noisy_predictions(gt, seed=7))
        metrics[use_faster] = ev.evaluate()
    slow, fast = metrics[False], metrics[True]
    assert (slow["backend"], fast["backend"]) == ("pycocotools", "faster_coco_eval")
    assert [slow[k] is None for k in STAT_KEYS] == [fast[k] is None for k in STAT_KEYS]
    assert np.abs(_as_stats(slow) - _as_stats(fast)).max() <= 1e-9
    for name, c in slow["per_class"].items():
        assert fast["per_class"][name]["AP"] == pytest.approx(c["AP"], abs=1e-9)
        assert fast["per_class"][name]["AP50"] == pytest.approx(c["AP50"], abs=1e-9)


def test_category_ids_are_mapped_back_and_boxes_written_as_xywh(tmp_path, gt_file, gt):
    ev = COCOEvaluator(gt_file, label_to_cat_id=CAT_IDS)  # a sequence works too
    ev.process([100, 101], [
        {"boxes": np.array([[10.0, 20.0, 30.0, 60.0]]), "scores": np.array([0.75]), "labels": np.array([1])},
        {"boxes": np.array([[1.5, 2.0, 4.0, 8.0], [0, 0, 5, 5]]), "scores": [0.5, 0.25], "labels": [2, 0]},
    ])
    ev.write_results(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == [
        {"image_id": 100, "category_id": 5, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.75},
        {"image_id": 101, "category_id": 9, "bbox": [1.5, 2.0, 2.5, 6.0], "score": 0.5},
        {"image_id": 101, "category_id": 2, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.25},
    ]
    # a different mapping changes the written ids
    ev2 = COCOEvaluator(gt_file, label_to_cat_id={0: 9, 1: 2, 2: 5})
    ev2.process([100], [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [0]}])
    assert ev2.results()[0]["category_id"] == 9


def test_default_label_mapping_is_sorted_category_ids(gt_file):
    assert COCOEvaluator(gt_file).label_to_cat_id == {0: 2, 1: 5, 2: 9}


@pytest.mark.parametrize("use_faster", BACKENDS)
def test_no_detections_give_zero_ap(tmp_path, gt_file, gt, use_faster):
    ev = _evaluator(gt_file, use_faster)
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    ev.process([img["id"] for img in gt["images"]], [empty] * len(gt["images"]))
    m = ev.evaluate()
    for key in STAT_KEYS:
        assert m[key] == 0.0, key
    assert m["num_detections"] == 0
    assert m["concept_recall"] == 0.0 and m["concept_precision"] is None
    assert ev.results() == []


def test_only_processed_images_are_scored(gt_file, gt, noisy_predictions):
    preds = noisy_predictions(gt, seed=3)
    ev = _evaluator(gt_file, False)
    ev.process([100, 101, 102], [preds[i] for i in (100, 101, 102)])
    m = ev.evaluate()
    assert m["num_images"] == 3
    np.testing.assert_array_equal(_as_stats(m), reference_stats(gt_file, ev.results(), [100, 101, 102]))
    n_gts = sum(1 for a in gt["annotations"] if a["image_id"] in (100, 101, 102) and not a["iscrowd"])
    assert sum(c["num_gts"] for c in m["per_class"].values()) == n_gts


def test_undefined_area_range_is_none(tmp_path, gt, perfect_predictions):
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] >= 32 ** 2]  # no small objects
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ev = COCOEvaluator(path, use_faster_coco_eval=False)
    _process_all(ev, perfect_predictions(gt))
    m = ev.evaluate()
    assert m["APs"] is None and m["ARs"] is None and m["AP"] == pytest.approx(1.0)


def test_torch_tensors_are_accepted(gt_file, gt, noisy_predictions):
    torch = pytest.importorskip("torch")
    preds = noisy_predictions(gt, seed=5)
    as_np, as_torch = _evaluator(gt_file, False), _evaluator(gt_file, False)
    _process_all(as_np, preds)
    _process_all(as_torch, {k: {n: torch.from_numpy(v) for n, v in p.items()} for k, p in preds.items()})
    assert as_torch.evaluate() == as_np.evaluate()


def test_coco_object_ground_truth_is_not_modified(gt_file, gt, noisy_predictions):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
    before = copy.deepcopy(coco.dataset)
    ev = COCOEvaluator(coco, use_faster_coco_eval=False)
    _process_all(ev, noisy_predictions(gt))
    from_object = ev.evaluate()
    assert coco.dataset == before
    ev_file = _evaluator(gt_file, False)
    _process_all(ev_file, noisy_predictions(gt))
    assert from_object == ev_file.evaluate()


def test_repeated_images_keep_the_first_predictions(gt_file, gt, perfect_predictions):
    preds = perfect_predictions(gt)
    ev = _evaluator(gt_file, False)
    _process_all(ev, preds)
    ev.process([100], [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [0]}])
    assert ev.num_images == len(gt["images"])
    assert ev.evaluate()["AP"] == pytest.approx(1.0)
    ev.reset()
    assert ev.num_images == 0


def test_bad_input_errors_name_the_problem(tmp_path, gt_file):
    with pytest.raises(EvaluationError, match=r"annotation file not found: .*missing\.json"):
        COCOEvaluator(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(EvaluationError, match=r"bad\.json: malformed JSON at line 1"):
        COCOEvaluator(bad)
    with pytest.raises(EvaluationError, match=r"instances_val\.json: label_to_cat_id maps to category id\(s\) \[4\]"):
        COCOEvaluator(gt_file, label_to_cat_id=[2, 4, 9])
    ev = COCOEvaluator(gt_file)
    with pytest.raises(EvaluationError, match=r"instances_val\.json: no image was processed"):
        ev.evaluate()
    with pytest.raises(EvaluationError, match=r"image id 7 is not an image of .*instances_val\.json"):
        ev.process([7], [{"boxes": [], "scores": [], "labels": []}])
    with pytest.raises(EvaluationError, match=r"image 100: label\(s\) \[3\] not in label_to_cat_id"):
        ev.process([100], [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [3]}])
    with pytest.raises(EvaluationError, match=r"image 100: boxes must be \[N, 4\], got shape \[1, 3\]"):
        ev.process([100], [{"boxes": [[0, 0, 1]], "scores": [1.0], "labels": [0]}])
    with pytest.raises(EvaluationError, match=r"image 100: 1 boxes, 2 scores, 1 labels"):
        ev.process([100], [{"boxes": [[0, 0, 1, 1]], "scores": [1.0, 0.5], "labels": [0]}])
    with pytest.raises(EvaluationError, match=r"image 100: prediction lacks \['labels'\]"):
        ev.process([100], [{"boxes": [[0, 0, 1, 1]], "scores": [1.0]}])
    assert ev.num_images == 0  # nothing half-added


def test_write_metrics_json_and_markdown(tmp_path, gt_file, gt, noisy_predictions):
    ev = _evaluator(gt_file, False)
    _process_all(ev, noisy_predictions(gt))
    m = ev.evaluate()
    paths = write_metrics(m, tmp_path / "eval")
    loaded = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert loaded == json.loads(json.dumps(m))
    for key in STAT_KEYS + ("concept_recall", "concept_precision"):
        assert key in loaded
    assert set(loaded["per_class"]) == {"cat", "dog", "bird"}
    assert loaded["per_class"]["dog"]["category_id"] == 5 and loaded["per_class"]["dog"]["label"] == 1
    md = paths["md"].read_text()
    assert md == format_metrics_markdown(m)
    assert "| AP | AP50 | AP75 | APs | APm | APl |" in md
    assert f"| {m['AP']:.3f} | {m['AP50']:.3f} |" in md
    assert "| dog | 5 |" in md


def test_evaluation_modules_do_not_import_torch():
    code = (
        "import sys; import training.evaluation, training.evaluation.coco, training.evaluation.concept_metrics; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
