"""Resumable checkpoints, written atomically.

A checkpoint is ``checkpoints/step_XXXXXXX.pt`` in the run directory: a plain dict of tensors and
numbers (model, optimizer and grad-scaler state, the step, the config). It is written to a
temporary file in the same folder, flushed to disk, then renamed over the final name, so a run
killed at any moment leaves either the old set of checkpoints or the old set plus a complete new
one, never a torn file. Loading uses ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from fastspec._logging import get_logger

_NAME = re.compile(r"^step_(\d{7,})\.pt$")
log = get_logger("fastspec.train")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first (temporary files ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    run_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int
) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically; keep the newest ``keep``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:07d}.pt"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # atomic on POSIX: readers see the old name set or the new one
        _fsync_dir(folder)
    finally:
        if tmp.exists():
            tmp.unlink()
    # delete old checkpoints only after the new one is complete
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a torn or foreign file: name it rather than show a pickle trace
        raise RuntimeError(f"cannot load checkpoint {path}: {e}") from e


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _fsync_dir(folder: Path) -> None:
    # make the rename itself durable; not every filesystem allows opening a directory
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
