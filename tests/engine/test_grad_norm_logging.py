"""Per-loss gradient norms into the shared features (issue 5): logged by the trainer as
``grad_norm/<loss>`` on logging updates and drawn in their own panel of ``loss_curves.png``.

Three 2-update runs of the real tiny Faster R-CNN, in process: ``base`` logs every update,
``half`` halves the rcnn_bbox loss weight, ``sparse`` logs only after update 2.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

import matplotlib.pyplot as plt
import pytest
import torch

import training.models
from training.engine.metrics_log import plot_loss_curves
from training.train import main as train_main

from .conftest import TINY_CONFIG, ToyDetector, data_overrides

LOSSES = ("rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox")


def train(work_dir: Path, data_dir: Path, *settings: str) -> List[Dict]:
    argv = ["--config", str(TINY_CONFIG), "--work-dir", str(work_dir), "--no-progress",
            "--set", *data_overrides(data_dir), "train.max_iters=2", "train.log_interval=1",
            "train.eval_at_end=false", "data.workers=0", "data.batch_size=2", "data.scale=[64,64]",
            "train.device=cpu", *settings]
    assert train_main(argv) == 0
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_dir) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("grad_norm_runs")
    settings = {"base": [], "half": ["model.loss_weights.rcnn_bbox=0.5"], "sparse": ["train.log_interval=2"]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with the other tests for the CPU
    try:
        for name, extra in settings.items():
            train(root / name, synthetic_dir, *extra)
    finally:
        torch.set_num_threads(threads)
    return {name: root / name for name in settings}


def records(work_dir: Path) -> Dict[int, Dict]:
    return {r["iter"]: r for r in map(json.loads, (work_dir / "metrics.jsonl").read_text().splitlines())}


def test_every_logged_update_has_finite_grad_norms_per_loss(runs):
    logged = records(runs["base"])
    assert sorted(logged) == [1, 2]
    for r in logged.values():
        for name in LOSSES:
            value = r[f"grad_norm/{name}"]
            assert math.isfinite(value) and value > 0, (name, r)
    assert (runs["base"] / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grad_norm_is_linear_in_the_loss_weight(runs):
    base, half = records(runs["base"])[1], records(runs["half"])[1]  # same weights and batch at update 1
    assert half["rcnn_bbox"] == pytest.approx(0.5 * base["rcnn_bbox"], rel=1e-6)
    assert half["grad_norm/rcnn_bbox"] == pytest.approx(0.5 * base["grad_norm/rcnn_bbox"], rel=1e-5)
    for name in ("rpn_cls", "rpn_bbox", "rcnn_cls"):
        assert half[f"grad_norm/{name}"] == pytest.approx(base[f"grad_norm/{name}"], rel=1e-5)


def test_measuring_changes_no_update_and_is_not_averaged_over_the_window(runs):
    # sparse measured the norms after update 2 only: its weights must still equal base's bit for bit
    a = torch.load(runs["base"] / "model_final.pth", weights_only=True)["model"]
    b = torch.load(runs["sparse"] / "model_final.pth", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    sparse, base = records(runs["sparse"]), records(runs["base"])
    assert sorted(sparse) == [2]
    for name in LOSSES:
        # the norm of update 2 itself, not divided by the 2 updates of the log window
        assert sparse[2][f"grad_norm/{name}"] == pytest.approx(base[2][f"grad_norm/{name}"], rel=1e-6)
    assert sparse[2]["rcnn_cls"] == pytest.approx((base[1]["rcnn_cls"] + base[2]["rcnn_cls"]) / 2, rel=1e-6)


def test_model_without_necks_logs_no_grad_norms(tmp_path, synthetic_dir, monkeypatch):
    def build(cfg, **kwargs):
        return ToyDetector(num_classes=cfg.model.num_classes)

    monkeypatch.setattr(training.models, "build_model", build)
    logged = train(tmp_path / "toy", synthetic_dir)
    assert [r["iter"] for r in logged] == [1, 2]
    assert all("toy_cls" in r and not any(k.startswith("grad_norm/") for k in r) for r in logged)


@pytest.fixture()
def drawn_figures(monkeypatch) -> list:
    """The figures ``plot_loss_curves`` closes after saving them."""
    figures, close = [], plt.close

    def keep(fig=None):
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return figures


def test_plot_draws_grad_norms_in_their_own_log_panel(tmp_path, drawn_figures):
    recs = [{"iter": i, "lr": 0.01, "a": 1.0 / i, "b": 2.0 / i, "total": 3.0 / i, "a_unweighted": 1.0 / i,
             "grad_norm": 5.0, "grad_norm/b": 0.02 * i, "grad_norm/a": 0.1 * i} for i in range(1, 6)]
    recs[2]["grad_norm/b"] = None  # a non-finite norm (written as null) is left out, not fatal
    recs[3]["grad_norm/a"] = 0.0  # no room for zero on a log axis
    out = plot_loss_curves(recs, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = drawn_figures
    ax_loss, ax_grad, ax_lr = fig.axes
    loss_lines = {line.get_label(): line for line in ax_loss.get_lines()}
    grad_lines = {line.get_label(): line for line in ax_grad.get_lines()}
    assert set(loss_lines) == {"a", "b", "total"}  # neither grad_norm nor grad_norm/* is a loss
    assert list(grad_lines) == ["a", "b"]  # in the order of the loss panel
    assert ax_grad.get_ylabel() == "grad norm into shared features" and ax_grad.get_yscale() == "log"
    assert ax_lr.get_ylabel() == "lr"
    for name in ("a", "b"):
        assert grad_lines[name].get_color() == loss_lines[name].get_color()
    assert list(grad_lines["a"].get_xdata()) == [1, 2, 3, 5]
    assert list(grad_lines["b"].get_xdata()) == [1, 2, 4, 5]


def test_plot_without_grad_norms_keeps_two_panels(tmp_path, drawn_figures):
    plot_loss_curves([{"iter": 1, "lr": 0.01, "a": 1.0, "total": 1.0}], tmp_path / "curves.png")
    (fig,) = drawn_figures
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss (weighted)", "lr"]
