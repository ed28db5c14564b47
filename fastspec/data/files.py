"""Audio files as a source: :class:`FileSource` (a folder scan or a manifest) and
:class:`LabeledSource` (files with class labels, what evaluation reads)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from fastspec.data.audio import MIN_SECONDS, AudioInfo, BadAudioError, probe_audio, read_audio
from fastspec.data.sources import CheckedSource, SourceEntry

__all__ = ["FileSource", "LabeledSource"]


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
            SourceEntry(
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
