"""The data order both loaders share: :class:`EpochBatchSampler`, and :class:`BatchStream`, what
the training loop sees of either loader.

Determinism is built from two pieces that do not depend on the process layout:

- :class:`EpochBatchSampler` decides which clips form batch ``g`` (the global batch number):
  epoch ``g // batches_per_epoch`` is a permutation drawn from a generator seeded with
  ``(seed, epoch)``, cut into consecutive global batches of ``batch_size * world_size`` clips
  (the remainder dropped), of which rank ``r`` takes the ``r``-th ``batch_size`` slice;
- :class:`~fastspec.data.ClipDataset` decides the content of each ``(epoch, index)`` key (the
  crop offset is seeded with ``(seed, epoch, index)``).

So batch ``g`` of a rank depends only on ``(seed, epoch, rank)``: it is the same with 0 or 8
workers, with the torch loader (:mod:`fastspec.data.loader`) or the DALI loader
(:mod:`fastspec.data.dali`), and a run resumed with ``start_batch=g`` sees exactly the batches
``g, g + 1, ...`` of the uninterrupted run, without producing the earlier ones (only the
permutation of the current epoch is drawn). Both loaders take these settings as one
:class:`BatchOrder`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import torch

from fastspec._logging import get_logger
from fastspec.data.audio import DataError

__all__ = ["BatchOrder", "BatchStream", "EpochBatchSampler"]

_log = get_logger("fastspec.data")


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from ``(seed, epoch)``.

    SeedSequence hashes the pair, so neighbouring seeds or epochs give unrelated permutations
    (``seed * K + epoch`` would make seed 0 epoch K equal seed 1 epoch 0).
    """
    low, high = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


@dataclass(frozen=True)
class BatchOrder:
    """Everything that fixes which clips form each batch of this rank, whatever the loader.

    Args:
        batch_size: keys per batch of this rank.
        seed: data-order seed (>= 0).
        start_batch: global number of the first batch to yield (resume); batches before it are
            skipped without being generated.
        rank, world_size: this process's share: rank ``r`` takes slice ``r`` of each global
            batch of ``batch_size * world_size`` keys, so the ranks see disjoint clips.
    """

    batch_size: int
    seed: int
    start_batch: int = 0
    _: KW_ONLY
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={self.rank}, world={self.world_size}"
            )
        if self.seed < 0 or self.start_batch < 0:
            raise ValueError(
                f"seed and start_batch must be >= 0, got {self.seed} and {self.start_batch}"
            )


class EpochBatchSampler:
    """Endless batch sampler over ``num_items`` items, yielding lists of ``(epoch, index)`` keys.

    Args:
        num_items: dataset size.
        order: batch size, seed, start batch and rank (:class:`BatchOrder`). Each epoch yields
            ``num_items // (batch_size * world_size)`` batches (the remainder of the
            permutation is dropped, so every batch is full and all ranks take the same number
            of steps).
    """

    def __init__(self, num_items: int, order: BatchOrder):
        if order.batch_size * order.world_size > num_items:
            raise DataError(
                f"batch_size {order.batch_size} x {order.world_size} ranks is larger than the "
                f"{num_items} clips available; every batch must be full, so no batch could be "
                "formed"
            )
        self.num_items = int(num_items)
        self.order = order

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per rank in one pass over the data."""
        return self.num_items // (self.order.batch_size * self.order.world_size)

    def permutation(self, epoch: int) -> list[int]:
        """The item order of ``epoch``: a permutation of ``range(num_items)``."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.order.seed, epoch))
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        size, world, rank = self.order.batch_size, self.order.world_size, self.order.rank
        epoch, first = divmod(self.order.start_batch, self.batches_per_epoch)
        while True:
            permutation = self.permutation(epoch)
            for batch in range(first, self.batches_per_epoch):
                start = (batch * world + rank) * size
                yield [(epoch, index) for index in permutation[start : start + size]]
            epoch, first = epoch + 1, 0


class BatchStream:
    """What the training loop sees of either loader: an endless iterator of batch dicts.

    Besides yielding batches it logs each file that failed to decode once (the first time it is
    skipped; later epochs skip it again silently) and counts skips.

    Attributes:
        backend: ``"torch"`` or ``"dali"``.
        batch_index: global number of the next batch; save it in a checkpoint and pass it back
            as ``start_batch`` to resume the data stream exactly.
        skipped_total: files skipped while filling batches so far (a file counts every time).
        skipped_files: distinct names among them.
    """

    backend = "?"

    def __init__(self, start_batch: int):
        self.batch_index = start_batch
        self.skipped_total = 0
        self.skipped_files: set[str] = set()

    def _count_skips(self, skipped: list[tuple[str, str]]) -> None:
        for name, reason in skipped:
            self.skipped_total += 1
            if name not in self.skipped_files:
                self.skipped_files.add(name)
                _log.warning("skipping %s: %s (replaced by the next clip)", name, reason)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers / pipelines now rather than at garbage collection."""

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
