"""Fused token drop + patch embedding: kept patches straight from the log-mel to tokens.

    out[b, k] = W @ patch(mel[b], ids_keep[b, k]) + bias + pos[ids_keep[b, k]]      [B, K, D]

The MAE-style path materialises all N patches (patchify), gathers the K kept ones, runs a linear
layer and adds gathered positions: four passes over [B, *, D]-sized data. Here each program owns
``BLOCK_M`` kept tokens (flattened over B x K) and ``BLOCK_D`` output channels, reads the kept
patches' bins from the mel with strided loads (patch ``n = t * F_p + f`` starts at frame
``t * pt``, bin ``f * pf``; its values are flattened time-major, the order of a conv kernel's
weights), multiplies by the weight with ``tl.dot`` in K-chunks of ``BLOCK_P`` patch values
(fp32 accumulator), adds bias and the position row of each token, and stores once. Dropped
patches are never read.

Backward (kernels in ``patch_embed_bwd.py``): gradients for the weight and bias always, for the
mel only when it requires grad (it normally does not: it comes out of the front end); positions
get none (fixed sin-cos tables). The forward and backward are torch library ops registered here,
beside the kernels, and tied by ``register_autograd``: ``triton_op`` when compiled, so
``torch.compile`` traces into the launches and Inductor sees the kernels; opaque ``custom_op``
with a fake implementation under the interpreter (``kernels._utils.kernel_op``).

Precision: operands are cast to ``compute_dtype`` (the autocast dtype under autocast, else the
weight's) right before ``tl.dot``; accumulation is fp32; the output takes the positions' dtype
(the parameters' dtype), as ``linear(...) + pos`` would under autocast. With fp32 operands the dot
follows ``torch.backends.cuda.matmul.allow_tf32`` (ieee by default, like torch's linear).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._utils import (
    INTERPRETED,
    TL_DTYPES,
    cast_rne,
    check_same_device,
    device_guard,
    dot_rounded,
    embed_blocks,
    embed_launch_args,
    fake_for,
    ids_or,
    kept_tokens,
    kernel_op,
    launch,
    load_tile,
    patch_bins,
    require_runnable,
)
from .patch_embed_bwd import embed_bwd_mel_op, embed_bwd_weight_op

__all__ = ["INTERPRETED", "embed_kept_patches"]


@triton.jit(do_not_specialize=["n_tokens", "n_keep"])
def _embed_fwd_kernel(
    mel_ptr,  # [B, T, F] float, strides (stride_mb, stride_mt, stride_mf)
    ids_ptr,  # [B, K] int64 kept grid indices, contiguous (HAS_IDS)
    w_ptr,  # [D, P] weight, strides (stride_wd, stride_wp)
    bias_ptr,  # [D] (HAS_BIAS)
    pos_ptr,  # [N, D] positions of the full grid, contiguous
    out_ptr,  # [B, K, D] contiguous, pos dtype
    n_tokens,  # M = B * K
    n_keep,  # K
    f_patches,  # F_p
    dim,  # D
    stride_mb,
    stride_mt,
    stride_mf,
    stride_wd,
    stride_wp,
    PT: tl.constexpr,
    PF: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    P: tl.constexpr = PT * PF
    m, m_ok, base, n = kept_tokens(
        mel_ptr, stride_mb, stride_mt, stride_mf, ids_ptr, tl.program_id(0) * BLOCK_M,
        n_tokens, n_keep, f_patches, PT, PF, HAS_IDS, BLOCK_M,
    )  # fmt: skip
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)  # patch value index i_t * PF + i_f
        p_ok = p < P
        bins = patch_bins(p, stride_mt, stride_mf, PF)  # [BLOCK_P]
        a = tl.load(base[:, None] + bins[None, :], mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        w = load_tile(w_ptr, p, d, stride_wp, stride_wd, p_ok, d_ok)  # [BLOCK_P, BLOCK_D] = W^T
        acc = dot_rounded(a, w, acc, COMPUTE, PRECISION, EMULATE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    ok = m_ok[:, None] & d_ok[None, :]
    acc += tl.load(pos_ptr + n[:, None] * dim + d[None, :], mask=ok, other=0.0).to(tl.float32)
    out = out_ptr + m[:, None].to(tl.int64) * dim + d[None, :]
    tl.store(out, cast_rne(acc, out_ptr.dtype.element_ty, EMULATE), mask=ok)


# ---- torch library ops and autograd ----------------------------------------------------------------


@kernel_op("fastspec::embed_kept_patches")
def _embed_op(
    mel: Tensor,
    ids_keep: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    pos: Tensor,
    pt: int,
    pf: int,
    compute_dtype: torch.dtype,
) -> Tensor:
    """The forward launch: [B, T, F] -> [B, K, D] in ``pos``'s dtype (no autograd of its own);
    validates at the boundary (shapes, dtype of the indices, devices)."""
    if mel.dim() != 3 or mel.shape[1] % pt or mel.shape[2] % pf:
        raise ValueError(
            f"mel must be [B, T, F] with T a multiple of {pt} and F of {pf}, "
            f"got shape {tuple(mel.shape)}"
        )
    b = mel.shape[0]
    t_p, f_p = mel.shape[1] // pt, mel.shape[2] // pf
    n = t_p * f_p
    if weight.dim() != 2 or weight.shape[1] != pt * pf:
        raise ValueError(f"weight must be [D, {pt * pf}], got shape {tuple(weight.shape)}")
    dim = weight.shape[0]
    if bias is not None and bias.shape != (dim,):
        raise ValueError(f"bias must be [{dim}], got shape {tuple(bias.shape)}")
    if pos.shape != (n, dim):
        raise ValueError(f"pos must be [N, D] = [{n}, {dim}], got shape {tuple(pos.shape)}")
    if ids_keep is None:
        k = n
    else:
        if ids_keep.dim() != 2 or ids_keep.shape[0] != b or ids_keep.dtype != torch.int64:
            raise ValueError(
                f"ids_keep must be int64 [B={b}, K], got {ids_keep.dtype} {tuple(ids_keep.shape)}"
            )
        k = ids_keep.shape[1]
    require_runnable(mel.device, "patch-embed kernels", "patch_embed")
    check_same_device(mel.device, ids_keep=ids_keep, weight=weight, bias=bias, pos=pos)
    pos = pos.contiguous()
    out = torch.empty(b, k, dim, dtype=pos.dtype, device=mel.device)
    if out.numel() == 0:
        return out
    blocks = embed_blocks(dim, weight.shape[1])
    grid = (triton.cdiv(b * k, blocks[0]), triton.cdiv(dim, blocks[1]))
    with device_guard(mel.device):
        launch(_embed_fwd_kernel)[grid](
            mel, ids_or(ids_keep, pos), weight, bias if bias is not None else pos, pos,
            out, b * k, k, f_p, dim, *mel.stride(), *weight.stride(),
            HAS_BIAS=bias is not None,
            **embed_launch_args(ids_keep, (pt, pf), compute_dtype, blocks),
        )  # fmt: skip
    return out


@fake_for(_embed_op)
def _(mel, ids_keep, weight, bias, pos, pt, pf, compute_dtype):
    k = ids_keep.shape[1] if ids_keep is not None else pos.shape[0]
    return mel.new_empty(mel.shape[0], k, weight.shape[0], dtype=pos.dtype)


def _setup_context(ctx, inputs, output):
    mel, ids_keep, weight, bias, pos, pt, pf, compute_dtype = inputs
    ctx.save_for_backward(mel, ids_keep, weight)
    ctx.patch = (pt, pf)
    ctx.compute_dtype = compute_dtype
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx, grad):
    mel, ids_keep, weight = ctx.saved_tensors
    pt, pf = ctx.patch
    need_mel, _, need_w, need_b = ctx.needs_input_grad[:4]
    grad_mel = grad_w = grad_b = None
    if need_w or need_b:
        dw, db = embed_bwd_weight_op(
            grad, mel, ids_keep, pt, pf, weight.shape[0], ctx.has_bias and need_b,
            ctx.compute_dtype,
        )  # fmt: skip
        grad_w = dw.to(weight.dtype) if need_w else None
        grad_b = db.to(ctx.bias_dtype) if need_b else None
    if need_mel:
        grad_mel = embed_bwd_mel_op(grad, ids_keep, weight, mel, pt, pf, ctx.compute_dtype)
    return grad_mel, None, grad_w, grad_b, None, None, None, None


_embed_op.register_autograd(_backward, setup_context=_setup_context)


def embed_kept_patches(
    mel: Tensor,
    ids_keep: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    pos: Tensor,
    patch_size: tuple[int, int],
) -> Tensor:
    """Functional entry point with autograd: ``[B, T, F] -> [B, K, D]``.

    Args:
        mel: [B, T, F] log-mel (any float dtype, any strides), T and F multiples of the patch.
        ids_keep: [B, K] integer kept grid indices (``Mask.ids_keep``), or None for all N.
        weight: [D, pt * pf] patch projection (``nn.Linear.weight``); bias: [D] or None.
        pos: [N, D] positions of the full grid; receives no gradient.
        patch_size: (pt, pf).

    Under autocast the matmul runs in the autocast dtype; the output has ``pos``'s dtype.
    """
    if pos.requires_grad and torch.is_grad_enabled():
        raise ValueError("embed_kept_patches: pos gets no gradient here; pass a detached table")
    device_type = mel.device.type
    compute_dtype = weight.dtype
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    if compute_dtype not in TL_DTYPES:
        raise ValueError(f"embed_kept_patches computes in fp32/fp16/bf16, not {compute_dtype}")
    if ids_keep is not None:  # the kernel reads int64; like the reference, take any integers
        ids_keep = ids_keep.long()
    return _embed_op(mel, ids_keep, weight, bias, pos, patch_size[0], patch_size[1], compute_dtype)
