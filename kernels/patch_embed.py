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
get none (fixed sin-cos tables). The forward and backward are torch library ops with fake (meta)
implementations, tied by ``register_autograd``, so ``torch.compile`` sees opaque ops.

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

__all__ = ["INTERPRETED", "embed_kept_patches", "embed_kept_patches_fwd"]

INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _cast(x, DTYPE: tl.constexpr, EMULATE: tl.constexpr):
    """``x.to(DTYPE)``, rounding to nearest even. EMULATE (interpreter only): Triton's interpreter
    truncates fp32 -> bf16 where GPUs and torch round, so the rounding is done on the bits."""
    if EMULATE and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True).to(DTYPE)
    return x.to(DTYPE)


@triton.jit
def _dot(a, b, acc, COMPUTE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """``acc + a @ b`` with operands rounded to COMPUTE and an fp32 accumulator. EMULATE
    (interpreter only): its bf16 ``tl.dot`` returns garbage, so bf16-rounded operands are
    multiplied in fp32; bf16 x bf16 products are exact in fp32, so only the summation order can
    differ from a tensor-core dot."""
    if EMULATE and COMPUTE == tl.bfloat16:
        a16 = _cast(a, COMPUTE, EMULATE).to(tl.float32)
        b16 = _cast(b, COMPUTE, EMULATE).to(tl.float32)
        return tl.dot(a16, b16, acc, input_precision="ieee")
    return tl.dot(a.to(COMPUTE), b.to(COMPUTE), acc, input_precision=PRECISION)


@triton.jit
def _patch_addresses(
    mel_ptr,  # [B, T, F] base pointer
    ids_ptr,  # [B, K] int64 kept grid indices, contiguous
    m,  # [BLOCK_M] flattened token index b * K + k
    n_keep,  # K
    f_patches,  # F_p
    stride_mb,
    stride_mt,
    stride_mf,
    m_ok,  # [BLOCK_M] bool
    PT: tl.constexpr,
    PF: tl.constexpr,
    HAS_IDS: tl.constexpr,
):
    """(pointer to bin (0, 0) of each token's patch [BLOCK_M], grid index n [BLOCK_M])."""
    b = m // n_keep
    if HAS_IDS:
        n = tl.load(ids_ptr + m, mask=m_ok, other=0)
    else:
        n = (m % n_keep).to(tl.int64)
    t = n // f_patches
    f = n - t * f_patches
    base = mel_ptr + b.to(tl.int64) * stride_mb + (t * PT) * stride_mt + (f * PF) * stride_mf
    return base, n


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
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m_ok = m < n_tokens
    d_ok = d < dim
    base, n = _patch_addresses(
        mel_ptr, ids_ptr, m, n_keep, f_patches, stride_mb, stride_mt, stride_mf, m_ok,
        PT, PF, HAS_IDS,
    )  # fmt: skip
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)  # patch value index i_t * PF + i_f
        p_ok = p < P
        bins = (p // PF) * stride_mt + (p % PF) * stride_mf  # [BLOCK_P] offset inside a patch
        a = tl.load(base[:, None] + bins[None, :], mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        w = tl.load(
            w_ptr + p[:, None] * stride_wp + d[None, :] * stride_wd,
            mask=p_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # [BLOCK_P, BLOCK_D] = W^T tile
        acc = _dot(a, w, acc, COMPUTE, PRECISION, EMULATE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    ok = m_ok[:, None] & d_ok[None, :]
    acc += tl.load(pos_ptr + n[:, None] * dim + d[None, :], mask=ok, other=0.0).to(tl.float32)
    out = out_ptr + m[:, None].to(tl.int64) * dim + d[None, :]
    tl.store(out, _cast(acc, out_ptr.dtype.element_ty, EMULATE), mask=ok)


# ---- launchers ------------------------------------------------------------------------------------


def _dot_args(compute_dtype: torch.dtype) -> dict:
    """The constexprs of ``_dot`` for a compute dtype."""
    # fp32 operands follow torch's own matmul setting, so the fused path matches nn.Linear
    tf32 = compute_dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return {
        "COMPUTE": _TL_DTYPES[compute_dtype],
        "PRECISION": "tf32" if tf32 else "ieee",
        "EMULATE": INTERPRETED,
    }


def _blocks(dim: int, patch_dim: int, weight_grad: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_D, BLOCK_P, num_warps); tl.dot needs every side >= 16.

    Chosen without a GPU to time on, from ptxas's register report for sm_90 (Triton 3.9, 16x16
    patches, fp32 and bf16): with 4 warps every 64 x 64 x 64 variant spills (the gathered
    [BLOCK_M, BLOCK_P] tile needs 64-bit addresses); 8 warps fit the forward and the mel
    gradient in 188-255 registers without spills, and the weight gradient (whose reduction
    runs over tokens) in 162-182 with a wider D tile and a narrower P tile. Autotune once a GPU
    is available.
    """
    fit_d = triton.next_power_of_2(dim)
    fit_p = triton.next_power_of_2(patch_dim)
    if INTERPRETED:
        # the interpreter's cost is per operation: few, large tiles
        return 64, max(16, min(128, fit_d)), max(16, min(256, fit_p)), 4
    if weight_grad:
        return 64, max(16, min(128, fit_d)), max(16, min(32, fit_p)), 8
    return 64, max(16, min(64, fit_d)), max(16, min(64, fit_p)), 8


def _check(
    mel: Tensor,
    ids_keep: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    pos: Tensor,
    patch_size: tuple[int, int],
) -> tuple[int, int, int, int, int]:
    """Validate at the boundary; returns (B, K, N, F_p, D)."""
    pt, pf = patch_size
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
    device = mel.device
    if device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "the Triton patch-embed kernels run on CPU tensors only under TRITON_INTERPRET=1 "
            "(set before fastspec.kernels.patch_embed is imported)"
        )
    for name, t in (("ids_keep", ids_keep), ("weight", weight), ("bias", bias), ("pos", pos)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, mel on {device}")
    return b, k, n, f_p, dim


def embed_kept_patches_fwd(
    mel: Tensor,
    ids_keep: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    pos: Tensor,
    patch_size: tuple[int, int],
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Launch the forward kernel: [B, T, F] -> [B, K, D] in ``pos``'s dtype (no autograd)."""
    b, k, _, f_p, dim = _check(mel, ids_keep, weight, bias, pos, patch_size)
    compute_dtype = compute_dtype or weight.dtype
    pos = pos.contiguous()
    ids = ids_keep.contiguous() if ids_keep is not None else None
    out = torch.empty(b, k, dim, dtype=pos.dtype, device=mel.device)
    if out.numel() == 0:
        return out
    block_m, block_d, block_p, num_warps = _blocks(dim, weight.shape[1])
    grid = (triton.cdiv(b * k, block_m), triton.cdiv(dim, block_d))
    _embed_fwd_kernel[grid](
        mel, ids if ids is not None else pos, weight, bias if bias is not None else pos, pos, out,
        b * k, k, f_p, dim,
        *mel.stride(), *weight.stride(),
        PT=patch_size[0], PF=patch_size[1], HAS_IDS=ids is not None, HAS_BIAS=bias is not None,
        **_dot_args(compute_dtype),
        BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_P=block_p, num_warps=num_warps,
    )  # fmt: skip
    return out


# ---- torch library ops and autograd ----------------------------------------------------------------


@torch.library.custom_op("fastspec::embed_kept_patches", mutates_args=())
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
    return embed_kept_patches_fwd(mel, ids_keep, weight, bias, pos, (pt, pf), compute_dtype)


@_embed_op.register_fake
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
    # imported here: patch_embed_bwd imports this module's jit helpers
    from .patch_embed_bwd import _embed_bwd_mel_op, _embed_bwd_weight_op

    mel, ids_keep, weight = ctx.saved_tensors
    pt, pf = ctx.patch
    need_mel, _, need_w, need_b = ctx.needs_input_grad[:4]
    grad_mel = grad_w = grad_b = None
    if need_w or need_b:
        dw, db = _embed_bwd_weight_op(
            grad, mel, ids_keep, pt, pf, weight.shape[0], ctx.has_bias and need_b,
            ctx.compute_dtype,
        )  # fmt: skip
        grad_w = dw.to(weight.dtype) if need_w else None
        grad_b = db.to(ctx.bias_dtype) if need_b else None
    if need_mel:
        grad_mel = _embed_bwd_mel_op(grad, ids_keep, weight, mel, pt, pf, ctx.compute_dtype)
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
        ids_keep: [B, K] int64 kept grid indices (``Mask.ids_keep``), or None for all N tokens.
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
    if compute_dtype not in _TL_DTYPES:
        raise ValueError(f"embed_kept_patches computes in fp32/fp16/bf16, not {compute_dtype}")
    return _embed_op(mel, ids_keep, weight, bias, pos, patch_size[0], patch_size[1], compute_dtype)
