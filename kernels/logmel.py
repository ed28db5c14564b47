"""Fused log-mel front end: waveform ``[B, S]`` -> features ``[B, T, n_mels]`` in one launch.

Each program owns one clip and ``BLOCK_T`` frames. It reads the frames straight from the
waveform with strided (and, for ``center=True``, mirrored) loads, so no frame tensor is ever
materialised, then for each chunk of ``BLOCK_F`` frequency bins::

    re, im = frames @ basis_cos, frames @ basis_sin      # K-chunked tl.dot, fp32 accumulators
    acc   += (re^2 + im^2) @ mel_fb[chunk]               # mel energies, fp32
    out    = norm(log_mult * ln(max(acc, floor)))        # zero past each clip's frame count

The basis (``kernels.reference.frame_spectrum_basis``) is the product of per-frame DC removal,
Kaldi pre-emphasis, the window and the real DFT: all four are linear in the raw frame, so the
kernel needs neither a frame mean nor a shifted load, and DC removal is exact in the basis instead
of a float32 subtraction. Only the FFT bins some mel filter touches are kept (bins 1..255 of 257
for the Kaldi preset, 4..499 of 513 for ATST).

Fused resampling. A polyphase resampler is linear too, so for snip-edges framing the plan may
carry the resampler folded into the basis (``fastspec.frontend.polyphase.resampled_frame_basis``):
frames are then read from the waveform at its *source* rate, ``READ_LEN`` source samples per
frame, and ``N_PHASES`` bases cover frames whose source offset is fractional (frame
``t = phase + N_PHASES u`` starts at source sample ``u * src_hop + phase_start[phase]``).
Frame counts follow the resampled length ``ceil(length * len_up / len_down)``.

Input checks without a pass over memory: programs of phase 0 also scan their share of the clip's
valid samples for NaN / inf and raise a per-clip flag; the launcher reads the flags back (one
host sync, skipped with ``check_finite=False``).

``top_db`` (ATST) needs each clip's maximum before any value is final: the main kernel stores the
unclamped dB values in float32 and folds its block maxima into ``clip_max`` with
``tl.atomic_max``; ``_top_db_epilogue_kernel`` (one read and one write of the output, no host
sync) then clamps, normalises, zeroes the padding frames and casts to the output dtype.

Gradient: none. The front end feeds the model and is never differentiated, so there is no
``autograd.Function``; outputs are detached.

Precision (``precision=``): the mode of both ``tl.dot`` (``ieee``, the default, or the
tensor-core modes ``tf32``, ``tf32x3``, ``bf16x3``, ``bf16x6``). The interpreter computes every mode
in fp32, so there the kernel emulates each mode's operand rounding itself (``_dot``), and the
modes are measured on the host the same way (``kernels.reference.dot_emulated``,
``benchmarks/frontend_precision.py``); the measured error of each mode against float64 is in
``benchmarks/results/frontend-precision.md``. In short:
``bf16x6`` is the accurate tensor-core mode, ``bf16x3`` the fast one, ``tf32`` is not for audio.

Cost (Kaldi): 2 x 400 x 255 multiply-adds per frame for the DFT plus 255 x 128 for the mel, about
0.47 MFLOP, i.e. 47 MFLOP per second of audio; 3,000 h/s needs ~510 TFLOP/s of fp32-equivalent
products. An H100 SXM (dense: 495 TFLOP/s tf32, 990 bf16) therefore caps the dense DFT, at full
tensor-core utilisation, near ~970 h/s in ``bf16x6`` / ``tf32x3`` and ~1,950 h/s in ``bf16x3``
(``ieee``: ~400 h/s). The 3,000 h/s target needs an FFT factorisation of the DFT (a two-stage
16 x 32 split is ~4x fewer products), which this kernel does not do yet.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._utils import INTERPRETED, cast_rne, device_guard, require_runnable
from .logmel_plan import LogmelPlan, kernel_constexprs, launch_config, output_frames

__all__ = ["INTERPRETED", "PRECISIONS", "logmel_fwd"]

PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16x3", "bf16x6")
_OUT_DTYPES = (torch.float32, torch.bfloat16)


@triton.jit
def _round_operand(x, BF16: tl.constexpr):
    """fp32 ``x`` rounded to a tensor-core operand format, kept in fp32: bf16 (nearest even, as
    the GPU's cvt.rn.bf16) or tf32 (10 mantissa bits, half away from zero, as cvt.rna.tf32)."""
    bits = x.to(tl.int32, bitcast=True)
    if BF16:
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    else:
        bits = (bits + 0x1000) & -8192
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """``acc + a @ b`` in the precision mode ``PRECISION``.

    EMULATE (interpreter only, whose ``tl.dot`` computes every mode in fp32): the tensor-core
    modes' operand rounding is done here on the bits, as Triton's F32DotTC pass does on a GPU:
    each operand split into 2 (``tf32x3``, ``bf16x3``) or 3 (``bf16x6``) exactly representable
    terms, the cross products a mode keeps summed small ones first, then the leading product.
    So tests on CPU see each mode's own rounding error, not fp32's.
    """
    if EMULATE and PRECISION != "ieee":
        BF16: tl.constexpr = PRECISION == "bf16x3" or PRECISION == "bf16x6"
        a0 = _round_operand(a, BF16)
        b0 = _round_operand(b, BF16)
        if PRECISION == "tf32":
            return tl.dot(a0, b0, acc, input_precision="ieee")
        a1 = _round_operand(a - a0, BF16)
        b1 = _round_operand(b - b0, BF16)
        if PRECISION == "bf16x6":
            a2 = _round_operand(a - a0 - a1, BF16)
            b2 = _round_operand(b - b0 - b1, BF16)
            # products of order 2^-16 and above, smallest first (kernels.reference.dot_emulated)
            small = tl.dot(a2, b0, input_precision="ieee")
            small = tl.dot(a1, b1, small, input_precision="ieee")
            small = tl.dot(a1, b0, small, input_precision="ieee")
            small = tl.dot(a0, b2, small, input_precision="ieee")
            small = tl.dot(a0, b1, small, input_precision="ieee")
        else:
            small = tl.dot(a1, b0, input_precision="ieee")
            small = tl.dot(a0, b1, small, input_precision="ieee")
        return acc + (tl.dot(a0, b0, input_precision="ieee") + small)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit(do_not_specialize=["n_samples", "n_frames", "stride_wave_b"])
def _logmel_fwd_kernel(
    wave_ptr,  # [B, S] fp32/fp16/bf16/fp64 (or int16 x in_scale), strides (stride_wave_b, 1)
    lengths_ptr,  # [B] int valid samples per clip, at the source rate
    basis_ptr,  # [N_PHASES, 2, K_PAD, F_PAD] fp32 frame->spectrum: [p, 0] real, [p, 1] imag
    phase_start_ptr,  # [N_PHASES] int32 first source sample each phase reads (may be < 0)
    mel_ptr,  # [F_PAD, M_PAD] fp32 mel filter bank over the kept bins, zero padded
    out_ptr,  # [B, n_frames, N_MELS] fp32/bf16 contiguous; fp32 raw dB scratch when HAS_TOP_DB
    clip_max_ptr,  # [B] fp32, -inf on entry; per-clip max of the log-mel (HAS_TOP_DB only)
    bad_ptr,  # [B] int32, 0 on entry; 1 where a valid sample is NaN/inf (CHECK_FINITE only)
    n_samples,  # S
    n_frames,  # T
    stride_wave_b,  # elements between clips in wave
    hop_length,  # frame shift at the output rate (frame counting)
    src_hop,  # source samples from frame t to frame t + N_PHASES
    len_up,  # output-rate length = ceil(length * len_up / len_down); 1, 1 without resampling
    len_down,
    in_scale,  # 1 for float input, 1 / 32768 for int16
    log_floor,
    log_mult,
    norm_mul,
    norm_add,
    FRAME_LEN: tl.constexpr,  # frame length at the output rate (frame counting)
    READ_LEN: tl.constexpr,  # samples read per frame (rows of the basis)
    N_MELS: tl.constexpr,
    K_PAD: tl.constexpr,
    F_PAD: tl.constexpr,
    M_PAD: tl.constexpr,
    N_PHASES: tl.constexpr,
    CENTER: tl.constexpr,
    REFLECT: tl.constexpr,
    POWER_ONE: tl.constexpr,
    HAS_TOP_DB: tl.constexpr,
    CHECK_FINITE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_F: tl.constexpr,
    CHECK_BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,  # interpreter: emulate the tensor-core modes (see _dot)
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    phase = pid % N_PHASES
    u_block = pid // N_PHASES
    u = u_block * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T] frame index within the phase
    t = phase + N_PHASES * u  # [BLOCK_T] frame index
    m = tl.arange(0, M_PAD)  # [M_PAD] mel index
    wave_row = wave_ptr + b * stride_wave_b
    # clamping to S keeps every load inside the buffer even if a caller passes lengths > S
    length = tl.minimum(tl.load(lengths_ptr + b).to(tl.int64), n_samples)
    out_len = (length * len_up + len_down - 1) // len_down  # int64: 160 x hours of samples
    if CENTER:
        n_valid = 1 + out_len // hop_length
    else:
        n_valid = tl.where(out_len >= FRAME_LEN, 1 + (out_len - FRAME_LEN) // hop_length, 0)

    if CHECK_FINITE:
        if phase == 0:
            # programs split [0, length) by source hops; the last one also takes the tail
            n_blocks = tl.cdiv(tl.cdiv(n_frames, N_PHASES), BLOCK_T)
            seg0 = tl.minimum(u_block * BLOCK_T * src_hop, length)
            seg1 = tl.minimum((u_block + 1) * BLOCK_T * src_hop, length)
            seg1 = tl.where(u_block == n_blocks - 1, length, seg1)
            n_bad = 0
            for s0 in range(seg0, seg1, CHECK_BLOCK):
                offs = s0 + tl.arange(0, CHECK_BLOCK)
                v = tl.load(wave_row + offs, mask=offs < seg1, other=0).to(tl.float32)
                n_bad += tl.sum(((v != v) | (tl.abs(v) == float("inf"))).to(tl.int32), 0)
            tl.atomic_max(bad_ptr + b, tl.minimum(n_bad, 1))

    out_offs = b * n_frames * N_MELS + t[:, None] * N_MELS + m[None, :]  # [BLOCK_T, M_PAD]
    store_mask = (t[:, None] < n_frames) & (m[None, :] < N_MELS)
    if phase + N_PHASES * u_block * BLOCK_T >= n_valid:
        # the whole block is padding: skip the DFT, the output there is defined to be 0
        zeros = tl.zeros([BLOCK_T, M_PAD], tl.float32).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + out_offs, zeros, mask=store_mask)
        return

    start = tl.load(phase_start_ptr + phase)
    basis_row = basis_ptr + phase * (2 * K_PAD * F_PAD)
    rk = tl.arange(0, BLOCK_K)
    rf = tl.arange(0, BLOCK_F)
    frame_ok = t < n_valid  # [BLOCK_T]
    acc = tl.zeros([BLOCK_T, M_PAD], tl.float32)
    for f0 in range(0, F_PAD, BLOCK_F):
        re = tl.zeros([BLOCK_T, BLOCK_F], tl.float32)
        im = tl.zeros([BLOCK_T, BLOCK_F], tl.float32)
        for k0 in range(0, K_PAD, BLOCK_K):
            k = k0 + rk
            src = u[:, None] * src_hop + start + k[None, :]  # [BLOCK_T, BLOCK_K] sample index
            ok = frame_ok[:, None] & (k[None, :] < READ_LEN)
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
            b_re = tl.load(basis_row + basis_offs)
            b_im = tl.load(basis_row + K_PAD * F_PAD + basis_offs)
            re = _dot(x, b_re, re, PRECISION, EMULATE)
            im = _dot(x, b_im, im, PRECISION, EMULATE)
        spec = re * re + im * im
        if POWER_ONE:
            spec = tl.sqrt(spec)
        mel_w = tl.load(mel_ptr + (f0 + rf)[:, None] * M_PAD + m[None, :])  # [BLOCK_F, M_PAD]
        acc = _dot(spec, mel_w, acc, PRECISION, EMULATE)

    y = tl.log(tl.maximum(acc, log_floor)) * log_mult
    valid = frame_ok[:, None] & (m[None, :] < N_MELS)
    if HAS_TOP_DB:
        # the clamp needs the clip maximum over all its frames: store raw, finish in the epilogue
        tl.atomic_max(clip_max_ptr + b, tl.max(tl.max(tl.where(valid, y, -float("inf")), 1), 0))
    else:
        y = y * norm_mul + norm_add
    y = tl.where(valid, y, 0.0)
    tl.store(out_ptr + out_offs, cast_rne(y, out_ptr.dtype.element_ty, True), mask=store_mask)


@triton.jit(do_not_specialize=["n_samples", "n_frames"])
def _top_db_epilogue_kernel(
    raw_ptr,  # [B, n_frames, N_MELS] fp32 unclamped log-mel from _logmel_fwd_kernel
    out_ptr,  # [B, n_frames, N_MELS] fp32/bf16 contiguous; may be raw_ptr itself
    clip_max_ptr,  # [B] fp32 per-clip max over valid frames
    lengths_ptr,  # [B] int valid samples per clip, at the source rate
    n_samples,  # S
    n_frames,  # T
    hop_length,
    len_up,
    len_down,
    top_db,
    norm_mul,
    norm_add,
    FRAME_LEN: tl.constexpr,
    N_MELS: tl.constexpr,
    CENTER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    length = tl.minimum(tl.load(lengths_ptr + b).to(tl.int64), n_samples)
    out_len = (length * len_up + len_down - 1) // len_down
    if CENTER:
        n_valid = 1 + out_len // hop_length
    else:
        n_valid = tl.where(out_len >= FRAME_LEN, 1 + (out_len - FRAME_LEN) // hop_length, 0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] flat index into the clip's [T, N_MELS]
    in_clip = offs < n_frames * N_MELS
    valid = in_clip & (offs // N_MELS < n_valid)
    x = tl.load(raw_ptr + b * n_frames * N_MELS + offs, mask=valid, other=0.0)
    lowest = tl.load(clip_max_ptr + b) - top_db
    y = tl.where(valid, tl.maximum(x, lowest) * norm_mul + norm_add, 0.0)
    tl.store(
        out_ptr + b * n_frames * N_MELS + offs,
        cast_rne(y, out_ptr.dtype.element_ty, True),
        mask=in_clip,
    )


def logmel_fwd(
    wave: Tensor,
    lengths: Tensor | None,
    plan: LogmelPlan,
    *,
    norm_mul: float = 1.0,
    norm_add: float = 0.0,
    precision: str = "ieee",
    out_dtype: torch.dtype = torch.float32,
    check_finite: bool = True,
    block_t: int | None = None,
) -> Tensor:
    """Launch the fused kernel. ``wave [B, S]``, ``lengths [B]`` int -> ``[B, T, n_mels]``.

    ``lengths`` None means every clip is ``S`` samples long. The output carries no graph (the
    front end is never differentiated). ``wave`` may be float (any width) or int16 (scaled by
    1/32768); its last dimension must be contiguous. ``out_dtype`` is float32 or bfloat16. Runs on CUDA tensors, or on CPU tensors
    when this module was imported under ``TRITON_INTERPRET=1``. With ``check_finite``, NaN/inf
    in a clip's valid samples and lengths outside ``[0, S]`` raise ValueError after the launch
    (one host sync for both).
    """
    if wave.dim() != 2:
        raise ValueError(f"wave must be [B, S], got shape {tuple(wave.shape)}")
    if lengths is None:
        lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.int32, device=wave.device)
    if lengths.shape != (wave.shape[0],) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"lengths must be int32/int64 [B={wave.shape[0]}], got {lengths.dtype} "
            f"{tuple(lengths.shape)}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    require_runnable(wave.device, "log-mel kernel", "logmel")
    if wave.device != plan.basis.device or lengths.device != wave.device:
        raise ValueError(
            f"wave on {wave.device}, lengths on {lengths.device}, plan on {plan.basis.device}"
        )
    if wave.stride(-1) != 1:
        wave = wave.contiguous()
    batch, num_samples = wave.shape
    n_frames = output_frames(num_samples, plan)
    out = torch.empty(batch, n_frames, plan.n_mels, device=wave.device, dtype=out_dtype)
    check_finite = check_finite and wave.dtype != torch.int16
    bad = torch.zeros(batch, device=wave.device, dtype=torch.int32)
    if batch and n_frames:
        # the top_db path finishes in float32 before rounding once into out
        two_pass = plan.log_scale.top_db is not None
        raw = (
            out
            if not two_pass or out_dtype == torch.float32
            else torch.empty_like(out, dtype=torch.float32)
        )
        clip_max = torch.full((batch,), -math.inf, device=wave.device, dtype=torch.float32)
        gpu_block_t, num_warps = launch_config(precision)
        block_t = block_t or (32 if INTERPRETED else gpu_block_t)
        per_phase = triton.cdiv(n_frames, plan.n_phases)
        grid = (plan.n_phases * triton.cdiv(per_phase, block_t), batch)
        with device_guard(wave.device):
            _logmel_fwd_kernel[grid](
                wave,
                lengths,
                plan.basis,
                plan.phase_start,
                plan.mel_fb,
                raw,
                clip_max,
                bad,
                num_samples,
                n_frames,
                wave.stride(0),
                plan.hop_length,
                plan.src_hop,
                plan.len_up,
                plan.len_down,
                1.0 / 32768.0 if wave.dtype == torch.int16 else 1.0,
                plan.log_scale.log_floor,
                plan.log_scale.log_mult,
                norm_mul,
                norm_add,
                **kernel_constexprs(plan, precision, block_t, check_finite),
                num_warps=num_warps,
            )
            if two_pass:
                block = 1024
                _top_db_epilogue_kernel[(triton.cdiv(n_frames * plan.n_mels, block), batch)](
                    raw,
                    out,
                    clip_max,
                    lengths,
                    num_samples,
                    n_frames,
                    plan.hop_length,
                    plan.len_up,
                    plan.len_down,
                    plan.log_scale.top_db,
                    norm_mul,
                    norm_add,
                    FRAME_LEN=plan.frame_length,
                    N_MELS=plan.n_mels,
                    CENTER=plan.center,
                    BLOCK=block,
                    num_warps=4,
                )
    elif check_finite and batch:
        # no frames at all (every clip shorter than a window): the kernel did not run
        valid = torch.arange(num_samples, device=wave.device)[None, :] < lengths[:, None]
        bad = (~torch.isfinite(wave) & valid).any(dim=1).to(torch.int32)
    if check_finite and batch:
        # host sync: the only one of the front end, for the error messages
        flags = torch.stack([bad.bool(), (lengths < 0) | (lengths > num_samples)]).cpu()
        if flags[0].any():
            clips = flags[0].nonzero().flatten().tolist()
            raise ValueError(f"wave holds NaN or inf in clip(s) {clips[:10]} (batch index)")
        if flags[1].any():
            clip = int(flags[1].nonzero()[0])
            raise ValueError(
                f"lengths[{clip}]={int(lengths[clip])} is outside [0, S={num_samples}]"
            )
    return out
