"""Metrics of a run: the JSON-lines log, TensorBoard event files, the loss plot, and device peaks
for MFU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fastspec._logging import notice_once

# Dense peak FLOP/s per device name fragment and autocast mode, from the vendors' datasheets
# (SXM parts, without sparsity). MFU is reported only where the peak is known.
_PEAKS = {
    "H100": {"bf16": 989e12, "fp16": 989e12, "none": 67e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "none": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "none": 19.5e12},
}


def peak_flops(device: torch.device, amp: str) -> float | None:
    """Dense peak FLOP/s of ``device`` in the run's precision, or None when unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in _PEAKS.items():
        if key in name:
            return peaks[amp]
    return None


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per logged step.

    A resumed run truncates records past the step it resumed from (they belong to the part of
    the old run that the checkpoint does not hold), so the file always tells one consistent run.
    """

    def __init__(self, path: str | os.PathLike, truncate_after: int = 0):
        self.path = Path(path)
        kept = []
        if self.path.exists() and truncate_after > 0:
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= truncate_after:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from a killed run
        self.path.write_text("".join(line + "\n" for line in kept))

        # TensorBoard event files beside metrics.jsonl when tensorboard is installed (the
        # optional extra ``fastspec[tensorboard]``); a resumed run purges the events past its step
        self.tensorboard = open_tensorboard(
            self.path.parent, purge_step=truncate_after + 1 if truncate_after > 0 else 0
        )

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            step = int(record["step"])
            for key, value in record.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self.tensorboard.add_scalar(f"train/{key}", value, step)
            self.tensorboard.flush()  # once per logging interval: readable while the run goes on

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def open_tensorboard(run_dir: str | os.PathLike, purge_step: int = 0):
    """A ``SummaryWriter`` writing into ``run_dir``, or None (with one notice) without
    tensorboard. Events at ``purge_step`` and later from an earlier run are dropped by readers."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises this when the tensorboard package is missing
        notice_once(
            "metrics.tensorboard",
            "metrics: tensorboard is not installed, so no event files are written "
            "(pip install 'fastspec[tensorboard]'); metrics.jsonl and loss.png as always",
        )
        return None
    return SummaryWriter(log_dir=str(run_dir), purge_step=purge_step or None)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_loss(metrics_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Draw loss against step from ``metrics.jsonl`` into a PNG (an empty frame if no steps)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if records:
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker=".")
    else:
        ax.text(
            0.5, 0.5, "no training steps logged", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = str(out_path) + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_path)
