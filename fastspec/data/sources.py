"""Audio sources: the protocol every source follows, and the checked machinery of file and shard
sources.

An :class:`AudioSource` is anything with ``len(source)``, ``source.load(i) -> (wave, sr)``,
``source.name(i)``, ``source.sample_rate`` and ``source.skipped``. The kinds:

- :class:`fastspec.data.DemoCorpus`, the synthetic corpus (``open_source(None)``);
- :class:`~fastspec.data.files.FileSource`, audio files from a folder scan or a CSV / JSON-lines
  manifest (:mod:`fastspec.data.manifest`), whose rows may also give a label and a segment
  ``offset`` / ``duration`` in seconds;
- :class:`~fastspec.data.files.LabeledSource`, a FileSource whose clips carry class labels:
  manifests with a label column and the dataset readers of :mod:`fastspec.data.datasets`
  (ESC-50, Speech Commands, AudioSet). Labels are for evaluation; pretraining ignores them;
- :class:`~fastspec.data.shard_reader.ShardSource`, tar shards in the WebDataset layout.

:func:`fastspec.data.open_source` (:mod:`fastspec.data.spec`) opens what ``--data`` names.

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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from fastspec._logging import get_logger
from fastspec.data._utils import map_checked, summarize_skipped
from fastspec.data.audio import MIN_SECONDS, AudioInfo, BadAudioError, DataError

__all__ = ["AudioSource", "CheckedSource", "ClipSpan", "SourceEntry", "span_of"]

_log = get_logger("fastspec.data")


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


@dataclass(frozen=True)
class SourceEntry:
    """One candidate clip while a source is opened (a file, a shard member)."""

    location: Any  # a path for files, a shard member for shards
    name: str
    offset: float = 0.0  # segment start in seconds
    duration: float | None = None  # segment length in seconds (None: to the end)
    labels: tuple[int, ...] | None = None


class CheckedSource:
    """Encoded audio clips that passed the open-time checks, in a fixed order.

    The shared machinery of :class:`FileSource` and :class:`~fastspec.data.shard_reader.ShardSource`:
    subclasses say how to probe, decode and read one location (a path, a shard member).

    Labels (optional): ``class_names`` lists the classes, and ``labels(i)`` gives the class
    indices of clip ``i`` (one for single-label datasets, several for AudioSet).
    """

    def __init__(
        self,
        entries: Sequence[SourceEntry],
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
        for entry, result in zip(entries, map_checked(self._probe_entry, list(entries))):
            if isinstance(result, BadAudioError):
                self._skip(entry.name, result.reason)
            else:
                kept.append((entry, *result))
        # Headers miss what only decoding shows (NaN samples, silence, a FLAC cut short). With
        # verify, decode every clip now; otherwise decode in order until one passes, so that a
        # corpus without a single decodable clip fails here, before training, rather than in
        # the first batch. On a healthy corpus that costs one decode.
        if verify:
            errors = map_checked(self._decode_check, kept)
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

        self._entries: list[SourceEntry] = [entry for entry, _, _ in kept]
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

    def _probe_entry(self, entry: SourceEntry) -> tuple[AudioInfo, ClipSpan] | BadAudioError:
        """Header check plus the segment in frames, with a failure returned rather than raised."""
        try:
            info = self._probe(entry.location)
            return info, span_of(entry, info, self.min_seconds)
        except BadAudioError as err:
            return err

    def _decode_check(self, kept: tuple[SourceEntry, AudioInfo, ClipSpan]) -> None | BadAudioError:
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


def span_of(entry: SourceEntry, info: AudioInfo, min_seconds: float) -> ClipSpan:
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
