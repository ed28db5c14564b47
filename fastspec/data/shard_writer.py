"""Writing tar shards in the WebDataset layout: :func:`write_shards`, behind ``fastspec shard``.

The layout is described in :mod:`fastspec.data.shard_reader`, which reads it back.

Why int16 payloads: a 16-bit sample costs half the bytes of float32 and converts to float32
exactly (x / 32768), so a shard decodes with one ``np.frombuffer`` and one multiply, the cheapest
decode there is; FLAC payloads hold the same 16-bit samples losslessly compressed (about half
the size, at the cost of a real decode). The writer decodes, checks, mixes down and (optionally)
resamples every clip once, so training reads clips that are known to be good.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from fastspec._logging import get_logger
from fastspec.data.audio import BadAudioError, DataError
from fastspec.data.sources import AudioSource
from fastspec.frontend.polyphase import resample

__all__ = ["SHARD_FORMATS", "ShardStats", "write_shards"]

_log = get_logger("fastspec.data")
# payload encodings the writer offers (both 16-bit: see the module docstring)
SHARD_FORMATS = ("int16", "flac")


@dataclass
class ShardStats:
    """What :func:`write_shards` wrote."""

    shards: list[str]
    clips: int
    seconds: float  # audio written
    bytes: int
    skipped: list[tuple[str, str]]
    wall_seconds: float


def _encode(wave: np.ndarray, sample_rate: int, fmt: str) -> tuple[bytes, str]:
    """Mono float32 in [-1, 1] -> (payload bytes, extension), 16-bit in both formats."""
    # round to the nearest 16-bit step (scale 32768, as the reader divides by): a 16-bit source
    # survives the round trip bit for bit
    pcm = np.clip(np.rint(wave * np.float32(32768.0)), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    if fmt == "int16":
        sf.write(buffer, pcm, sample_rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue(), "wav"
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), "flac"


def _tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    info.mtime = 0  # reproducible shards: the same input writes the same bytes
    tar.addfile(info, io.BytesIO(payload))


class _ShardWriter:
    """Rolls over to a new tar after ``max_count`` samples or ``max_bytes`` bytes; each tar is
    written under a temporary name and renamed when complete, so a killed run leaves no partial
    shard that looks finished."""

    def __init__(self, out_dir: Path, prefix: str, max_count: int, max_bytes: int):
        self.out_dir, self.prefix = out_dir, prefix
        self.max_count, self.max_bytes = max_count, max_bytes
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._count = self._bytes = 0

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        size = sum(len(payload) for _, payload in members)
        if self._tar is not None and (
            self._count >= self.max_count or self._bytes + size > self.max_bytes
        ):
            self._finish()
        if self._tar is None:
            path = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
            self.paths.append(str(path))
            self._tar = tarfile.open(f"{path}.tmp", mode="w", format=tarfile.USTAR_FORMAT)
            self._count = self._bytes = 0
        for ext, payload in members:
            _tar_member(self._tar, f"{key}.{ext}", payload)
        self._count += 1
        self._bytes += size

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(f"{self.paths[-1]}.tmp", self.paths[-1])
            self._tar = None

    def close(self) -> None:
        self._finish()


def write_shards(
    source: AudioSource,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "int16",
    sample_rate: int | None = None,
    max_count: int = 10_000,
    max_bytes: int = 1 << 30,
    prefix: str = "shard",
    workers: int = 2,
) -> ShardStats:
    """Write ``source`` (a folder, manifest, dataset...) as WebDataset tar shards.

    Every clip is decoded and checked (:func:`fastspec.data.read_audio`: a bad file is skipped
    with one line and counted), mixed down to mono, resampled to ``sample_rate`` when given, and
    stored as 16-bit PCM: ``fmt="int16"`` (WAV payloads, the fastest to read) or ``"flac"``.
    Labels of a labeled source go into each sample's JSON and into ``classes.json``.

    Args:
        source: what to write, in its order.
        out_dir: output folder (created; existing shards with the same prefix are an error).
        fmt: ``"int16"`` or ``"flac"``.
        sample_rate: resample to this rate (None: keep each file's rate).
        max_count, max_bytes: start a new shard after this many samples, or before exceeding
            this many bytes.
        prefix: shard names are ``{prefix}-{000000}.tar``.
        workers: threads decoding and encoding (libsndfile and numpy release the GIL).

    Returns:
        A :class:`ShardStats`.

    Raises:
        DataError: nothing could be written (every clip bad), or the folder holds shards.
    """
    if fmt not in SHARD_FORMATS:
        raise ValueError(f"fmt must be one of {SHARD_FORMATS}, got {fmt!r}")
    if max_count < 1 or max_bytes < 1:
        raise ValueError("max_count and max_bytes must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing:
        raise DataError(f"{out} already holds shards ({existing[0].name}, ...); choose another")
    start = time.perf_counter()
    class_names = getattr(source, "class_names", None)

    def prepare(index: int) -> tuple[int, Any]:
        try:
            wave, rate = source.load(index)
        except BadAudioError as err:
            return index, err
        if sample_rate is not None and rate != sample_rate:
            # the full clip, then the same [-1, 1] guard the loader applies after resampling
            wave, rate = np.clip(resample(wave, rate, sample_rate), -1.0, 1.0), sample_rate
        payload, ext = _encode(wave, rate, fmt)
        meta: dict[str, Any] = {
            "name": source.name(index),
            "sample_rate": int(rate),
            "frames": int(wave.shape[0]),
            "channels": 1,
        }
        if class_names is not None:
            meta["labels"] = [class_names[k] for k in source.labels(index)]
        return index, (payload, ext, meta)

    writer = _ShardWriter(out, prefix, max_count, max_bytes)
    skipped: list[tuple[str, str]] = []
    written = total_bytes = 0
    seconds = 0.0
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for index, result in _ordered(pool, prepare, range(len(source)), workers):
                if isinstance(result, BadAudioError):
                    skipped.append((source.name(index), result.reason))
                    _log.warning("skipping %s: %s", source.name(index), result.reason)
                    continue
                payload, ext, meta = result
                sidecar = json.dumps(meta, sort_keys=True).encode()
                # keys without dots (WebDataset splits the extension at the first dot)
                writer.add(f"{written:09d}", [(ext, payload), ("json", sidecar)])
                written += 1
                total_bytes += len(payload) + len(sidecar)
                seconds += meta["frames"] / meta["sample_rate"]
    finally:
        writer.close()
    if written == 0:
        raise DataError(
            f"nothing written to {out}: all {len(skipped)} clips of {source!r} were skipped"
        )
    if class_names is not None:
        (out / "classes.json").write_text(json.dumps(list(class_names)))
    return ShardStats(
        shards=writer.paths,
        clips=written,
        seconds=seconds,
        bytes=total_bytes,
        skipped=list(getattr(source, "skipped", [])) + skipped,
        wall_seconds=time.perf_counter() - start,
    )


def _ordered(pool: ThreadPoolExecutor, fn, items: Iterable[int], workers: int) -> Iterator:
    """``map(fn, items)`` on the pool with a bounded window, in input order."""
    window = max(2, 4 * workers)
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()
