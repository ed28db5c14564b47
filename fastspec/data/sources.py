"""Audio sources: what ``--data`` points at, opened into an indexable list of clips.

An :class:`AudioSource` is anything with ``len(source)``, ``source.load(i) -> (wave, sr)``,
``source.name(i)``, ``source.sample_rate`` and ``source.skipped``. The kinds:

- :class:`fastspec.data.DemoCorpus`, the synthetic corpus (``open_source(None)``);
- :class:`FileSource`, audio files from a folder scan or a CSV / JSON-lines manifest (whose rows
  may also give a label and a segment ``offset`` / ``duration`` in seconds);
- :class:`LabeledSource`, a FileSource whose clips carry class labels: manifests with a label
  column and the dataset readers of :mod:`fastspec.data.datasets` (ESC-50, Speech Commands,
  AudioSet). Labels are for evaluation; pretraining ignores them;
- :class:`fastspec.data.shards.ShardSource`, tar shards in the WebDataset layout.

The file and shard sources share :class:`CheckedSource`, which also gives the DALI loader what it
needs: the encoded bytes of clip ``i`` (:meth:`~CheckedSource.encoded`) and where the clip lies in
them (:meth:`~CheckedSource.span`), both known on the host before anything is decoded.

Opening probes every file's header (:func:`probe_audio`, tens of microseconds a file, on a
thread pool because network file systems are latency bound), so missing files, files that are
not audio, empty, too short or truncated WAVs are dropped before training starts, each with one
log line. What only decoding reveals (NaN samples, silence, a FLAC that loses sync) surfaces
later in ``load`` as :class:`BadAudioError`, which :class:`fastspec.data.ClipDataset` turns into a
skip; opening still decodes files in order until one passes, so a corpus in which nothing
decodes fails at open time, and ``verify=True`` decodes every file up front.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from fastspec._logging import get_logger
from fastspec.data.audio import (
    AUDIO_EXTENSIONS,
    MIN_SECONDS,
    AudioInfo,
    BadAudioError,
    DataError,
    probe_audio,
    read_audio,
)
from fastspec.data.demo import DemoCorpus

__all__ = [
    "AudioSource",
    "CheckedSource",
    "ClipSpan",
    "FileSource",
    "LabeledSource",
    "ManifestRow",
    "open_source",
    "read_manifest",
    "summarize_skipped",
]

_log = get_logger("fastspec.data")
# Probing is I/O bound (libsndfile releases the GIL through cffi); more threads than this buy
# nothing on a local disk and little on NFS.
_PROBE_THREADS = 16


@runtime_checkable
class AudioSource(Protocol):
    """An indexable collection of audio clips."""

    sample_rate: int | None  # common rate of all clips, None when files differ
    skipped: list[tuple[str, str]]  # (name, reason) of everything dropped at open time

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """``(wave float32 [S] mono in [-1, 1], sample_rate)``; may raise BadAudioError."""
        ...

    def name(self, index: int) -> str: ...


class ClipSpan(NamedTuple):
    """Where clip ``i`` lies in its encoded file, from the header (nothing decoded).

    ``load(i)`` decodes frames ``[start, start + frames)`` of a file of ``file_frames`` frames
    at ``sample_rate``; both loaders crop from this span.
    """

    sample_rate: int
    file_frames: int
    start: int
    frames: int


def summarize_skipped(skipped: Sequence[tuple[str, str]]) -> str:
    """``"3 unreadable, 1 empty"``: skip reasons counted by kind (the text before the colon)."""
    counts = collections.Counter(reason.split(":", 1)[0] for _, reason in skipped)
    return ", ".join(f"{count} {kind}" for kind, count in counts.most_common())


@dataclass(frozen=True)
class _Entry:
    """One candidate clip while a source is opened."""

    location: Any  # a path for files, a shard member for shards
    name: str
    offset: float = 0.0  # segment start in seconds
    duration: float | None = None  # segment length in seconds (None: to the end)
    labels: tuple[int, ...] | None = None


class CheckedSource:
    """Encoded audio clips that passed the open-time checks, in a fixed order.

    The shared machinery of :class:`FileSource` and :class:`~fastspec.data.shards.ShardSource`:
    subclasses say how to probe, decode and read one location (a path, a shard member).

    Labels (optional): ``class_names`` lists the classes, and ``labels(i)`` gives the class
    indices of clip ``i`` (one for single-label datasets, several for AudioSet).
    """

    def __init__(
        self,
        entries: Sequence[_Entry],
        *,
        description: str,
        min_seconds: float = MIN_SECONDS,
        verify: bool = False,
        skipped: Iterable[tuple[str, str]] = (),
        class_names: Sequence[str] | None = None,
        split: str | None = None,
    ):
        self.description = description
        self.min_seconds = float(min_seconds)
        self.class_names: list[str] | None = list(class_names) if class_names else None
        self.split = split
        self.skipped: list[tuple[str, str]] = []
        for name, reason in skipped:
            self._skip(name, reason)

        # (entry, header info, span) of the clips still in the running
        kept = []
        for entry, result in zip(entries, _map_checked(self._probe_entry, list(entries))):
            if isinstance(result, BadAudioError):
                self._skip(entry.name, result.reason)
            else:
                kept.append((entry, *result))
        # Headers miss what only decoding shows (NaN samples, silence, a FLAC cut short). With
        # verify, decode every clip now; otherwise decode in order until one passes, so that a
        # corpus without a single decodable clip fails here, before training, rather than in
        # the first batch. On a healthy corpus that costs one decode.
        if verify:
            errors = _map_checked(self._decode_check, kept)
            for (entry, _, _), error in zip(kept, errors):
                if error is not None:
                    self._skip(entry.name, error.reason)
            kept = [item for item, error in zip(kept, errors) if error is None]
        else:
            first_good = 0
            while first_good < len(kept):
                error = self._decode_check(kept[first_good])
                if error is None:
                    break
                self._skip(kept[first_good][0].name, error.reason)
                first_good += 1
            kept = kept[first_good:]

        self._entries: list[_Entry] = [entry for entry, _, _ in kept]
        self.infos: list[AudioInfo] = [info for _, info, _ in kept]  # header of each kept file
        self._spans: list[ClipSpan] = [span for _, _, span in kept]

        if not self._entries:
            # every candidate (probed or dropped before probing) is now in self.skipped
            if not self.skipped:
                raise DataError(f"no audio files in {self.description}")
            raise DataError(
                f"no usable audio in {self.description}: all {len(self.skipped)} files were "
                f"skipped ({summarize_skipped(self.skipped)})"
            )
        if self.skipped:
            _log.warning(
                "%s: using %d files, skipped %d (%s)",
                self.description,
                len(self._entries),
                len(self.skipped),
                summarize_skipped(self.skipped),
            )
        rates = {span.sample_rate for span in self._spans}
        self.sample_rate: int | None = rates.pop() if len(rates) == 1 else None

    # -- what subclasses provide

    def _probe(self, location: Any) -> AudioInfo:
        """Header check of one location; raises BadAudioError."""
        raise NotImplementedError

    def _decode(self, location: Any, start: int, frames: int) -> tuple[np.ndarray, int]:
        """Decode frames ``[start, start + frames)``; raises BadAudioError."""
        raise NotImplementedError

    def _read(self, location: Any) -> np.ndarray:
        """The encoded file as uint8 ``[nbytes]``."""
        raise NotImplementedError

    # -- open-time checks

    def _probe_entry(self, entry: _Entry) -> tuple[AudioInfo, ClipSpan] | BadAudioError:
        """Header check plus the segment in frames, with a failure returned rather than raised."""
        try:
            info = self._probe(entry.location)
            return info, _span_of(entry, info, self.min_seconds)
        except BadAudioError as err:
            return err

    def _decode_check(self, kept: tuple[_Entry, AudioInfo, ClipSpan]) -> None | BadAudioError:
        """The full decode check, with a failure returned rather than raised."""
        entry, _, span = kept
        try:
            self._decode(entry.location, span.start, span.frames)
        except BadAudioError as err:
            return err
        return None

    def _skip(self, name: str, reason: str) -> None:
        """Record and log one unusable entry (one line each, as DESIGN.md section 7 asks)."""
        self.skipped.append((name, reason))
        _log.warning("skipping %s: %s", name, reason)

    # -- the AudioSource interface

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.description}: {len(self)} clips, "
            f"{len(self.skipped)} skipped)"
        )

    @property
    def total_seconds(self) -> float:
        """Duration of all kept clips according to the headers."""
        return float(sum(span.frames / span.sample_rate for span in self._spans))

    def name(self, index: int) -> str:
        """Display name of clip ``index`` (relative path for folders, manifest entry otherwise)."""
        return self._entries[index].name

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Decode clip ``index``: ``(wave float32 [S] mono in [-1, 1], sample_rate)``.

        Raises:
            BadAudioError: the clip fails a check that needs decoding (see :func:`read_audio`).
        """
        span = self._spans[index]
        return self._decode(self._entries[index].location, span.start, span.frames)

    # -- what the DALI loader reads

    def span(self, index: int) -> ClipSpan:
        """Where clip ``index`` lies in its encoded file (header values, nothing decoded)."""
        return self._spans[index]

    def encoded(self, index: int) -> np.ndarray:
        """The whole encoded file of clip ``index`` as uint8 ``[nbytes]`` (for DALI to decode).

        Raises:
            BadAudioError: the file can no longer be read.
        """
        return self._read(self._entries[index].location)

    # -- labels (evaluation only)

    @property
    def labeled(self) -> bool:
        """Whether the clips carry class labels."""
        return self.class_names is not None

    @property
    def multilabel(self) -> bool:
        """Whether some clip has more or fewer than one label (AudioSet)."""
        return self.labeled and any(len(e.labels or ()) != 1 for e in self._entries)

    def labels(self, index: int) -> tuple[int, ...]:
        """Class indices of clip ``index`` (into :attr:`class_names`)."""
        if self.class_names is None:
            raise DataError(f"{self!r} carries no labels")
        return self._entries[index].labels or ()

    def label(self, index: int) -> int:
        """The class index of clip ``index`` in a single-label dataset."""
        labels = self.labels(index)
        if len(labels) != 1:
            raise DataError(
                f"{self.name(index)} has {len(labels)} labels; use labels(i) or targets() for "
                "multi-label data"
            )
        return labels[0]

    def targets(self) -> np.ndarray:
        """Multi-hot targets of all clips: float32 ``[len(self), len(class_names)]``."""
        if self.class_names is None:
            raise DataError(f"{self!r} carries no labels")
        out = np.zeros((len(self), len(self.class_names)), dtype=np.float32)
        for i, entry in enumerate(self._entries):
            out[i, list(entry.labels or ())] = 1.0
        return out


