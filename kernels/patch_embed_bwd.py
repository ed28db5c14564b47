"""Backward of the fused drop + embed (``patch_embed.py``): weight, bias and mel gradients.

- ``grad_weight [D, P] = sum_m grad[m]^T patch[m]`` and ``grad_bias = sum_m grad[m]`` over the
  M = B x K kept tokens: each program owns one [BLOCK_D, BLOCK_P] tile of the weight and reduces
  one slice of the tokens (the token axis is split so a ViT-B's 12 x 8 tiles still fill a GPU),
  re-reading the kept patches straight from the mel as the forward does. Partial sums go to an
  fp32 [SPLIT, D, P] buffer that one torch ``sum`` folds in a fixed order: deterministic, unlike
  float atomics.
- ``grad_mel`` (only when the mel requires grad): ``grad @ W`` per kept token, stored back to its
  patch's bins. Kept patches of a row are distinct, so plain stores suffice; dropped patches get
  zeros (the buffer starts zeroed). Same cost as the forward.

Operands are rounded to the forward's compute dtype before ``tl.dot`` and accumulated in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._utils import (
    INTERPRETED,
    cast_rne,
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
)

__all__ = [
    "embed_bwd_mel_op",
    "embed_bwd_weight_op",
    "embed_kept_patches_bwd_mel",
    "embed_kept_patches_bwd_weight",
]


@triton.jit(do_not_specialize=["n_tokens", "n_keep", "tokens_per_split"])
def _embed_bwd_weight_kernel(
    grad_ptr,  # [B, K, D] contiguous gradient of the output
    mel_ptr,  # [B, T, F] float, strides (stride_mb, stride_mt, stride_mf)
    ids_ptr,  # [B, K] int64, contiguous (HAS_IDS)
    dw_ptr,  # [SPLIT, D, P] fp32 partial weight gradients, contiguous
    db_ptr,  # [SPLIT, D] fp32 partial bias gradients, contiguous (HAS_BIAS)
    n_tokens,  # M = B * K
    n_keep,  # K
    f_patches,  # F_p
    dim,  # D
    tokens_per_split,  # tokens each split reduces, a multiple of BLOCK_M
    stride_mb,
    stride_mt,
    stride_mf,
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
    pid_d = tl.program_id(0)
    pid_p = tl.program_id(1)
    split = tl.program_id(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    d_ok = d < dim
    p_ok = p < P
    bins = patch_bins(p, stride_mt, stride_mf, PF)  # [BLOCK_P]
    acc = tl.zeros([BLOCK_D, BLOCK_P], tl.float32)
    acc_b = tl.zeros([BLOCK_D], tl.float32)
    start = split * tokens_per_split
    for m0 in range(start, start + tokens_per_split, BLOCK_M):
        m, m_ok, base, n = kept_tokens(
            mel_ptr, stride_mb, stride_mt, stride_mf, ids_ptr, m0, n_tokens, n_keep, f_patches,
            PT, PF, HAS_IDS, BLOCK_M,
        )  # fmt: skip
        a = tl.load(base[:, None] + bins[None, :], mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        g_t = load_tile(
            grad_ptr, d, m.to(tl.int64), 1, dim, d_ok, m_ok
        )  # [BLOCK_D, BLOCK_M] = grad^T
        acc = dot_rounded(g_t, a, acc, COMPUTE, PRECISION, EMULATE)
        if HAS_BIAS:
            acc_b += tl.sum(g_t.to(tl.float32), 1)
    dw = dw_ptr + split.to(tl.int64) * dim * P + d[:, None] * P + p[None, :]
    tl.store(dw, acc, mask=d_ok[:, None] & p_ok[None, :])
    if HAS_BIAS:
        # every P-tile sees the same tokens; only the first one writes the bias partial
        if pid_p == 0:
            tl.store(db_ptr + split * dim + d, acc_b, mask=d_ok)


@triton.jit(do_not_specialize=["n_tokens", "n_keep"])
def _embed_bwd_mel_kernel(
    grad_ptr,  # [B, K, D] contiguous gradient of the output
    ids_ptr,  # [B, K] int64, contiguous (HAS_IDS)
    w_ptr,  # [D, P] weight, strides (stride_wd, stride_wp)
    dmel_ptr,  # [B, T, F] zero-initialised, strides (stride_mb, stride_mt, stride_mf)
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
    COMPUTE: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    P: tl.constexpr = PT * PF
    # the same token block and patch addresses as the forward, in the mel gradient
    m, m_ok, base, n = kept_tokens(
        dmel_ptr, stride_mb, stride_mt, stride_mf, ids_ptr, tl.program_id(0) * BLOCK_M,
        n_tokens, n_keep, f_patches, PT, PF, HAS_IDS, BLOCK_M,
    )  # fmt: skip
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    acc = tl.zeros([BLOCK_M, BLOCK_P], tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < dim
        g = load_tile(grad_ptr, m.to(tl.int64), d, dim, 1, m_ok, d_ok)  # [BLOCK_M, BLOCK_D]
        w = load_tile(w_ptr, d, p, stride_wd, stride_wp, d_ok, p_ok)  # [BLOCK_D, BLOCK_P]
        acc = dot_rounded(g, w, acc, COMPUTE, PRECISION, EMULATE)
    bins = patch_bins(p, stride_mt, stride_mf, PF)
    # kept patches of a row are distinct, so no two programs write the same bin
    tl.store(
        base[:, None] + bins[None, :],
        cast_rne(acc, dmel_ptr.dtype.element_ty, EMULATE),
        mask=m_ok[:, None] & p_ok[None, :],
    )


# ---- launchers ------------------------------------------------------------------------------------


def embed_kept_patches_bwd_weight(
    grad: Tensor,
    mel: Tensor,
    ids_keep: Tensor | None,
    patch_size: tuple[int, int],
    dim: int,
    with_bias: bool,
    compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """fp32 ``(grad_weight [D, P], grad_bias [D])`` (an empty bias gradient when not asked)."""
    b, k = grad.shape[0], grad.shape[1]
    patch_dim = patch_size[0] * patch_size[1]
    f_p = mel.shape[2] // patch_size[1]
    grad = grad.contiguous()
    blocks = embed_blocks(dim, patch_dim, weight_grad=True)
    block_m, block_d, block_p = blocks[:3]
    n_tokens = b * k
    tiles = triton.cdiv(dim, block_d) * triton.cdiv(patch_dim, block_p)
    # enough programs to fill a GPU (~4 per SM on 132 SMs), each reducing whole BLOCK_M chunks
    splits = max(1, min(triton.cdiv(n_tokens, block_m), 1 if INTERPRETED else 512 // tiles))
    per_split = triton.cdiv(triton.cdiv(n_tokens, splits), block_m) * block_m
    splits = max(1, triton.cdiv(n_tokens, per_split))
    dw = torch.empty(splits, dim, patch_dim, dtype=torch.float32, device=grad.device)
    db = torch.empty(splits, dim if with_bias else 0, dtype=torch.float32, device=grad.device)
    if n_tokens == 0:
        return dw.zero_().sum(0), db.zero_().sum(0)
    grid = (triton.cdiv(dim, block_d), triton.cdiv(patch_dim, block_p), splits)
    with device_guard(grad.device):
        launch(_embed_bwd_weight_kernel)[grid](
            grad, mel, ids_or(ids_keep, grad), dw, db,
            n_tokens, k, f_p, dim, per_split, *mel.stride(), HAS_BIAS=with_bias,
            **embed_launch_args(ids_keep, patch_size, compute_dtype, blocks),
        )  # fmt: skip
    # a fixed-order sum over the split partials: deterministic, unlike float atomics
    return dw.sum(0), db.sum(0)


def embed_kept_patches_bwd_mel(
    grad: Tensor,
    ids_keep: Tensor | None,
    weight: Tensor,
    mel_shape: tuple[int, int, int],
    mel_dtype: torch.dtype,
    patch_size: tuple[int, int],
    compute_dtype: torch.dtype,
) -> Tensor:
    """``grad_mel`` [B, T, F]: each kept patch gets ``grad @ W``, dropped bins get 0."""
    b, k, dim = grad.shape
    patch_dim = patch_size[0] * patch_size[1]
    f_p = mel_shape[2] // patch_size[1]
    grad = grad.contiguous()
    dmel = torch.zeros(mel_shape, dtype=mel_dtype, device=grad.device)
    if b * k == 0:
        return dmel
    blocks = embed_blocks(dim, patch_dim)
    grid = (triton.cdiv(b * k, blocks[0]), triton.cdiv(patch_dim, blocks[2]))
    with device_guard(grad.device):
        launch(_embed_bwd_mel_kernel)[grid](
            grad, ids_or(ids_keep, grad), weight, dmel,
            b * k, k, f_p, dim, *dmel.stride(), *weight.stride(),
            **embed_launch_args(ids_keep, patch_size, compute_dtype, blocks),
        )  # fmt: skip
    return dmel


# ---- torch library ops ------------------------------------------------------------------------------


@kernel_op("fastspec::embed_kept_patches_bwd_weight")
def embed_bwd_weight_op(
    grad: Tensor,
    mel: Tensor,
    ids_keep: Tensor | None,
    pt: int,
    pf: int,
    dim: int,
    with_bias: bool,
    compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    return embed_kept_patches_bwd_weight(
        grad, mel, ids_keep, (pt, pf), dim, with_bias, compute_dtype
    )


@fake_for(embed_bwd_weight_op)
def _(grad, mel, ids_keep, pt, pf, dim, with_bias, compute_dtype):
    dw = grad.new_empty(dim, pt * pf, dtype=torch.float32)
    return dw, grad.new_empty(dim if with_bias else 0, dtype=torch.float32)


@kernel_op("fastspec::embed_kept_patches_bwd_mel")
def embed_bwd_mel_op(
    grad: Tensor,
    ids_keep: Tensor | None,
    weight: Tensor,
    mel_like: Tensor,
    pt: int,
    pf: int,
    compute_dtype: torch.dtype,
) -> Tensor:
    return embed_kept_patches_bwd_mel(
        grad, ids_keep, weight, tuple(mel_like.shape), mel_like.dtype, (pt, pf), compute_dtype
    )


@fake_for(embed_bwd_mel_op)
def _(grad, ids_keep, weight, mel_like, pt, pf, compute_dtype):
    return torch.empty_like(mel_like, memory_format=torch.contiguous_format)
