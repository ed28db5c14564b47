"""The log-mel front end: :func:`logmel` and the :class:`LogMel` module.

Both call the torch library op ``torch.ops.fastspec.logmel`` (``fastspec.frontend.op``), which
resolves the backend at run time (``fastspec.frontend.backend``): the fused Triton kernel
(``fastspec.kernels.logmel``), the C++ extension (``fastspec.frontend.cpp``) or the torch
reference (``fastspec.kernels.reference``). Everything on the Python side here reads only shapes
and dtypes, so ``torch.compile(fullgraph=True)`` traces it into one op node. Device constants
(window, mel matrix, folded DFT basis) are built in float64 once per (config, device) and cached.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from .config import FrontendConfig, get_preset, num_frames, reject_unknown
from .op import config_key, reference_logmel, triton_plan
from .polyphase import resample, resampled_lengths

__all__ = ["logmel", "LogMel", "logmel_reference", "frame_lengths", "as_config"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_config(preset: str | FrontendConfig, overrides: dict) -> FrontendConfig:
    """A preset name or a config, with field overrides applied."""
    if isinstance(preset, FrontendConfig):
        if not overrides:
            return preset
        reject_unknown(overrides, "front-end overrides")
        # replace() re-runs __post_init__, so an override that breaks the config fails here; the
        # resolved n_fft / f_max do not follow a new sample_rate (get_preset(name, ...) does)
        return dataclasses.replace(preset, **overrides)
    return get_preset(preset, **overrides)


_OUT_DTYPES = (torch.float32, torch.bfloat16)


def _triton_plan(cfg: FrontendConfig, device: torch.device, orig_sample_rate: int | None = None):
    """The Triton kernel's plan for ``cfg`` (cached; see ``op.triton_plan``)."""
    return triton_plan(cfg, device, orig_sample_rate)


