"""Reading tar shards in the WebDataset layout: :class:`ShardSource`.

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

:mod:`fastspec.data.shard_writer` writes them (``fastspec shard``). Reading is random access:
opening scans the tar headers once (no payload is read when a ``.json`` sidecar gives rate and
length), and ``load(i)`` reads the member's bytes with one ``os.pread``. So the sampler's
permutation, crops and resume work on shards exactly as on files, and the DALI loader decodes the
same bytes.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastspec.data._utils import sorted_names
from fastspec.data.audio import (
    MIN_SECONDS,
    AudioInfo,
    BadAudioError,
    DataError,
    check_header,
    decode_audio,
    probe_audio_bytes,
)
from fastspec.data.sources import CheckedSource, SourceEntry

__all__ = ["ShardMember", "ShardSource", "expand_shard_pattern"]

_AUDIO_EXTS = ("wav", "flac", "ogg")


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


def _read_classes(path: Path) -> list[str]:
    """The class names of ``classes.json`` (a JSON list); DataError naming the file otherwise."""
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if not isinstance(names, list):
        raise DataError(f"{path} must hold a JSON list of class names, got {type(names).__name__}")
    return [str(name) for name in names]


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
                class_names = _read_classes(classes_file)
            else:
                class_names = sorted_names(names)
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
            entries.append(SourceEntry(location=member, name=name, labels=labels))
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
            check_header(info, self.min_seconds)
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
