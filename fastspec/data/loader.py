"""The torch data loader, and the choice between it and the DALI loader (:func:`build_loader`).

Both loaders draw their batches from :class:`~fastspec.data.sampler.EpochBatchSampler` and yield
the batch contract of :mod:`fastspec.data.clips`, so batch ``g`` of a rank is the same whichever
loader, however many workers, and after a resume (see :mod:`fastspec.data.sampler`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from fastspec._logging import get_logger, notice_once
from fastspec.backends import Decision, Piece, choose, register

# the module, not its names: dali_available / dali_version are looked up at call time, so a test
# (or a caller) can stand in for an installed or missing DALI
from fastspec.data import dali
from fastspec.data.audio import DataError
from fastspec.data.clips import collate_clips
from fastspec.data.sampler import BatchOrder, BatchStream, EpochBatchSampler
from fastspec.data.sources import CheckedSource

__all__ = [
    "LOADERS",
    "LOADER_ENV_VAR",
    "BatchIterator",
    "build_loader",
    "loader_report",
    "make_loader",
    "resolve_loader",
]

_log = get_logger("fastspec.data")


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
    order: BatchOrder,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> BatchIterator:
    """An endless stream of batches from ``dataset`` (a :class:`ClipDataset`).

    Args:
        dataset: map-style dataset keyed by ``(epoch, index)``.
        order: batch size, seed, start batch (resume) and rank (:class:`BatchOrder`).
        num_workers: DataLoader worker processes (0: load in this process). Workers persist
            for the life of the iterator.
        pin_memory: pin batches for asynchronous host-to-device copies; ignored, with a
            one-line notice, when CUDA is unavailable.
        prefetch_factor: batches each worker prepares ahead.

    Returns:
        A :class:`BatchIterator`; batch ``g`` is identical for every ``num_workers``.
    """
    sampler = EpochBatchSampler(len(dataset), order)
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
        generator=torch.Generator().manual_seed(order.seed),
        **worker_options,
    )
    return BatchIterator(loader, order.start_batch)


# values of --loader / data.loader
LOADERS = ("auto", "dali", "torch")
# forces the loader without code or config changes (DESIGN.md section 5), as
# FASTSPEC_FRONTEND_BACKEND does for the front end
LOADER_ENV_VAR = "FASTSPEC_LOADER"


def _decide_loader(
    value: str, device_type: str, forced: bool, probe: bool = False, source: Any = None
) -> Decision:
    """The loader's :class:`fastspec.backends.Decision`; ``probe`` (``fastspec info``) answers
    for a source of files."""
    if value == "torch":
        return Decision("torch", "torch DataLoader (asked for)")
    has_files = isinstance(source, CheckedSource) or (probe and source is None)
    if value == "dali":
        if not dali.dali_available():
            raise DataError(
                "data.loader=dali but NVIDIA DALI is not installed (pip install "
                "nvidia-dali-cuda130); use --loader torch or auto"
            )
        if not has_files:
            raise DataError(
                f"data.loader=dali needs audio files to decode, and {source!r} is generated in "
                "memory; use --loader torch or auto, or --data"
            )
        return Decision("dali", f"DALI {dali.dali_version()} (asked for)")
    if not has_files:  # decided before importing DALI, which takes half a second
        return Decision(
            "torch",
            "data loader: torch; the synthetic demo corpus has no files for DALI to decode",
            "data.loader",
        )
    if not dali.dali_available():
        return Decision(
            "torch",
            "data loader: torch (soundfile in DataLoader workers); DALI is not installed "
            "(pip install nvidia-dali-cuda130)",
            "data.loader",
        )
    # not a fallback, but worth the same one line: which loader a run with files takes
    why = f"data loader: DALI {dali.dali_version()} (auto: DALI is installed)"
    return Decision("dali", why, None if probe else "data.loader")


register(
    Piece(
        name="loader",
        title="data loader",
        env=LOADER_ENV_VAR,
        choices=LOADERS,
        decide=_decide_loader,
    )
)


def resolve_loader(loader: str, source: Any) -> str:
    """The loader ``loader`` (auto | dali | torch) stands for with this source: dali or torch.

    ``auto`` takes DALI when it is installed and the source has files to decode, and says which
    loader it took, and why, in one line. ``dali`` without DALI, or on the synthetic demo corpus,
    is an error rather than a silent switch. The environment variable ``FASTSPEC_LOADER``
    replaces ``loader`` when set; a bad value is an error listing the choices
    (:mod:`fastspec.backends`).
    """
    return choose("loader", "cpu", loader, source=source)


def loader_report() -> str:
    """One line for ``fastspec info``: which loader ``auto`` takes for files, and why."""
    version = dali.dali_version()
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
        A :class:`BatchStream`: ``next()`` gives the batch dict of :mod:`fastspec.data.clips`;
        ``batch_index``, ``skipped_total``, ``skipped_files``, ``close()``, ``backend``.
    """
    device = torch.device(device)
    order = BatchOrder(batch_size, seed, start_batch, rank=rank, world_size=world_size)
    if resolve_loader(loader, dataset.source) == "dali":
        return dali.DaliLoader(dataset, order, num_threads=max(1, num_workers), device=device)
    return make_loader(dataset, order, num_workers=num_workers, pin_memory=device.type == "cuda")