def _check_meta(wave: Tensor, lengths, dtype: torch.dtype) -> Tensor | None:
    """Validate shapes and dtypes (no value reads, so nothing here syncs or breaks a graph);
    returns ``lengths`` as a tensor on wave's device. Values (NaN/inf, lengths in range) are
    checked inside the op, by the backend that runs."""
    if not isinstance(wave, Tensor):
        raise TypeError(f"wave must be a torch.Tensor, got {type(wave).__name__}")
    if wave.dim() != 2:
        raise ValueError(f"wave must be [B, S] or [S], got shape {tuple(wave.shape)}")
    # int16 is what decoders hand over; anything else (int32, bool) is more likely a bug
    if wave.dtype not in _FLOAT_DTYPES and wave.dtype != torch.int16:
        raise ValueError(
            f"wave must be float (in [-1, 1]) or int16, got {wave.dtype} {tuple(wave.shape)}"
        )
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    if lengths is None:
        return None
    batch = wave.shape[0]
    lengths = torch.as_tensor(lengths, device=wave.device)
    if lengths.shape != (batch,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(
            f"lengths must be an int tensor of shape [B={batch}], got {lengths.dtype} "
            f"{tuple(lengths.shape)}"
        )
    return lengths.to(torch.long)


def logmel_reference(
    wave: Tensor,
    lengths: Tensor | None,
    cfg: FrontendConfig,
    *,
    normalize: bool = True,
    dtype: torch.dtype = torch.float64,
    orig_sample_rate: int | None = None,
) -> Tensor:
    """The torch reference in ``dtype`` (float64 by default): ``[B, S]`` -> ``[B, T, n_mels]``.

    No input checks and no dtype change of the result: the ground truth for tests/benchmarks.
    With ``orig_sample_rate``, ``wave`` is first resampled (polyphase, in ``dtype``; padding past
    ``lengths`` zeroed) to ``cfg.sample_rate``.
    """
    if orig_sample_rate is not None and orig_sample_rate != cfg.sample_rate:
        x = wave.to(dtype) if wave.dtype != torch.int16 else wave.to(dtype) / 32768.0
        if lengths is not None:
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
            x = torch.where(valid, x, torch.zeros((), dtype=dtype, device=x.device))
            lengths = resampled_lengths(lengths, orig_sample_rate, cfg.sample_rate)
        wave = resample(x, orig_sample_rate, cfg.sample_rate)
    return reference_logmel(wave, lengths, cfg, normalize, dtype)


def frame_lengths(
    lengths: Tensor | None,
    num_samples: int,
    cfg: FrontendConfig,
    *,
    batch: int | None = None,
    orig_sample_rate: int | None = None,
    device=None,
) -> Tensor:
    """``[B]`` int64 valid frames per clip: what ``logmel(..., return_lengths=True)`` returns.

    ``lengths`` are in samples at ``orig_sample_rate`` (default ``cfg.sample_rate``); None means
    every one of the ``batch`` clips has ``num_samples``.
    """
    orig = orig_sample_rate or cfg.sample_rate
    if lengths is None:
        lengths = torch.full((batch,), num_samples, dtype=torch.long, device=device)
    if orig != cfg.sample_rate:
        lengths = resampled_lengths(lengths, orig, cfg.sample_rate)
    return num_frames(lengths.to(torch.long).clamp(0, None), cfg)


def _logmel(
    wave: Tensor,
    lengths,
    cfg: FrontendConfig,
    normalize: bool,
    backend: str,
    *,
    dtype: torch.dtype = torch.float32,
    orig_sample_rate: int | None = None,
    return_lengths: bool = False,
    key: str | None = None,
):
    squeeze = isinstance(wave, Tensor) and wave.dim() == 1
    if squeeze:
        wave = wave[None]
        if lengths is not None:
            lengths = torch.as_tensor(lengths).reshape(1)
    lengths = _check_meta(wave, lengths, dtype)
    orig = int(orig_sample_rate or cfg.sample_rate)
    # features feed the model as data: no graph, no saved activations
    out = torch.ops.fastspec.logmel(
        wave.detach(), lengths, key or config_key(cfg), normalize, backend, dtype, orig
    )
    if not return_lengths:
        return out[0] if squeeze else out
    n_valid = frame_lengths(
        lengths,
        wave.shape[1],
        cfg,
        batch=wave.shape[0],
        orig_sample_rate=orig,
        device=wave.device,
    )
    return (out[0], n_valid[0]) if squeeze else (out, n_valid)


def logmel(
    wave: Tensor,
    *,
    lengths: Tensor | None = None,
    preset: str | FrontendConfig = "kaldi",
    normalize: bool = True,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    orig_sample_rate: int | None = None,
    return_lengths: bool = False,
    **overrides,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-mel features of a batch of clips.

    Args:
        wave: ``[B, S]`` (or ``[S]``) float samples in [-1, 1] at ``orig_sample_rate`` (default:
            the config's ``sample_rate``); int16 PCM is accepted and scaled by 1/32768.
        lengths: ``[B]`` int valid samples per clip (at the rate of ``wave``); None means all
            ``S``.
        preset: a preset name (``list_presets()``) or a :class:`FrontendConfig`.
        normalize: apply the preset's dataset normalisation.
        backend: ``auto`` | ``torch`` | ``triton`` | ``cpp`` (see ``resolve_backend``).
        dtype: output dtype, ``torch.float32`` or ``torch.bfloat16`` (rounded once, at the end).
        orig_sample_rate: sample rate of ``wave`` if it differs from the config's: the clips are
            resampled (polyphase, as ``scipy.signal.resample_poly``) in the same call; the
            Triton kernel folds the resampler into its frame basis for snip-edges framing
            (Kaldi), other paths resample on the same device first.
        return_lengths: also return the ``[B]`` int64 valid frame count of each clip.
        **overrides: any :class:`FrontendConfig` field.

    Returns:
        ``[B, T, n_mels]`` (or ``[T, n_mels]``) in ``dtype``, ``T = num_frames(S', cfg)`` with
        ``S'`` the (resampled) sample count; with ``return_lengths``, ``(features, frames)``.
        Frames with ``t >= frames[b]`` are exactly 0, so a padded batch equals its clips
        processed one at a time on their valid frames.

    Raises:
        ValueError: bad shapes, NaN/inf in a clip's valid samples (names the clip index),
            lengths outside ``[0, S]``, unknown preset or override.
    """
    return _logmel(
        wave,
        lengths,
        as_config(preset, overrides),
        normalize,
        backend,
        dtype=dtype,
        orig_sample_rate=orig_sample_rate,
        return_lengths=return_lengths,
    )


class LogMel(nn.Module):
    """Log-mel front end as a module (no parameters, no buffers: constants are cached per device).

    ``forward(wave [B, S], lengths [B] | None) -> [B, T, n_mels]`` in ``dtype``, as
    :func:`logmel` (``return_lengths=True`` adds the ``[B]`` frame counts). Its forward reads
    only shapes on the Python side, so ``torch.compile(fullgraph=True)`` traces it into one op.
    """

    def __init__(
        self,
        preset: str | FrontendConfig = "kaldi",
        normalize: bool = True,
        backend: str = "auto",
        *,
        dtype: torch.dtype = torch.float32,
        orig_sample_rate: int | None = None,
        **overrides,
    ):
        super().__init__()
        self.config = as_config(preset, overrides)
        self.normalize = normalize
        self.backend = backend
        self.dtype = dtype
        self.orig_sample_rate = orig_sample_rate
        # the op's config string, made once here so that compiled forwards see a constant
        self._key = config_key(self.config)

    @classmethod
    def from_config(
        cls, config: FrontendConfig, *, normalize: bool = True, backend: str = "auto"
    ) -> LogMel:
        """The module for an existing config (e.g. ``FrontendConfig.from_dict`` of an export)."""
        if not isinstance(config, FrontendConfig):
            raise TypeError(f"config must be a FrontendConfig, got {type(config).__name__}")
        return cls(config, normalize=normalize, backend=backend)

    # the config's main fields, read on the module as on a torchaudio transform
    sample_rate = property(lambda self: self.config.sample_rate)
    n_mels = property(lambda self: self.config.n_mels)
    hop_length = property(lambda self: self.config.hop_length)
    win_length = property(lambda self: self.config.win_length)

    def num_frames(self, lengths):
        """Frame count for ``lengths`` samples (int or int Tensor)."""
        return num_frames(lengths, self.config)

    def frame_times_ms(self, n_frames: int) -> Tensor:
        """``[n_frames]`` float64 centre time of each frame in ms.

        Kaldi framing: frame t spans samples [t hop, t hop + win), centre t hop + win / 2.
        center=True: frame t is centred on sample t hop.
        """
        t = torch.arange(n_frames, dtype=torch.float64) * self.config.hop_length
        if not self.config.center:
            t = t + self.config.win_length / 2.0
        return t * (1000.0 / self.config.sample_rate)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """``[B]`` valid frames of clips with ``lengths`` samples (at the input rate)."""
        return frame_lengths(lengths, 0, self.config, orig_sample_rate=self.orig_sample_rate)

    def forward(
        self, wave: Tensor, lengths: Tensor | None = None, *, return_lengths: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        return _logmel(
            wave,
            lengths,
            self.config,
            self.normalize,
            self.backend,
            dtype=self.dtype,
            orig_sample_rate=self.orig_sample_rate,
            return_lengths=return_lengths,
            key=self._key,
        )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"sample_rate={c.sample_rate}, n_mels={c.n_mels}, win_length={c.win_length}, "
            f"hop_length={c.hop_length}, n_fft={c.n_fft}, normalize={self.normalize}, "
            f"backend={self.backend!r}"
        )