def _span_of(entry: _Entry, info: AudioInfo, min_seconds: float) -> ClipSpan:
    """The entry's segment in frames, cut at the end of the file; BadAudioError if unusable."""
    rate = info.sample_rate
    start = round(entry.offset * rate)
    if start >= info.frames:
        raise BadAudioError(
            entry.name,
            f"too short: offset {entry.offset:g} s is past the end ({info.duration:g} s)",
        )
    frames = info.frames - start
    if entry.duration is not None:
        frames = min(frames, round(entry.duration * rate))
    if frames < max(1, math.ceil(min_seconds * rate)):
        raise BadAudioError(
            entry.name,
            f"too short: segment of {frames} frames at {rate} Hz (minimum {min_seconds * 1000:g} ms)",
        )
    return ClipSpan(rate, info.frames, start, frames)


class FileSource(CheckedSource):
    """Audio files that passed the open-time checks, in a fixed order.

    Build one with :func:`open_source`, or directly from a list of paths.

    Args:
        paths: audio files, in the order clips are indexed.
        names: display names for logs (defaults to the paths).
        description: what the source was opened from, for error messages.
        min_seconds: files (or segments) shorter than this are skipped.
        verify: decode every file at open time (catches NaN, silent and truncated files up
            front; costs a full pass over the corpus). Otherwise only headers are checked,
            plus files in order until the first one that decodes.
        skipped: entries already dropped before probing (manifest rows pointing nowhere).
        segments: per file ``(offset_seconds, duration_seconds or None)``: use only that part.
        labels: per file the class indices (into ``class_names``), for evaluation.
        class_names: the classes the labels index.
        split: which split of a dataset this is (``"train"``, ``"fold1"``...), informational.

    Raises:
        DataError: when no file is usable, naming the source and counting the reasons.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        names: Iterable[str] | None = None,
        description: str | None = None,
        min_seconds: float = MIN_SECONDS,
        verify: bool = False,
        skipped: Iterable[tuple[str, str]] = (),
        segments: Sequence[tuple[float, float | None]] | None = None,
        labels: Sequence[Sequence[int]] | None = None,
        class_names: Sequence[str] | None = None,
        split: str | None = None,
    ):
        paths = [os.fspath(p) for p in paths]
        names = list(names) if names is not None else list(paths)
        for what, values in (("names", names), ("segments", segments), ("labels", labels)):
            if values is not None and len(values) != len(paths):
                raise ValueError(f"got {len(paths)} paths but {len(values)} {what}")
        if (labels is None) != (class_names is None):
            raise ValueError("labels and class_names go together")
        entries = [
            _Entry(
                location=path,
                name=names[i],
                offset=float(segments[i][0]) if segments else 0.0,
                duration=segments[i][1] if segments else None,
                labels=tuple(int(k) for k in labels[i]) if labels is not None else None,
            )
            for i, path in enumerate(paths)
        ]
        super().__init__(
            entries,
            description=description or f"{len(paths)} audio files",
            min_seconds=min_seconds,
            verify=verify,
            skipped=skipped,
            class_names=class_names,
            split=split,
        )

    def _probe(self, location: str) -> AudioInfo:
        return probe_audio(location, min_seconds=self.min_seconds)

    def _decode(self, location: str, start: int, frames: int) -> tuple[np.ndarray, int]:
        return read_audio(location, min_seconds=self.min_seconds, start=start, frames=frames)

    def _read(self, location: str) -> np.ndarray:
        try:
            return np.fromfile(location, dtype=np.uint8)
        except OSError as err:
            raise BadAudioError(location, f"unreadable: {err.strerror or err}") from None

    def path(self, index: int) -> str:
        """File path of clip ``index``."""
        return self._entries[index].location


class LabeledSource(FileSource):
    """A :class:`FileSource` whose clips carry class labels: what evaluation reads.

    Returned by the dataset readers (:func:`fastspec.data.open_esc50`,
    :func:`~fastspec.data.open_speech_commands`, :func:`~fastspec.data.open_audioset`) and by
    :func:`open_source` for a manifest with a ``label`` column. On top of the FileSource
    interface:

    - ``class_names: list[str]``: the classes, in index order;
    - ``labels(i) -> tuple[int, ...]``, ``label(i) -> int`` (single-label data),
      ``targets() -> float32 [N, C]`` multi-hot, ``multilabel``;
    - ``split``: the split or folds it was opened with.

    Pretraining treats it as any other source and never reads the labels.
    """

    def __init__(self, paths, *, labels, class_names, **kwargs):
        if not class_names:
            raise ValueError("a LabeledSource needs class_names")
        super().__init__(paths, labels=labels, class_names=class_names, **kwargs)


def _map_checked(check, items: list) -> list:
    """``[check(item) for item in items]``, on a thread pool for many items.

    Results stay in input order, so the kept files (and with them every dataset index) are the
    same however the threads are scheduled.
    """
    if len(items) < 64:  # a thread pool costs more than it saves on a handful of files
        return [check(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_PROBE_THREADS, len(items) // 16)) as pool:
        return list(pool.map(check, items))


def _scan_folder(root: Path, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
    """Files under ``root`` with one of ``extensions`` (recursively, following symlinks once),
    sorted by relative path.

    Sorting makes the dataset index of a file independent of the file system's listing order,
    which differs between machines and would otherwise change the data order of a resumed run.
    """
    found = []
    seen_dirs = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a symlink cycle, or two links to one folder
            dirs[:] = []
            continue
        seen_dirs.add(real)
        found.extend(Path(folder, f) for f in files if f.lower().endswith(extensions))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@dataclass(frozen=True)
class ManifestRow:
    """One usable row of a manifest."""

    path: str  # as written (relative paths resolve against the manifest's folder)
    labels: tuple[str, ...] = ()  # label names, empty when the manifest has none
    offset: float = 0.0  # segment start in seconds
    duration: float | None = None  # segment length in seconds


def _number(value: Any, what: str) -> float | None:
    """A non-negative finite number from a manifest cell; None for an empty cell."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} {value!r} must be a finite number >= 0")
    return number


