"""Fixed-length training clips from an audio source, and the batch contract.

Batch contract (the torch loader here and a DALI pipeline both produce exactly this):

- ``wave``: float32 ``[B, S]`` in [-1, 1], ``S = clip_samples``; row ``b`` holds
  ``lengths[b]`` valid samples followed by zeros;
- ``lengths``: int64 ``[B]``, valid samples per row, ``<= S``;
- ``index``: int64 ``[B]``, the source index of the clip actually used for each row (a bad file
  is replaced by the next one, so this can differ from the sampled index);
- ``skipped``: ``list[tuple[str, str]]``, ``(name, reason)`` of each file that failed to decode
  while this batch was filled (normally empty).

Dataset keys are ``(epoch, index)`` pairs rather than plain indices, so the random crop of a clip
is a function of ``(seed, epoch, index)`` and the clip's length alone (:meth:`ClipDataset.crop`):
the same whichever worker loads it, however many workers there are, after a resume, and in the
DALI pipeline, which computes it on the host from the file header and gets the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from fastspec.data._utils import summarize_skipped
from fastspec.data.audio import BadAudioError, DataError
from fastspec.data.sources import AudioSource
from fastspec.frontend.polyphase import resample, resample_window, resampled_length

__all__ = ["ClipDataset", "collate_clips"]

# Replacing a bad file by its successor gives up after this many failures in a row: a long run
# of bad files means the corpus is broken, and looping over all of it would hide that.
MAX_CONSECUTIVE_FAILURES = 32


class ClipDataset(Dataset):
    """Map-style dataset of fixed-length clips, keyed by ``(epoch, index)``.

    Args:
        source: an :class:`~fastspec.data.sources.AudioSource` (``open_source(...)``).
        sample_rate: output rate in Hz; clips at other rates are resampled (polyphase, as
            :func:`scipy.signal.resample_poly`).
        clip_seconds: output length; ``clip_samples = round(clip_seconds * sample_rate)``.
        seed: seed of the crop offsets.
        random_crop: crop a clip longer than ``clip_samples`` at a random offset drawn from an
            RNG seeded with ``(seed, epoch, index)``; if False, take its beginning.

    ``dataset[(epoch, index)]`` (or ``dataset[index]`` for epoch 0) returns
    ``{"wave": float32 [clip_samples], "length": int, "index": int, "skipped": list}``; shorter
    clips are zero-padded and ``length`` counts their valid samples. A full-length crop at the
    source's rate is a view of the decoded array (no copy: collate copies it into the batch).
    """

    def __init__(
        self,
        source: AudioSource,
        sample_rate: int,
        clip_seconds: float,
        seed: int = 0,
        random_crop: bool = True,
    ):
        if len(source) == 0:
            raise DataError(f"{source!r} holds no clips")
        if sample_rate <= 0 or int(sample_rate) != sample_rate:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.source = source
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.clip_samples = round(self.clip_seconds * self.sample_rate)
        if self.clip_samples < 1:
            raise ValueError(f"clip_seconds={clip_seconds} gives no samples at {sample_rate} Hz")
        self.seed = int(seed)
        self.random_crop = bool(random_crop)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        epoch, index = int(epoch), int(index)
        num_clips = len(self.source)
        if epoch < 0 or not 0 <= index < num_clips:
            raise IndexError(
                f"key (epoch={epoch}, index={index}) out of range for {num_clips} clips"
            )

        skipped: list[tuple[str, str]] = []
        max_failures = min(num_clips, MAX_CONSECUTIVE_FAILURES)
        for attempt in range(max_failures):
            # a bad file is replaced by its successor: deterministic, so every worker count and
            # every resumed run fills the batch with the same clip
            used = (index + attempt) % num_clips
            try:
                wave, sr = self.source.load(used)
                break
            except BadAudioError as err:
                skipped.append((self.source.name(used), err.reason))
        else:
            raise DataError(
                f"{max_failures} consecutive clips of {self.source!r} failed to load, from "
                f"{self.source.name(index)} on ({summarize_skipped(skipped)}); "
                f"first: {skipped[0][0]}: {skipped[0][1]}"
            )

        # crop keyed by the sampled index (not the replacement), so two rows that fall back to
        # the same file still get different crops
        clip = self._crop(wave, sr, epoch, index)
        if clip.shape[0] < self.clip_samples:
            out = torch.zeros(self.clip_samples, dtype=torch.float32)
            out[: clip.shape[0]] = clip
        else:
            out = clip  # a full-length crop needs no copy here: collate copies it into the batch
        return {"wave": out, "length": int(clip.shape[0]), "index": used, "skipped": skipped}

    def crop(self, epoch: int, index: int, frames: int, sample_rate: int) -> tuple[int, int]:
        """``(start, length)`` of the crop of clip ``(epoch, index)``, in output samples.

        ``frames`` is the decoded clip's length at ``sample_rate``; the crop is taken from the
        clip at the output rate (after resampling), so ``length = min(clip_samples, total)``
        with ``total`` the resampled length, and ``start`` is drawn from an RNG seeded with
        ``(seed, epoch, index)`` when the clip is longer than ``clip_samples``. Both loaders
        call this, so their crops agree by construction.
        """
        if sample_rate == self.sample_rate:
            total = frames
        else:
            total = resampled_length(frames, sample_rate, self.sample_rate)
        length = min(total, self.clip_samples)
        if total <= self.clip_samples or not self.random_crop:
            return 0, length
        rng = np.random.default_rng([self.seed, epoch, index])
        return int(rng.integers(0, total - self.clip_samples + 1)), length

    def _crop(self, wave: np.ndarray, sr: int, epoch: int, index: int) -> torch.Tensor:
        """``wave [S_in]`` at ``sr`` -> float32 ``[min(clip_samples, S_out)]`` at the output rate."""
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        start, length = self.crop(epoch, index, x.shape[0], sr)
        if sr == self.sample_rate:
            return x[start : start + length]
        if resampled_length(x.shape[0], sr, self.sample_rate) > self.clip_samples:
            # resample only the input under the crop: a long file costs what the crop costs
            y = resample_window(x, sr, self.sample_rate, start, length)
        else:
            y = resample(x, sr, self.sample_rate)
        # the sinc filter overshoots (Gibbs) near full-scale transients; keep the [-1, 1] contract
        return y.clamp_(-1.0, 1.0)


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack :class:`ClipDataset` items into a batch (see the module docstring for the contract).

    Returns ``{"wave": float32 [B, S], "lengths": int64 [B], "index": int64 [B],
    "skipped": list[tuple[str, str]]}``.
    """
    if not items:
        raise ValueError("collate_clips needs at least one item")
    waves = [item["wave"] for item in items]
    out = None
    if get_worker_info() is not None:
        # In a DataLoader worker, stack straight into shared memory: the batch then travels to
        # the training process without the extra copy that pickling a private tensor costs
        # (what torch's default_collate does too).
        storage = waves[0]._typed_storage()._new_shared(len(waves) * waves[0].numel())
        out = waves[0].new(storage).resize_(len(waves), *waves[0].shape)
    return {
        "wave": torch.stack(waves, out=out),
        "lengths": torch.tensor([item["length"] for item in items], dtype=torch.int64),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
        "skipped": [entry for item in items for entry in item["skipped"]],
    }
