"""Each fine-tuning protocol's labelled clips and splits (``fastspec finetune DATA``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from fastspec.data import DataError
from fastspec.evaluate.tasks import Task, kfold_splits, open_task
from fastspec.finetune.protocols import PROTOCOL_DATA, PROTOCOLS

__all__ = ["open_protocol_task"]


def _spec(kind: str, data: str) -> str:
    """``KIND:PATH`` for a dataset given by its path alone."""
    return data if data.startswith(f"{kind}:") else f"{kind}:{data}"


def open_protocol_task(
    protocol: str, data: str | os.PathLike, *, test_data=None, seed: int = 0
) -> Task:
    """The labelled clips and splits of ``protocol`` on ``data``.

    ``audioset``: ``[audioset:]SEGMENTS.csv[?audio=DIR&labels=CSV]``, tested on ``test_data``
    or ``eval_segments.csv`` beside it. ``esc50``: ``[esc50:]ROOT[?folds=1,2,3]``, one split per
    fold. ``speechcommands``: ``[speechcommands:]ROOT`` (v2 lists). ``folder``: class folders
    (``ROOT/<class>/``, or ``train/``, ``test/`` and optional ``val/`` folders) or a labelled
    manifest: a stratified 80 / 20 split unless the data (or ``test_data``) split themselves.
    """
    data = os.fspath(data)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    protocol = PROTOCOL_DATA.get(protocol, protocol)  # ATST's protocols read the same data
    if protocol in ("esc50", "speechcommands"):
        if test_data is not None:
            raise DataError(f"--test-data: the {protocol} protocol brings its own test clips")
        return open_task(_spec(protocol, data))
    if protocol == "audioset":
        test = _spec("audioset", os.fspath(test_data)) if test_data is not None else None
        task = open_task(_spec("audioset", data), test_data=test)
        task.multilabel = True
        return task
    if not Path(data).exists():
        raise DataError(f"folder protocol: {data!r} does not exist")
    task = open_task(data, test_data=test_data, folds=5, seed=seed)
    if len(task.splits) > 1:  # unsplit data: the first fold of a stratified 5-fold split
        holdout = kfold_splits(task.targets, 5, seed)[0]
        task.splits = [dataclasses.replace(holdout, name="stratified 80/20")]
        task.protocol = f"stratified 80 / 20 split (seed {seed})"
    return task
