"""Mask sampling on the device with Triton's Philox RNG: uniform draws, exact top-K selection, and
the rectangle rasteriser of group masking.

Randomness: every kernel draws ``tl.randint(seed, offset)`` (Philox 4x32-10, counter-based). The
seed is read from a one-element int64 device tensor, so a seed drawn from a CUDA
``torch.Generator`` never visits the host; the offset is ``stream * 2**40 + element index``, so
the samplers of one mask take independent draws by using different ``stream`` numbers. Same seed,
stream and shape give the same bits on every launch and every GPU.

Top-K selection (:func:`select_top`) keeps exactly K tokens per row without a sort: each token
gets a unique 63-bit key ``priority << 48 | random32 << 16 | n`` and a bitwise binary search
(radix select, one masked count per bit) finds the K-th largest key; ``key >= threshold`` keeps
exactly K. Prefix sums then give every token its slot, which yields the mask, ``ids_keep``
(ascending) and ``ids_restore`` in the same pass. ``tl.sort`` would do the same in fewer
instructions on a GPU, but it takes ~30 s per launch under ``TRITON_INTERPRET=1``, where the
tests run; the search costs ``48 + PRIORITY_BITS`` reductions over a row that already sits in
registers.

Tie breaks: the 16-bit index makes keys unique; two tokens of equal priority whose 32 random bits
collide (probability ~N^2 / 2^33 per row) are ordered by index, a negligible bias.

No gradients: masks are integer outputs. Nothing here synchronises with the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._utils import INTERPRETED, device_guard, require_runnable

__all__ = [
    "INTERPRETED",
    "MAX_PRIORITY_BITS",
    "MAX_TOKENS",
    "philox_uniform",
    "rect_config",
    "rect_first_cover",
    "select_config",
    "select_top",
]

MAX_TOKENS = 1 << 16  # the key keeps 16 bits of token index
MAX_PRIORITY_BITS = 14  # 14 + 32 + 16 bits stay below the int64 sign bit
_STREAM_SHIFT = 40  # offsets: stream * 2**40 + index, so a stream holds 2**40 draws


@triton.jit(do_not_specialize=["numel", "stream"])
def _uniform_kernel(
    seed_ptr,  # [1] int64 Philox seed
    out_ptr,  # [numel] fp32, contiguous
    numel,
    stream,  # independent sub-stream of this seed
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr)
    u = tl.rand(seed, stream.to(tl.int64) * (1 << 40) + offs)  # [BLOCK] in [0, 1]
    # tl.rand scales 31 random bits by 2**-31, which rounds to exactly 1.0 in float32 for the
    # top 64 values: clamp to the largest float32 below 1 so the range is [0, 1)
    u = tl.minimum(u, 0.99999994)
    tl.store(out_ptr + offs, u, mask=offs < numel)


@triton.jit(do_not_specialize=["n_rows", "stream"])
def _select_top_kernel(
    seed_ptr,  # [1] int64 Philox seed
    priority_ptr,  # [B, N] int32 >= 0, contiguous (read only when HAS_PRIORITY)
    mask_ptr,  # [B, N] uint8 out: 1 = not kept, contiguous
    ids_keep_ptr,  # [B, K] int64 out, contiguous
    ids_restore_ptr,  # [B, N] int64 out, contiguous
    n_rows,  # B
    n_tokens,  # N <= 2**16
    n_keep,  # K
    stream,
    HAS_PRIORITY: tl.constexpr,
    PRIORITY_BITS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B]
    n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    valid = (rows[:, None] < n_rows) & (n[None, :] < n_tokens)  # [BLOCK_B, BLOCK_N]
    flat = rows[:, None].to(tl.int64) * n_tokens + n[None, :]  # row-major element index
    seed = tl.load(seed_ptr)
    bits = tl.randint(seed, stream.to(tl.int64) * (1 << 40) + flat)  # uint32
    key = (bits.to(tl.int64) << 16) | n[None, :]
    if HAS_PRIORITY:
        priority = tl.load(priority_ptr + flat, mask=valid, other=0).to(tl.int64)
        key = key | (priority << 48)
    # padding lanes get -1, below every real key, so they are never counted as kept
    key = tl.where(valid, key, -1)

    # radix select: the largest threshold with at least K keys >= it is the K-th largest key
    threshold = tl.zeros([BLOCK_B], tl.int64)
    for i in tl.static_range(48 + PRIORITY_BITS):
        candidate = threshold | (tl.full([BLOCK_B], 1, tl.int64) << (47 + PRIORITY_BITS - i))
        count = tl.sum((key >= candidate[:, None]).to(tl.int32), 1)
        threshold = tl.where(count >= n_keep, candidate, threshold)
    # K = 0 would leave threshold at the smallest key; lift it above every key instead
    threshold = tl.where(n_keep > 0, threshold, 0x7FFFFFFFFFFFFFFF)
    keep = (key >= threshold[:, None]) & valid

    kept = keep.to(tl.int32)
    slot_kept = tl.cumsum(kept, 1) - 1  # rank among kept tokens, grid order
    slot_masked = n_keep + tl.cumsum(1 - kept, 1) - 1
    slot = tl.where(keep, slot_kept, slot_masked)
    tl.store(mask_ptr + flat, (1 - kept).to(tl.uint8), mask=valid)
    tl.store(ids_restore_ptr + flat, slot.to(tl.int64), mask=valid)
    grid_index = tl.zeros([BLOCK_B, BLOCK_N], tl.int64) + n[None, :]
    keep_offs = rows[:, None].to(tl.int64) * n_keep + slot_kept
    tl.store(ids_keep_ptr + keep_offs, grid_index, mask=keep)


@triton.jit(do_not_specialize=["n_time", "n_rects"])
def _rect_first_cover_kernel(
    rects_ptr,  # [B, R, 4] int32 (t0, t1, f0, f1) half-open, contiguous
    first_ptr,  # [B, T, F] int16 out, contiguous
    n_time,  # T
    n_freq,  # F
    n_rects,  # R
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_f = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)  # [BLOCK_F]
    first = tl.full([BLOCK_T, BLOCK_F], n_rects, tl.int32)
    row = rects_ptr + b * n_rects * 4
    # walk the rectangles last to first, so the survivor in each bin is the lowest index; the
    # rectangle corners are scalars, the whole tile is one broadcast compare per rectangle
    for i in range(n_rects - 1, -1, -1):
        t0 = tl.load(row + 4 * i)
        t1 = tl.load(row + 4 * i + 1)
        f0 = tl.load(row + 4 * i + 2)
        f1 = tl.load(row + 4 * i + 3)
        inside = ((t >= t0) & (t < t1))[:, None] & ((f >= f0) & (f < f1))[None, :]
        first = tl.where(inside, i, first)
    offs = b * n_time * n_freq + t[:, None].to(tl.int64) * n_freq + f[None, :]
    ok = (t[:, None] < n_time) & (f[None, :] < n_freq)
    tl.store(first_ptr + offs, first.to(tl.int16), mask=ok)


# ---- launchers ------------------------------------------------------------------------------------


def _check_runnable(*tensors: Tensor) -> None:
    device = tensors[0].device
    require_runnable(device, "masking kernels", "masking")
    for t in tensors:
        if t.device != device:
            raise ValueError(f"all tensors must be on {device}, got one on {t.device}")


def _check_seed(seed: Tensor) -> None:
    if seed.shape != (1,) or seed.dtype != torch.int64:
        raise ValueError(
            f"seed must be a one-element int64 device tensor, got {seed.dtype} {tuple(seed.shape)}"
        )


def select_config(n_rows: int, n_tokens: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_N, num_warps) of the selection kernel.

    A row lives in registers; rows are packed into one program up to 4096 lanes, where ptxas
    (sm_90, 8 warps) reports 137-175 registers and no spills at N = 512 and N = 4096. Under the
    interpreter, whose cost is per operation rather than per lane, up to 65536 lanes.
    """
    block_n = triton.next_power_of_2(n_tokens)
    lanes = 1 << 16 if INTERPRETED else 4096
    block_b = max(1, min(triton.next_power_of_2(max(n_rows, 1)), lanes // block_n))
    return block_b, block_n, 4 if block_b * block_n <= 1024 else 8


def rect_config(n_freq: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_F, num_warps) of the rasteriser: 32 x 128 bins per program takes 162
    registers without spills on sm_90 (ptxas report); the interpreter takes larger tiles."""
    block_f = min(128, triton.next_power_of_2(n_freq))
    return (64 if INTERPRETED else 32), block_f, 4


def philox_uniform(seed: Tensor, shape: tuple[int, ...], stream: int) -> Tensor:
    """Uniform float32 draws in [0, 1) of the given shape, on ``seed``'s device.

    Args:
        seed: [1] int64, the Philox key (a device tensor: no host round trip).
        shape: output shape.
        stream: sub-stream number, 0 <= stream < 2**23; different streams are independent.
    """
    _check_seed(seed)
    _check_runnable(seed)
    if not 0 <= stream < 1 << (63 - _STREAM_SHIFT):
        raise ValueError(f"stream must be in [0, 2**23), got {stream}")
    out = torch.empty(shape, dtype=torch.float32, device=seed.device)
    numel = out.numel()
    if numel >= 1 << _STREAM_SHIFT:
        raise ValueError(f"philox_uniform draws at most 2**40 values per stream, asked {numel}")
    if numel:
        block = 1024
        with device_guard(seed.device):
            _uniform_kernel[(triton.cdiv(numel, block),)](seed, out, numel, stream, BLOCK=block)
    return out


def select_top(
    seed: Tensor,
    n_rows: int,
    n_tokens: int,
    n_keep: int,
    stream: int,
    priority: Tensor | None = None,
    priority_bits: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep exactly ``n_keep`` of ``n_tokens`` tokens per row, highest priority first, the rest
    at random (uniformly among equal priorities).

    Args:
        seed: [1] int64 Philox key on the target device.
        n_rows, n_tokens, n_keep: B, N (<= 2**16), K (0 <= K <= N).
        stream: Philox sub-stream of the tie-breaking bits.
        priority: [B, N] integer >= 0 and < 2**priority_bits, or None.
        priority_bits: how many bits the priorities use (<= 14); 0 without priority.

    Returns:
        ``mask`` [B, N] bool (True = not kept), ``ids_keep`` [B, K] int64 ascending,
        ``ids_restore`` [B, N] int64 (slot of each token in ``cat(kept, masked)`` order).
    """
    _check_seed(seed)
    _check_runnable(seed, *(() if priority is None else (priority,)))
    if not 0 < n_tokens <= MAX_TOKENS:
        raise ValueError(f"n_tokens must be in [1, {MAX_TOKENS}], got {n_tokens}")
    if not 0 <= n_keep <= n_tokens:
        raise ValueError(f"n_keep must be in [0, n_tokens={n_tokens}], got {n_keep}")
    if priority is not None:
        if priority.shape != (n_rows, n_tokens):
            raise ValueError(
                f"priority must be [B, N] = [{n_rows}, {n_tokens}], got {tuple(priority.shape)}"
            )
        if not 1 <= priority_bits <= MAX_PRIORITY_BITS:
            raise ValueError(
                f"priority_bits must be in [1, {MAX_PRIORITY_BITS}], got {priority_bits}"
            )
        priority = priority.to(torch.int32).contiguous()
    device = seed.device
    mask = torch.empty(n_rows, n_tokens, dtype=torch.bool, device=device)
    ids_keep = torch.empty(n_rows, n_keep, dtype=torch.int64, device=device)
    ids_restore = torch.empty(n_rows, n_tokens, dtype=torch.int64, device=device)
    if n_rows == 0:
        return mask, ids_keep, ids_restore
    block_b, block_n, num_warps = select_config(n_rows, n_tokens)
    with device_guard(device):
        _select_top_kernel[(triton.cdiv(n_rows, block_b),)](
            seed,
            priority if priority is not None else ids_restore,  # dummy pointer, never read
            mask.view(torch.uint8),
            ids_keep,
            ids_restore,
            n_rows,
            n_tokens,
            n_keep,
            stream,
            HAS_PRIORITY=priority is not None,
            PRIORITY_BITS=priority_bits if priority is not None else 0,
            BLOCK_B=block_b,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    return mask, ids_keep, ids_restore


def rect_first_cover(rects: Tensor, n_time: int, n_freq: int) -> Tensor:
    """Index of the first rectangle covering each spectrogram bin (R where none does).

    Args:
        rects: [B, R, 4] int (t0, t1, f0, f1), half-open, in drawing order; R < 2**15.
        n_time, n_freq: T, F.

    Returns:
        [B, T, F] int16.
    """
    _check_runnable(rects)
    if rects.dim() != 3 or rects.shape[2] != 4:
        raise ValueError(f"rects must be [B, R, 4], got shape {tuple(rects.shape)}")
    b, r, _ = rects.shape
    if r >= 1 << 15:
        raise ValueError(f"at most 2**15 - 1 rectangles per row, got {r}")
    rects = rects.to(torch.int32).contiguous()
    first = torch.empty(b, n_time, n_freq, dtype=torch.int16, device=rects.device)
    if first.numel() == 0:
        return first
    block_t, block_f, num_warps = rect_config(n_freq)
    grid = (triton.cdiv(n_time, block_t), triton.cdiv(n_freq, block_f), b)
    with device_guard(rects.device):
        _rect_first_cover_kernel[grid](
            rects, first, n_time, n_freq, r, BLOCK_T=block_t, BLOCK_F=block_f, num_warps=num_warps
        )
    return first
