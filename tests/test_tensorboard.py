"""Metrics also go to TensorBoard event files in the run directory when tensorboard is installed."""

from __future__ import annotations

import sys

import pytest

from fastspec import _logging
from fastspec.train.metrics import MetricsLog


def _scalars(run_dir, tag):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    events = event_accumulator.EventAccumulator(str(run_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_metrics_land_in_event_files_beside_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 10, "loss": 1.5, "lr": 1e-3, "clips_per_s": 30.0})
    log.write({"step": 20, "loss": 0.75, "lr": 5e-4, "clips_per_s": 31.0})
    log.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert _scalars(tmp_path, "train/loss") == [(10, 1.5), (20, 0.75)]
    assert _scalars(tmp_path, "train/lr") == [(10, pytest.approx(1e-3)), (20, pytest.approx(5e-4))]

    # a resumed run drops what the old run logged past its checkpoint, in both logs
    resumed = MetricsLog(tmp_path / "metrics.jsonl", truncate_after=10)
    resumed.write({"step": 20, "loss": 0.5, "lr": 5e-4})
    resumed.close()
    assert _scalars(tmp_path, "train/loss") == [(10, 1.5), (20, 0.5)]


def test_without_tensorboard_one_notice_and_the_json_log(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setattr(_logging, "_seen", {})
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": 2.0})
    log.close()
    assert log.tensorboard is None
    assert "tensorboard is not installed" in _logging.notices()["metrics.tensorboard"]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    assert not list(tmp_path.glob("events.out.tfevents.*"))
