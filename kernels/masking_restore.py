"""Token restore for MAE-style decoders: kept tokens back on the grid, a mask token elsewhere.

    out[b, n] = x_kept[b, ids_restore[b, n]]   if ids_restore[b, n] < K
              = mask_token                     otherwise
    (+ pos[n] when positions are given)                                            [B, N, D]

The torch reference concatenates ``[x_kept, mask_token x (N - K)]`` and gathers with
``ids_restore``: it writes and rereads an [B, N, D] intermediate, then adds positions in a third
pass. One kernel reads each kept row once, broadcasts the mask token from registers and adds the
position row before its single store.

Backward: ``ids_restore`` restricted to kept tokens is a bijection onto ``0..K-1``, so
``grad_x_kept[b, slot] = grad[b, n]`` is a plain store per token (no atomics), and the mask
token's gradient is the sum of ``grad`` over masked tokens: per-program partial sums in fp32,
folded by one torch ``sum`` (deterministic). Positions get no gradient (fixed tables).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._utils import (
    INTERPRETED,
    cast_rne,
    check_same_device,
    device_guard,
    fake_for,
    kernel_op,
    launch,
    require_runnable,
)

__all__ = ["INTERPRETED", "restore_tokens", "restore_tokens_bwd", "restore_tokens_fwd"]


@triton.jit(do_not_specialize=["n_rows", "n_keep"])
def _restore_fwd_kernel(
    x_ptr,  # [B, K, D] kept tokens, contiguous
    ids_restore_ptr,  # [B, N] int64, contiguous
    token_ptr,  # [D] mask token
    pos_ptr,  # [N, D] positions, contiguous (HAS_POS)
    out_ptr,  # [B, N, D] contiguous
    n_rows,  # B * N
    n_tokens,  # N
    n_keep,  # K
    dim,  # D
    HAS_POS: tl.constexpr,
    EMULATE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flattened b * N + n
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < n_rows
    d_ok = d < dim
    slot = tl.load(ids_restore_ptr + r, mask=r_ok, other=0)  # [BLOCK_R] int64
    kept = slot < n_keep
    b = (r // n_tokens).to(tl.int64)
    src = x_ptr + (b * n_keep + slot)[:, None] * dim + d[None, :]
    x = tl.load(src, mask=(r_ok & kept)[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    token = tl.load(token_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    # the mask token is rounded to x's dtype first, as the reference's cast does
    token = cast_rne(token, x_ptr.dtype.element_ty, EMULATE).to(tl.float32)
    y = tl.where(kept[:, None], x, token[None, :])
    if HAS_POS:
        n = r % n_tokens
        ok = r_ok[:, None] & d_ok[None, :]
        # the reference rounds the restored token to x's dtype before adding positions
        y = cast_rne(y, x_ptr.dtype.element_ty, EMULATE).to(tl.float32)
        y += tl.load(pos_ptr + n[:, None] * dim + d[None, :], mask=ok, other=0.0).to(tl.float32)
    out = out_ptr + r[:, None].to(tl.int64) * dim + d[None, :]
    tl.store(
        out, cast_rne(y, out_ptr.dtype.element_ty, EMULATE), mask=r_ok[:, None] & d_ok[None, :]
    )


@triton.jit(do_not_specialize=["n_rows", "n_keep"])
def _restore_bwd_kernel(
    grad_ptr,  # [B, N, D] gradient of the output, contiguous
    ids_restore_ptr,  # [B, N] int64, contiguous
    dx_ptr,  # [B, K, D] gradient of the kept tokens, contiguous, grad's dtype
    dtoken_ptr,  # [ROW_BLOCKS, D] fp32 partial mask-token gradients
    n_rows,  # B * N
    n_tokens,  # N
    n_keep,  # K
    dim,  # D
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_r = tl.program_id(0)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < n_rows
    d_ok = d < dim
    slot = tl.load(ids_restore_ptr + r, mask=r_ok, other=0)
    kept = slot < n_keep
    g = tl.load(
        grad_ptr + r[:, None].to(tl.int64) * dim + d[None, :],
        mask=r_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    b = (r // n_tokens).to(tl.int64)
    # each kept slot of a row is hit by exactly one token: a plain store, no atomics
    dst = dx_ptr + (b * n_keep + slot)[:, None] * dim + d[None, :]
    tl.store(dst, g.to(dx_ptr.dtype.element_ty), mask=(r_ok & kept)[:, None] & d_ok[None, :])
    masked_sum = tl.sum(tl.where((r_ok & ~kept)[:, None], g.to(tl.float32), 0.0), 0)
    tl.store(dtoken_ptr + pid_r * dim + d, masked_sum, mask=d_ok)


def _blocks(dim: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D) for 4 warps. Memory-bound copies want many warps per SM: per ptxas for
    sm_90, 16 x 128 tiles take 68 (forward) / 92 (backward) registers, 32 x 128 took 230 / 168.
    The interpreter prefers few large tiles."""
    if INTERPRETED:
        return 256, min(1024, triton.next_power_of_2(dim))
    return 16, min(128, triton.next_power_of_2(dim))


