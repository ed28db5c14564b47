"""The log-mel front end: :func:`logmel` and the :class:`LogMel` module.

Both dispatch to a backend (``fastspec.frontend.backend``): the fused Triton kernel
(``fastspec.kernels.logmel``) or the torch reference (``fastspec.kernels.reference``). Device
constants (window, mel matrix, folded DFT basis) are built in float64 once per
(config, device, dtype) and cached.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor, nn

from fastspec.kernels import reference as ref

from .backend import resolve_backend
from .config import FrontendConfig, _reject_unknown, get_preset, num_frames

__all__ = ["logmel", "LogMel", "logmel_reference", "as_config"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_config(preset: str | FrontendConfig, overrides: dict) -> FrontendConfig:
    """A preset name or a config, with field overrides applied."""
    if isinstance(preset, FrontendConfig):
        if not overrides:
            return preset
        _reject_unknown(overrides, "front-end overrides")
        # replace() re-runs __post_init__, so an override that breaks the config fails here; the
        # resolved n_fft / f_max do not follow a new sample_rate (get_preset(name, ...) does)
        return dataclasses.replace(preset, **overrides)
    return get_preset(preset, **overrides)


def _mel_banks(cfg: FrontendConfig, dtype, device) -> Tensor:
    build = ref.kaldi_mel_banks if cfg.mel_scale == "kaldi" else ref.htk_mel_banks
    return build(
        cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.f_max, dtype=dtype, device=device
    )


def _window(cfg: FrontendConfig, dtype, device) -> Tensor:
    return ref.window_ref(
        cfg.window,
        cfg.win_length,
        cfg.periodic_window,
        cfg.frame_length,
        dtype=dtype,
        device=device,
    )


# configs are frozen dataclasses, hence hashable cache keys; a handful live in one process
@functools.lru_cache(maxsize=64)
def _torch_constants(cfg: FrontendConfig, device: torch.device, dtype: torch.dtype):
    """``(window [frame_length], mel_fb [n_fft // 2 + 1, n_mels])`` for the torch backend."""
    return _window(cfg, dtype, device), _mel_banks(cfg, dtype, device)


@functools.lru_cache(maxsize=64)
def _triton_plan(cfg: FrontendConfig, device: torch.device):
    from fastspec.kernels.logmel import make_logmel_plan

    # built in float64 on the host and cast once: the folded basis is a product of four
    # matrices, which float32 would round four times
    window = _window(cfg, torch.float64, "cpu")
    basis_re, basis_im = ref.frame_spectrum_basis(window, cfg.n_fft, cfg.remove_dc, cfg.preemphasis)
    return make_logmel_plan(
        basis_re,
        basis_im,
        _mel_banks(cfg, torch.float64, "cpu"),
        hop_length=cfg.hop_length,
        center=cfg.center,
        pad_mode=cfg.pad_mode,
        power=cfg.power,
        log_floor=cfg.log_floor,
        log_mult=cfg.log_mult,
        top_db=cfg.top_db,
        device=device,
    )


def _check_inputs(wave: Tensor, lengths, cfg: FrontendConfig) -> Tensor | None:
    """Validate shapes/dtypes and values; returns ``lengths`` as an int64 tensor on wave's device.

    Value checks (NaN/inf, lengths in range) read one small tensor back to the host: the only
    host sync of the front end, skipped when ``cfg.check_finite`` is False and lengths is None.
    """
    if not isinstance(wave, Tensor):
        raise TypeError(f"wave must be a torch.Tensor, got {type(wave).__name__}")
    if wave.dim() != 2:
        raise ValueError(f"wave must be [B, S] or [S], got shape {tuple(wave.shape)}")
    # int16 is what decoders hand over; anything else (int32, bool) is more likely a bug
    if wave.dtype not in _FLOAT_DTYPES and wave.dtype != torch.int16:
        raise ValueError(f"wave must be float (in [-1, 1]) or int16, got {wave.dtype}")
    batch, num_samples = wave.shape
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=wave.device)
        if (
            lengths.shape != (batch,)
            or lengths.dtype.is_floating_point
            or lengths.dtype == torch.bool
        ):
            raise ValueError(
                f"lengths must be an int tensor of shape [B={batch}], got {lengths.dtype} "
                f"{tuple(lengths.shape)}"
            )
        lengths = lengths.to(torch.long)
    checks = []
    if cfg.check_finite and wave.dtype != torch.int16:
        bad = ~torch.isfinite(wave)
        if lengths is not None:
            # padding past a clip's length is never read, so it may hold anything
            bad &= torch.arange(num_samples, device=wave.device)[None, :] < lengths[:, None]
        checks.append(bad.any(dim=1))
    if lengths is not None:
        checks.append((lengths < 0) | (lengths > num_samples))
    if checks and batch:
        # host sync: one [k, B] bool tensor read back to raise with the clip index
        flags = torch.stack(checks).cpu()
        if cfg.check_finite and wave.dtype != torch.int16 and flags[0].any():
            clips = flags[0].nonzero().flatten().tolist()
            raise ValueError(f"wave holds NaN or inf in clip(s) {clips[:10]} (batch index)")
        if lengths is not None and flags[-1].any():
            clip = int(flags[-1].nonzero()[0])
            raise ValueError(
                f"lengths[{clip}]={int(lengths[clip])} is outside [0, S={num_samples}]"
            )
    return lengths


def _to_float(wave: Tensor, dtype: torch.dtype) -> Tensor:
    if wave.dtype == torch.int16:
        # int16 PCM as loaders hand it over: full scale is 32768, as soundfile/torchaudio divide
        return wave.to(dtype) / 32768.0
    return wave.to(dtype)


def logmel_reference(
    wave: Tensor,
    lengths: Tensor | None,
    cfg: FrontendConfig,
    *,
    normalize: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The torch reference in ``dtype`` (float64 by default): ``[B, S]`` -> ``[B, T, n_mels]``.

    No input checks and no dtype change of the result: the ground truth for tests/benchmarks.
    """
    window, mel_fb = _torch_constants(cfg, wave.device, dtype)
    norm_mul, norm_add = cfg.norm_affine(normalize)
    return ref.logmel_ref(
        _to_float(wave, dtype),
        lengths,
        window,
        mel_fb,
        hop_length=cfg.hop_length,
        n_fft=cfg.n_fft,
        center=cfg.center,
        pad_mode=cfg.pad_mode,
        remove_dc=cfg.remove_dc,
        preemphasis=cfg.preemphasis,
        power=cfg.power,
        log_floor=cfg.log_floor,
        log_mult=cfg.log_mult,
        top_db=cfg.top_db,
        norm_mul=norm_mul,
        norm_add=norm_add,
    )


def _logmel(wave: Tensor, lengths, cfg: FrontendConfig, normalize: bool, backend: str) -> Tensor:
    squeeze = isinstance(wave, Tensor) and wave.dim() == 1
    if squeeze:
        wave = wave[None]
        if lengths is not None:
            lengths = torch.as_tensor(lengths).reshape(1)
    lengths = _check_inputs(wave, lengths, cfg)
    chosen = resolve_backend(backend, wave.device)
    # features feed the model as data: no graph, no saved activations
    with torch.no_grad():
        if chosen == "triton":
            from fastspec.kernels.logmel import fused_logmel

            norm_mul, norm_add = cfg.norm_affine(normalize)
            out = fused_logmel(
                wave,
                lengths,
                _triton_plan(cfg, wave.device),
                norm_mul=norm_mul,
                norm_add=norm_add,
                precision=cfg.precision,
            )
        else:
            # float64 input keeps float64 math (used to check the backend against itself)
            dtype = torch.float64 if wave.dtype == torch.float64 else torch.float32
            out = logmel_reference(wave, lengths, cfg, normalize=normalize, dtype=dtype)
            out = out.to(torch.float32)
    return out[0] if squeeze else out


def logmel(
    wave: Tensor,
    *,
    lengths: Tensor | None = None,
    preset: str | FrontendConfig = "kaldi",
    normalize: bool = True,
    backend: str = "auto",
    **overrides,
) -> Tensor:
    """Log-mel features of a batch of clips.

    Args:
        wave: ``[B, S]`` (or ``[S]``) float samples in [-1, 1] at ``sample_rate`` (int16 PCM is
            accepted and scaled by 1/32768).
        lengths: ``[B]`` int valid samples per clip; None means all ``S``.
        preset: a preset name (``list_presets()``) or a :class:`FrontendConfig`.
        normalize: apply the preset's dataset normalisation.
        backend: ``auto`` | ``torch`` | ``triton`` | ``cpp`` (see ``resolve_backend``).
        **overrides: any :class:`FrontendConfig` field.

    Returns:
        ``[B, T, n_mels]`` (or ``[T, n_mels]``) float32, ``T = num_frames(S, cfg)``. Frames with
        ``t >= num_frames(lengths[b])`` are exactly 0, so a padded batch equals its clips processed
        one at a time on their valid frames.

    Raises:
        ValueError: bad shapes, NaN/inf in a clip's valid samples (names the clip index),
            unknown preset or override.
    """
    return _logmel(wave, lengths, as_config(preset, overrides), normalize, backend)


class LogMel(nn.Module):
    """Log-mel front end as a module (no parameters, no buffers: constants are cached per device).

    ``forward(wave [B, S], lengths [B] | None) -> [B, T, n_mels]`` float32, as :func:`logmel`.
    """

    def __init__(
        self,
        preset: str | FrontendConfig = "kaldi",
        normalize: bool = True,
        backend: str = "auto",
        **overrides,
    ):
        super().__init__()
        self.config = as_config(preset, overrides)
        self.normalize = normalize
        self.backend = backend

    @classmethod
    def from_config(
        cls, config: FrontendConfig, *, normalize: bool = True, backend: str = "auto"
    ) -> LogMel:
        """The module for an existing config (e.g. ``FrontendConfig.from_dict`` of an export)."""
        if not isinstance(config, FrontendConfig):
            raise TypeError(f"config must be a FrontendConfig, got {type(config).__name__}")
        return cls(config, normalize=normalize, backend=backend)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def n_mels(self) -> int:
        return self.config.n_mels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def win_length(self) -> int:
        return self.config.win_length

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

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        return _logmel(wave, lengths, self.config, self.normalize, self.backend)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"sample_rate={c.sample_rate}, n_mels={c.n_mels}, win_length={c.win_length}, "
            f"hop_length={c.hop_length}, n_fft={c.n_fft}, normalize={self.normalize}, "
            f"backend={self.backend!r}"
        )
