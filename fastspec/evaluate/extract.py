"""Batched embedding extraction: decode each clip once, feed it to several embedders.

Clips are decoded on a thread pool (libsndfile and the torch resampler release the GIL), sorted
by their header length so that a batch holds clips of similar length (little padding), padded
into ``wave [B, S]`` with ``lengths [B]``, and handed to every embedder. The encoder gives a
padded batch the embeddings of its clips run one at a time, so the order changes nothing.

A file that fails a decode-time check (NaN samples, silence, truncation) is skipped with one
log line and reported; its rows stay zero and ``valid`` marks them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fastspec._logging import get_logger
from fastspec.data import BadAudioError
from fastspec.encoder import Encoder
from fastspec.evaluate.tasks import ClipTable

__all__ = ["Batch", "Extraction", "clip_batches", "extract", "logmel_stats", "resolve_device"]

_log = get_logger("fastspec.evaluate")

# an embedder: (wave [B, S] float32, lengths [B] int64) on the device -> [B, D] float32
Embedder = Callable[[Tensor, Tensor], Tensor]


def resolve_device(name: str | None) -> torch.device:
    """``auto``/None: CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def autocast(device: torch.device, amp: str):
    """bf16 autocast on ``device`` when ``amp`` is ``bf16`` (``auto``: bf16 on CUDA only)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "none":
        return contextlib.nullcontext()
    if amp != "bf16":
        raise ValueError(f"amp must be auto, bf16 or none, got {amp!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass
class Batch:
    """Decoded clips: ``indices`` into the table, ``wave`` float32 [B, S] zero-padded, and
    ``lengths`` int64 [B]; ``skipped`` lists (index, name, reason) of clips that failed."""

    indices: list[int]
    wave: Tensor
    lengths: Tensor
    skipped: list[tuple[int, str, str]] = field(default_factory=list)


def _load(table: ClipTable, index: int, sample_rate: int):
    try:
        return table.load(index, sample_rate)
    except BadAudioError as err:
        return err


def clip_batches(
    table: ClipTable,
    indices: Sequence[int],
    sample_rate: int,
    batch_size: int,
    workers: int = 2,
    sort_by_length: bool = True,
    transform: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> Iterator[Batch]:
    """Batches of the clips ``indices`` decoded at ``sample_rate``, longest first when sorted
    (else in the given order).

    ``transform(index, wave)`` (e.g. a random crop) runs on each decoded clip in the decoding
    threads, which run ``workers`` at a time, one batch ahead of the consumer.
    """
    order = list(indices)
    if sort_by_length:
        # longest first: the first batch shows the peak memory at once, not at the very end
        order.sort(key=lambda i: -table.seconds(i))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def decode(chunk: list[int]) -> Batch:
        waves = [_load(table, i, sample_rate) for i in chunk]
        good = [(i, w) for i, w in zip(chunk, waves) if not isinstance(w, BadAudioError)]
        if transform is not None:
            good = [(i, transform(i, w)) for i, w in good]
        skipped = [
            (i, table.name(i), w.reason)
            for i, w in zip(chunk, waves)
            if isinstance(w, BadAudioError)
        ]
        lengths = torch.tensor([w.shape[0] for _, w in good], dtype=torch.long)
        wave = torch.zeros(len(good), int(lengths.max()) if len(good) else 0)
        for row, (_, w) in enumerate(good):
            wave[row, : w.shape[0]] = torch.from_numpy(w)
        return Batch([i for i, _ in good], wave, lengths, skipped)

    if workers <= 0:
        yield from map(decode, chunks)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # one batch in flight ahead of the consumer: bounded memory, overlapped decoding
        pending = None
        for chunk in chunks:
            future = pool.submit(decode, chunk)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


def logmel_stats(frontend) -> Embedder:
    """The log-mel baseline: mean and standard deviation of each mel bin over a clip's valid
    frames, [B, 2 F] (a clip with no complete frame gets zeros)."""

    def embed(wave: Tensor, lengths: Tensor) -> Tensor:
        mel, n_frames = frontend(wave, lengths, return_lengths=True)  # [B, T, F], [B]
        t = torch.arange(mel.shape[1], device=mel.device)
        valid = (t[None, :] < n_frames[:, None]).to(mel.dtype)[..., None]  # [B, T, 1]
        count = n_frames.clamp_min(1).to(mel.dtype)[:, None]  # [B, 1]
        mean = (mel * valid).sum(dim=1) / count
        var = (((mel - mean[:, None]) ** 2) * valid).sum(dim=1) / count
        return torch.cat([mean, var.sqrt()], dim=1).float()

    return embed


def encoder_embedder(encoder: Encoder) -> Embedder:
    """Clip embeddings [B, D] of ``encoder`` (its pooled features by its ``global_pool``,
    whatever head it has)."""

    def embed(wave: Tensor, lengths: Tensor) -> Tensor:
        return encoder.embed(wave, lengths)

    return embed


@dataclass
class Extraction:
    """What :func:`extract` computed: ``features[name]`` float32 [N, D_name] (rows of skipped
    clips are zero), ``valid`` bool [N], ``skipped`` (index, name, reason), and seconds spent."""

    features: dict[str, np.ndarray]
    valid: np.ndarray
    skipped: list[tuple[int, str, str]]
    seconds: float = 0.0


def extract(
    table: ClipTable,
    embedders: dict[str, Embedder],
    *,
    sample_rate: int,
    device: torch.device,
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    workers: int = 2,
    amp: str = "auto",
) -> Extraction:
    """Run every embedder on every clip of ``indices`` (default: all), decoding each clip once."""
    t0 = time.perf_counter()
    n = len(table)
    indices = range(n) if indices is None else indices
    features: dict[str, np.ndarray] = {}
    valid = np.zeros(n, dtype=bool)
    skipped: list[tuple[int, str, str]] = []
    with torch.no_grad():
        for batch in clip_batches(table, indices, sample_rate, batch_size, workers):
            for _, name, reason in batch.skipped:
                _log.warning("skipping %s: %s", name, reason)
            skipped += batch.skipped
            if not batch.indices:
                continue
            wave = batch.wave.to(device, non_blocking=True)
            lengths = batch.lengths.to(device)
            for key, embed in embedders.items():
                with autocast(device, amp):
                    out = embed(wave, lengths)
                # host sync: the features are collected on the host, once per batch
                out = out.float().cpu().numpy()
                if key not in features:
                    features[key] = np.zeros((n, out.shape[1]), dtype=np.float32)
                features[key][batch.indices] = out
            valid[batch.indices] = True
    return Extraction(features, valid, skipped, time.perf_counter() - t0)