def _labels_of(value: Any) -> tuple[str, ...]:
    """Label names from a cell: a string (several separated by ``;``), a number, or a list."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(part.strip() for part in str(value).split(";") if part.strip())


def _row(record: dict[str, Any]) -> ManifestRow:
    """A manifest record (CSV row or JSON object) as a ManifestRow; ValueError if unusable."""
    path = record.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ValueError("missing: empty path" if isinstance(path, str) else "missing: no 'path'")
    label = record.get("label", record.get("labels"))
    return ManifestRow(
        path=path.strip(),
        labels=_labels_of(label),
        offset=_number(record.get("offset"), "offset") or 0.0,
        duration=_number(record.get("duration"), "duration"),
    )


def read_manifest(manifest: str | os.PathLike) -> tuple[list[ManifestRow], list[tuple[str, str]]]:
    """The rows of a CSV or JSON-lines manifest.

    A CSV needs a header row with a ``path`` column; a JSON-lines file holds one object per
    line with a ``"path"`` key. Optional columns / keys: ``label`` (or ``labels``; several
    labels separated by ``;`` in CSV, or a JSON list), ``offset`` and ``duration`` in seconds
    (use only that segment of the file). Header names are matched case-insensitively.

    Returns the usable rows and the rows that could not be used as ``(name, reason)``, where
    ``name`` is ``manifest.csv:LINE``.

    Raises:
        DataError: unreadable manifest, or no path column at all.
    """
    manifest = Path(manifest)
    rows: list[ManifestRow] = []
    bad_rows: list[tuple[str, str]] = []
    where = f"manifest {str(manifest)!r}"
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from spreadsheets
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {where}: {err}") from None

    def add(record: dict[str, Any], line: int) -> None:
        try:
            rows.append(_row(record))
        except ValueError as err:
            reason = str(err)
            if not reason.startswith("missing"):
                reason = f"unreadable: {reason}"
            bad_rows.append((f"{manifest.name}:{line}", reason))

    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        # header names compared case-insensitively and stripped: "Path", " path" both work
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "path" not in fields:
            raise DataError(
                f"{where} has no 'path' column in its header row (columns: {fields or 'none'})"
            )
        reader.fieldnames = fields
        for record in reader:
            add(record, reader.line_num)
        return rows, bad_rows

    saw_path_key = False
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as err:
            bad_rows.append((f"{manifest.name}:{line_no}", f"unreadable: invalid JSON ({err.msg})"))
            continue
        if not isinstance(record, dict):
            bad_rows.append((f"{manifest.name}:{line_no}", "missing: not a JSON object"))
            continue
        saw_path_key |= "path" in record
        add(record, line_no)
    if not saw_path_key and (rows or bad_rows):
        raise DataError(f"{where} has no object with a 'path' key")
    return rows, bad_rows


def _open_manifest(path: Path, spec: str, min_seconds: float, verify: bool) -> FileSource:
    """A manifest as a FileSource, or a LabeledSource when its rows carry labels."""
    rows, skipped = read_manifest(path)
    # a row naming a file that does not exist fails the probe ("missing: ...") and is skipped
    # and counted like any other unusable file, rather than failing the whole run
    files = [path.parent / os.path.expanduser(row.path) for row in rows]  # absolute stays
    options = {
        "names": [row.path for row in rows],
        "description": f"manifest {spec!r}",
        "min_seconds": min_seconds,
        "verify": verify,
        "skipped": skipped,
        "segments": [(row.offset, row.duration) for row in rows],
    }
    if not any(row.labels for row in rows):
        return FileSource(files, **options)
    class_names = _sorted_names({label for row in rows for label in row.labels})
    index = {name: i for i, name in enumerate(class_names)}
    labels = [tuple(index[label] for label in row.labels) for row in rows]
    return LabeledSource(files, labels=labels, class_names=class_names, **options)


def _sorted_names(names: Iterable[str]) -> list[str]:
    """Class names in a stable order: numerically when all are integers ("2" before "10")."""
    names = list(names)
    if all(re.fullmatch(r"-?\d+", name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


# "esc50:/data/ESC-50-master?folds=1,2" -> ("esc50", "/data/ESC-50-master", {"folds": "1,2"})
_DATASET_SPEC = re.compile(r"^(?P<kind>[a-z0-9_]+):(?P<path>[^?]+)(?:\?(?P<query>.*))?$")


def _parse_dataset_spec(spec: str) -> tuple[str, str, dict[str, str]] | None:
    match = _DATASET_SPEC.match(spec)
    if match is None:
        return None
    options = {}
    for part in (match["query"] or "").split("&"):
        if part:
            key, _, value = part.partition("=")
            options[key.strip()] = value.strip()
    return match["kind"], match["path"], options


def open_source(
    spec: str | os.PathLike | None,
    *,
    demo_options: dict[str, Any] | None = None,
    min_seconds: float = MIN_SECONDS,
    verify: bool = False,
) -> AudioSource:
    """Open what ``--data`` names.

    Args:
        spec: one of

            - None: the built-in :class:`DemoCorpus`;
            - a folder: every .wav/.flac/.ogg under it (any case, recursively, sorted by relative
              path); a folder with no audio file but ``.tar`` files opens those as shards;
            - a ``.csv`` manifest with a header row holding a ``path`` column, or a ``.jsonl``
              manifest with one JSON object per line holding a ``"path"`` key; optional
              ``label``, ``offset`` and ``duration`` (seconds) columns (:func:`read_manifest`).
              Relative paths resolve against the manifest's folder;
            - tar shards in the WebDataset layout: a ``.tar`` file, or a brace pattern
              ``shards/train-{000000..000099}.tar`` (:class:`~fastspec.data.ShardSource`);
            - a dataset in its published layout, ``KIND:PATH[?key=value&...]``:
              ``esc50:ROOT?folds=1,2,3``, ``speechcommands:ROOT?split=train`` and
              ``audioset:SEGMENTS.csv?audio=FOLDER&labels=class_labels_indices.csv``
              (:mod:`fastspec.data.datasets`).
        demo_options: keyword arguments for :class:`DemoCorpus` (only when ``spec`` is None).
        min_seconds: files shorter than this are skipped.
        verify: decode every file while opening instead of checking headers only (see
            :class:`FileSource`).

    Returns:
        The source. Files that fail the header probe, and manifest rows naming missing files,
        are skipped with one log line each and listed in ``source.skipped``.

    Raises:
        DataError: ``spec`` does not exist, is an unsupported file type, is a manifest without
            a path column, or holds no usable audio file at all.
    """
    if spec is None:
        return DemoCorpus(**(demo_options or {}))
    if demo_options:
        raise DataError(f"demo_options only apply to the demo corpus, not to data {str(spec)!r}")
    spec = os.fspath(spec)
    options = {"min_seconds": min_seconds, "verify": verify}

    dataset = _parse_dataset_spec(spec)
    if dataset is not None and not Path(spec).exists():
        from fastspec.data.datasets import open_dataset

        kind, root, query = dataset
        return open_dataset(kind, root, query, **options)

    from fastspec.data.shards import ShardSource, expand_shard_pattern

    if "{" in spec and not Path(spec).exists():
        return ShardSource(expand_shard_pattern(spec), description=f"shards {spec!r}", **options)
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise DataError(f"data source {spec!r} does not exist")

    if path.is_dir():
        files = _scan_folder(path)
        if not files:
            tars = _scan_folder(path, (".tar",))
            if tars:
                return ShardSource(tars, description=f"shards in folder {spec!r}", **options)
            raise DataError(
                f"no audio files in folder {spec!r} (looked for "
                f"{', '.join(AUDIO_EXTENSIONS)} in any case, recursively, and for .tar shards)"
            )
        names = [f.relative_to(path).as_posix() for f in files]
        return FileSource(files, names=names, description=f"folder {spec!r}", **options)

    suffix = path.suffix.lower()
    if suffix == ".tar":
        return ShardSource([path], description=f"shard {spec!r}", **options)
    if suffix not in (".csv", ".jsonl"):
        raise DataError(
            f"data source {spec!r} is a {suffix or 'extensionless'} file; expected a folder "
            "of audio files, a .csv manifest with a 'path' column, a .jsonl manifest, .tar "
            "shards, or KIND:PATH for a dataset (esc50, speechcommands, audioset)"
        )
    return _open_manifest(path, spec, min_seconds, verify)
