"""``torch.ops.fastspec.logmel``: the front end as one opaque torch library op.

``torch.compile`` sees a single node with a fake (meta) implementation that computes the output
shape symbolically, so it traces through the front end without graph breaks and without
recompiling when the number of samples (hence frames) changes. The real implementation runs
eagerly at run time and is where everything that cannot be traced happens: backend resolution
(environment variable, building the C++ extension on first use, one-line notices), the value
checks that read tensors back (NaN / inf, lengths), and the kernel launches.

Schema::

    fastspec::logmel(Tensor wave, Tensor? lengths, str config, bool normalize, str backend,
                     ScalarType out_dtype, int orig_sample_rate) -> Tensor

To avoid even the one automatic-dynamic recompile on the second sample count, compile with
``dynamic=True`` or ``torch._dynamo.mark_dynamic(wave, 1)``. With ``check_finite`` the op reads
a small flag tensor back (one host sync), which CUDA-graph capture does not allow: set
``check_finite=False`` there.

``config`` is every ``FrontendConfig`` field as ``name=repr(value)`` (a string is what a schema
can carry; parsing is cached), ``backend`` the requested backend (``auto`` too: resolution
happens inside), and ``orig_sample_rate`` the rate of ``wave`` (resampled to
``config.sample_rate`` in the same call).
"""

from __future__ import annotations

import ast
import dataclasses
import functools

import torch
from torch import Tensor

from fastspec.kernels import reference as ref

from . import polyphase as rs
from .backend import resolve_backend
from .config import FrontendConfig, num_frames

__all__ = ["config_key", "logmel_op", "compute_logmel"]


_FIELDS = tuple(f.name for f in dataclasses.fields(FrontendConfig))


def config_key(cfg: FrontendConfig) -> str:
    """The ``config`` argument of the op for ``cfg``: ``name=repr(value)`` for every field.

    Plain string formatting of constants, so ``torch.compile`` folds it while tracing a call
    that builds its config from a preset name (JSON encoding would break the graph).
    """
    return ";".join(f"{name}={getattr(cfg, name)!r}" for name in _FIELDS)


@functools.lru_cache(maxsize=256)
def _config(key: str) -> FrontendConfig:
    # values are ints, floats, bools, None and choice strings: literal_eval restores them all
    items = (item.split("=", 1) for item in key.split(";"))
    return FrontendConfig(**{name: ast.literal_eval(value) for name, value in items})


