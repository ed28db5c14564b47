"""Audio sources: what ``--data`` points at, opened into an indexable list of clips.

An :class:`AudioSource` is anything with ``len(source)``, ``source.load(i) -> (wave, sr)``,
``source.name(i)``, ``source.sample_rate`` and ``source.skipped``. Two kinds exist:

- :class:`fastspec.data.DemoCorpus`, the synthetic corpus (``open_source(None)``);
- :class:`FileSource`, audio files from a folder scan or a CSV / JSON-lines manifest.

Opening a :class:`FileSource` probes every file's header (:func:`probe_audio`, tens of
microseconds a file, on a thread pool because network file systems are latency bound), so
missing files, files that are not audio, empty, too short or truncated WAVs are dropped before
training starts, each with one log line. What only decoding reveals (NaN samples, silence, a
FLAC that loses sync) surfaces later in ``load`` as :class:`BadAudioError`, which
:class:`fastspec.data.ClipDataset` turns into a skip; opening still decodes files in order until
one passes, so a corpus in which nothing decodes fails at open time, and ``verify=True``
decodes every file up front.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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

__all__ = ["AudioSource", "FileSource", "open_source", "summarize_skipped"]

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


def summarize_skipped(skipped: Sequence[tuple[str, str]]) -> str:
    """``"3 unreadable, 1 empty"``: skip reasons counted by kind (the text before the colon)."""
    counts = collections.Counter(reason.split(":", 1)[0] for _, reason in skipped)
    return ", ".join(f"{count} {kind}" for kind, count in counts.most_common())


class FileSource:
    """Audio files that passed the open-time checks, in a fixed order.

    Build one with :func:`open_source`, or directly from a list of paths.

    Args:
        paths: audio files, in the order clips are indexed.
        names: display names for logs (defaults to the paths).
        description: what the source was opened from, for error messages.
        min_seconds: files shorter than this are skipped.
        verify: decode every file at open time (catches NaN, silent and truncated files up
            front; costs a full pass over the corpus). Otherwise only headers are checked,
            plus files in order until the first one that decodes.
        skipped: entries already dropped before probing (manifest rows pointing nowhere).

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
    ):
        paths = [os.fspath(p) for p in paths]
        names = list(names) if names is not None else list(paths)
        if len(names) != len(paths):
            raise ValueError(f"got {len(paths)} paths but {len(names)} names")
        self.description = description or f"{len(paths)} audio files"
        self.min_seconds = float(min_seconds)
        self.skipped: list[tuple[str, str]] = []
        for name, reason in skipped:
            self._skip(name, reason)

        # entries are (path, name, header info) of the files still in the running
        headers = _map_checked(_probe_one, paths, self.min_seconds)
        kept = self._keep_good(zip(paths, names, headers), headers)
        # Headers miss what only decoding shows (NaN samples, silence, a FLAC cut short). With
        # verify, decode every file now; otherwise decode in order until one passes, so that a
        # corpus without a single decodable file fails here, before training, rather than in
        # the first batch. On a healthy corpus that costs one decode.
        if verify:
            decoded = _map_checked(_decode_one, [p for p, _, _ in kept], self.min_seconds)
            kept = self._keep_good(kept, decoded)
        else:
            first_good = 0
            while first_good < len(kept):
                path, name, _ = kept[first_good]
                result = _decode_one(path, self.min_seconds)
                if not isinstance(result, BadAudioError):
                    break
                self._skip(name, result.reason)
                first_good += 1
            kept = kept[first_good:]

        self._paths = [path for path, _, _ in kept]
        self._names = [name for _, name, _ in kept]
        self.infos: list[AudioInfo] = [info for _, _, info in kept]  # header of each kept file

        if not self._paths:
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
                len(self._paths),
                len(self.skipped),
                summarize_skipped(self.skipped),
            )
        rates = {info.sample_rate for info in self.infos}
        self.sample_rate: int | None = rates.pop() if len(rates) == 1 else None

    def _skip(self, name: str, reason: str) -> None:
        """Record and log one unusable entry (one line each, as DESIGN.md section 7 asks)."""
        self.skipped.append((name, reason))
        _log.warning("skipping %s: %s", name, reason)

    def _keep_good(self, entries, results) -> list[tuple[str, str, AudioInfo]]:
        """``entries`` whose check result is not a BadAudioError; the others are skipped."""
        kept = []
        for entry, result in zip(entries, results):
            if isinstance(result, BadAudioError):
                self._skip(entry[1], result.reason)
            else:
                kept.append(entry)
        return kept

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"FileSource({self.description}: {len(self)} files, {len(self.skipped)} skipped)"

    @property
    def total_seconds(self) -> float:
        """Duration of all kept files according to their headers."""
        return float(sum(info.duration for info in self.infos))

    def path(self, index: int) -> str:
        """File path of clip ``index``."""
        return self._paths[index]

    def name(self, index: int) -> str:
        """Display name of clip ``index`` (relative path for folders, manifest entry otherwise)."""
        return self._names[index]

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Decode clip ``index``: ``(wave float32 [S] mono in [-1, 1], sample_rate)``.

        Raises:
            BadAudioError: the file fails a check that needs decoding (see :func:`read_audio`).
        """
        return read_audio(self._paths[index], min_seconds=self.min_seconds)


def _probe_one(path: str, min_seconds: float) -> AudioInfo | BadAudioError:
    """The header check, with a failure returned rather than raised."""
    try:
        return probe_audio(path, min_seconds=min_seconds)
    except BadAudioError as err:
        return err


def _decode_one(path: str, min_seconds: float) -> None | BadAudioError:
    """The full decode check, with a failure returned rather than raised."""
    try:
        read_audio(path, min_seconds=min_seconds)
    except BadAudioError as err:
        return err
    return None


def _map_checked(check, paths: list[str], min_seconds: float) -> list:
    """``[check(path, min_seconds) for path in paths]``, on a thread pool for many files.

    Results stay in input order, so the kept files (and with them every dataset index) are the
    same however the threads are scheduled.
    """
    if len(paths) < 64:  # a thread pool costs more than it saves on a handful of files
        return [check(p, min_seconds) for p in paths]
    with ThreadPoolExecutor(max_workers=min(_PROBE_THREADS, len(paths) // 16)) as pool:
        return list(pool.map(check, paths, [min_seconds] * len(paths)))


def _scan_folder(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursively, following symlinks once), sorted by relative path.

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
        found.extend(Path(folder, f) for f in files if f.lower().endswith(AUDIO_EXTENSIONS))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _read_manifest(manifest: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Paths listed in a CSV (``path`` column) or JSON-lines (``"path"`` key) manifest.

    Returns the entries as written and the rows that could not be used (name, reason).

    Raises:
        DataError: unreadable manifest, or no path column at all.
    """
    entries: list[str] = []
    bad_rows: list[tuple[str, str]] = []
    where = f"manifest {str(manifest)!r}"
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from spreadsheets
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {where}: {err}") from None

    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f.strip() for f in reader.fieldnames or []]
        # header names compared case-insensitively and stripped: "Path", " path" both work
        fields = ["path" if f.lower() == "path" else f for f in fields]
        if "path" not in fields:
            raise DataError(
                f"{where} has no 'path' column in its header row (columns: {fields or 'none'})"
            )
        reader.fieldnames = fields
        for row in reader:
            line = reader.line_num
            value = (row.get("path") or "").strip()
            if value:
                entries.append(value)
            else:
                bad_rows.append((f"{manifest.name}:{line}", "missing: empty path"))
        return entries, bad_rows

    saw_path_key = False
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as err:
            bad_rows.append((f"{manifest.name}:{line_no}", f"unreadable: invalid JSON ({err.msg})"))
            continue
        value = record.get("path") if isinstance(record, dict) else None
        saw_path_key |= isinstance(record, dict) and "path" in record
        if isinstance(value, str) and value.strip():
            entries.append(value.strip())
        else:
            bad_rows.append((f"{manifest.name}:{line_no}", "missing: no 'path' string"))
    if not saw_path_key and (entries or bad_rows):
        raise DataError(f"{where} has no object with a 'path' key")
    return entries, bad_rows


