"""Metrics of a run: the JSON-lines log, the loss plot, and device peaks for MFU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

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

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