def _sym_frames(num_samples, cfg: FrontendConfig):
    """``frame_count`` written so a symbolic ``num_samples`` needs no guard (no branch)."""
    if cfg.center:
        return 1 + num_samples // cfg.hop_length
    return torch.sym_max(0, 1 + (num_samples - cfg.frame_length) // cfg.hop_length)


def _output_samples(num_samples, cfg: FrontendConfig, orig_sample_rate: int):
    """Samples the backend frames: resampled, then one fewer after ``signal_preemphasis``."""
    if orig_sample_rate != cfg.sample_rate:
        up, down = rs.reduced_ratio(orig_sample_rate, cfg.sample_rate)
        num_samples = -(-num_samples * up // down)
    if cfg.signal_preemphasis:
        num_samples = torch.sym_max(0, num_samples - 1)
    return num_samples


def preemphasize_signal(
    wave: Tensor, lengths: Tensor | None, coeff: float
) -> tuple[Tensor, Tensor | None]:
    """``y[n] = x[n + 1] - coeff x[n]`` over each whole clip (MaskSpec's ``conv1d`` with kernel
    ``[-coeff, 1]``): ``[B, S]`` -> ``[B, S - 1]``, every clip one sample shorter."""
    x = wave.to(torch.promote_types(wave.dtype, torch.float32))
    out = x[:, 1:] - coeff * x[:, :-1]
    return out, None if lengths is None else (lengths - 1).clamp_min(0)


def check_values(wave: Tensor, lengths: Tensor | None, cfg: FrontendConfig) -> None:
    """NaN / inf in valid samples and lengths outside ``[0, S]`` raise ValueError naming the clip.

    One small ``[k, B]`` bool tensor is read back: a host sync (the torch and resampling paths;
    the Triton kernel and the C++ code check inside their own pass over the samples).
    """
    batch, num_samples = wave.shape
    checks = []
    finite = cfg.check_finite and wave.dtype != torch.int16
    if finite:
        bad = ~torch.isfinite(wave)
        if lengths is not None:
            # padding past a clip's length is never read, so it may hold anything
            bad &= torch.arange(num_samples, device=wave.device)[None, :] < lengths[:, None]
        checks.append(bad.any(dim=1))
    if lengths is not None:
        checks.append((lengths < 0) | (lengths > num_samples))
    if not checks or not batch:
        return
    flags = torch.stack(checks).cpu()  # host sync: only to raise with the clip index
    if finite and flags[0].any():
        clips = flags[0].nonzero().flatten().tolist()
        raise ValueError(f"wave holds NaN or inf in clip(s) {clips[:10]} (batch index)")
    if lengths is not None and flags[-1].any():
        clip = int(flags[-1].nonzero()[0])
        raise ValueError(f"lengths[{clip}]={int(lengths[clip])} is outside [0, S={num_samples}]")


def _to_float(wave: Tensor, dtype: torch.dtype) -> Tensor:
    if wave.dtype == torch.int16:
        # int16 PCM as loaders hand it over: full scale is 32768, as soundfile/torchaudio divide
        return wave.to(dtype) / 32768.0
    return wave.to(dtype)


def _resample_batch(wave: Tensor, lengths: Tensor | None, cfg: FrontendConfig, orig: int):
    """``(wave at cfg.sample_rate as float32/float64, its lengths)``; padding zeroed first, so
    each clip is resampled as if alone (the filter would otherwise smear padding into it)."""
    dtype = torch.float64 if wave.dtype == torch.float64 else torch.float32
    x = _to_float(wave, dtype)
    if lengths is not None:
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        x = torch.where(keep, x, torch.zeros((), dtype=dtype, device=x.device))
        lengths = rs.resampled_lengths(lengths, orig, cfg.sample_rate)
    return rs.resample(x, orig, cfg.sample_rate), lengths


@functools.lru_cache(maxsize=64)
def torch_constants(cfg: FrontendConfig, device: torch.device, dtype: torch.dtype):
    """``(window [frame_length], mel_fb [n_fft // 2 + 1, n_mels])`` for the torch backend."""
    window = ref.window_ref(
        cfg.window,
        cfg.win_length,
        cfg.periodic_window,
        cfg.frame_length,
        dtype=dtype,
        device=device,
    )
    return window, mel_banks(cfg, dtype, device)


def mel_banks(cfg: FrontendConfig, dtype, device) -> Tensor:
    build = ref.kaldi_mel_banks if cfg.mel_scale == "kaldi" else ref.htk_mel_banks
    return build(
        cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.f_max, dtype=dtype, device=device
    )


def reference_logmel(
    wave: Tensor,
    lengths: Tensor | None,
    cfg: FrontendConfig,
    normalize: bool,
    dtype: torch.dtype,
    mel_fb: Tensor | None = None,
) -> Tensor:
    """The torch reference in ``dtype``, no checks: ``[B, S]`` -> ``[B, T, n_mels]``; ``mel_fb``
    replaces the config's filter bank (one per clip: ``[B, n_fft // 2 + 1, n_mels]``)."""
    if cfg.signal_preemphasis:
        wave, lengths = preemphasize_signal(_to_float(wave, dtype), lengths, cfg.signal_preemphasis)
        cfg = dataclasses.replace(cfg, signal_preemphasis=0.0)
    window, config_fb = torch_constants(cfg, wave.device, dtype)
    mel_fb = config_fb if mel_fb is None else mel_fb
    norm_mul, norm_add = cfg.norm_affine(normalize)
    out = ref.logmel_ref(
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
        log_scale=cfg.log_scale,
        norm_mul=norm_mul,
        norm_add=norm_add,
        log_offset=cfg.log_offset,
    )
    return per_bin_norm(out, lengths, cfg, normalize)


def per_bin_norm(
    out: Tensor, lengths: Tensor | None, cfg: FrontendConfig, normalize: bool, orig_sample_rate=None
) -> Tensor:
    """``norm="per_bin"``: each mel bin's affine (``cfg.bin_affine``) on un-normalised log-mel,
    frames past each clip's frame count kept at 0; ``out`` itself for every other norm. Exact
    after any backend: it is what the reference does after its own scalar affine (identity)."""
    bins = cfg.bin_affine(normalize)
    if bins is None:
        return out
    mul = torch.tensor(bins[0], dtype=out.dtype, device=out.device)
    add = torch.tensor(bins[1], dtype=out.dtype, device=out.device)
    out = out * mul + add
    if lengths is None:
        return out
    if orig_sample_rate is not None and orig_sample_rate != cfg.sample_rate:
        lengths = rs.resampled_lengths(lengths, orig_sample_rate, cfg.sample_rate)
    n_valid = num_frames(lengths.to(torch.long).clamp(0, None), cfg)
    valid = torch.arange(out.shape[1], device=out.device)[None, :, None] < n_valid[:, None, None]
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))


@functools.lru_cache(maxsize=64)
def triton_plan(cfg: FrontendConfig, device: torch.device, orig_sample_rate: int | None = None):
    """The Triton kernel's constants; with ``orig_sample_rate`` (snip-edges framing only) the
    resampler is folded into the frame basis."""
    from fastspec.kernels.logmel_plan import make_logmel_plan

    # built in float64 on the host and cast once: the folded basis is a product of four (with
    # resampling five) matrices, which float32 would round each time
    window = ref.window_ref(
        cfg.window, cfg.win_length, cfg.periodic_window, cfg.frame_length, dtype=torch.float64
    )
    basis_re, basis_im = ref.frame_spectrum_basis(window, cfg.n_fft, cfg.remove_dc, cfg.preemphasis)
    extra = {}
    if orig_sample_rate is not None and orig_sample_rate != cfg.sample_rate:
        basis_re, basis_im, starts, source_hop = rs.resampled_frame_basis(
            basis_re, basis_im, orig_sample_rate, cfg.sample_rate, cfg.hop_length
        )
        extra = dict(
            frame_length=cfg.frame_length,
            phase_start=starts,
            src_hop=source_hop,
            len_ratio=rs.reduced_ratio(orig_sample_rate, cfg.sample_rate),
        )
    return make_logmel_plan(
        basis_re,
        basis_im,
        mel_banks(cfg, torch.float64, "cpu"),
        hop_length=cfg.hop_length,
        center=cfg.center,
        pad_mode=cfg.pad_mode,
        log_scale=cfg.log_scale,
        device=device,
        **extra,
    )


