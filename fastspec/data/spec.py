"""What ``--data`` names, opened: :func:`open_source`.

A data spec is None (the synthetic demo corpus), a folder, a manifest, tar shards (a file, a
folder of them or a brace pattern), or a published dataset as ``KIND:PATH[?key=value&...]``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from fastspec.data._utils import scan_folder, sorted_names
from fastspec.data.audio import AUDIO_EXTENSIONS, MIN_SECONDS, DataError
from fastspec.data.datasets import open_dataset
from fastspec.data.demo import DemoCorpus
from fastspec.data.files import FileSource, LabeledSource
from fastspec.data.manifest import read_manifest
from fastspec.data.shard_reader import ShardSource, expand_shard_pattern
from fastspec.data.sources import AudioSource

__all__ = ["open_manifest", "open_source", "parse_dataset_spec"]


def open_manifest(path: Path, spec: str, min_seconds: float, verify: bool) -> FileSource:
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
    class_names = sorted_names({label for row in rows for label in row.labels})
    index = {name: i for i, name in enumerate(class_names)}
    labels = [tuple(index[label] for label in row.labels) for row in rows]
    return LabeledSource(files, labels=labels, class_names=class_names, **options)


# "esc50:/data/ESC-50-master?folds=1,2" -> ("esc50", "/data/ESC-50-master", {"folds": "1,2"})
_DATASET_SPEC = re.compile(r"^(?P<kind>[a-z0-9_]+):(?P<path>[^?]+)(?:\?(?P<query>.*))?$")


def parse_dataset_spec(spec: str) -> tuple[str, str, dict[str, str]] | None:
    """``(kind, path, options)`` of ``KIND:PATH[?key=value&...]``, or None for any other spec."""
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

    dataset = parse_dataset_spec(spec)
    if dataset is not None and not Path(spec).exists():
        kind, root, query = dataset
        return open_dataset(kind, root, query, **options)

    if "{" in spec and not Path(spec).exists():
        return ShardSource(expand_shard_pattern(spec), description=f"shards {spec!r}", **options)
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise DataError(f"data source {spec!r} does not exist")

    if path.is_dir():
        files = scan_folder(path)
        if not files:
            tars = scan_folder(path, (".tar",))
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
    return open_manifest(path, spec, min_seconds, verify)
