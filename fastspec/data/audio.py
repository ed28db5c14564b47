"""Audio file I/O with soundfile: decode to mono float32, and reject files that would poison a batch.

Two entry points with different costs:

- :func:`probe_audio` reads only the header (plus, for WAV, the chunk table) and is what
  :func:`fastspec.data.open_source` runs over every file at open time. It catches files that are
  not audio, empty, header-only, too short, or WAV files whose data chunk runs past the end of
  the file.
- :func:`read_audio` decodes the whole file and additionally catches what only decoding can
  reveal: decode errors (a truncated FLAC loses sync), fewer frames than the header declares,
  NaN/inf samples in float files, and silence.

- :func:`decode_audio` does what :func:`read_audio` does for an encoded file held in memory (a
  member of a tar shard), with a fast path for 16-bit PCM WAV.

All three raise :class:`BadAudioError`, whose ``reason`` starts with a short kind
(``unreadable``, ``empty``, ``truncated``, ``decode error``, ``non-finite``, ``silent``,
``too short``) so that skip logs can be summarised by kind.

Decoded values are defined so that DALI's decoder (``fn.decoders.audio(..., downmix=True)``)
gives the same float32 samples bit for bit on WAV and FLAC: integer PCM is scaled by a power of
two (exact), and channels are mixed down as ``sum_c x_c * (1 / C)`` in float32, in channel order,
which is DALI's formula (and equals the mean for one or two channels).
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf

__all__ = [
    "AUDIO_EXTENSIONS",
    "MIN_SECONDS",
    "SILENCE_THRESHOLD",
    "AudioInfo",
    "BadAudioError",
    "DataError",
    "check_header",
    "decode_audio",
    "mixdown",
    "probe_audio",
    "probe_audio_bytes",
    "read_audio",
]

# File types a folder scan picks up (compared case-insensitively). libsndfile decodes all three.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
# Shorter than this is not worth a training example: 10 ms is one Kaldi fbank hop.
MIN_SECONDS = 0.01
# Below the 16-bit LSB (2**-15 ~ 3e-5), so an integer file is "silent" only if it is all zeros,
# while a float file of denormals or rounding noise also counts as silent.
SILENCE_THRESHOLD = 1e-7


class DataError(ValueError):
    """A data source as a whole is unusable: missing, unsupported, or without any usable file."""


class BadAudioError(ValueError):
    """One audio file is unusable; ``path`` names it and ``reason`` says why.

    ``reason`` starts with a short kind (``"silent"``, ``"truncated: ..."``), available as
    :attr:`kind` for summaries.
    """

    def __init__(self, path: str | os.PathLike, reason: str = "unusable"):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    @property
    def kind(self) -> str:
        """The reason without its detail: ``"decode error: lost sync"`` -> ``"decode error"``."""
        return self.reason.split(":", 1)[0]

    def __reduce__(self):
        # Exceptions pickle through self.args (the formatted message), which would not round-trip
        # through this two-argument constructor when a DataLoader worker sends one back.
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says (nothing decoded)."""

    path: str
    frames: int  # samples per channel
    sample_rate: int
    channels: int
    format: str  # libsndfile major format, e.g. "WAV", "FLAC", "OGG"
    subtype: str  # e.g. "PCM_16", "FLOAT", "VORBIS"

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def _libsndfile_message(err: Exception) -> str:
    """The useful part of a soundfile error ("Format not recognised.", "flac decoder lost sync.")."""
    # LibsndfileError carries libsndfile's own text; its str() prefixes "Error opening '<path>': ",
    # which would repeat the path that BadAudioError already names.
    message = (getattr(err, "error_string", None) or str(err)).strip()
    # decode errors come back as "Error : flac decoder lost sync."
    message = message.removeprefix("Error :").removeprefix("Error:").strip()
    return message.rstrip(".")


