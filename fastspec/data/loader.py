"""The torch data loader: an endless, resumable stream of batches in a seed-determined order.

Determinism is built from two pieces that do not depend on the process layout:

- :class:`EpochBatchSampler` decides which clips form batch ``g`` (the global batch number):
  epoch ``g // batches_per_epoch`` is a permutation drawn from a generator seeded with
  ``(seed, epoch)``, cut into consecutive global batches of ``batch_size * world_size`` clips
  (the remainder dropped), of which rank ``r`` takes the ``r``-th ``batch_size`` slice;
- :class:`~fastspec.data.ClipDataset` decides the content of each ``(epoch, index)`` key (the
  crop offset is seeded with ``(seed, epoch, index)``).

So batch ``g`` of a rank depends only on ``(seed, epoch, rank)``: it is the same with 0 or 8
workers, with the torch loader here or the DALI loader (:mod:`fastspec.data.dali`, which uses the
same sampler), and a run resumed with ``start_batch=g`` sees exactly the batches ``g, g + 1,
...`` of the uninterrupted run, without producing the earlier ones (only the permutation of the
current epoch is drawn).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastspec._logging import get_logger, notice_once
from fastspec.data.audio import DataError
from fastspec.data.dataset import collate_clips

__all__ = [
    "LOADERS",
    "LOADER_ENV_VAR",
    "BatchIterator",
    "BatchStream",
    "EpochBatchSampler",
    "build_loader",
    "loader_report",
    "make_loader",
    "resolve_loader",
]

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
        batch_size: keys per batch of this rank; each epoch yields
            ``num_items // (batch_size * world_size)`` batches (the remainder of the permutation
            is dropped, so every batch is full and all ranks take the same number of steps).
        seed: data-order seed (>= 0).
        start_batch: global number of the first batch to yield; batches before it are skipped
            without being generated.
        rank, world_size: this process's share: rank ``r`` takes slice ``r`` of each global
            batch of ``batch_size * world_size`` keys, so the ranks see disjoint clips.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_batch: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
        if batch_size * world_size > num_items:
            raise DataError(
                f"batch_size {batch_size} x {world_size} ranks is larger than the {num_items} "
                "clips available; every batch must be full, so no batch could be formed"
            )
        if seed < 0 or start_batch < 0:
            raise ValueError(f"seed and start_batch must be >= 0, got {seed} and {start_batch}")
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_batch = int(start_batch)
        self.rank = int(rank)
        self.world_size = int(world_size)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per rank in one pass over the data."""
        return self.num_items // (self.batch_size * self.world_size)

    def permutation(self, epoch: int) -> list[int]:
        """The item order of ``epoch``: a permutation of ``range(num_items)``."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order = self.permutation(epoch)
            for batch in range(first, self.batches_per_epoch):
                start = (batch * self.world_size + self.rank) * self.batch_size
                yield [(epoch, index) for index in order[start : start + self.batch_size]]
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


class BatchIterator(BatchStream):
    """The torch loader's :class:`BatchStream`: batches from a DataLoader over a ClipDataset."""

    backend = "torch"

    def __init__(self, loader: DataLoader, start_batch: int):
        super().__init__(start_batch)
        self._loader: DataLoader | None = loader
        self._iterator: Iterator[dict[str, Any]] | None = None

    def __next__(self) -> dict[str, Any]:
        if self._loader is None:
            raise StopIteration
        if self._iterator is None:  # workers start on the first batch, not at construction
            self._iterator = iter(self._loader)
        batch = next(self._iterator)
        self.batch_index += 1
        # pin_memory turns tuples into lists; restore the contract's (name, reason) tuples
        batch["skipped"] = [tuple(entry) for entry in batch["skipped"]]
        self._count_skips(batch["skipped"])
        return batch

    def close(self) -> None:
        """Stop the worker processes now rather than when the iterator is garbage collected."""
        iterator, self._iterator, self._loader = self._iterator, None, None
        # the multi-process iterator has no public shutdown; its own __del__ calls this
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    start_batch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    rank: int = 0,
    world_size: int = 1,
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
        rank, world_size: this process's share of each global batch (see
            :class:`EpochBatchSampler`).

    Returns:
        A :class:`BatchIterator`; batch ``g`` is identical for every ``num_workers``.
    """
    sampler = EpochBatchSampler(
        len(dataset), batch_size, seed, start_batch, rank=rank, world_size=world_size
    )
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


# values of --loader / data.loader
LOADERS = ("auto", "dali", "torch")
# forces the loader without code or config changes (DESIGN.md section 5), as
# FASTSPEC_FRONTEND_BACKEND does for the front end
LOADER_ENV_VAR = "FASTSPEC_LOADER"


def resolve_loader(loader: str, source: Any) -> str:
    """The loader ``loader`` (auto | dali | torch) stands for with this source: dali or torch.

    ``auto`` takes DALI when it is installed and the source has files to decode, and says which
    loader it took, and why, in one line. ``dali`` without DALI, or on the synthetic demo corpus,
    is an error rather than a silent switch. The environment variable ``FASTSPEC_LOADER``
    replaces ``loader`` when set.
    """
    from fastspec.data.dali import dali_available, dali_version
    from fastspec.data.sources import CheckedSource

    forced = os.environ.get(LOADER_ENV_VAR)
    if forced:
        if forced not in LOADERS:
            raise ValueError(f"{LOADER_ENV_VAR}={forced!r} is not one of {LOADERS}")
        loader = forced
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    if loader == "torch":
        return "torch"
    has_files = isinstance(source, CheckedSource)
    if loader == "dali":
        if not dali_available():
            raise DataError(
                "data.loader=dali but NVIDIA DALI is not installed (pip install "
                "nvidia-dali-cuda130); use --loader torch or auto"
            )
        if not has_files:
            raise DataError(
                f"data.loader=dali needs audio files to decode, and {source!r} is generated in "
                "memory; use --loader torch or auto, or --data"
            )
        return "dali"
    if not has_files:  # decided before importing DALI, which takes half a second
        notice_once(
            "data.loader",
            "data loader: torch; the synthetic demo corpus has no files for DALI to decode",
        )
        return "torch"
    if not dali_available():
        notice_once(
            "data.loader",
            "data loader: torch (soundfile in DataLoader workers); DALI is not installed "
            "(pip install nvidia-dali-cuda130)",
        )
        return "torch"
    notice_once("data.loader", f"data loader: DALI {dali_version()} (auto: DALI is installed)")
    return "dali"


def loader_report() -> str:
    """One line for ``fastspec info``: which loader ``auto`` takes for files, and why."""
    from fastspec.data.dali import dali_version

    version = dali_version()
    if version is None:
        return "torch: soundfile in DataLoader workers (DALI not installed)"
    return f"DALI {version} for files and shards (auto); torch for the demo corpus"


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    loader: str = "auto",
    seed: int,
    start_batch: int = 0,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> BatchStream:
    """The training loop's data stream: the DALI or the torch loader, same batches either way.

    Args:
        dataset: a :class:`~fastspec.data.ClipDataset`.
        batch_size: clips per batch (of this rank).
        loader: ``auto`` | ``dali`` | ``torch`` (:func:`resolve_loader`).
        seed: data-order seed.
        start_batch: global batch number to start from (resume: ``step * accum_steps``).
        num_workers: DataLoader worker processes (torch), or DALI CPU threads (at least 1).
        device: where the training step runs. With CUDA the torch loader pins its batches and
            the DALI loader hands them off to the GPU itself.
        rank, world_size: this process's share of each global batch.

    Returns:
        A :class:`BatchStream`: ``next()`` gives the batch dict of :mod:`fastspec.data.dataset`;
        ``batch_index``, ``skipped_total``, ``skipped_files``, ``close()``, ``backend``.
    """
    device = torch.device(device)
    if resolve_loader(loader, dataset.source) == "dali":
        from fastspec.data.dali import DaliLoader

        return DaliLoader(
            dataset,
            batch_size,
            seed=seed,
            start_batch=start_batch,
            num_threads=max(1, num_workers),
            device=device,
            rank=rank,
            world_size=world_size,
        )
    return make_loader(
        dataset,
        batch_size,
        seed=seed,
        start_batch=start_batch,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        rank=rank,
        world_size=world_size,
    )