def _check(x_kept: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Tensor | None):
    if x_kept.dim() != 3:
        raise ValueError(f"x_kept must be [B, K, D], got shape {tuple(x_kept.shape)}")
    b, k, d = x_kept.shape
    if ids_restore.dim() != 2 or ids_restore.shape[0] != b or ids_restore.shape[1] < k:
        raise ValueError(
            f"ids_restore must be [B, N] with B = {b} and N >= K = {k}, "
            f"got shape {tuple(ids_restore.shape)}"
        )
    if ids_restore.dtype != torch.int64:
        raise ValueError(f"ids_restore must be int64, got {ids_restore.dtype}")
    n = ids_restore.shape[1]
    if mask_token.numel() != d:
        raise ValueError(f"mask_token must have D = {d} elements, got {tuple(mask_token.shape)}")
    if pos is not None and pos.shape != (n, d):
        raise ValueError(f"pos must be [N, D] = [{n}, {d}], got shape {tuple(pos.shape)}")
    require_runnable(x_kept.device, "restore kernels", "masking_restore")
    check_same_device(x_kept.device, ids_restore=ids_restore, mask_token=mask_token, pos=pos)
    return b, k, n, d


def restore_tokens_fwd(
    x_kept: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Tensor | None = None
) -> Tensor:
    """Launch the forward kernel: [B, K, D] -> [B, N, D] (no autograd).

    The output dtype is ``x_kept``'s, promoted with ``pos``'s when positions are added.
    """
    b, k, n, d = _check(x_kept, ids_restore, mask_token, pos)
    out_dtype = x_kept.dtype if pos is None else torch.promote_types(x_kept.dtype, pos.dtype)
    out = torch.empty(b, n, d, dtype=out_dtype, device=x_kept.device)
    if out.numel() == 0:
        return out
    x_kept = x_kept.contiguous()
    ids_restore = ids_restore.contiguous()
    pos_arg = pos.contiguous() if pos is not None else out
    block_r, block_d = _blocks(d)
    grid = (triton.cdiv(b * n, block_r), triton.cdiv(d, block_d))
    with device_guard(x_kept.device):
        launch(_restore_fwd_kernel)[grid](
            x_kept, ids_restore, mask_token.reshape(d), pos_arg, out, b * n, n, k, d,
            HAS_POS=pos is not None, EMULATE=INTERPRETED, BLOCK_R=block_r, BLOCK_D=block_d,
            num_warps=4,
        )  # fmt: skip
    return out


def restore_tokens_bwd(grad: Tensor, ids_restore: Tensor, n_keep: int) -> tuple[Tensor, Tensor]:
    """``(grad_x_kept [B, K, D] in grad's dtype, grad_mask_token [D] fp32)``."""
    b, n, d = grad.shape
    grad = grad.contiguous()
    block_r, block_d = _blocks(d)
    row_blocks = triton.cdiv(b * n, block_r)
    dx = torch.empty(b, n_keep, d, dtype=grad.dtype, device=grad.device)
    dtoken = torch.empty(row_blocks, d, dtype=torch.float32, device=grad.device)
    if b * n == 0:
        return dx, dtoken.sum(0)
    with device_guard(grad.device):
        launch(_restore_bwd_kernel)[(row_blocks, triton.cdiv(d, block_d))](
            grad, ids_restore.contiguous(), dx, dtoken, b * n, n, n_keep, d,
            BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return dx, dtoken.sum(0)


@kernel_op("fastspec::restore_tokens")
def _restore_op(
    x_kept: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Tensor | None
) -> Tensor:
    return restore_tokens_fwd(x_kept, ids_restore, mask_token, pos)


@fake_for(_restore_op)
def _(x_kept, ids_restore, mask_token, pos):
    out_dtype = x_kept.dtype if pos is None else torch.promote_types(x_kept.dtype, pos.dtype)
    b, _, d = x_kept.shape
    return x_kept.new_empty(b, ids_restore.shape[1], d, dtype=out_dtype)


@kernel_op("fastspec::restore_tokens_bwd")
def _restore_bwd_op(grad: Tensor, ids_restore: Tensor, n_keep: int) -> tuple[Tensor, Tensor]:
    return restore_tokens_bwd(grad, ids_restore, n_keep)


@fake_for(_restore_bwd_op)
def _(grad, ids_restore, n_keep):
    b, _, d = grad.shape
    return grad.new_empty(b, n_keep, d), grad.new_empty(d, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x_kept, ids_restore, mask_token, pos = inputs
    ctx.save_for_backward(ids_restore)
    ctx.n_keep = x_kept.shape[1]
    ctx.x_dtype = x_kept.dtype
    ctx.token_shape = mask_token.shape
    ctx.token_dtype = mask_token.dtype


def _backward(ctx, grad):
    (ids_restore,) = ctx.saved_tensors
    dx, dtoken = _restore_bwd_op(grad, ids_restore, ctx.n_keep)
    dx = dx.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
    dtoken = (
        dtoken.to(ctx.token_dtype).reshape(ctx.token_shape) if ctx.needs_input_grad[2] else None
    )
    return dx, None, dtoken, None


_restore_op.register_autograd(_backward, setup_context=_setup_context)


def restore_tokens(
    x_kept: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Tensor | None = None
) -> Tensor:
    """Functional entry point with autograd: [B, K, D] -> [B, N, D].

    Args:
        x_kept: [B, K, D] kept tokens in ``ids_keep`` order.
        ids_restore: [B, N] int64 (``Mask.ids_restore``).
        mask_token: [D] fill for masked positions (gets the sum of their gradients).
        pos: [N, D] positions added to every token, or None; receives no gradient.
    """
    if pos is not None and pos.requires_grad and torch.is_grad_enabled():
        raise ValueError("restore_tokens: pos gets no gradient here; pass a detached table")
    return _restore_op(x_kept, ids_restore, mask_token, pos)
