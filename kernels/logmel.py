"""Fused log-mel front end: waveform ``[B, S]`` -> features ``[B, T, n_mels]`` in one launch.

Each program owns one clip and ``BLOCK_T`` consecutive frames. It reads the frames straight from
the waveform with strided (and, for ``center=True``, mirrored) loads, so no frame tensor is ever
materialised, then for each chunk of ``BLOCK_F`` frequency bins::

    re, im = frames @ basis_cos, frames @ basis_sin      # K-chunked tl.dot, fp32 accumulators
    acc   += (re^2 + im^2) @ mel_fb[chunk]               # mel energies, fp32
    out    = norm(log_mult * ln(max(acc, floor)))        # zero past each clip's frame count

The basis (``kernels.reference.frame_spectrum_basis``) is the product of per-frame DC removal,
Kaldi pre-emphasis, the window and the real DFT: all four are linear in the raw frame, so the
kernel needs neither a frame mean nor a shifted load, and DC removal is exact in the basis instead
of a float32 subtraction. Only the FFT bins some mel filter touches are kept (bins 1..255 of 257
for the Kaldi preset, 4..499 of 513 for ATST).

The ATST preset's ``top_db`` clamp needs each clip's maximum before any value can be finalised:
the kernel stores the unclamped dB values and folds its block maxima into ``clip_max`` with
``tl.atomic_max``; a torch epilogue (clamp, normalise, zero padding) then rereads the output once.
Fusing that epilogue (a grid-wide sync, or a two-phase persistent kernel) is a later step.

Gradient: none. The front end feeds the model and is never differentiated, so there is no
``autograd.Function``; the launcher runs under ``torch.no_grad`` semantics (outputs are detached).

Precision (``precision=``), error against the float64 reference in unnormalised log units
(ln for Kaldi, dB for ATST), max / mean over 1 s clips:

- ``"ieee"`` (default): fp32 ``tl.dot``. Measured under ``TRITON_INTERPRET=1``: white noise
  1e-5 / 2e-7 (Kaldi), 4e-6 / 8e-7 (ATST); tone or chirp over a -60 dB noise floor 2e-3 / 3e-5,
  within about 2x of the float32 torch (FFT) backend plus 1e-3. Pure synthetic tones (no noise
  floor) put bins 1e-12 below the peak power, near the log floor, where any float32 DFT is at its
  limit: there both reach about 2e-3, and the direct DFT up to 2e-2 in single bins.
- ``"tf32"``: tensor-core tf32 (10-bit mantissa operands). Not runnable here (the interpreter
  ignores it); emulating tf32 rounding of both operands: white noise 8e-3 / 4e-4, tone or chirp
  over a -60 dB floor 2 / 0.15. Too coarse for the DFT of audio with any dynamic range; only
  for throughput experiments.
- ``"tf32x3"``: split-operand tf32 (3 products). Emulated: same as ieee (noise 1e-5 / 3e-7,
  tone/chirp + floor 2e-3 / 4e-5); the candidate fast mode on tensor-core GPUs.

Cost: about 0.47 MFLOP per frame (Kaldi: 2 x 400 x 255 multiply-adds for cos and sin, 255 x 128
for the mel), so fp32 ieee on
an H100 (~60 TFLOP/s without tensor cores) tops out near 350 hours of audio per second; the
3,000 h/s target needs tensor cores with split precision, or an FFT factorisation of the DFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import frame_count

__all__ = ["INTERPRETED", "LogmelPlan", "make_logmel_plan", "logmel_fwd", "fused_logmel"]

# triton.jit picks the interpreter when the function is decorated, so what counts is the flag at
# import time of this module, not the environment at launch time
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

PRECISIONS = ("ieee", "tf32", "tf32x3")


@triton.jit(do_not_specialize=["n_samples", "n_frames", "stride_wave_b"])
def _logmel_fwd_kernel(
    wave_ptr,  # [B, S] samples (fp32/fp16/bf16/fp64, or int16 with in_scale), stride (stride_wave_b, 1)
    lengths_ptr,  # [B] int valid samples per clip
    basis_ptr,  # [2, K_PAD, F_PAD] fp32 frame->spectrum map: [0] real part, [1] imaginary part
    mel_ptr,  # [F_PAD, M_PAD] fp32 mel filter bank over the kept bins, zero padded
    out_ptr,  # [B, n_frames, N_MELS] fp32, contiguous
    clip_max_ptr,  # [B] fp32, -inf on entry; per-clip max of the log-mel (HAS_TOP_DB only)
    n_samples,  # S
    n_frames,  # T
    stride_wave_b,  # elements between clips in wave
    hop_length,
    pad_left,  # samples of padding before sample 0 (n_fft // 2 for center=True, else 0)
    in_scale,  # 1 for float input, 1 / 32768 for int16
    log_floor,
    log_mult,
    norm_mul,
    norm_add,
    FRAME_LEN: tl.constexpr,
    N_MELS: tl.constexpr,
    K_PAD: tl.constexpr,
    F_PAD: tl.constexpr,
    M_PAD: tl.constexpr,
    CENTER: tl.constexpr,
    REFLECT: tl.constexpr,
    POWER_ONE: tl.constexpr,
    HAS_TOP_DB: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_F: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T] frame index
    m = tl.arange(0, M_PAD)  # [M_PAD] mel index
    # clamping to S keeps every load inside the buffer even if a caller passes lengths > S
    length = tl.minimum(tl.load(lengths_ptr + b).to(tl.int32), n_samples)
    if CENTER:
        n_valid = 1 + length // hop_length
    else:
        n_valid = tl.where(length >= FRAME_LEN, 1 + (length - FRAME_LEN) // hop_length, 0)
    out_offs = b * n_frames * N_MELS + t[:, None] * N_MELS + m[None, :]  # [BLOCK_T, M_PAD]
    store_mask = (t[:, None] < n_frames) & (m[None, :] < N_MELS)

    if pid_t * BLOCK_T >= n_valid:
        # the whole block is padding: skip the DFT, the output there is defined to be 0
        tl.store(out_ptr + out_offs, tl.zeros([BLOCK_T, M_PAD], tl.float32), mask=store_mask)
        return

    wave_row = wave_ptr + b * stride_wave_b
    rk = tl.arange(0, BLOCK_K)
    rf = tl.arange(0, BLOCK_F)
    frame_ok = t < n_valid  # [BLOCK_T]
    acc = tl.zeros([BLOCK_T, M_PAD], tl.float32)
    for f0 in range(0, F_PAD, BLOCK_F):
        re = tl.zeros([BLOCK_T, BLOCK_F], tl.float32)
        im = tl.zeros([BLOCK_T, BLOCK_F], tl.float32)
        for k0 in range(0, K_PAD, BLOCK_K):
            k = k0 + rk
            src = t[:, None] * hop_length + k[None, :] - pad_left  # [BLOCK_T, BLOCK_K] sample index
            ok = frame_ok[:, None] & (k[None, :] < FRAME_LEN)
            if REFLECT:
                # periodic mirror at this clip's own length (np.pad "reflect"), so padded batches
                # reflect exactly where a lone clip would
                period = tl.maximum(2 * (length - 1), 1)
                src = tl.abs(src) % period
                src = tl.where(src > length - 1, period - src, src)
                # in range whenever length > 0; masks everything for an empty clip
                ok = ok & (src < length)
            else:
                ok = ok & (src >= 0) & (src < length)
            x = tl.load(wave_row + src, mask=ok, other=0).to(tl.float32) * in_scale
            basis_offs = k[:, None] * F_PAD + (f0 + rf)[None, :]  # [BLOCK_K, BLOCK_F]
            b_re = tl.load(basis_ptr + basis_offs)
            b_im = tl.load(basis_ptr + K_PAD * F_PAD + basis_offs)
            re = tl.dot(x, b_re, re, input_precision=PRECISION)
            im = tl.dot(x, b_im, im, input_precision=PRECISION)
        spec = re * re + im * im
        if POWER_ONE:
            spec = tl.sqrt(spec)
        mel_w = tl.load(mel_ptr + (f0 + rf)[:, None] * M_PAD + m[None, :])  # [BLOCK_F, M_PAD]
        acc = tl.dot(spec, mel_w, acc, input_precision=PRECISION)

    y = tl.log(tl.maximum(acc, log_floor)) * log_mult
    valid = frame_ok[:, None] & (m[None, :] < N_MELS)
    if HAS_TOP_DB:
        # the clamp needs the clip maximum over all its frames: store raw, finish in the epilogue
        tl.atomic_max(clip_max_ptr + b, tl.max(tl.max(tl.where(valid, y, -float("inf")), 1), 0))
    else:
        y = y * norm_mul + norm_add
    tl.store(out_ptr + out_offs, tl.where(valid, y, 0.0), mask=store_mask)


@dataclass(frozen=True)
class LogmelPlan:
    """Device constants and static settings of one front-end configuration (build once, reuse).

    ``basis``: ``[2, K_PAD, F_PAD]`` fp32; ``mel_fb``: ``[F_PAD, M_PAD]`` fp32 (see the kernel).
    """

    basis: Tensor
    mel_fb: Tensor
    frame_length: int
    hop_length: int
    n_mels: int
    center: bool
    reflect: bool
    power: float
    log_floor: float
    log_mult: float
    top_db: float | None
    block_k: int
    block_f: int


def _pow2_at_least(n: int, floor: int = 16) -> int:
    return max(floor, 1 << max(n - 1, 0).bit_length())


def make_logmel_plan(
    basis_re: Tensor,
    basis_im: Tensor,
    mel_fb: Tensor,
    *,
    hop_length: int,
    center: bool,
    pad_mode: str,
    power: float,
    log_floor: float,
    log_mult: float,
    top_db: float | None,
    device,
    block_k: int | None = None,
    block_f: int | None = None,
) -> LogmelPlan:
    """Trim, pad and upload the constants for :func:`logmel_fwd`.

    Args:
        basis_re, basis_im: ``[frame_length, n_freqs]`` float64 from ``frame_spectrum_basis``.
        mel_fb: ``[n_freqs, n_mels]`` filter bank (any float dtype).
        block_k, block_f: reduction / frequency tile sizes (powers of two >= 16); the padding of
            the constants depends on them. Defaults: 16 x 32 on GPU (see ``_launch_config``),
            128 x 128 when interpreted (fewer interpreted ops).
    """
    frame_length, n_freqs = basis_re.shape
    if mel_fb.shape[0] != n_freqs:
        raise ValueError(f"mel_fb has {mel_fb.shape[0]} rows, basis has {n_freqs} bins")
    n_mels = mel_fb.shape[1]
    used = (mel_fb != 0).any(dim=1).nonzero().flatten()
    # bins no filter touches (below f_min, above f_max, Kaldi's Nyquist) cost DFT work for nothing
    lo, hi = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 1)
    interpreted = INTERPRETED and torch.device(device).type == "cpu"
    block_k = block_k or (128 if interpreted else 16)
    block_f = block_f or (128 if interpreted else 32)
    k_pad = triton.cdiv(frame_length, block_k) * block_k
    f_pad = triton.cdiv(hi - lo, block_f) * block_f
    m_pad = _pow2_at_least(n_mels)
    basis = torch.zeros(2, k_pad, f_pad, dtype=torch.float64)
    basis[0, :frame_length, : hi - lo] = basis_re[:, lo:hi].to(torch.float64)
    basis[1, :frame_length, : hi - lo] = basis_im[:, lo:hi].to(torch.float64)
    mel = torch.zeros(f_pad, m_pad, dtype=torch.float64)
    mel[: hi - lo, :n_mels] = mel_fb[lo:hi].to(torch.float64)
    return LogmelPlan(
        basis=basis.to(device=device, dtype=torch.float32).contiguous(),
        mel_fb=mel.to(device=device, dtype=torch.float32).contiguous(),
        frame_length=frame_length,
        hop_length=hop_length,
        n_mels=n_mels,
        center=center,
        reflect=center and pad_mode == "reflect",
        power=power,
        log_floor=log_floor,
        log_mult=log_mult,
        top_db=top_db,
        block_k=block_k,
        block_f=block_f,
    )


def _launch_config(precision: str) -> tuple[int, int]:
    """``(BLOCK_T, num_warps)`` for the GPU.

    Chosen without a GPU to time on: these are the largest tiles that ptxas (sm_90, Triton 3.9)
    fits in 255 registers without spilling, with BLOCK_K=16 and BLOCK_F=32, for the Kaldi (128
    mel) and ATST presets. The [BLOCK_T, 128] fp32 mel accumulator stays live across the whole
    DFT loop, which is what limits the tile. tf32x3 keeps three operand splits live, hence half
    the frames. Tune (autotune with a coarse key) once a GPU is available.
    """
    return (32 if precision == "tf32x3" else 64), 8


def kernel_constexprs(plan: LogmelPlan, precision: str, block_t: int) -> dict:
    """The compile-time arguments of ``_logmel_fwd_kernel`` for a plan (one compiled variant
    per distinct dict; also used by the test that compiles the kernel for sm_90 without a GPU)."""
    return dict(
        FRAME_LEN=plan.frame_length,
        N_MELS=plan.n_mels,
        K_PAD=plan.basis.shape[1],
        F_PAD=plan.basis.shape[2],
        M_PAD=plan.mel_fb.shape[1],
        CENTER=plan.center,
        REFLECT=plan.reflect,
        POWER_ONE=plan.power == 1.0,
        HAS_TOP_DB=plan.top_db is not None,
        BLOCK_T=block_t,
        BLOCK_K=plan.block_k,
        BLOCK_F=plan.block_f,
        PRECISION=precision,
    )


def logmel_fwd(
    wave: Tensor,
    lengths: Tensor,
    plan: LogmelPlan,
    *,
    norm_mul: float = 1.0,
    norm_add: float = 0.0,
    precision: str = "ieee",
    block_t: int | None = None,
) -> Tensor:
    """Launch the fused kernel. ``wave [B, S]``, ``lengths [B]`` int -> ``[B, T, n_mels]`` fp32.

    ``wave`` may be float (any width) or int16 (scaled by 1/32768); its last dimension must be
    contiguous. Runs on CUDA tensors, or on CPU tensors when this module was imported under
    ``TRITON_INTERPRET=1``. Inputs are not checked for NaN/inf here (that needs a host sync; the
    front end does it).
    """
    if wave.dim() != 2:
        raise ValueError(f"wave must be [B, S], got shape {tuple(wave.shape)}")
    if lengths.shape != (wave.shape[0],) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"lengths must be int32/int64 [B={wave.shape[0]}], got {lengths.dtype} "
            f"{tuple(lengths.shape)}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if wave.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "the Triton log-mel kernel runs on CPU tensors only under TRITON_INTERPRET=1 "
            "(set before fastspec.kernels.logmel is imported)"
        )
    if wave.device != plan.basis.device or lengths.device != wave.device:
        raise ValueError(
            f"wave on {wave.device}, lengths on {lengths.device}, plan on {plan.basis.device}"
        )
    if wave.stride(-1) != 1:
        wave = wave.contiguous()
    batch, num_samples = wave.shape
    n_frames = frame_count(num_samples, plan.frame_length, plan.hop_length, plan.center)
    out = torch.empty(batch, n_frames, plan.n_mels, device=wave.device, dtype=torch.float32)
    if batch == 0 or n_frames == 0:
        return out
    clip_max = torch.full((batch,), -math.inf, device=wave.device, dtype=torch.float32)
    gpu_block_t, num_warps = _launch_config(precision)
    block_t = block_t or (32 if INTERPRETED else gpu_block_t)
    grid = (triton.cdiv(n_frames, block_t), batch)
    _logmel_fwd_kernel[grid](
        wave,
        lengths,
        plan.basis,
        plan.mel_fb,
        out,
        clip_max,
        num_samples,
        n_frames,
        wave.stride(0),
        plan.hop_length,
        plan.frame_length // 2 if plan.center else 0,
        1.0 / 32768.0 if wave.dtype == torch.int16 else 1.0,
        plan.log_floor,
        plan.log_mult,
        norm_mul,
        norm_add,
        **kernel_constexprs(plan, precision, block_t),
        num_warps=num_warps,
    )
    if plan.top_db is not None:
        # epilogue: clamp at clip max - top_db, normalise, re-zero the padding frames
        n_valid = frame_count(
            lengths.long().clamp_max(num_samples), plan.frame_length, plan.hop_length, plan.center
        )
        valid = torch.arange(n_frames, device=out.device)[None, :] < n_valid[:, None]
        torch.maximum(out, (clip_max - plan.top_db)[:, None, None], out=out)
        out.mul_(norm_mul).add_(norm_add).masked_fill_(~valid[..., None], 0.0)
    return out


def fused_logmel(
    wave: Tensor,
    lengths: Tensor | None,
    plan: LogmelPlan,
    *,
    norm_mul: float = 1.0,
    norm_add: float = 0.0,
    precision: str = "ieee",
) -> Tensor:
    """Functional entry point: ``wave [B, S]`` or ``[S]`` -> ``[B, T, n_mels]`` (or ``[T, n_mels]``).

    ``lengths`` None means every clip is ``S`` samples long. The result carries no graph.
    """
    squeeze = wave.dim() == 1
    wave = wave[None] if squeeze else wave
    if lengths is None:
        lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.int32, device=wave.device)
    with torch.no_grad():
        out = logmel_fwd(
            wave.detach(), lengths, plan, norm_mul=norm_mul, norm_add=norm_add, precision=precision
        )
    return out[0] if squeeze else out
