"""``fastspec embed``: audio files, folders, manifests or datasets -> ``.npy`` embeddings.

Output layout of ``OUT`` (documented in the README, "Using a trained encoder")::

    embeddings.npy         float32 [N, D]: clip embedding of row i (mean of its patch tokens)
    clips.csv              row, name, path, seconds, n_frames, frames_file, labels
    frames/000042.npy      with --frames: float32 [n_frames, D], the frame embeddings of the
                           clip whose input position is 42 (its ``frames_file`` in clips.csv)
    embed.json             encoder, D, sample rate, count, frame timestamps, skipped files

Rows follow the input order (files as given, folders sorted by relative path, manifests by
line), minus clips that could not be decoded, which are listed in ``embed.json`` with their
reason. Frame ``t`` of every clip is centred at ``first_frame_ms + t * frame_hop_ms``
(``embed.json``); ``n_frames`` counts the frames that cover the clip (the last one may reach
past its end). Audio at another rate is resampled to the encoder's; multi-channel audio is
mixed down.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastspec._logging import get_logger
from fastspec.data import FileSource, open_source
from fastspec.data.audio import AUDIO_EXTENSIONS
from fastspec.encoder import Encoder
from fastspec.evaluate.extract import autocast, clip_batches
from fastspec.evaluate.tasks import ClipTable

__all__ = ["EmbedSummary", "open_inputs", "write_embeddings"]

_log = get_logger("fastspec.evaluate")


@dataclass
class EmbedSummary:
    """What :func:`write_embeddings` wrote."""

    out_dir: Path
    clips: int
    embed_dim: int
    frames: bool
    skipped: list[tuple[str, str]]
    seconds: float


def open_inputs(inputs: Sequence[str | os.PathLike]) -> ClipTable:
    """One table of every clip the inputs name: audio files (kept in the given order, as one
    source), folders, manifests, tar shards or datasets (anything ``--data`` takes)."""
    if not inputs:
        raise ValueError("no input: give audio files, folders or manifests")
    sources, files = [], []

    def flush():
        if files:
            sources.append(FileSource(list(files), names=list(files), description="audio files"))
            files.clear()

    for item in map(os.fspath, inputs):
        if Path(item).is_file() and item.lower().endswith(AUDIO_EXTENSIONS):
            files.append(item)
        else:
            flush()
            sources.append(open_source(item))
    flush()
    return ClipTable(sources)


def write_embeddings(
    encoder: Encoder,
    table: ClipTable,
    out_dir: str | os.PathLike,
    *,
    frames: bool = False,
    batch_size: int = 16,
    workers: int = 2,
    amp: str = "auto",
) -> EmbedSummary:
    """Embed every clip of ``table`` with ``encoder`` (on its device) into ``out_dir``."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    (out / "frames" if frames else out).mkdir(parents=True, exist_ok=True)
    n, dim = len(table), encoder.pooled_dim
    clip_emb = np.zeros((n, dim), dtype=np.float32)  # input order; compacted at the end
    n_frames = np.zeros(n, dtype=np.int64)
    valid = np.zeros(n, dtype=bool)
    skipped: list[tuple[str, str]] = list(table.skipped)
    device = encoder.device
    encoder.eval()
    with torch.no_grad():
        for batch in clip_batches(table, range(n), encoder.sample_rate, batch_size, workers):
            for _, name, reason in batch.skipped:
                _log.warning("skipping %s: %s", name, reason)
                skipped.append((name, reason))
            if not batch.indices:
                continue
            wave, lengths = batch.wave.to(device), batch.lengths.to(device)
            with autocast(device, amp):
                emb, _ = encoder.frames(wave, lengths)  # [B, T, D], zero past each clip
            counts = encoder.frame_lengths(lengths)  # [B] valid frames per clip
            # the clip embedding is the mean of the clip's valid frame embeddings (each frame
            # is the mean of its F_p tokens, so this is the mean of all its patch tokens)
            pooled = emb.float().sum(dim=1) / counts[:, None]
            if encoder.global_pool != "avg":  # class token or ATST features: a pass of their own
                with autocast(device, amp):
                    pooled = encoder.embed(wave, lengths).float()
            # host sync: results go to files, once per batch
            emb, pooled, counts = emb.float().cpu().numpy(), pooled.cpu().numpy(), counts.cpu()
            for row, index in enumerate(batch.indices):
                clip_emb[index] = pooled[row]
                n_frames[index] = int(counts[row])
                valid[index] = True
                if frames:
                    np.save(out / "frames" / f"{index:06d}.npy", emb[row, : n_frames[index]])
    if not valid.any():
        raise ValueError(f"no clip could be embedded ({len(skipped)} skipped)")
    keep = np.flatnonzero(valid)
    _save_npy(out / "embeddings.npy", clip_emb[keep])
    _write_index(out / "clips.csv", table, keep, n_frames, frames)
    times = encoder.patch_times_ms(2)
    meta = {
        "format": "fastspec-embeddings",
        "encoder": encoder.config(),
        "embed_dim": dim,
        "sample_rate": encoder.sample_rate,
        "clips": len(keep),
        "embeddings": {"file": "embeddings.npy", "shape": [len(keep), dim], "dtype": "float32"},
        "frames": frames,
        "first_frame_ms": float(times[0]),
        "frame_hop_ms": float(times[1] - times[0]),
        "skipped": [{"name": name, "reason": reason} for name, reason in skipped],
    }
    (out / "embed.json").write_text(json.dumps(meta, indent=2) + "\n")
    return EmbedSummary(out, len(keep), dim, frames, skipped, time.perf_counter() - t0)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)  # a reader never sees a half-written file


def _write_index(path: Path, table: ClipTable, keep, n_frames, frames: bool) -> None:
    """clips.csv: one line per row of embeddings.npy."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "name", "path", "seconds", "n_frames", "frames_file", "labels"])
        for row, index in enumerate(keep):
            writer.writerow(
                [
                    row,
                    table.name(index),
                    table.path(index) or "",
                    f"{table.seconds(index):.6g}",
                    int(n_frames[index]),
                    f"frames/{index:06d}.npy" if frames else "",
                    ";".join(table.label_names(index)),
                ]
            )
