"""Calls into the C++ CPU front end (``fastspec._C``, found or built by :mod:`fastspec.frontend.cpp`).

:func:`logmel_cpp` and :func:`resample_cpp` adapt what they are given (a batch that is not
row-contiguous, half-precision samples, integer lengths of another width, no lengths at all),
build the constant tables once per configuration, allocate the output and hand the tensors
over. The binding reads every tensor through DLPack and checks its device, dtype, shape and
strides against the others (``csrc/tensor_args.h``), so a bad argument, whoever passes it, ends
in one ValueError naming it, e.g. ``logmel: lengths must have shape [B] = [2], got [3]``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from fastspec.kernels import reference as ref

from . import polyphase
from .config import FrontendConfig
from .cpp import load, status, supports

__all__ = ["logmel_cpp", "resample_cpp"]


def _module(module):
    module = module or load()
    if module is None:
        raise RuntimeError(f"fastspec._C is unavailable: {status().get('reason')}")
    return module


def _batch(wave: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(wave, lengths int64 [B])`` as the binding reads them; shapes and dtypes it cannot use
    are left for it to name."""
    if not isinstance(wave, Tensor):
        raise ValueError(f"wave must be a torch.Tensor [B, S], got {type(wave).__name__}")
    wave = wave.detach()
    if wave.dtype in (torch.float16, torch.bfloat16):
        wave = wave.float()  # the C++ reads float32, float64 or int16
    if wave.dim() == 2 and (
        wave.stride(-1) != 1 or (wave.shape[0] > 1 and wave.stride(0) < wave.shape[1])
    ):
        wave = wave.contiguous()  # rows must not overlap (an expanded batch has stride 0)
    if lengths is None:
        return wave, torch.full((wave.shape[0],), wave.shape[-1], dtype=torch.int64)
    if isinstance(lengths, Tensor) and not (
        lengths.dtype.is_floating_point or lengths.dtype == torch.bool
    ):
        lengths = lengths.detach().to(device="cpu", dtype=torch.int64).contiguous()
    return wave, lengths


@functools.lru_cache(maxsize=64)
def _plan(cfg: FrontendConfig) -> dict:
    """Window and sparse (CSR) mel filters of ``cfg`` as CPU tensors, built in float64."""
    window = ref.window_ref(
        cfg.window, cfg.win_length, cfg.periodic_window, cfg.frame_length, dtype=torch.float64
    )
    build_fb = ref.kaldi_mel_banks if cfg.mel_scale == "kaldi" else ref.htk_mel_banks
    fb = build_fb(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.f_max, dtype=torch.float64)
    # the C++ split step yields 2 X[k]: |2X|^2 = 4 |X|^2, |2X| = 2 |X|; exact powers of two
    fb = fb * (0.25 if cfg.power == 2.0 else 0.5)
    starts, offsets, weights = [], [0], []
    for m in range(cfg.n_mels):
        nonzero = (fb[:, m] != 0).nonzero().flatten()
        # Kaldi / HTK triangles are one contiguous run of bins (or empty)
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.numel() else (0, 0)
        starts.append(lo)
        weights.append(fb[lo:hi, m])
        offsets.append(offsets[-1] + hi - lo)
    return {
        "window": window.to(torch.float32).contiguous(),
        "mel_start": torch.tensor(starts, dtype=torch.int32),
        "mel_offset": torch.tensor(offsets, dtype=torch.int32),
        "mel_weight": torch.cat(weights).to(torch.float32).contiguous(),
    }


