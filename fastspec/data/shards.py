"""Tar shards in the WebDataset layout: the writer behind ``fastspec shard``, and a reader.

Layout (what WebDataset, DALI's ``fn.readers.webdataset`` and fastspec all read): each shard is
a plain POSIX tar; the files of one sample share a key (the member path up to the first dot of
its base name) and differ in extension::

    shard-000000.tar
        000000000.wav    16-bit PCM mono WAV (or 000000000.flac: 16-bit FLAC)
        000000000.json   {"name": "dogs/bark1.flac", "sample_rate": 16000, "frames": 80000,
                          "channels": 1, "labels": ["dog"]}
        000000001.wav
        ...
    classes.json         ["cat", "dog", ...] when the source was labeled (class index order)

Why int16 payloads: a 16-bit sample costs half the bytes of float32 and converts to float32
exactly (x / 32768), so a shard decodes with one ``np.frombuffer`` and one multiply, the cheapest
decode there is; FLAC payloads hold the same 16-bit samples losslessly compressed (about half
the size, at the cost of a real decode). The writer decodes, checks, mixes down and (optionally)
resamples every clip once, so training reads clips that are known to be good.

Reading (:class:`ShardSource`) is random access: opening scans the tar headers once (no payload
is read when a ``.json`` sidecar gives rate and length), and ``load(i)`` reads the member's bytes
with one ``os.pread``. So the sampler's permutation, crops and resume work on shards exactly as on
files, and the DALI loader decodes the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from fastspec._logging import get_logger
from fastspec.data.audio import (
    MIN_SECONDS,
    AudioInfo,
    BadAudioError,
    DataError,
    _check_header,
    decode_audio,
    probe_audio_bytes,
)
from fastspec.data.resample import resample
from fastspec.data.sources import AudioSource, CheckedSource, _Entry, _sorted_names

__all__ = [
    "SHARD_FORMATS",
    "ShardMember",
    "ShardSource",
    "ShardStats",
    "expand_shard_pattern",
    "write_shards",
]

_log = get_logger("fastspec.data")
# payload encodings the writer offers (both 16-bit: see the module docstring)
SHARD_FORMATS = ("int16", "flac")
_AUDIO_EXTS = ("wav", "flac", "ogg")


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ShardMember:
    """Where one sample's audio lies: byte range of a tar member, plus its JSON metadata."""

    shard: int  # index into ShardSource.shards
    key: str
    ext: str  # "wav", "flac" or "ogg"
    offset: int  # first byte of the payload in the tar
    size: int  # payload bytes
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def expand_shard_pattern(pattern: str) -> list[str]:
    """Expand WebDataset brace patterns: ``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar``.

    Supports numeric ranges (zero padding kept from the first bound) and lists ``{x,y}``, any
    number of times in one pattern.
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match[1], pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric[1], numeric[2]
        choices = [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [p for choice in choices for p in expand_shard_pattern(head + choice + tail)]


def _split_key(member_name: str) -> tuple[str, str]:
    """WebDataset's rule: the key runs to the first dot of the base name, the rest is the ext."""
    folder, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _scan_shard(path: str, shard: int) -> tuple[list[tuple[str, ShardMember | str]], str | None]:
    """The samples of one tar, in member order.

    Returns ``([(sample name, ShardMember or a skip reason)], shard-level problem or None)``.
    A truncated shard keeps the samples that lie wholly before the cut.
    """
    shard_name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        tar = tarfile.open(path, mode="r:")
    except FileNotFoundError:
        return [], "missing: shard does not exist"
    except (OSError, tarfile.TarError) as err:
        return [], f"unreadable: not a tar file ({err})"
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    problem = None
    with tar:
        try:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split_key(info.name)
                samples.setdefault(key, {})[ext] = info
        except (OSError, tarfile.TarError) as err:
            problem = f"truncated: tar cut short after {len(samples)} samples ({err})"
        out = []
        for key, members in samples.items():
            audio_ext = next((e for e in _AUDIO_EXTS if e in members), None)
            name = f"{shard_name}/{key}.{audio_ext or '?'}"
            if audio_ext is None:
                out.append((name, "missing: no .wav/.flac/.ogg member"))
                continue
            audio = members[audio_ext]
            if audio.offset_data + audio.size > size:
                out.append((name, "truncated: the shard ends inside this member"))
                continue
            meta: dict[str, Any] = {}
            if "json" in members:
                sidecar = members["json"]
                try:
                    if sidecar.offset_data + sidecar.size > size:
                        raise ValueError("cut short")
                    meta = json.loads(tar.extractfile(sidecar).read())
                    if not isinstance(meta, dict):
                        raise ValueError("not a JSON object")
                except (ValueError, OSError, tarfile.TarError) as err:
                    out.append((name, f"unreadable: {key}.json: {err}"))
                    continue
            member = ShardMember(shard, key, audio_ext, audio.offset_data, audio.size, meta)
            out.append((name, member))
    if problem is not None and any(
        isinstance(m, str) and m.startswith("truncated") for _, m in out
    ):
        problem = None  # the cut is inside a member, which is reported by name already
    if problem is None and not samples and size > 0:
        problem = "empty: no members"
    return out, problem


def _meta_labels(meta: dict[str, Any]) -> tuple[str, ...]:
    value = meta.get("labels", meta.get("label"))
    if value is None:
        return ()
    values = value if isinstance(value, (list, tuple)) else [value]
    return tuple(str(v) for v in values)


