"""What the Triton kernels of fastspec share: the interpreter flag, rounding casts and dots, the
boundary check for CPU tensors, the device guard of every launcher, and the patch geometry the
fused drop + embed forward and backward both walk.

Public names, so no kernel module reaches into another's private ones; nothing here imports a
kernel module.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "INTERPRETED",
    "TL_DTYPES",
    "cast_rne",
    "check_same_device",
    "device_guard",
    "dot_args",
    "dot_rounded",
    "embed_blocks",
    "embed_launch_args",
    "fake_for",
    "ids_or",
    "kernel_op",
    "kept_tokens",
    "launch",
    "load_tile",
    "patch_bins",
    "require_runnable",
]

# triton.jit picks the interpreter when a function is decorated, so what counts is the flag at
# import time of the kernel modules, not the environment at launch time
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def device_guard(device: torch.device | str):
    """The context every launcher enters around its kernel launch: the CUDA device of the inputs.

    Triton launches on the *current* CUDA device (and its current stream), not on the device of
    the tensors it is handed: a model on ``cuda:1`` would launch on GPU 0 and fault. On CPU (the
    interpreter) there is nothing to guard, so this is a no-op context there.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():  # (fake CUDA tensors: no device)
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def kernel_op(name: str):
    """Decorator registering a launcher as the torch library op ``name``, beside its kernel.

    Compiled kernels: :func:`torch.library.triton_op`, whose body ``torch.compile`` traces, so
    Inductor sees the Triton launches themselves (made through :func:`launch`) rather than an
    opaque call. Interpreted kernels (the CPU tests): :func:`torch.library.custom_op`, opaque,
    with the fake implementation given by :func:`fake_for`, because ``wrap_triton`` cannot
    trace an interpreted kernel (it reads the data pointers of fake tensors).
    """
    if INTERPRETED:
        return torch.library.custom_op(name, mutates_args=())
    return torch.library.triton_op(name, mutates_args=())


def launch(kernel):
    """``kernel`` as a launcher inside a :func:`kernel_op` calls it: through ``wrap_triton``
    when compiled (traceable by torch.compile), as is under the interpreter."""
    return kernel if INTERPRETED else torch.library.wrap_triton(kernel)


def fake_for(op):
    """Decorator: the fake (meta) implementation of a :func:`kernel_op` ``op`` where it is opaque
    (interpreted); a triton_op traces its own body for shapes instead."""

    def register(fake):
        if INTERPRETED:
            op.register_fake(fake)
        return fake

    return register


def require_runnable(device: torch.device, what: str, module: str) -> None:
    """Raise when a CPU tensor reaches a Triton kernel outside the interpreter."""
    if device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            f"the Triton {what} run on CPU tensors only under TRITON_INTERPRET=1 "
            f"(set before fastspec.kernels.{module} is imported)"
        )


