"""Helpers the data modules share: counting skips, scanning folders, ordering names, probing in
parallel. Public names, so that no module reaches into another's private ones."""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastspec.data.audio import AUDIO_EXTENSIONS

__all__ = ["PROBE_THREADS", "map_checked", "scan_folder", "sorted_names", "summarize_skipped"]

# Probing is I/O bound (libsndfile releases the GIL through cffi); more threads than this buy
# nothing on a local disk and little on NFS.
PROBE_THREADS = 16


def summarize_skipped(skipped: Sequence[tuple[str, str]]) -> str:
    """``"3 unreadable, 1 empty"``: skip reasons counted by kind (the text before the colon)."""
    counts = collections.Counter(reason.split(":", 1)[0] for _, reason in skipped)
    return ", ".join(f"{count} {kind}" for kind, count in counts.most_common())


def map_checked(check, items: list) -> list:
    """``[check(item) for item in items]``, on a thread pool for many items.

    Results stay in input order, so the kept files (and with them every dataset index) are the
    same however the threads are scheduled.
    """
    if len(items) < 64:  # a thread pool costs more than it saves on a handful of files
        return [check(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(items) // 16)) as pool:
        return list(pool.map(check, items))


def scan_folder(root: Path, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
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


def sorted_names(names: Iterable[str]) -> list[str]:
    """Class names in a stable order: numerically when all are integers ("2" before "10")."""
    names = list(names)
    if all(re.fullmatch(r"-?\d+", name) for name in names):
        return sorted(names, key=int)
    return sorted(names)
