"""`mltrain report`: the picture and the figures a person reads first; TensorBoard gets the scalars too."""

import json

import pytest

from mltrain.errors import RunDirError
from mltrain.report import write_report
from mltrain.train.metrics import MetricsWriter


def fake_run(run_dir, restart_at=None):
    w = MetricsWriter(run_dir, tensorboard=True)
    w.write({"kind": "start", "step": 0})
    for step in range(1, 41):
        if step == restart_at:
            w.write({"kind": "start", "step": step - 1})
        w.write({"kind": "train", "step": step, "loss": 8.0 - step * 0.1, "tokens_per_s": 1000.0 + step, "mfu": None})
        if step % 20 == 0:
            w.write({"kind": "eval", "step": step, "val_loss": 7.0 - step * 0.05, "val_ppl": 100.0})
    w.close()


def test_report_png_and_summary(tmp_path):
    run = tmp_path / "runs" / "r"
    fake_run(run, restart_at=25)
    summary = write_report(run)
    png = (run / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert summary["steps"] == 40 and summary["restarts"] == 1
    assert summary["first_loss"] > summary["last_loss"]
    assert summary["first_val_loss"] == pytest.approx(6.0) and summary["last_val_loss"] == pytest.approx(5.0)
    assert summary["mfu"] is None


def test_tensorboard_events_written(tmp_path):
    fake_run(tmp_path)
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "train" for r in lines) == 40


def test_report_without_steps_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirError, match="no training steps recorded yet"):
        write_report(tmp_path)