def check_same_device(device: torch.device, **tensors: Tensor | None) -> None:
    """ValueError naming the first tensor (by keyword) that is not on ``device``."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device}, expected {device}")


@triton.jit
def cast_rne(x, DTYPE: tl.constexpr, EMULATE: tl.constexpr):
    """``x.to(DTYPE)``, rounding to nearest even. EMULATE (interpreter only): Triton's interpreter
    truncates fp32 -> bf16 where GPUs and torch round, so the rounding is done on the bits."""
    if EMULATE and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True).to(DTYPE)
    return x.to(DTYPE)


@triton.jit
def dot_rounded(a, b, acc, COMPUTE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """``acc + a @ b`` with operands rounded to COMPUTE and an fp32 accumulator. EMULATE
    (interpreter only): its bf16 ``tl.dot`` returns garbage, so bf16-rounded operands are
    multiplied in fp32; bf16 x bf16 products are exact in fp32, so only the summation order can
    differ from a tensor-core dot."""
    if EMULATE and COMPUTE == tl.bfloat16:
        a16 = cast_rne(a, COMPUTE, EMULATE).to(tl.float32)
        b16 = cast_rne(b, COMPUTE, EMULATE).to(tl.float32)
        return tl.dot(a16, b16, acc, input_precision="ieee")
    return tl.dot(a.to(COMPUTE), b.to(COMPUTE), acc, input_precision=PRECISION)


def dot_args(compute_dtype: torch.dtype) -> dict:
    """The constexprs of :func:`dot_rounded` for a compute dtype."""
    # fp32 operands follow torch's own matmul setting, so the fused path matches nn.Linear
    tf32 = compute_dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return {
        "COMPUTE": TL_DTYPES[compute_dtype],
        "PRECISION": "tf32" if tf32 else "ieee",
        "EMULATE": INTERPRETED,
    }


@triton.jit
def load_tile(ptr, rows, cols, stride_rows, stride_cols, rows_ok, cols_ok):
    """The [len(rows), len(cols)] tile ``ptr[rows * stride_rows + cols * stride_cols]``, zeros
    where a row or column is out of range (pass int64 ``rows`` when the offsets can pass 2^31)."""
    offsets = rows[:, None] * stride_rows + cols[None, :] * stride_cols
    return tl.load(ptr + offsets, mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)


# ---- patch geometry of the fused drop + embed (forward and backward) ------------------------------


@triton.jit
def kept_tokens(
    mel_ptr,  # [B, T, F] base pointer, strides (stride_mb, stride_mt, stride_mf)
    stride_mb,
    stride_mt,
    stride_mf,
    ids_ptr,  # [B, K] int64 kept grid indices, contiguous
    m0,  # first flattened token index b * K + k of the block
    n_tokens,  # M = B * K
    n_keep,  # K
    f_patches,  # F_p
    PT: tl.constexpr,
    PF: tl.constexpr,
    HAS_IDS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """The BLOCK_M kept tokens from ``m0`` on: ``(m, m_ok, base, n)``, all [BLOCK_M]: flattened
    token index, in range, pointer to bin (0, 0) of the token's patch, its grid index."""
    m = m0 + tl.arange(0, BLOCK_M)
    m_ok = m < n_tokens
    b = m // n_keep
    if HAS_IDS:
        n = tl.load(ids_ptr + m, mask=m_ok, other=0)
    else:
        n = (m % n_keep).to(tl.int64)
    t = n // f_patches
    f = n - t * f_patches
    base = mel_ptr + b.to(tl.int64) * stride_mb + (t * PT) * stride_mt + (f * PF) * stride_mf
    return m, m_ok, base, n


@triton.jit
def patch_bins(p, stride_mt, stride_mf, PF: tl.constexpr):
    """Offsets inside a patch of its values ``p = i_t * PF + i_f`` (time-major, as a conv
    kernel's weights are flattened), from bin (0, 0)."""
    return (p // PF) * stride_mt + (p % PF) * stride_mf


def embed_launch_args(
    ids_keep: Tensor | None,
    patch_size: tuple[int, int],
    compute_dtype: torch.dtype,
    blocks: tuple[int, int, int, int],
) -> dict:
    """The keyword arguments every drop + embed launch shares: the patch, whether indices are
    given, the dot's constexprs (:func:`dot_args`) and the tiles of :func:`embed_blocks`."""
    block_m, block_d, block_p, num_warps = blocks
    return {
        "PT": patch_size[0],
        "PF": patch_size[1],
        "HAS_IDS": ids_keep is not None,
        **dot_args(compute_dtype),
        "BLOCK_M": block_m,
        "BLOCK_D": block_d,
        "BLOCK_P": block_p,
        "num_warps": num_warps,
    }


def ids_or(ids_keep: Tensor | None, stand_in: Tensor) -> Tensor:
    """The kept indices as the kernels read them (contiguous), or ``stand_in`` for the pointer
    a kernel never reads when ``HAS_IDS`` is False."""
    return ids_keep.contiguous() if ids_keep is not None else stand_in


def embed_blocks(dim: int, patch_dim: int, weight_grad: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_D, BLOCK_P, num_warps) of the drop + embed kernels; tl.dot needs every
    side >= 16.

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