def logmel_cpp(
    wave: Tensor,
    lengths: Tensor | None,
    cfg: FrontendConfig,
    *,
    normalize: bool = True,
    out_dtype: torch.dtype = torch.float32,
    module=None,
) -> Tensor:
    """Features of ``wave [B, S]`` (CPU; float32/float64/int16) -> ``[B, T, n_mels]``.

    ``lengths [B]`` int (None: all ``S``). Frames past each clip's frame count are 0. NaN / inf
    in a clip's valid samples raise ValueError naming the clip (when ``cfg.check_finite``).
    Runs on ``torch.get_num_threads()`` OpenMP threads, without the GIL.
    """
    module = _module(module)
    reason = supports(cfg)
    if reason is not None:
        raise ValueError(f"the C++ front end cannot compute this config: {reason}")
    wave, lengths = _batch(wave, lengths)
    n_frames = ref.frame_count(wave.shape[-1], cfg.frame_length, cfg.hop_length, cfg.center)
    out = torch.empty(wave.shape[0], n_frames, cfg.n_mels, dtype=out_dtype)
    norm_mul, norm_add = cfg.norm_affine(normalize)
    module.logmel(
        wave=wave,
        lengths=lengths,
        out=out,
        **_plan(cfg),
        n_fft=cfg.n_fft,
        hop=cfg.hop_length,
        center=cfg.center,
        reflect=cfg.center and cfg.pad_mode == "reflect",
        remove_dc=cfg.remove_dc,
        preemph=cfg.preemphasis,
        power_one=cfg.power == 1.0,
        log_floor=cfg.log_floor,
        log_mult=cfg.log_mult,
        top_db=cfg.top_db,
        norm_mul=norm_mul,
        norm_add=norm_add,
        check_finite=cfg.check_finite and wave.dtype != torch.int16,
        n_threads=max(1, torch.get_num_threads()),
    )
    return out


@functools.lru_cache(maxsize=16)
def _resample_plan(up: int, down: int, lanes: int) -> dict:
    """The C++ resampler's filter: ``taps [up, n_taps]`` float32, ``starts [up]`` int64, ``up``,
    ``down`` (keyword arguments of the binding).

    Phase ``r`` of the output (``k = r + m up``) is ``sum_j x[base_r + m down - j] h[phase_r +
    j up]`` (as ``polyphase._polyphase_bank``); reversed, that is a contiguous dot product of
    ``x[m down + starts[r] + q]`` with ``taps[r, q]``, zero padded to a multiple of ``lanes``.
    """
    h, half_len = polyphase.filter_taps(up, down)
    r = np.arange(up)
    centre = r * down + half_len
    phase, base = centre % up, centre // up
    count = (h.size - 1 - phase) // up + 1  # taps of each phase
    n_taps = -(-int(count.max()) // lanes) * lanes
    taps = np.zeros((up, n_taps))
    for i in range(up):
        j = np.arange(count[i])
        taps[i, count[i] - 1 - j] = h[phase[i] + j * up]
    starts = base - count + 1
    return {
        "taps": torch.from_numpy(taps).to(torch.float32).contiguous(),
        "starts": torch.from_numpy(starts.astype(np.int64)).contiguous(),
        "up": up,
        "down": down,
    }


def resample_cpp(
    wave: Tensor, lengths: Tensor | None, orig_sr: int, new_sr: int, *, module=None
) -> tuple[Tensor, Tensor | None]:
    """Polyphase resampling of ``wave [B, S]`` (CPU; float32/float64/int16) in C++.

    The filter of :func:`fastspec.frontend.polyphase.resample` (scipy's resample_poly), in
    float32. Samples past ``lengths[b]`` read as zero, so each clip is resampled as if alone.
    Returns ``(float32 [B, ceil(S up / down)], resampled lengths or None)``.
    """
    module = _module(module)
    up, down = polyphase.reduced_ratio(orig_sr, new_sr)
    wave, clip_lengths = _batch(wave, lengths)
    plan = _resample_plan(up, down, module.simd_lanes())
    out = torch.empty(wave.shape[0], -(-wave.shape[-1] * up // down), dtype=torch.float32)
    threads = max(1, torch.get_num_threads())
    module.resample(wave=wave, lengths=clip_lengths, out=out, **plan, n_threads=threads)
    if lengths is None:
        return out, None
    return out, polyphase.resampled_lengths(clip_lengths, orig_sr, new_sr)
