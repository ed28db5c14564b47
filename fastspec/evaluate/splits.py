"""The splits of an evaluation protocol: stratified k-fold cross-validation and low-shot draws.

A :class:`Split` holds indices into a task's clip table; :mod:`fastspec.evaluate.tasks` builds
them for each dataset layout, and ``Task.limit_shots`` turns them into a low-shot protocol with
:func:`draw_per_class`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastspec.data import DataError

__all__ = ["Split", "draw_per_class", "kfold_splits"]


@dataclass
class Split:
    """One train / test round of a protocol: indices into the task's :class:`ClipTable`."""

    name: str  # "fold 1", "test", "draw 1"
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None  # given by the dataset (Speech Commands), else None


def kfold_splits(targets: np.ndarray, folds: int, seed: int = 0) -> list[Split]:
    """Stratified k-fold splits of clips with ``targets`` [N, C]: each class's clips are
    shuffled (seeded) and dealt round-robin to the folds, so every fold gets its share of every
    class. Multi-label clips are stratified by their first label."""
    n = targets.shape[0]
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if n < folds:
        raise DataError(f"{n} clips cannot be split into {folds} folds")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    primary = targets.argmax(axis=1)
    next_fold = 0  # continue dealing where the previous class stopped: balances fold sizes
    for c in np.unique(primary):
        members = rng.permutation(np.flatnonzero(primary == c))
        fold_of[members] = (next_fold + np.arange(len(members))) % folds
        next_fold = (next_fold + len(members)) % folds
    every = np.arange(n)
    return [
        Split(f"fold {k + 1}", train=every[fold_of != k], test=every[fold_of == k])
        for k in range(folds)
    ]


def draw_per_class(
    pool: np.ndarray,
    labels: np.ndarray,
    shots: int,
    rng: np.random.Generator,
    class_names: Sequence[str],
    where: str,
) -> np.ndarray:
    """``shots`` clips of each class drawn without replacement from the indices ``pool``
    (``labels[i]`` the class of clip i), sorted. Raises DataError naming ``where`` and the
    class when a class has fewer clips than that."""
    drawn = []
    for c, name in enumerate(class_names):
        members = pool[labels[pool] == c]
        if len(members) < shots:
            raise DataError(
                f"{where}: class {name!r} has {len(members)} clips to draw from, fewer than "
                f"shots={shots}"
            )
        drawn.append(rng.choice(members, shots, replace=False))
    return np.sort(np.concatenate(drawn))
