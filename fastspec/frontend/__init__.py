"""Log-mel front end: waveform ``[B, S]`` -> features ``[B, T, n_mels]`` (DESIGN.md §3-§5).

One API over three backends: the fused Triton kernel (CUDA), the C++ extension ``fastspec._C``
(CPU, built on first use) and the torch reference (``fastspec.kernels.reference``), chosen by
:func:`resolve_backend` inside the torch library op ``torch.ops.fastspec.logmel``. Resampling
from the source rate is fused (``orig_sample_rate=``, see :mod:`fastspec.frontend.polyphase`).
Presets reproduce the papers' features: ``kaldi`` (AST / Audio-MAE / ASiT Kaldi fbank, 128 mel)
and ``atst`` (ATST's torchaudio MelSpectrogram in dB, 64 mel).
"""

from .backend import backend_report, resolve_backend
from .config import FrontendConfig, get_preset, list_presets, num_frames, read_stats_file
from .features import LogMel, frame_lengths, logmel, logmel_reference
from .polyphase import resample, resample_window, resampled_length

__all__ = [
    "FrontendConfig",
    "LogMel",
    "backend_report",
    "frame_lengths",
    "get_preset",
    "list_presets",
    "read_stats_file",
    "logmel",
    "logmel_reference",
    "num_frames",
    "resample",
    "resample_window",
    "resampled_length",
    "resolve_backend",
]
