"""The waveform side of the data path: sources, decoding, resampling, clips and batches.

``open_source(spec)`` opens what ``--data`` names (None: the synthetic :class:`DemoCorpus`; a
folder; a CSV or JSON-lines manifest; WebDataset tar shards; ``esc50:``, ``speechcommands:`` or
``audioset:`` datasets). :class:`ClipDataset` turns a source into fixed-length clips at the
model's sample rate, and :func:`build_loader` streams them as batches, with the DALI loader
(:mod:`fastspec.data.dali`) or the torch loader (:func:`make_loader`), both in the order of
:class:`EpochBatchSampler` (:mod:`fastspec.data.sampler`), set by one :class:`BatchOrder`::

    {"wave": float32 [B, S] in [-1, 1], "lengths": int64 [B], "index": int64 [B],
     "skipped": list[(name, reason)]}

in an order fixed by the seed, epoch and rank, identical for either loader, any worker count and
after a resume. :func:`write_shards` (``fastspec shard``) writes tar shards; the dataset readers
(:func:`open_esc50`, :func:`open_speech_commands`, :func:`open_audioset`) return
:class:`LabeledSource` objects for evaluation.
"""

from fastspec.data._utils import summarize_skipped
from fastspec.data.audio import (
    AudioInfo,
    BadAudioError,
    DataError,
    decode_audio,
    mixdown,
    probe_audio,
    read_audio,
)
from fastspec.data.clips import ClipDataset, collate_clips
from fastspec.data.dali import DaliLoader, dali_available, dali_version
from fastspec.data.datasets import open_audioset, open_dataset, open_esc50, open_speech_commands
from fastspec.data.demo import DemoCorpus, DemoEvalSet
from fastspec.data.files import FileSource, LabeledSource
from fastspec.data.loader import (
    LOADERS,
    BatchIterator,
    build_loader,
    loader_report,
    make_loader,
    resolve_loader,
)
from fastspec.data.manifest import ManifestRow, read_manifest
from fastspec.data.sampler import BatchOrder, BatchStream, EpochBatchSampler
from fastspec.data.shard_reader import ShardSource, expand_shard_pattern
from fastspec.data.shard_writer import ShardStats, write_shards
from fastspec.data.sources import AudioSource, CheckedSource, ClipSpan
from fastspec.data.spec import open_source

__all__ = [
    "LOADERS",
    "AudioInfo",
    "AudioSource",
    "BadAudioError",
    "BatchIterator",
    "BatchOrder",
    "BatchStream",
    "CheckedSource",
    "ClipDataset",
    "ClipSpan",
    "DaliLoader",
    "DataError",
    "DemoCorpus",
    "DemoEvalSet",
    "EpochBatchSampler",
    "FileSource",
    "LabeledSource",
    "ManifestRow",
    "ShardSource",
    "ShardStats",
    "build_loader",
    "collate_clips",
    "dali_available",
    "dali_version",
    "decode_audio",
    "expand_shard_pattern",
    "loader_report",
    "make_loader",
    "mixdown",
    "open_audioset",
    "open_dataset",
    "open_esc50",
    "open_source",
    "open_speech_commands",
    "probe_audio",
    "read_audio",
    "read_manifest",
    "resolve_loader",
    "summarize_skipped",
    "write_shards",
]
