"""metrics.jsonl writing/truncation on resume and the loss-curve PNG."""
from __future__ import annotations

import json

from training.engine.metrics_log import MetricsLog, plot_loss_curves, read_metrics


def rec(i: int) -> dict:
    return {"iter": i, "epoch": 0, "lr": 0.01 * i, "a": 1.0 / i, "total": 2.0 / i, "a_unweighted": 1.0 / i,
            "time": 0.1, "data_time": 0.01, "memory": 100.0}


def test_records_are_json_lines(tmp_path):
    log = MetricsLog(path=tmp_path / "m.jsonl")
    log.write(rec(1))
    log.write({**rec(2), "a": float("nan")})
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == [1, 2]
    assert json.loads(lines[1])["a"] is None  # NaN is not valid JSON


def test_new_run_starts_a_new_file(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps(rec(7)) + "\n")
    MetricsLog(path=tmp_path / "m.jsonl")
    assert read_metrics(tmp_path / "m.jsonl") == []


def test_resume_drops_records_after_the_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(1, 6)) + '{"iter": 6, "ep')
    log = MetricsLog(path=path, resume_iter=3)
    log.write(rec(4))
    assert [r["iter"] for r in read_metrics(path)] == [1, 2, 3, 4]


def test_disabled_log_writes_nothing(tmp_path):
    log = MetricsLog(path=tmp_path / "m.jsonl", enabled=False)
    log.write(rec(1))
    assert not (tmp_path / "m.jsonl").exists()
    assert log.plot(tmp_path / "c.png") is None


def test_plot_writes_a_png(tmp_path):
    out = plot_loss_curves([rec(i) for i in range(1, 10)], tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    assert plot_loss_curves([], tmp_path / "none.png") is None