def open_source(
    spec: str | os.PathLike | None,
    *,
    demo_options: dict[str, Any] | None = None,
    min_seconds: float = MIN_SECONDS,
    verify: bool = False,
) -> AudioSource:
    """Open what ``--data`` names.

    Args:
        spec: None for the built-in :class:`DemoCorpus`; a folder (every .wav/.flac/.ogg under it,
            any case, recursively, sorted by relative path); a ``.csv`` manifest with a header
            row holding a ``path`` column; or a ``.jsonl`` manifest with one JSON object per line
            holding a ``"path"`` key. Relative manifest paths are resolved against the
            manifest's folder.
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
    path = Path(os.path.expanduser(os.fspath(spec)))
    if not path.exists():
        raise DataError(f"data source {str(spec)!r} does not exist")

    if path.is_dir():
        files = _scan_folder(path)
        if not files:
            raise DataError(
                f"no audio files in folder {str(spec)!r} (looked for "
                f"{', '.join(AUDIO_EXTENSIONS)} in any case, recursively)"
            )
        names = [f.relative_to(path).as_posix() for f in files]
        return FileSource(
            files,
            names=names,
            description=f"folder {str(spec)!r}",
            min_seconds=min_seconds,
            verify=verify,
        )

    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise DataError(
            f"data source {str(spec)!r} is a {suffix or 'extensionless'} file; expected a folder "
            "of audio files, a .csv manifest with a 'path' column, or a .jsonl manifest"
        )
    entries, skipped = _read_manifest(path)
    # a row naming a file that does not exist fails the probe ("missing: ...") and is skipped
    # and counted like any other unusable file, rather than failing the whole run
    files = [path.parent / os.path.expanduser(entry) for entry in entries]  # absolute stays
    return FileSource(
        files,
        names=entries,
        description=f"manifest {str(spec)!r}",
        min_seconds=min_seconds,
        verify=verify,
        skipped=skipped,
    )
