"""The DALI loader: the torch loader's batches, decoded by an NVIDIA DALI pipeline.

Same contract, same batches. Everything that decides *what* goes into a batch is computed on
the host by the code the torch loader runs, then handed to DALI through an external source:

- the order: :class:`~fastspec.data.EpochBatchSampler` (seed, epoch, rank);
- the crop: :meth:`ClipDataset.crop <fastspec.data.ClipDataset.crop>` from ``(seed, epoch,
  index)`` and the clip's length in the file header (:meth:`CheckedSource.span`);
- the bytes: :meth:`CheckedSource.encoded` (the file, or the member of a tar shard).

DALI does the heavy, parallel part on its own threads: decode (WAV, FLAC, OGG; CPU), mixdown,
the segment and crop slices with zero padding, the per-clip checks (sum for NaN/inf, peak for
silence and scaling), and the copy to the GPU (the hand-off). Resampling is *not* done with
DALI's resampler (a different filter than :func:`fastspec.frontend.resample`, so batches would
differ): DALI delivers the input samples under the crop and :func:`fastspec.frontend.resample_window`
runs on the batch's device after the hand-off, on exactly the input the torch loader resamples.

Identical means: with a CPU pipeline (``device=None``), batches equal the torch loader's bit for
bit for WAV and FLAC at any bit depth, rate and channel count (tests/test_dali.py). OGG Vorbis
differs by float rounding (<= 3e-7), because DALI bundles another libvorbis build than
soundfile's. On a GPU, rows that need resampling are computed by the GPU's convolution and agree
with the CPU to float32 rounding.

A clip DALI cannot vouch for takes the torch loader's path for that row (``dataset[key]``):
the clip fails a check (NaN, silence, fewer frames than the header said), its file could not be
read, or DALI failed on its batch (a truncated FLAC stops a DALI pipeline: the pipeline is
rebuilt, the batch is filled by the reference path and the file is remembered). The row then
holds exactly what the torch loader gives, skip report included.
"""

from __future__ import annotations

import collections
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import torch

from fastspec._logging import get_logger, notice_once
from fastspec.data.audio import SILENCE_THRESHOLD, DataError
from fastspec.data.clips import ClipDataset
from fastspec.data.sampler import BatchOrder, BatchStream, EpochBatchSampler
from fastspec.data.sources import CheckedSource, ClipSpan
from fastspec.frontend.polyphase import resample, resample_window, resampled_length

__all__ = ["DaliLoader", "dali_available", "dali_version"]

_log = get_logger("fastspec.data")
# Input samples kept on each side of a resampled crop, in zero crossings of the lower rate's
# sinc. The resampler's filter reaches 10 (fastspec.frontend.polyphase.HALF_WIDTH); any margin at
# least that wide gives resample_window the same input, hence the same bits (see _input_span).
_SPAN_ZERO_CROSSINGS = 32


def dali_version() -> str | None:
    """The installed DALI version, or None when ``nvidia.dali`` does not import."""
    try:
        import nvidia.dali
    except Exception:  # ImportError, or a broken install (missing CUDA libraries)
        return None
    return getattr(nvidia.dali, "__version__", "unknown")


def dali_available() -> bool:
    """Whether the DALI loader can run here."""
    return dali_version() is not None