def _wav_data_shortfall(f: io.BufferedIOBase, file_size: int) -> str | None:
    """For a RIFF/WAVE file, compare the declared data chunk size with the bytes present.

    libsndfile quietly shortens a WAV whose data chunk runs past the end of the file (a partial
    copy or an interrupted download) and decodes what is there, so truncation would pass
    unnoticed. Walking the chunk table reads a few dozen bytes.

    Args:
        f: the file (or an in-memory file), positioned anywhere.
        file_size: its size in bytes.

    Returns a description of the shortfall, or None when the file is complete (or cannot be
    checked: RF64, or a streamed WAV whose writer left the size as 0 or 0xFFFFFFFF).
    """
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
        return None
    endian = "<" if head[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= file_size:
        f.seek(pos)
        chunk = f.read(8)
        chunk_id, size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
        if chunk_id == b"data":
            if size in (0, 0xFFFFFFFF):
                return None
            available = file_size - pos - 8
            if size > available:
                return f"data chunk declares {size} bytes but the file holds {available}"
            return None
        # chunks are word aligned: an odd-sized chunk is followed by one pad byte
        pos += 8 + size + (size & 1)
    return None


def _info_from(header, path: str) -> AudioInfo:
    return AudioInfo(
        path=path,
        frames=int(header.frames),
        sample_rate=int(header.samplerate),
        channels=int(header.channels),
        format=str(header.format),
        subtype=str(header.subtype),
    )


def check_header(info: AudioInfo, min_seconds: float) -> None:
    """The header-level checks shared by files on disk and files in memory."""
    path = info.path
    if info.sample_rate <= 0 or info.channels <= 0:
        raise BadAudioError(
            path, f"unreadable: sample rate {info.sample_rate}, {info.channels} channels"
        )
    if info.frames == 0:
        raise BadAudioError(path, "empty: header declares 0 frames")
    min_frames = math.ceil(min_seconds * info.sample_rate)
    if info.frames < min_frames:
        raise BadAudioError(
            path,
            f"too short: {info.frames} frames at {info.sample_rate} Hz "
            f"(minimum {min_seconds * 1000:g} ms)",
        )


def probe_audio(path: str | os.PathLike, *, min_seconds: float = MIN_SECONDS) -> AudioInfo:
    """Check an audio file from its header alone; cheap enough to run over a whole corpus.

    Raises :class:`BadAudioError` for a missing, unreadable or non-audio file, zero frames
    (empty or header-only), a duration below ``min_seconds``, or a WAV whose data chunk is cut
    short. Problems only decoding reveals (NaN samples, silence, a truncated FLAC) pass here and
    are caught by :func:`read_audio`.
    """
    path = os.fspath(path)
    try:
        file_size = os.path.getsize(path)
    except OSError as err:
        raise BadAudioError(path, f"missing: {err.strerror or err}") from None
    if file_size == 0:
        raise BadAudioError(path, "empty: file has 0 bytes")
    try:
        info = _info_from(sf.info(path), path)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise BadAudioError(path, f"unreadable: {_libsndfile_message(err)}") from None
    check_header(info, min_seconds)
    if info.format in ("WAV", "WAVEX"):
        try:
            with open(path, "rb") as f:
                shortfall = _wav_data_shortfall(f, file_size)
        except OSError as err:
            raise BadAudioError(path, f"unreadable: {err.strerror or err}") from None
        if shortfall is not None:
            raise BadAudioError(path, f"truncated: {shortfall}")
    return info


def probe_audio_bytes(
    data: bytes | memoryview | np.ndarray, name: str, *, min_seconds: float = MIN_SECONDS
) -> AudioInfo:
    """:func:`probe_audio` for an encoded file held in memory; ``name`` is used in errors.

    The returned ``AudioInfo.path`` is ``name``.
    """
    buffer = memoryview(data).cast("B")
    if buffer.nbytes == 0:
        raise BadAudioError(name, "empty: file has 0 bytes")
    try:
        info = _info_from(sf.info(io.BytesIO(buffer)), name)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise BadAudioError(name, f"unreadable: {_libsndfile_message(err)}") from None
    check_header(info, min_seconds)
    if info.format in ("WAV", "WAVEX"):
        shortfall = _wav_data_shortfall(io.BytesIO(buffer), buffer.nbytes)
        if shortfall is not None:
            raise BadAudioError(name, f"truncated: {shortfall}")
    return info


def mixdown(data: np.ndarray) -> np.ndarray:
    """``[frames, C]`` float32 -> mono ``[frames]`` float32, as DALI's decoder downmixes.

    ``sum_c x[:, c] * (1 / C)`` accumulated in channel order in float32. For C <= 2 this equals
    the mean exactly (scaling by 1/2 is exact); for more channels it is the formula DALI uses, so
    that both loaders produce the same bits.
    """
    channels = data.shape[1]
    if channels == 1:
        return np.ascontiguousarray(data[:, 0], dtype=np.float32)
    weight = np.float32(1.0 / channels)
    out = data[:, 0] * weight
    for c in range(1, channels):
        out += data[:, c] * weight
    return out


def _finish(data: np.ndarray, name: str, expected_frames: int) -> np.ndarray:
    """Checks that need the samples, mixdown and peak scaling: ``[frames, C]`` -> ``[frames]``."""
    if data.shape[0] < expected_frames:
        raise BadAudioError(
            name, f"truncated: header declares {expected_frames} frames, decoded {data.shape[0]}"
        )
    # NaN and inf propagate through a sum, and a float64 sum of float32 values cannot overflow:
    # one pass without the temporary boolean array of isfinite().all()
    if not np.isfinite(data.sum(dtype=np.float64)):
        bad = int(data.size - np.isfinite(data).sum())
        raise BadAudioError(name, f"non-finite: {bad} NaN/inf samples")
    wave = mixdown(data)
    peak = max(float(wave.max()), -float(wave.min()))  # max |x| without a temporary array
    if peak < SILENCE_THRESHOLD:
        # after the mixdown: a stereo file whose channels cancel is silent for training purposes
        raise BadAudioError(name, f"silent: peak {peak:.2g}")
    if peak > 1.0:
        wave /= np.float32(peak)
        # float division can land a hair above 1
        np.clip(wave, -1.0, 1.0, out=wave)
    return wave


def _segment(info: AudioInfo, start: int, frames: int | None) -> int:
    """Frames to decode for the segment ``[start, start + frames)`` (``None``: to the end)."""
    if start < 0 or (frames is not None and frames < 0):
        raise ValueError(f"segment start={start}, frames={frames} must be >= 0")
    if start >= info.frames:
        raise BadAudioError(
            info.path,
            f"too short: segment starts at frame {start}, the file has {info.frames}",
        )
    available = info.frames - start
    return available if frames is None else min(frames, available)


def read_audio(
    path: str | os.PathLike,
    *,
    min_seconds: float = MIN_SECONDS,
    start: int = 0,
    frames: int | None = None,
) -> tuple[np.ndarray, int]:
    """Decode an audio file (or the segment ``[start, start + frames)`` of it) to mono float32.

    Returns ``(wave, sample_rate)`` with ``wave`` of shape ``[S]``, dtype float32, in [-1, 1]:
    integer PCM is scaled by soundfile (16-bit: /32768), multichannel audio is mixed down
    (:func:`mixdown`), and a float file that peaks above 1 is scaled down by its peak (rather
    than clipped, which would add distortion the model would learn). The checks below apply to
    the decoded segment; a segment running past the end of the file is cut at the end.

    Raises :class:`BadAudioError` for everything :func:`probe_audio` rejects, plus decode
    errors, fewer decoded frames than the header declares, NaN/inf samples, silence and a
    segment that starts past the end.
    """
    info = probe_audio(path, min_seconds=min_seconds)
    path = info.path
    expected = _segment(info, start, frames)
    if info.format == "WAV" and info.subtype == "PCM_16" and 2 * expected >= info.frames:
        # 16-bit WAV: reading the bytes and converting with numpy costs a third of libsndfile's
        # decode, for the same values; worth it unless only a small part of the file is used
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as err:
            raise BadAudioError(path, f"unreadable: {err.strerror or err}") from None
        return decode_audio(data, path, min_seconds=min_seconds, start=start, frames=expected)
    try:
        # [frames, channels] float32 whatever the file's channel count
        data = sf.read(path, dtype="float32", always_2d=True, start=start, frames=expected)[0]
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise BadAudioError(path, f"decode error: {_libsndfile_message(err)}") from None
    return _finish(data, path, expected), info.sample_rate


def _pcm16_wav_layout(buffer: memoryview, name: str) -> tuple[int, int, int, int] | None:
    """``(channels, sample_rate, data_offset, frames)`` of a complete 16-bit PCM RIFF WAV.

    None when the bytes are anything else (another format or sample type, RIFX, a streamed size)
    and must go through libsndfile. Raises BadAudioError for a data chunk cut short, the check
    :func:`probe_audio` makes for files on disk.
    """
    if buffer.nbytes < 44 or bytes(buffer[:4]) != b"RIFF" or bytes(buffer[8:12]) != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= buffer.nbytes:
        chunk_id = bytes(buffer[pos : pos + 4])
        size = struct.unpack_from("<I", buffer, pos + 4)[0]
        if chunk_id == b"fmt " and size >= 16:
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", buffer, pos + 8)
            if tag == 0xFFFE and size >= 40:  # WAVE_FORMAT_EXTENSIBLE: the sub-format decides
                tag = struct.unpack_from("<H", buffer, pos + 32)[0]
            fmt = (tag, channels, rate, align, bits)
        elif chunk_id == b"data":
            if fmt is None or size in (0, 0xFFFFFFFF):
                return None
            tag, channels, rate, align, bits = fmt
            if tag != 1 or bits != 16 or channels < 1 or rate < 1 or align != 2 * channels:
                return None
            available = buffer.nbytes - pos - 8
            if size > available:
                raise BadAudioError(
                    name,
                    f"truncated: data chunk declares {size} bytes but the file holds {available}",
                )
            return channels, rate, pos + 8, size // align
        pos += 8 + size + (size & 1)
    return None


def decode_audio(
    data: bytes | memoryview | np.ndarray,
    name: str,
    *,
    min_seconds: float = MIN_SECONDS,
    start: int = 0,
    frames: int | None = None,
) -> tuple[np.ndarray, int]:
    """:func:`read_audio` for an encoded file held in memory (a tar shard member).

    ``name`` identifies the file in errors. 16-bit PCM WAV is decoded directly with numpy
    (int16 / 32768, exactly what libsndfile computes, ten times faster than going through it);
    everything else goes through libsndfile.
    """
    buffer = memoryview(data).cast("B")
    layout = _pcm16_wav_layout(buffer, name)
    if layout is None:
        info = probe_audio_bytes(buffer, name, min_seconds=min_seconds)
        expected = _segment(info, start, frames)
        try:
            with sf.SoundFile(io.BytesIO(buffer)) as f:
                f.seek(start)
                decoded = f.read(expected, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, OSError) as err:
            raise BadAudioError(name, f"decode error: {_libsndfile_message(err)}") from None
        return _finish(decoded, name, expected), info.sample_rate

    channels, rate, offset, total = layout
    info = AudioInfo(name, total, rate, channels, "WAV", "PCM_16")
    check_header(info, min_seconds)
    expected = _segment(info, start, frames)
    pcm = np.frombuffer(
        buffer, dtype="<i2", count=expected * channels, offset=offset + 2 * channels * start
    ).reshape(expected, channels)
    # one pass: int16 -> float32 and the power-of-two scale (exact)
    decoded = np.multiply(pcm, np.float32(1.0 / 32768.0), dtype=np.float32)
    return _finish(decoded, name, expected), rate
