"""The ``train/``, ``val/``, ``test/`` split folders of a folder-per-class dataset that
:func:`fastspec.evaluate.open_task` recognises (each split read by
:func:`fastspec.data.datasets.open_class_folders`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["SPLIT_FOLDERS", "split_folders"]

# folder names read as the splits of a folder-per-class dataset
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


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
