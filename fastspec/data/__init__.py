"""The waveform side of the data path: sources, decoding, resampling, clips and batches.

``open_source(spec)`` opens what ``--data`` names (None: the synthetic :class:`DemoCorpus`; a
folder; a CSV or JSON-lines manifest). :class:`ClipDataset` turns a source into fixed-length
clips at the model's sample rate, and :func:`make_loader` streams them as batches::

    {"wave": float32 [B, S] in [-1, 1], "lengths": int64 [B], "index": int64 [B],
     "skipped": list[(name, reason)]}

in an order fixed by the seed, identical for any worker count and after a resume.
"""

from fastspec.data.audio import (
    AudioInfo,
    BadAudioError,
    DataError,
    probe_audio,
    read_audio,
)
from fastspec.data.dataset import ClipDataset, collate_clips
from fastspec.data.demo import DemoCorpus
from fastspec.data.loader import BatchIterator, EpochBatchSampler, make_loader
from fastspec.data.resample import resample, resample_window, resampled_length
from fastspec.data.sources import AudioSource, FileSource, open_source

__all__ = [
    "AudioInfo",
    "AudioSource",
    "BadAudioError",
    "BatchIterator",
    "ClipDataset",
    "DataError",
    "DemoCorpus",
    "EpochBatchSampler",
    "FileSource",
    "collate_clips",
    "make_loader",
    "open_source",
    "probe_audio",
    "read_audio",
    "resample",
    "resample_window",
    "resampled_length",
]