class ShardSource(CheckedSource):
    """Clips stored in WebDataset tar shards, with random access to each one.

    Args:
        shards: tar files, in order (their samples are indexed in shard order, then member
            order).
        description: what the source was opened from, for error messages.
        min_seconds: clips shorter than this are skipped.
        verify: decode every clip while opening.

    A shard that is missing, not a tar, or truncated is reported with one line (a truncated
    shard keeps its complete samples); samples without an audio member, with a broken JSON
    sidecar, or failing the header check are skipped like bad files. Metadata written by
    :func:`write_shards` (``sample_rate``, ``frames``) spares reading the payload at open time;
    samples without it are probed from their bytes. Labels are read from the sidecar's
    ``labels`` (or ``label``) entry, indexed by ``classes.json`` beside the first shard when
    present, else by the sorted label names.

    Raises:
        DataError: no usable sample at all.
    """

    def __init__(
        self,
        shards: Sequence[str | os.PathLike],
        *,
        description: str | None = None,
        min_seconds: float = MIN_SECONDS,
        verify: bool = False,
    ):
        self.shards = [os.fspath(s) for s in shards]
        if not self.shards:
            raise DataError(f"no shards in {description or 'the shard list'}")
        description = description or f"{len(self.shards)} shards"
        self._fds: dict[int, int] = {}
        self._fd_pid = os.getpid()
        self._fd_lock = threading.Lock()

        with ThreadPoolExecutor(max_workers=min(8, len(self.shards))) as pool:
            scans = list(pool.map(_scan_shard, self.shards, range(len(self.shards))))
        skipped, found = [], []
        for path, (samples, problem) in zip(self.shards, scans):
            if problem is not None:
                skipped.append((path, problem))
            for name, member in samples:
                if isinstance(member, str):  # a skip reason
                    skipped.append((name, member))
                else:
                    found.append((name, member))

        names = {label for _, m in found for label in _meta_labels(m.meta)}
        class_names = None
        if names:
            classes_file = Path(self.shards[0]).parent / "classes.json"
            if classes_file.is_file():
                class_names = [str(c) for c in json.loads(classes_file.read_text())]
            else:
                class_names = _sorted_names(names)
        index = {c: i for i, c in enumerate(class_names or [])}
        entries = []
        for name, member in found:
            labels = None
            if class_names is not None:
                unknown = [c for c in _meta_labels(member.meta) if c not in index]
                if unknown:
                    skipped.append((name, f"unreadable: label {unknown[0]!r} not in classes.json"))
                    continue
                labels = tuple(index[c] for c in _meta_labels(member.meta))
            entries.append(_Entry(location=member, name=name, labels=labels))
        super().__init__(
            entries,
            description=description,
            min_seconds=min_seconds,
            verify=verify,
            skipped=skipped,
            class_names=class_names,
        )

    def meta(self, index: int) -> dict[str, Any]:
        """The JSON sidecar of clip ``index`` (``name`` holds the file it was written from)."""
        return dict(self._entries[index].location.meta)

    def __getstate__(self) -> dict[str, Any]:
        # file descriptors and locks do not travel to DataLoader workers; each opens its own
        state = self.__dict__.copy()
        state.update(_fds={}, _fd_lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fd_lock = threading.Lock()

    def _fd(self, shard: int) -> int:
        """This process's read-only descriptor of a shard (reopened after a fork)."""
        with self._fd_lock:
            if self._fd_pid != os.getpid():  # a forked worker must not share the parent's offsets
                self._fds, self._fd_pid = {}, os.getpid()
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
            return fd

    def close(self) -> None:
        """Close the shard files (they reopen on the next read)."""
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}

    def __del__(self):
        try:
            if getattr(self, "_fd_pid", None) == os.getpid():
                self.close()
        except Exception:  # interpreter shutdown: nothing left to do
            pass

    def _read(self, member: ShardMember) -> np.ndarray:
        # pread: no shared file offset, so threads (DALI's feeder, probes) can read at once
        try:
            data = os.pread(self._fd(member.shard), member.size, member.offset)
        except OSError as err:
            raise BadAudioError(
                self.shards[member.shard], f"unreadable: {err.strerror or err}"
            ) from None
        if len(data) < member.size:
            raise BadAudioError(
                f"{os.path.basename(self.shards[member.shard])}/{member.key}.{member.ext}",
                f"truncated: read {len(data)} of {member.size} bytes",
            )
        return np.frombuffer(data, dtype=np.uint8)

    def _name(self, member: ShardMember) -> str:
        return f"{os.path.basename(self.shards[member.shard])}/{member.key}.{member.ext}"

    def _probe(self, member: ShardMember) -> AudioInfo:
        meta, name = member.meta, self._name(member)
        rate, frames = meta.get("sample_rate"), meta.get("frames")
        if isinstance(rate, int) and isinstance(frames, int):
            # metadata written with the shard: trusted for the crop plan; decoding checks the
            # payload again (a payload shorter than its metadata is reported as truncated)
            channels = meta.get("channels", 1)
            info = AudioInfo(name, frames, rate, channels, member.ext.upper(), "")
            _check_header(info, self.min_seconds)
            return info
        return probe_audio_bytes(self._read(member), name, min_seconds=self.min_seconds)

    def _decode(self, member: ShardMember, start: int, frames: int) -> tuple[np.ndarray, int]:
        return decode_audio(
            self._read(member),
            self._name(member),
            min_seconds=self.min_seconds,
            start=start,
            frames=frames,
        )


# --------------------------------------------------------------------------- writing


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
