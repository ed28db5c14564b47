"""Audio file I/O with soundfile: decode to mono float32, and reject files that would poison a batch.

Two entry points with different costs:

- :func:`probe_audio` reads only the header (plus, for WAV, the chunk table) and is what
  :func:`fastspec.data.open_source` runs over every file at open time. It catches files that are
  not audio, empty, header-only, too short, or WAV files whose data chunk runs past the end of
  the file.
- :func:`read_audio` decodes the whole file and additionally catches what only decoding can
  reveal: decode errors (a truncated FLAC loses sync), fewer frames than the header declares,
  NaN/inf samples in float files, and silence.

Both raise :class:`BadAudioError`, whose ``reason`` starts with a short kind (``unreadable``,
``empty``, ``truncated``, ``decode error``, ``non-finite``, ``silent``, ``too short``) so that
skip logs can be summarised by kind.
"""

from __future__ import annotations

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
    "probe_audio",
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


def _wav_data_shortfall(path: str, file_size: int) -> str | None:
    """For a RIFF/WAVE file, compare the declared data chunk size with the bytes present.

    libsndfile quietly shortens a WAV whose data chunk runs past the end of the file (a partial
    copy or an interrupted download) and decodes what is there, so truncation would pass
    unnoticed. Walking the chunk table reads a few dozen bytes.

    Returns a description of the shortfall, or None when the file is complete (or cannot be
    checked: RF64, or a streamed WAV whose writer left the size as 0 or 0xFFFFFFFF).
    """
    with open(path, "rb") as f:
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
        header = sf.info(path)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise BadAudioError(path, f"unreadable: {_libsndfile_message(err)}") from None
    info = AudioInfo(
        path=path,
        frames=int(header.frames),
        sample_rate=int(header.samplerate),
        channels=int(header.channels),
        format=str(header.format),
        subtype=str(header.subtype),
    )
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
    if info.format in ("WAV", "WAVEX"):
        shortfall = _wav_data_shortfall(path, file_size)
        if shortfall is not None:
            raise BadAudioError(path, f"truncated: {shortfall}")
    return info


def read_audio(
    path: str | os.PathLike, *, min_seconds: float = MIN_SECONDS
) -> tuple[np.ndarray, int]:
    """Decode an audio file to mono float32.

    Returns ``(wave, sample_rate)`` with ``wave`` of shape ``[S]``, dtype float32, in [-1, 1]:
    integer PCM is scaled by soundfile (16-bit: /32768), multichannel audio is mixed down by the
    mean over channels, and a float file that peaks above 1 is scaled down by its peak (rather
    than clipped, which would add distortion the model would learn).

    Raises :class:`BadAudioError` for everything :func:`probe_audio` rejects, plus decode
    errors, fewer decoded frames than the header declares, NaN/inf samples and silence.
    """
    info = probe_audio(path, min_seconds=min_seconds)
    path = info.path
    try:
        # [frames, channels] float32 whatever the file's channel count
        data = sf.read(path, dtype="float32", always_2d=True)[0]
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise BadAudioError(path, f"decode error: {_libsndfile_message(err)}") from None
    if data.shape[0] < info.frames:
        raise BadAudioError(
            path, f"truncated: header declares {info.frames} frames, decoded {data.shape[0]}"
        )
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise BadAudioError(path, f"non-finite: {bad} NaN/inf samples")
    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    peak = float(np.abs(wave).max())
    if peak < SILENCE_THRESHOLD:
        # after the mixdown: a stereo file whose channels cancel is silent for training purposes
        raise BadAudioError(path, f"silent: peak {peak:.2g}")
    if peak > 1.0:
        wave /= np.float32(peak)
        # float division can land a hair above 1
        np.clip(wave, -1.0, 1.0, out=wave)
    return wave, info.sample_rate