def _placeholder_wav() -> np.ndarray:
    """A tiny valid WAV fed to DALI for rows the host fills itself (their result is unused)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16, dtype=np.int16), 16000, format="WAV", subtype="PCM_16")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _input_span(frames: int, sr: int, target: int, start: int, length: int) -> tuple[int, int]:
    """Input samples ``[a, b)`` from which ``resample_window`` computes output ``[start, +length)``.

    ``a`` is a multiple of ``down`` (the output grids of the slice and the whole clip line up)
    and the span reaches ``_SPAN_ZERO_CROSSINGS`` zero crossings beyond the window, more than
    the filter's half-length. ``resample_window`` cuts the same sub-span out of ``x[a:b]`` as out
    of ``x``, so the convolution sees the same samples and gives the same bits.
    """
    g = math.gcd(sr, target)
    up, down = target // g, sr // g
    half_len = _SPAN_ZERO_CROSSINGS * max(up, down)
    first = max(0, -(-(start * down - half_len) // up))
    a = (first // down) * down
    b = min(frames, ((start + length - 1) * down + half_len) // up + 1)
    return a, b


def _dali_error_line(err: Exception) -> str:
    """The informative line of a DALI pipeline error (it ends with boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error") and "operator" not in line:
            return line
    return lines[-1] if lines else type(err).__name__


@dataclass
class _Row:
    """The host's plan for one batch row."""

    epoch: int
    index: int
    encoded: np.ndarray  # what DALI decodes (the placeholder when host is set)
    span: ClipSpan  # the source's segment in the decoded file: [span.start, +span.frames)
    crop_anchor: int  # what DALI cuts from the segment: [crop_anchor, +crop_shape), 0-padded
    crop_shape: int
    start: int  # the crop in output samples (ClipDataset.crop)
    length: int
    host: bool = False  # filled by the reference path, not from DALI's output


@dataclass
class _Plan:
    """The rows of one batch, in order."""

    rows: list[_Row]


class DaliLoader(BatchStream):
    """An endless stream of batches decoded by DALI, equal to :func:`make_loader`'s.

    Args:
        dataset: a :class:`ClipDataset` over a :class:`CheckedSource` (files, manifests,
            datasets, shards: anything with encoded bytes; not the synthetic demo corpus).
        order: batch size, seed, start batch (resume) and rank (:class:`BatchOrder`), as for
            :func:`make_loader`.
        num_threads: DALI CPU threads (the counterpart of DataLoader workers; it does not
            change any batch).
        device: ``"cpu"`` (a CPU-only pipeline) or a CUDA device: the batch is handed off to
            the GPU and ``wave`` lives there.
        prefetch: batches DALI prepares ahead.
    """

    backend = "dali"

    def __init__(
        self,
        dataset: ClipDataset,
        order: BatchOrder,
        *,
        num_threads: int = 2,
        device: str | torch.device = "cpu",
        prefetch: int = 2,
    ):
        super().__init__(order.start_batch)
        if not dali_available():
            raise DataError(
                "the DALI loader needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
                "(or fastspec[dali]), or use the torch loader"
            )
        source = dataset.source
        if not isinstance(source, CheckedSource):
            raise DataError(
                f"the DALI loader decodes audio files, and {source!r} has none (the demo corpus "
                "is generated in memory); use the torch loader"
            )
        self.dataset = dataset
        self.source: CheckedSource = source
        self.batch_size = order.batch_size
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device}")
        self.num_threads = max(1, int(num_threads))
        self.prefetch = max(1, int(prefetch))
        self._sampler = iter(EpochBatchSampler(len(dataset), order))
        # the segment slice is needed only when some clip is a part of its file (manifest
        # offset/duration, AudioSet full videos); without it the graph saves a copy per clip
        self._segments = any(
            span.start != 0 or span.frames != span.file_frames
            for span in (source.span(i) for i in range(len(source)))
        )
        self._placeholder = _placeholder_wav()
        self._host_decode: set[int] = set()  # clips DALI failed on: the reference path fills them
        self._inflight: collections.deque[_Plan] = collections.deque()
        self._resubmit: collections.deque[_Plan] = collections.deque()
        self._pipe = None
        self._closed = False

    # -- host side: what each row is

    def _plan_row(self, epoch: int, index: int) -> _Row:
        dataset = self.dataset
        span = self.source.span(index)
        start, length = dataset.crop(epoch, index, span.frames, span.sample_rate)
        if span.sample_rate == dataset.sample_rate:
            crop_anchor, crop_shape = start, dataset.clip_samples
        else:
            total = resampled_length(span.frames, span.sample_rate, dataset.sample_rate)
            if total > dataset.clip_samples:
                a, b = _input_span(
                    span.frames, span.sample_rate, dataset.sample_rate, start, length
                )
            else:  # the torch loader resamples the whole clip
                a, b = 0, span.frames
            crop_anchor, crop_shape = a, b - a
        row = _Row(
            epoch=epoch,
            index=index,
            encoded=self._placeholder,
            span=span,
            crop_anchor=crop_anchor,
            crop_shape=crop_shape,
            start=start,
            length=length,
            host=index in self._host_decode,
        )
        if not row.host:
            try:
                row.encoded = self.source.encoded(index)
            except Exception:  # the file vanished or cannot be read: the reference path reports it
                row.host = True
        return row

    def _next_plan(self) -> _Plan:
        keys = next(self._sampler)
        return _Plan([self._plan_row(epoch, index) for epoch, index in keys])

    def _feed(self):
        """The external source callback: the next batch's inputs (DALI calls it ahead)."""
        if self._resubmit:
            plan = self._resubmit.popleft()
            for row in plan.rows:  # planned before the failure: skip the files it exposed
                if row.index in self._host_decode:
                    row.host, row.encoded = True, self._placeholder
        else:
            plan = self._next_plan()
        self._inflight.append(plan)
        rows = plan.rows

        def ints(values: list[int]) -> list[np.ndarray]:
            return [np.array([v], dtype=np.int64) for v in values]

        crop = (ints([row.crop_anchor for row in rows]), ints([row.crop_shape for row in rows]))
        if not self._segments:  # the pipeline has no segment slice to feed
            return ([row.encoded for row in rows], *crop)
        segment = (ints([row.span.start for row in rows]), ints([row.span.frames for row in rows]))
        return ([row.encoded for row in rows], *segment, *crop)

    # -- the pipeline

    def _build(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        cuda = self.device.type == "cuda"
        segments = self._segments

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=(self.device.index or 0) if cuda else None,
            prefetch_queue_depth=self.prefetch,
        )
        def pipeline():
            num_outputs = 5 if segments else 3
            encoded, *anchors_and_shapes = fn.external_source(
                source=self._feed,
                num_outputs=num_outputs,
                batch=True,
                dtype=[types.UINT8] + [types.INT64] * (num_outputs - 1),
            )
            crop_anchor, crop_shape = anchors_and_shapes[-2:]
            # decoded [frames] float32: int PCM scaled by 2**-(bits-1), channels mixed as
            # sum_c x_c / C, the same values soundfile + fastspec.data.mixdown give
            audio, rate = fn.decoders.audio(encoded, dtype=types.FLOAT, downmix=True)
            frames = audio.shape()
            if segments:  # the clip is a part of its file: cut it before the checks
                span_anchor, span_shape = anchors_and_shapes[:2]
                audio = fn.slice(
                    audio, span_anchor, span_shape, axes=[0], out_of_bounds_policy="pad"
                )
            # the checks read_audio makes on the whole clip: a NaN or inf makes the sum
            # non-finite; the peak decides silence and the scaling of float files above 1
            total = fn.reductions.sum(audio)
            peak = fn.reductions.max(dmath.abs(audio))
            crop = fn.slice(audio, crop_anchor, crop_shape, axes=[0], out_of_bounds_policy="pad")
            crop = fn.pad(crop, axes=[0], fill_value=0.0)  # ragged -> dense [B, max shape]
            if cuda:
                crop = crop.gpu()  # the hand-off: one host-to-device copy per batch
            return crop, frames, rate, total, peak

        pipe = pipeline()
        pipe.build()
        return pipe

    def _restart(self) -> None:
        """Drop a failed pipeline; what it had in flight goes to the next one, in order."""
        self._pipe = None
        self._resubmit.extend(self._inflight)
        self._inflight.clear()

    # -- device side: the batch

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise StopIteration
        if self._pipe is None:
            self._pipe = self._build()
        try:
            if self.device.type == "cuda":
                # outputs bound to the training stream: no host wait for DALI's copy
                outputs = self._pipe.run(torch.cuda.current_stream(self.device))
            else:
                outputs = self._pipe.run()
        except RuntimeError as err:
            # DALI stops the pipeline on a file it cannot decode (a FLAC cut short). The oldest
            # batch in flight is the failed one: fill it by the reference path and remember
            # its bad files; resubmit the rest to a new pipeline.
            failed = self._inflight.popleft()
            self._restart()
            batch = self._fill_by_reference(failed, _dali_error_line(err))
        else:
            plan = self._inflight.popleft()
            batch = self._assemble(plan, outputs)
        self.batch_index += 1
        self._count_skips(batch["skipped"])
        return batch

    def _fill_by_reference(self, plan: _Plan, error: str) -> dict[str, Any]:
        notice_once(
            "data.dali.failed",
            f"DALI could not decode a batch ({error}); such batches are decoded by soundfile",
        )
        for row in plan.rows:
            row.host = True
        batch = self._assemble(plan, None)
        bad = {name for name, _ in batch["skipped"]}
        culprits = [row.index for row in plan.rows if self.source.name(row.index) in bad]
        # a file DALI rejects but soundfile reads: every clip of the batch is a suspect
        self._host_decode.update(culprits or [row.index for row in plan.rows])
        return batch

    def _assemble(self, plan: _Plan, outputs) -> dict[str, Any]:
        dataset, rows = self.dataset, plan.rows
        clip = dataset.clip_samples
        batch_size = len(rows)
        wave_out = None
        if outputs is not None:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            crops, frames, rates, totals, peaks = outputs
            dense = crops.as_tensor()
            wave_out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
            stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
            feed_ndarray(dense, wave_out, cuda_stream=stream)
            # per-clip scalars stay on the host (CPU operators): reading them is no device sync
            frames = np.asarray(frames.as_tensor()).reshape(-1)
            rates = np.asarray(rates.as_tensor()).reshape(-1)
            totals = np.asarray(totals.as_tensor()).reshape(-1)
            peaks = np.asarray(peaks.as_tensor()).reshape(-1)
            for b, row in enumerate(rows):
                if (
                    frames[b] != row.span.file_frames
                    or int(rates[b]) != row.span.sample_rate
                    or not np.isfinite(totals[b])
                    or peaks[b] < SILENCE_THRESHOLD
                ):
                    # NaN/inf, silence or a length the header did not announce: the reference
                    # path decides (it skips the file, or crops what it decodes)
                    row.host = True

        direct = (
            wave_out is not None
            and wave_out.shape[1] == clip
            and not any(row.host or row.span.sample_rate != dataset.sample_rate for row in rows)
        )
        wave = wave_out if direct else torch.zeros(batch_size, clip, device=self.device)
        lengths, indices, skipped = [], [], []
        for b, row in enumerate(rows):
            if row.host:
                item = dataset[(row.epoch, row.index)]
                wave[b].copy_(item["wave"], non_blocking=True)
                lengths.append(item["length"])
                indices.append(item["index"])
                skipped.extend(item["skipped"])
                continue
            peak = float(peaks[b])
            lengths.append(row.length)
            indices.append(row.index)
            if row.span.sample_rate == dataset.sample_rate:
                x = wave_out[b, :clip]
                if peak > 1.0:  # read_audio's scaling of a float file above full scale
                    x.div_(peak).clamp_(-1.0, 1.0)
                if not direct:
                    wave[b].copy_(x)
                continue
            x = wave_out[b, : row.crop_shape]
            if peak > 1.0:
                x = (x / peak).clamp_(-1.0, 1.0)
            rate = row.span.sample_rate
            total = resampled_length(row.span.frames, rate, dataset.sample_rate)
            if total > clip:
                # the crop's output window, relative to the slice starting at crop_anchor
                up = dataset.sample_rate // math.gcd(rate, dataset.sample_rate)
                down = rate // math.gcd(rate, dataset.sample_rate)
                rel = row.start - row.crop_anchor // down * up
                y = resample_window(x, rate, dataset.sample_rate, rel, row.length)
            else:
                y = resample(x, rate, dataset.sample_rate)
            wave[b, : row.length] = y.clamp_(-1.0, 1.0)
        return {
            "wave": wave,
            "lengths": torch.tensor(lengths, dtype=torch.int64),
            "index": torch.tensor(indices, dtype=torch.int64),
            "skipped": skipped,
        }

    def close(self) -> None:
        """Release the pipeline (its threads and buffers)."""
        self._closed = True
        self._pipe = None
        self._inflight.clear()
        self._resubmit.clear()
