"""Folder-per-class datasets: ``ROOT/<class>/**/<clip>`` as a labelled source, and the
``train/``, ``val/``, ``test/`` split folders :func:`fastspec.evaluate.open_task` recognises."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from fastspec.data import DataError, LabeledSource
from fastspec.data.audio import AUDIO_EXTENSIONS, MIN_SECONDS

__all__ = ["SPLIT_FOLDERS", "open_class_folders", "sorted_class_names", "split_folders"]

# folder names read as the splits of a folder-per-class dataset
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


def sorted_class_names(names) -> list[str]:
    """Class names in a stable order: numerically when all are integers ("2" before "10")."""
    names = list(names)
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


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
    if not root.is_dir():
        raise DataError(f"class folders: {str(root)!r} is not a folder")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, names, labels, skipped = [], [], [], []
    for f in sorted(root.iterdir()):
        if f.is_file() and f.name.lower().endswith(AUDIO_EXTENSIONS):
            skipped.append((f.name, "unlabeled: not inside a class folder"))
    per_class = {}
    for folder in folders:
        found = sorted(
            p
            for p in (root / folder).rglob("*")
            if p.is_file() and p.name.lower().endswith(AUDIO_EXTENSIONS)
        )
        if found:
            per_class[folder] = found
    if not per_class:
        raise DataError(
            f"class folders: no audio in any subfolder of {str(root)!r} (expected "
            "ROOT/<class>/<clip>.wav)"
        )
    names_in_order = list(class_names) if class_names else sorted_class_names(per_class)
    index = {name: k for k, name in enumerate(names_in_order)}
    for folder, found in per_class.items():
        if folder not in index:
            raise DataError(f"class folders: {folder!r} in {str(root)!r} is not a known class")
        for path in found:
            files.append(path)
            names.append(path.relative_to(root).as_posix())
            labels.append((index[folder],))
    return LabeledSource(
        files,
        names=names,
        labels=labels,
        class_names=names_in_order,
        skipped=skipped,
        description=f"class folders {str(root)!r}",
        min_seconds=min_seconds,
        verify=verify,
    )


def split_folders(root: Path) -> dict[str, Path]:
    """``{"train": ..., "test": ..., "val": ...}`` for a folder holding split folders."""
    found = {}
    children = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    for split, aliases in SPLIT_FOLDERS.items():
        for alias in aliases:
            if alias in children:
                found[split] = children[alias]
                break
    return found if {"train", "test"} <= set(found) else {}
