"""Per-mel-bin statistics of a front end's log-mel over a dataset (``fastspec stats DATA``).

Papers that normalise each mel bin with its own mean and standard deviation (MaskSpec reads
them from a statistics file computed on AudioSet) need those numbers for the data at hand. This
computes them for any preset, before normalisation, over every valid frame of every clip
(float64 sums, so the order of clips does not matter beyond rounding), and writes

    {"format": "fastspec-stats", "frontend": {...}, "clips": N, "frames": T,
     "mean": [F floats], "std": [F floats], "skipped": [...]}

``std`` is the population standard deviation over frames (``ddof=0``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastspec.data import BadAudioError, DemoCorpus, open_source
from fastspec.frontend import FrontendConfig, LogMel
from fastspec.frontend.polyphase import resample

__all__ = ["MelStats", "compute_stats"]

FORMAT = "fastspec-stats"


@dataclass
class MelStats:
    """Per-bin statistics: ``mean``/``std`` float64 [F] over ``frames`` frames of ``clips``."""

    frontend: dict
    clips: int
    frames: int
    mean: np.ndarray
    std: np.ndarray
    skipped: list[tuple[str, str]]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file (atomically: a temporary name, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT,
            "frontend": self.frontend,
            "clips": self.clips,
            "frames": self.frames,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
        return path


def compute_stats(
    data: str | None,
    frontend: FrontendConfig,
    *,
    max_clips: int | None = None,
    batch_size: int = 16,
) -> MelStats:
    """Per-bin mean and std of ``frontend``'s un-normalised log-mel over ``data`` (anything
    ``--data`` accepts; None or ``"demo"``: the demo corpus), the first ``max_clips`` clips.

    Raises ValueError when no clip gives a frame.
    """
    if data in (None, "demo"):
        source = DemoCorpus(num_clips=max_clips or 384, sample_rate=frontend.sample_rate)
    else:
        source = open_source(data)
    n = len(source) if max_clips is None else min(max_clips, len(source))
    logmel = LogMel.from_config(frontend, normalize=False)
    total = np.zeros(frontend.n_mels, dtype=np.float64)
    total_sq = np.zeros(frontend.n_mels, dtype=np.float64)
    frames, clips = 0, 0
    skipped = list(source.skipped)
    for start in range(0, n, batch_size):
        waves = []
        for i in range(start, min(n, start + batch_size)):
            try:
                wave, sr = source.load(i)
            except BadAudioError as err:
                skipped.append((source.name(i), err.reason))
                continue
            if sr != frontend.sample_rate:
                wave = resample(wave, sr, frontend.sample_rate)
            waves.append(torch.as_tensor(np.ascontiguousarray(wave, dtype=np.float32)))
        if not waves:
            continue
        lengths = torch.tensor([w.shape[0] for w in waves])
        batch = torch.zeros(len(waves), int(lengths.max()))
        for row, w in enumerate(waves):
            batch[row, : w.shape[0]] = w
        with torch.no_grad():
            mel, n_frames = logmel(batch, lengths, return_lengths=True)  # [B, T, F], [B]
        valid = torch.arange(mel.shape[1])[None, :] < n_frames[:, None]  # [B, T]
        x = mel[valid].double().numpy()  # [frames, F]
        total += x.sum(axis=0)
        total_sq += (x * x).sum(axis=0)
        frames += x.shape[0]
        clips += len(waves)
    if frames == 0:
        raise ValueError(f"fastspec stats: no frame computed from {data!r} ({n} clips tried)")
    mean = total / frames
    std = np.sqrt(np.maximum(total_sq / frames - mean * mean, 0.0))
    return MelStats(frontend.to_dict(), clips, frames, mean, std, skipped)
