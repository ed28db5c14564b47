"""The torch data loader: an endless, resumable stream of batches in a seed-determined order.

Determinism is built from two pieces that do not depend on the process layout:

- :class:`EpochBatchSampler` decides which clips form batch ``g`` (the global batch number):
  epoch ``g // batches_per_epoch`` is a permutation drawn from a generator seeded with
  ``(seed, epoch)``, cut into consecutive batches with the remainder dropped;
- :class:`~fastspec.data.ClipDataset` decides the content of each ``(epoch, index)`` key (the
  crop offset is seeded with ``(seed, epoch, index)``).

So batch ``g`` is the same with 0 or 8 workers, and a run resumed with ``start_batch=g`` sees
exactly the batches ``g, g + 1, ...`` of the uninterrupted run, without producing the earlier
ones (only the permutation of the current epoch is drawn).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastspec._logging import get_logger, notice_once
from fastspec.data.audio import DataError
from fastspec.data.dataset import collate_clips

__all__ = ["BatchIterator", "EpochBatchSampler", "make_loader"]

_log = get_logger("fastspec.data")


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from ``(seed, epoch)``.

    SeedSequence hashes the pair, so neighbouring seeds or epochs give unrelated permutations
    (``seed * K + epoch`` would make seed 0 epoch K equal seed 1 epoch 0).
    """
    low, high = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


class EpochBatchSampler:
    """Endless batch sampler over ``num_items`` items, yielding lists of ``(epoch, index)`` keys.

    Args:
        num_items: dataset size.
        batch_size: keys per batch; each epoch yields ``num_items // batch_size`` batches (the
            remainder of the permutation is dropped, so every batch is full).
        seed: data-order seed (>= 0).
        start_batch: global number of the first batch to yield; batches before it are skipped
            without being generated.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_batch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size > num_items:
            raise DataError(
                f"batch_size {batch_size} is larger than the {num_items} clips available; "
                "every batch must be full, so no batch could be formed"
            )
        if seed < 0 or start_batch < 0:
            raise ValueError(f"seed and start_batch must be >= 0, got {seed} and {start_batch}")
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_batch = int(start_batch)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches in one pass over the data."""
        return self.num_items // self.batch_size

    def permutation(self, epoch: int) -> list[int]:
        """The item order of ``epoch``: a permutation of ``range(num_items)``."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order = self.permutation(epoch)
            for batch in range(first, self.batches_per_epoch):
                start = batch * self.batch_size
                yield [(epoch, index) for index in order[start : start + self.batch_size]]
            epoch, first = epoch + 1, 0


class BatchIterator:
    """Endless iterator of batch dicts (see :mod:`fastspec.data.dataset` for the contract).

    Besides yielding batches it logs each file that failed to decode once (the first time it is
    skipped; later epochs skip it again silently) and counts skips.

    Attributes:
        batch_index: global number of the next batch; save it in a checkpoint and pass it back
            as ``start_batch`` to resume the data stream exactly.
        skipped_total: files skipped while filling batches so far (a file counts every time).
        skipped_files: distinct names among them.
    """

    def __init__(self, loader: DataLoader, start_batch: int):
        self._loader: DataLoader | None = loader
        self._iterator: Iterator[dict[str, Any]] | None = None
        self.batch_index = start_batch
        self.skipped_total = 0
        self.skipped_files: set[str] = set()

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._loader is None:
            raise StopIteration
        if self._iterator is None:  # workers start on the first batch, not at construction
            self._iterator = iter(self._loader)
        batch = next(self._iterator)
        self.batch_index += 1
        # pin_memory turns tuples into lists; restore the contract's (name, reason) tuples
        batch["skipped"] = [tuple(entry) for entry in batch["skipped"]]
        for name, reason in batch["skipped"]:
            self.skipped_total += 1
            if name not in self.skipped_files:
                self.skipped_files.add(name)
                _log.warning("skipping %s: %s (replaced by the next clip)", name, reason)
        return batch

    def close(self) -> None:
        """Stop the worker processes now rather than when the iterator is garbage collected."""
        iterator, self._iterator, self._loader = self._iterator, None, None
        # the multi-process iterator has no public shutdown; its own __del__ calls this
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    start_batch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> BatchIterator:
    """An endless stream of batches from ``dataset`` (a :class:`ClipDataset`).

    Args:
        dataset: map-style dataset keyed by ``(epoch, index)``.
        batch_size: clips per batch.
        seed: data-order seed.
        start_batch: global batch number to start from (resume).
        num_workers: DataLoader worker processes (0: load in this process). Workers persist
            for the life of the iterator.
        pin_memory: pin batches for asynchronous host-to-device copies; ignored, with a
            one-line notice, when CUDA is unavailable.
        prefetch_factor: batches each worker prepares ahead.

    Returns:
        A :class:`BatchIterator`; batch ``g`` is identical for every ``num_workers``.
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, start_batch)
    if pin_memory and not torch.cuda.is_available():
        notice_once("data.pin_memory", "pin_memory requested without CUDA; batches are not pinned")
        pin_memory = False
    worker_options: dict[str, Any] = {}
    if num_workers > 0:
        worker_options = {"prefetch_factor": prefetch_factor, "persistent_workers": True}
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_clips,
        pin_memory=pin_memory,
        # DataLoader draws each iterator's worker base seed from this generator; without one it
        # would draw from (and so shift) the global torch RNG that model init relies on. No
        # randomness here reaches the data: crops are seeded per key.
        generator=torch.Generator().manual_seed(seed),
        **worker_options,
    )
    return BatchIterator(loader, start_batch)
