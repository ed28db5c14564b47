"""Resumable checkpoints, written atomically.

A checkpoint is ``checkpoints/step_XXXXXXX.pt`` in the run directory: a plain dict of tensors and
numbers (model, optimizer and grad-scaler state, the step, the config). It is written to a
temporary file in the same folder, flushed to disk, then renamed over the final name, so a run
killed at any moment leaves either the old set of checkpoints or the old set plus a complete new
one, never a torn file. Loading uses ``torch.load(weights_only=True)``, which refuses pickled code.

Any world size: the model and optimizer states are consolidated, keyed by parameter name
(:func:`gather_state`, ``torch.distributed.checkpoint.state_dict`` with full state dicts), so a
run saved by 2 DDP or FSDP2 ranks resumes on 1 and the other way round. Under torchrun only rank
0 writes, after every rank has handed over its shard, and the others wait at a barrier until the
file is complete, so no rank goes on past a checkpoint that is not on disk.
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


class CheckpointError(ValueError):
    """A file that is not a loadable fastspec checkpoint; the message names it, in one line."""


# what every checkpoint holds (the trainer's also hold "model", "optimizer", "scaler")
_REQUIRED_KEYS = ("step",)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code (``weights_only=True``).

    Raises:
        CheckpointError: a torn, foreign or pickled-object file, named in one line (torch's own
            multi-line advice to load it with ``weights_only=False`` is exactly what not to do
            with a file one was handed).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a torn or foreign file: name it rather than show a pickle trace
        text = str(e)
        if "Weights only load failed" in text:  # a pickled object: refused, never unpickled
            why = "it holds pickled Python objects, which are never loaded"
            if "Unsupported global:" in text:
                what = text.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip()
                why += f" ({what.removeprefix('GLOBAL ')})"
        else:  # the first sentence of the first line: torch appends paragraphs of advice
            why = (text.strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path} is not a fastspec checkpoint: {why}") from None
    missing = [key for key in _REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a fastspec checkpoint: no {missing[0]!r} entry")
    return state


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


def gather_state(model, optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Full (consolidated) model and optimizer state dicts, keyed by parameter name.

    The same layout whatever wraps the recipe (nothing, DDP or FSDP2) and whatever the world
    size, so a checkpoint resumes at any world size. With FSDP2 every rank must call this (it
    gathers the shards) and only rank 0 receives the tensors, offloaded to the CPU.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=fsdp)
    return get_state_dict(model, optimizer, options=options)


def restore_state(
    model, optimizer, model_state: dict, optim_state: dict, *, source: str = "the checkpoint"
) -> None:
    """Load what :func:`gather_state` saved into ``model`` and ``optimizer`` (every rank reads
    the full checkpoint; FSDP2 keeps its own shard of it).

    Raises:
        CheckpointError: the state does not fit (another recipe, model or fastspec version
            saved it), in one line naming ``source`` instead of torch's key lists.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=True)
    try:
        set_state_dict(
            model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
            options=options,
        )  # fmt: skip
    except (RuntimeError, KeyError, ValueError) as e:
        what = " ".join(str(e).split())  # torch lists the keys over several lines: one line
        what = what if len(what) <= 240 else what[:237] + "..."
        raise CheckpointError(
            f"{source} does not fit this run's model and optimizer ({type(e).__name__}: "
            f"{what}); it was saved with other settings or by another fastspec version"
        ) from None
