"""Log-mel front end: waveform ``[B, S]`` -> features ``[B, T, n_mels]`` (DESIGN.md §3-§5).

One API over three backends: the fused Triton kernel (CUDA), a C++ extension (later issue) and
the torch reference (``fastspec.kernels.reference``), chosen by :func:`resolve_backend`.
Presets reproduce the papers' features: ``kaldi`` (AST / Audio-MAE / ASiT Kaldi fbank, 128 mel)
and ``atst`` (ATST's torchaudio MelSpectrogram in dB, 64 mel).
"""

from .backend import backend_report, resolve_backend
from .config import FrontendConfig, get_preset, list_presets, num_frames
from .features import LogMel, logmel, logmel_reference

__all__ = [
    "FrontendConfig",
    "LogMel",
    "backend_report",
    "get_preset",
    "list_presets",
    "logmel",
    "logmel_reference",
    "num_frames",
    "resolve_backend",
]