def compute_logmel(
    wave: Tensor,
    lengths: Tensor | None,
    cfg: FrontendConfig,
    normalize: bool,
    backend: str,
    out_dtype: torch.dtype,
    orig_sample_rate: int,
) -> Tensor:
    """The eager implementation behind the op: resolve the backend, check, resample, featurise."""
    # one decision, the config included (a config the C++ extension cannot do is a fallback)
    chosen = resolve_backend(backend, wave.device, cfg)
    if lengths is not None:
        lengths = lengths.to(device=wave.device, dtype=torch.int64)
    if cfg.signal_preemphasis:
        # MaskSpec: the whole clip is pre-emphasised at the working rate, then featurised by
        # any backend as a plain clip one sample shorter
        check_values(wave, lengths, cfg)
        if orig_sample_rate != cfg.sample_rate:
            wave, lengths = _resample_batch(wave, lengths, cfg, orig_sample_rate)
        else:  # int16 PCM scaled as every other path scales it
            wave = _to_float(wave, torch.float64 if wave.dtype == torch.float64 else torch.float32)
        wave, lengths = preemphasize_signal(wave, lengths, cfg.signal_preemphasis)
        # the samples were scanned above: the backend need not scan them again
        plain = dataclasses.replace(cfg, signal_preemphasis=0.0, check_finite=False)
        return compute_logmel(wave, lengths, plain, normalize, chosen, out_dtype, cfg.sample_rate)
    if chosen != "torch" and cfg.bin_affine(normalize) is not None:
        # the kernels take a scalar affine: per-bin normalisation follows their float32 output
        out = compute_logmel(wave, lengths, cfg, False, chosen, torch.float32, orig_sample_rate)
        return per_bin_norm(out, lengths, cfg, normalize, orig_sample_rate).to(out_dtype)
    resampling = orig_sample_rate != cfg.sample_rate
    with torch.no_grad():
        if chosen == "triton":
            from fastspec.kernels.logmel import logmel_fwd

            norm_mul, norm_add = cfg.norm_affine(normalize)
            folded = resampling and not cfg.center
            if resampling and not folded:
                # centred framing pads the resampled clip: resample on the device, same call
                check_values(wave, lengths, cfg)
                wave, lengths = _resample_batch(wave, lengths, cfg, orig_sample_rate)
            plan = triton_plan(cfg, wave.device, orig_sample_rate if folded else None)
            return logmel_fwd(
                wave,
                lengths,
                plan,
                norm_mul=norm_mul,
                norm_add=norm_add,
                precision=cfg.precision,
                out_dtype=out_dtype,
                check_finite=cfg.check_finite and not (resampling and not folded),
            )
        if chosen == "cpp":
            from . import cpp_ops

            if resampling:
                # C++ polyphase (7x the conv1d bank on 2 cores); it zeroes the padding and checks
                # lengths, and NaN / inf in a clip's samples reach its resampled samples, where
                # the featurising pass checks them, so no extra pass over the input is needed
                wave, lengths = cpp_ops.resample_cpp(
                    wave, lengths, orig_sample_rate, cfg.sample_rate
                )
            return cpp_ops.logmel_cpp(wave, lengths, cfg, normalize=normalize, out_dtype=out_dtype)
        check_values(wave, lengths, cfg)
        if resampling:
            wave, lengths = _resample_batch(wave, lengths, cfg, orig_sample_rate)
        # float64 input keeps float64 math (used to check the backend against itself)
        dtype = torch.float64 if wave.dtype == torch.float64 else torch.float32
        return reference_logmel(wave, lengths, cfg, normalize, dtype).to(out_dtype)


@torch.library.custom_op("fastspec::logmel", mutates_args=())
def logmel_op(
    wave: Tensor,
    lengths: Tensor | None,
    config: str,
    normalize: bool,
    backend: str,
    out_dtype: torch.dtype,
    orig_sample_rate: int,
) -> Tensor:
    """``wave [B, S]`` (+ ``lengths [B]``) -> ``[B, T, n_mels]`` in ``out_dtype``."""
    cfg = _config(config)
    return compute_logmel(wave, lengths, cfg, normalize, backend, out_dtype, orig_sample_rate)


@logmel_op.register_fake
def _(wave, lengths, config, normalize, backend, out_dtype, orig_sample_rate):
    cfg = _config(config)
    num_samples = _output_samples(wave.shape[1], cfg, orig_sample_rate)
    return wave.new_empty(
        (wave.shape[0], _sym_frames(num_samples, cfg), cfg.n_mels), dtype=out_dtype
    )
