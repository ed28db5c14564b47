"""Readers for datasets in the layout their authors publish, as :class:`LabeledSource` objects.

- :func:`open_esc50`: ESC-50 (``meta/esc50.csv``, ``audio/``), five folds, 50 classes;
- :func:`open_speech_commands`: Speech Commands v2 (one folder per keyword,
  ``validation_list.txt``, ``testing_list.txt``; ``_background_noise_`` is left out);
- :func:`open_audioset`: AudioSet segment CSVs (``balanced_train_segments.csv`` ...) with
  ``class_labels_indices.csv``, over a folder of downloaded clips;
- :func:`open_class_folders`: any dataset laid out as one folder per class (the scan of class
  folders, :func:`class_folders`, is the one Speech Commands' keyword folders use too).

Each returns a :class:`~fastspec.data.LabeledSource`: a file source (so pretraining and both
loaders take it as is, ignoring the labels) that also answers ``class_names``, ``labels(i)``,
``label(i)``, ``targets()`` and ``split``. Files that are missing or unusable are skipped with
one line each, like any other source. ``open_source("esc50:ROOT?folds=1,2")`` and friends reach
the same readers from ``--data`` (:func:`open_dataset`).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastspec.data._utils import scan_folder, sorted_names
from fastspec.data.audio import AUDIO_EXTENSIONS, MIN_SECONDS, DataError
from fastspec.data.files import LabeledSource

__all__ = [
    "class_folders",
    "open_audioset",
    "open_class_folders",
    "open_dataset",
    "open_esc50",
    "open_speech_commands",
]

ESC50_FOLDS = (1, 2, 3, 4, 5)
SPEECH_COMMANDS_SPLITS = ("train", "validation", "test", "all")
# the folder of long noise recordings in Speech Commands: not a keyword, not a clip
BACKGROUND_NOISE = "_background_noise_"


def _read_csv(path: Path, what: str, required: Iterable[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header row; DataError naming the file when it or a column is missing."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise DataError(f"{what}: cannot read {path}: {err.strerror or err}") from None
    reader = csv.DictReader(text.splitlines(), skipinitialspace=True)
    fields = [f.strip() for f in reader.fieldnames or []]
    missing = [c for c in required if c not in fields]
    if missing:
        raise DataError(f"{what}: {path} has no column {missing[0]!r} (columns: {fields})")
    reader.fieldnames = fields
    return list(reader)


def _fold_list(folds: int | Iterable[int] | str | None) -> list[int]:
    if folds is None:
        return list(ESC50_FOLDS)
    given = folds
    if isinstance(folds, str):
        folds = [f for f in folds.replace(" ", "").split(",") if f]
    elif isinstance(folds, int):
        folds = [folds]
    try:
        folds = sorted({int(f) for f in folds})
    except (TypeError, ValueError):
        raise DataError(
            f"ESC-50 folds must be integers among {ESC50_FOLDS} (e.g. folds=1,2), got {given!r}"
        ) from None
    if not folds or any(f not in ESC50_FOLDS for f in folds):
        raise DataError(f"ESC-50 folds must be among {ESC50_FOLDS}, got {folds}")
    return folds


def open_esc50(
    root: str | os.PathLike,
    folds: int | Iterable[int] | None = None,
    *,
    min_seconds: float = MIN_SECONDS,
    verify: bool = False,
) -> LabeledSource:
    """ESC-50 as published (github.com/karolpiczak/ESC-50): ``ROOT/meta/esc50.csv``, ``ROOT/audio``.

    Args:
        root: the dataset folder.
        folds: the folds to include (1-5; an int, a list, or None for all). The usual protocol
            is 5-fold cross-validation: train on four folds, test on the fifth.

    Returns:
        A :class:`LabeledSource` ordered as ``esc50.csv``, with ``class_names[target]`` the
        ``category`` of each ``target`` (50 classes) and ``split`` = ``"folds 1,2,3"``.
    """
    root = Path(root)
    fold_list = _fold_list(folds)
    rows = _read_csv(
        root / "meta" / "esc50.csv", "ESC-50", ("filename", "fold", "target", "category")
    )
    names: dict[int, str] = {}
    for row in rows:
        names.setdefault(int(row["target"]), row["category"])
    if sorted(names) != list(range(len(names))):
        raise DataError(f"ESC-50: targets in {root / 'meta' / 'esc50.csv'} are not 0..N-1")
    class_names = [names[k] for k in range(len(names))]
    rows = [row for row in rows if int(row["fold"]) in fold_list]
    return LabeledSource(
        [root / "audio" / row["filename"] for row in rows],
        names=[row["filename"] for row in rows],
        labels=[(int(row["target"]),) for row in rows],
        class_names=class_names,
        split=f"folds {','.join(map(str, fold_list))}",
        description=f"ESC-50 {str(root)!r} folds {fold_list}",
        min_seconds=min_seconds,
        verify=verify,
    )


def class_folders(root: Path, what: str, skip: Iterable[str] = ()) -> dict[str, list[Path]]:
    """``{folder name: its audio files}`` for every subfolder of ``root`` (not hidden, not in
    ``skip``), folders sorted by name and files as :func:`scan_folder` orders them; a folder
    without audio maps to ``[]``. DataError naming ``what`` when ``root`` is not a folder."""
    if not root.is_dir():
        raise DataError(f"{what}: {str(root)!r} is not a folder")
    skip = set(skip)
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {name: scan_folder(root / name) for name in folders if name not in skip}


def open_class_folders(
    root: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    min_seconds: float = MIN_SECONDS,
    verify: bool = False,
) -> LabeledSource:
    """A folder-per-class dataset, ``ROOT/<class>/**/<clip>.wav|flac|ogg``, as a LabeledSource.

    The class of a clip is the first folder under ``root``; classes are sorted by name
    (numerically when all are integers) unless ``class_names`` fixes them. Audio files directly
    in ``root`` have no class and are skipped with a line each.
    """
    root = Path(root)
    per_class = {k: v for k, v in class_folders(root, "class folders").items() if v}
    if not per_class:
        raise DataError(
            f"class folders: no audio in any subfolder of {str(root)!r} (expected "
            "ROOT/<class>/<clip>.wav)"
        )
    loose = [f for f in sorted(root.iterdir()) if f.is_file()]
    skipped = [
        (f.name, "unlabeled: not inside a class folder")
        for f in loose
        if f.name.lower().endswith(AUDIO_EXTENSIONS)
    ]
    names_in_order = list(class_names) if class_names else sorted_names(per_class)
    index = {name: k for k, name in enumerate(names_in_order)}
    unknown = [folder for folder in per_class if folder not in index]
    if unknown:
        raise DataError(f"class folders: {unknown[0]!r} in {str(root)!r} is not a known class")
    files = [path for found in per_class.values() for path in found]
    return LabeledSource(
        files,
        names=[path.relative_to(root).as_posix() for path in files],
        labels=[(index[folder],) for folder, found in per_class.items() for _ in found],
        class_names=names_in_order,
        skipped=skipped,
        description=f"class folders {str(root)!r}",
        min_seconds=min_seconds,
        verify=verify,
    )


def _list_file(path: Path) -> set[str]:
    """Relative paths listed one per line (a missing list is an error: the split needs it)."""
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except OSError as err:
        raise DataError(f"Speech Commands: cannot read {path}: {err.strerror or err}") from None


def open_speech_commands(
    root: str | os.PathLike,
    split: str = "train",
    *,
    min_seconds: float = MIN_SECONDS,
    verify: bool = False,
) -> LabeledSource:
    """Speech Commands v2 as published: ``ROOT/<keyword>/<speaker>_nohash_<n>.wav``.

    Args:
        root: the extracted ``speech_commands_v0.02`` folder.
        split: ``"validation"`` / ``"test"``: the files listed in ``validation_list.txt`` /
            ``testing_list.txt``; ``"train"``: every other clip; ``"all"``: every clip. The
            ``_background_noise_`` folder (minute-long noise recordings) is never included.

    Returns:
        A :class:`LabeledSource` sorted by relative path, with one class per keyword folder
        (35 in v2, sorted by name) and ``split`` as given.
    """
    root = Path(root)
    if split not in SPEECH_COMMANDS_SPLITS:
        raise DataError(f"Speech Commands split must be one of {SPEECH_COMMANDS_SPLITS}")
    per_keyword = class_folders(root, "Speech Commands", skip=(BACKGROUND_NOISE,))
    keywords = list(per_keyword)
    if not keywords:
        raise DataError(f"Speech Commands: no keyword folders in {str(root)!r}")
    held_out = {
        "validation": _list_file(root / "validation_list.txt"),
        "test": _list_file(root / "testing_list.txt"),
    }
    files, names, labels = [], [], []
    for k, found in enumerate(per_keyword.values()):
        for path in found:
            name = path.relative_to(root).as_posix()
            if split == "train":
                keep = name not in held_out["validation"] and name not in held_out["test"]
            else:
                keep = split == "all" or name in held_out[split]
            if keep:
                files.append(path)
                names.append(name)
                labels.append((k,))
    if not files:
        raise DataError(f"Speech Commands: no clips in split {split!r} of {str(root)!r}")
    return LabeledSource(
        files,
        names=names,
        labels=labels,
        class_names=keywords,
        split=split,
        description=f"Speech Commands {str(root)!r} {split}",
        min_seconds=min_seconds,
        verify=verify,
    )


# A YouTube id is 11 characters of [A-Za-z0-9_-]; downloaders name clips "<id>.wav",
# "Y<id>.wav", "<id>_<start>_<end>.wav", "Y<id>_30.000_40.000.flac", ...
_YTID = re.compile(r"[A-Za-z0-9_-]{11}")


def _ytid_candidates(stem: str) -> list[str]:
    """YouTube ids a file stem may stand for, under the naming schemes of common downloaders."""
    out = []
    for start in (0, 1) if stem.startswith("Y") else (0,):
        candidate = stem[start : start + 11]
        rest = stem[start + 11 :]
        if _YTID.fullmatch(candidate) and (not rest or rest[0] in "_."):
            out.append(candidate)
    return out


def open_audioset(
    segments_csv: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
    labels_csv: str | os.PathLike | None = None,
    *,
    full_videos: bool = False,
    min_seconds: float = MIN_SECONDS,
    verify: bool = False,
) -> LabeledSource:
    """AudioSet segments (``balanced_train_segments.csv``, ``eval_segments.csv``, ...).

    Args:
        segments_csv: the segment list: ``# comment`` lines, then ``YTID, start_seconds,
            end_seconds, "mid1,mid2"`` rows.
        audio_root: folder holding the downloaded clips (searched recursively); default: the
            CSV's folder. A clip matches a row when its file name is the YouTube id, optionally
            prefixed by ``Y`` and optionally followed by ``_...`` (``abc123def45.wav``,
            ``Yabc123def45_30.000_40.000.flac``).
        labels_csv: ``class_labels_indices.csv`` (``index,mid,display_name``); default: next
            to the segments CSV.
        full_videos: the files hold whole videos: use the row's ``[start, end)`` segment.
            Otherwise (the usual download) each file is the 10 s segment itself.

    Returns:
        A :class:`LabeledSource` in CSV order: ``class_names`` are the display names in index
        order (527 classes), ``labels(i)`` the indices of the row's MIDs (multi-label),
        ``split`` the CSV's stem. Rows without a file, or with a MID not in the labels CSV,
        are skipped with one line each.
    """
    segments_csv = Path(segments_csv)
    audio_root = Path(audio_root) if audio_root is not None else segments_csv.parent
    labels_csv = (
        Path(labels_csv)
        if labels_csv is not None
        else segments_csv.parent / "class_labels_indices.csv"
    )
    classes = _read_csv(labels_csv, "AudioSet labels", ("index", "mid", "display_name"))
    classes.sort(key=lambda row: int(row["index"]))
    class_names = [row["display_name"] for row in classes]
    mid_index = {row["mid"]: int(row["index"]) for row in classes}

    try:
        lines = segments_csv.read_text(encoding="utf-8-sig").splitlines()
    except OSError as err:
        raise DataError(f"AudioSet: cannot read {segments_csv}: {err.strerror or err}") from None
    if not audio_root.is_dir():
        raise DataError(f"AudioSet: audio folder {str(audio_root)!r} does not exist")
    by_id: dict[str, Path] = {}
    for path in scan_folder(audio_root):
        for ytid in _ytid_candidates(path.name.split(".", 1)[0]):
            by_id.setdefault(ytid, path)

    files, names, labels, segments, skipped = [], [], [], [], []
    where = segments_csv.name
    for line_no, row in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
        if not row or row[0].lstrip().startswith("#"):
            continue
        try:
            ytid, start, end, mids = row[0].strip(), float(row[1]), float(row[2]), row[3]
        except (IndexError, ValueError):
            skipped.append((f"{where}:{line_no}", "unreadable: not YTID, start, end, labels"))
            continue
        name = f"{ytid}_{start:.3f}_{end:.3f}"
        unknown = [m for m in mids.split(",") if m.strip() and m.strip() not in mid_index]
        if unknown:
            skipped.append((name, f"unreadable: label {unknown[0]!r} not in {labels_csv.name}"))
            continue
        if ytid not in by_id:
            skipped.append((name, f"missing: no audio file for {ytid} in {audio_root}"))
            continue
        files.append(by_id[ytid])
        names.append(name)
        labels.append(tuple(mid_index[m.strip()] for m in mids.split(",") if m.strip()))
        segments.append((start, end - start) if full_videos else (0.0, end - start))
    return LabeledSource(
        files,
        names=names,
        labels=labels,
        class_names=class_names,
        split=segments_csv.stem,
        segments=segments,
        skipped=skipped,
        description=f"AudioSet {str(segments_csv)!r}",
        min_seconds=min_seconds,
        verify=verify,
    )


_TRUE = ("1", "true", "yes", "on")


def open_dataset(
    kind: str, path: str, options: dict[str, str], **source_options: Any
) -> LabeledSource:
    """``--data KIND:PATH?key=value&...``: open a dataset reader from a string.

    ``esc50:ROOT?folds=1,2,3``, ``speechcommands:ROOT?split=train`` and
    ``audioset:SEGMENTS.csv?audio=FOLDER&labels=CSV&full_videos=1``.
    """
    # the options each reader takes from the query string
    readers = {
        "esc50": {"folds"},
        "speechcommands": {"split"},
        "audioset": {"audio", "labels", "full_videos"},
    }
    if kind not in readers:
        raise DataError(
            f"data source {kind}:{path!r} does not exist, and {kind!r} is not a dataset kind "
            f"({', '.join(readers)})"
        )
    allowed = readers[kind]
    unknown = set(options) - allowed
    if unknown:
        raise DataError(
            f"unknown option {sorted(unknown)[0]!r} for {kind} (options: {sorted(allowed)})"
        )
    if kind == "esc50":
        return open_esc50(path, options.get("folds"), **source_options)
    if kind == "speechcommands":
        return open_speech_commands(path, options.get("split", "train"), **source_options)
    return open_audioset(
        path,
        options.get("audio"),
        options.get("labels"),
        full_videos=options.get("full_videos", "0").lower() in _TRUE,
        **source_options,
    )
