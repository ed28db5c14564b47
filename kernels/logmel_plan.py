"""The plan of the fused log-mel kernel (:mod:`fastspec.kernels.logmel`): device constants built
once per front-end configuration, the launch configuration, and the kernel's compile-time
arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from ._utils import INTERPRETED
from .reference import LogScale, frame_count

__all__ = [
    "CHECK_BLOCK",
    "LogmelPlan",
    "kernel_constexprs",
    "launch_config",
    "make_logmel_plan",
    "output_frames",
]

# samples scanned per step of the in-kernel NaN / inf check
CHECK_BLOCK = 1024


@dataclass(frozen=True)
class LogmelPlan:
    """Device constants and static settings of one front-end configuration (build once, reuse).

    ``basis``: ``[n_phases, 2, K_PAD, F_PAD]`` fp32; ``phase_start``: ``[n_phases]`` int32;
    ``mel_fb``: ``[F_PAD, M_PAD]`` fp32 (see the kernel). Without resampling ``n_phases == 1``,
    ``read_length == frame_length``, ``src_hop == hop_length`` and ``len_up == len_down == 1``.
    """

    basis: Tensor
    phase_start: Tensor
    mel_fb: Tensor
    frame_length: int
    read_length: int
    hop_length: int
    src_hop: int
    len_up: int
    len_down: int
    n_mels: int
    center: bool
    reflect: bool
    log_scale: LogScale
    block_k: int
    block_f: int

    @property
    def n_phases(self) -> int:
        return self.basis.shape[0]


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
    log_scale: LogScale,
    device,
    frame_length: int | None = None,
    phase_start: list[int] | None = None,
    src_hop: int | None = None,
    len_ratio: tuple[int, int] = (1, 1),
    block_k: int | None = None,
    block_f: int | None = None,
) -> LogmelPlan:
    """Trim, pad and upload the constants for :func:`logmel_fwd`.

    Args:
        basis_re, basis_im: ``[frame_length, n_freqs]`` float64 from ``frame_spectrum_basis``, or
            ``[n_phases, read_length, n_freqs]`` with the resampler folded in
            (``resampled_frame_basis``; then also pass ``frame_length``, ``phase_start``,
            ``src_hop`` and ``len_ratio = (up, down)``).
        mel_fb: ``[n_freqs, n_mels]`` filter bank (any float dtype).
        log_scale: spectrum power, log floor and multiplier, per-clip ``top_db`` clamp.
        block_k, block_f: reduction / frequency tile sizes (powers of two >= 16); the padding of
            the constants depends on them. Defaults: 16 x 32 on GPU (see :func:`launch_config`),
            128 x 128 when interpreted (fewer interpreted ops).
    """
    if basis_re.dim() == 2:
        basis_re, basis_im = basis_re[None], basis_im[None]
    n_phases, read_length, n_freqs = basis_re.shape
    if mel_fb.shape[0] != n_freqs:
        raise ValueError(f"mel_fb has {mel_fb.shape[0]} rows, basis has {n_freqs} bins")
    frame_length = frame_length or read_length
    if phase_start is None:
        # no resampling: frame t starts at t * hop, minus the centre padding
        phase_start = [-(frame_length // 2) if center else 0]
    if len(phase_start) != n_phases:
        raise ValueError(f"phase_start has {len(phase_start)} entries for {n_phases} phases")
    n_mels = mel_fb.shape[1]
    used = (mel_fb != 0).any(dim=1).nonzero().flatten()
    # bins no filter touches (below f_min, above f_max, Kaldi's Nyquist) cost DFT work for nothing
    lo, hi = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 1)
    interpreted = INTERPRETED and torch.device(device).type == "cpu"
    block_k = block_k or (128 if interpreted else 16)
    block_f = block_f or (128 if interpreted else 32)
    k_pad = triton.cdiv(read_length, block_k) * block_k
    f_pad = triton.cdiv(hi - lo, block_f) * block_f
    m_pad = _pow2_at_least(n_mels)
    basis = torch.zeros(n_phases, 2, k_pad, f_pad, dtype=torch.float64)
    basis[:, 0, :read_length, : hi - lo] = basis_re[..., lo:hi].to(torch.float64)
    basis[:, 1, :read_length, : hi - lo] = basis_im[..., lo:hi].to(torch.float64)
    mel = torch.zeros(f_pad, m_pad, dtype=torch.float64)
    mel[: hi - lo, :n_mels] = mel_fb[lo:hi].to(torch.float64)
    return LogmelPlan(
        basis=basis.to(device=device, dtype=torch.float32).contiguous(),
        phase_start=torch.tensor(phase_start, dtype=torch.int32, device=device),
        mel_fb=mel.to(device=device, dtype=torch.float32).contiguous(),
        frame_length=frame_length,
        read_length=read_length,
        hop_length=hop_length,
        src_hop=src_hop or hop_length,
        len_up=len_ratio[0],
        len_down=len_ratio[1],
        n_mels=n_mels,
        center=center,
        reflect=center and pad_mode == "reflect",
        log_scale=log_scale,
        block_k=block_k,
        block_f=block_f,
    )


def launch_config(precision: str) -> tuple[int, int]:
    """``(BLOCK_T, num_warps)`` for the GPU.

    Chosen without a GPU to time on: these are the largest tiles that ptxas (sm_90, Triton 3.9)
    fits in 255 registers without spilling, with BLOCK_K=16 and BLOCK_F=32, for the Kaldi (128
    mel) and ATST presets. The [BLOCK_T, 128] fp32 mel accumulator stays live across the whole
    DFT loop, which is what limits the tile. Split modes keep operand splits live, hence half
    the frames. Tune (autotune with a coarse key) once a GPU is available.
    """
    return (64 if precision in ("ieee", "tf32") else 32), 8


def kernel_constexprs(
    plan: LogmelPlan, precision: str, block_t: int, check_finite: bool = True
) -> dict:
    """The compile-time arguments of ``_logmel_fwd_kernel`` for a plan (one compiled variant
    per distinct dict; also used by the test that compiles the kernel for sm_90 without a GPU)."""
    return dict(
        FRAME_LEN=plan.frame_length,
        READ_LEN=plan.read_length,
        N_MELS=plan.n_mels,
        K_PAD=plan.basis.shape[2],
        F_PAD=plan.basis.shape[3],
        M_PAD=plan.mel_fb.shape[1],
        N_PHASES=plan.n_phases,
        CENTER=plan.center,
        REFLECT=plan.reflect,
        POWER_ONE=plan.log_scale.power == 1.0,
        HAS_TOP_DB=plan.log_scale.top_db is not None,
        CHECK_FINITE=check_finite,
        BLOCK_T=block_t,
        BLOCK_K=plan.block_k,
        BLOCK_F=plan.block_f,
        CHECK_BLOCK=CHECK_BLOCK,
        PRECISION=precision,
        EMULATE=INTERPRETED,
    )


def output_frames(num_samples, plan: LogmelPlan):
    """Frames of ``num_samples`` source samples (int or int Tensor) under ``plan``."""
    out_len = -(-num_samples * plan.len_up // plan.len_down)
    return frame_count(out_len, plan.frame_length, plan.hop_length, plan.center)
