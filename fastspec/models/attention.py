"""Attention backend dispatch: flash-attn or torch varlen where they can run, else torch SDPA.

The choice is a :class:`fastspec.backends.Piece` (``attention``), made in :func:`_select` and
nowhere else; ``FASTSPEC_ATTENTION`` forces it:

- ``auto`` (default), on CUDA in fp16/bf16 with a supported head dim:
  without padding, ``flash_attn.flash_attn_func`` when flash-attn is installed, else torch SDPA
  with no mask (which picks its own cuDNN / flash kernel); with a key padding mask,
  variable-length attention: ``flash_attn.flash_attn_varlen_func`` when flash-attn is installed,
  else ``torch.nn.attention.varlen.varlen_attn``, and SDPA with a mask only as the announced
  fallback. Off CUDA, SDPA (with the mask when there is one) without a word.
- ``flash``: as ``auto``, but every fallback is announced, on CPU too.
- ``sdpa``: always torch SDPA (masked when padded).

No mask at all is the fast path: callers pass ``key_padding_mask=None`` when no clip of the
batch is padded, a fact the loader knows on the host before the batch moves (:func:`any_padding`),
so deciding it costs no host-device sync.

Variable-length attention packs the valid tokens of all rows into one ``[T, H, Dh]`` sequence
with ``cu_seqlens`` (``[B + 1]`` int32, cumulative valid tokens), everything built on the device
with static shapes (``T = B * N``, the valid tokens first, then the padding), so neither packing
nor unpacking syncs with the host. The kernels read rows ``[cu[b], cu[b + 1])`` only; the padding
tail is masked out of the inputs' gradients and out of the output, so padded queries get zeros
(masked SDPA gives them an average of the valid values; no loss reads either).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fastspec.backends import BackendError, Decision, Piece, choose, decide, register

ENV_VAR = "FASTSPEC_ATTENTION"
CHOICES = ("auto", "flash", "sdpa")
_HALF = (torch.float16, torch.bfloat16)


@functools.cache
def _flash_attn():
    """The ``flash_attn`` module, or None when flash-attn is missing or fails to load."""
    try:
        import flash_attn
    except Exception:  # ImportError, or a CUDA library that fails to load on this machine
        return None
    return flash_attn


def _torch_varlen():
    """``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.9), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _decide(
    value: str,
    device_type: str,
    forced: bool,
    dtype: torch.dtype = torch.bfloat16,
    head_dim: int = 64,
    padded: bool = False,
    probe: bool = False,
) -> Decision:
    """``flash`` | ``flash_varlen`` | ``torch_varlen`` | ``sdpa`` for one call's facts."""
    sdpa = "torch SDPA with a key padding mask" if padded else "torch SDPA, no mask"
    if value == "sdpa":
        return Decision("sdpa", f"{sdpa} (asked for)")
    # fast kernels exist only on CUDA; off CUDA auto takes SDPA without a word, flash announces
    announce = value == "flash" or device_type == "cuda"
    if device_type != "cuda":
        why = f"tensors are on {device_type}, not CUDA"
    elif dtype not in _HALF:
        why = f"dtype is {dtype}, the fast kernels need float16/bfloat16 (use autocast)"
    elif head_dim % 8 or head_dim > 256:
        why = f"head dim {head_dim} is not a multiple of 8 up to 256"
    elif not padded:
        if _flash_attn() is not None:
            return Decision("flash", "flash-attn flash_attn_func (no padding)")
        return Decision(
            "sdpa",
            "flash-attn is not installed; attention uses torch SDPA without a mask "
            "(pip install 'fastspec[flash]' on a CUDA machine)",
            "attention.flash.missing" if announce else None,
        )
    elif _flash_attn() is not None:
        return Decision("flash_varlen", "flash-attn flash_attn_varlen_func (padded batch)")
    elif _torch_varlen() is not None:
        return Decision("torch_varlen", "torch.nn.attention.varlen.varlen_attn (padded batch)")
    else:
        why = "neither flash-attn nor torch varlen attention is available for a padded batch"
    key = "attention.flash." + ("padding" if padded and device_type == "cuda" else device_type)
    return Decision("sdpa", f"attention: {why}; using {sdpa}", key if announce else None)


register(Piece(name="attention", title="attention", env=ENV_VAR, choices=CHOICES, decide=_decide))


# Constant per (env, device type, dtype, head dim, padded): torch.compile evaluates it once at
# trace time and bakes the branch in, so the notices and env lookup never enter a graph.
@torch.compiler.assume_constant_result
def _select(device_type: str, dtype: torch.dtype, head_dim: int, padded: bool) -> str:
    """The one place the attention backend is chosen for a call."""
    return choose("attention", device_type, dtype=dtype, head_dim=head_dim, padded=bool(padded))


@dataclass(frozen=True)
class PackPlan:
    """Where each token of a padded ``[B, N]`` batch goes in the packed ``[B * N]`` layout.

    ``dest[i]``: packed row of flat token ``i = b * N + n``; ``src``: its inverse;
    ``cu_seqlens``: ``[B + 1]`` int32 cumulative valid tokens; ``valid``: ``[B * N]`` bool, the
    packed rows that hold valid tokens (the first ``cu_seqlens[-1]``). All on the device.
    """

    dest: Tensor
    src: Tensor
    cu_seqlens: Tensor
    valid: Tensor


def pack_plan(key_padding_mask: Tensor) -> PackPlan:
    """The packing of ``key_padding_mask`` [B, N] (True = padding), without a host sync.

    Valid tokens keep their order within a row and rows follow each other; padded tokens go
    after all valid ones. Shapes are static (``B * N``), so nothing reads a count back.
    """
    valid = ~key_padding_mask.reshape(-1)  # [B * N], row-major
    n_valid = valid.sum()  # a device scalar, never read on the host
    valid_rank = torch.cumsum(valid, 0) - 1  # packed row of each valid token
    pad_rank = torch.cumsum(~valid, 0) - 1 + n_valid  # padding after the valid tokens
    dest = torch.where(valid, valid_rank, pad_rank)
    src = torch.empty_like(dest).scatter_(0, dest, torch.arange(dest.numel(), device=dest.device))
    per_row = (~key_padding_mask).sum(1, dtype=torch.int32)
    cu_seqlens = F.pad(torch.cumsum(per_row, 0, dtype=torch.int32), (1, 0))
    packed_valid = torch.arange(dest.numel(), device=dest.device) < n_valid
    return PackPlan(dest, src, cu_seqlens, packed_valid)


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor, kernel) -> Tensor:
    """Attention of a padded batch through a variable-length ``kernel``.

    q, k, v: [B, H, N, Dh]; key_padding_mask: [B, N] bool (True = padding). ``kernel(q, k, v,
    cu_q, cu_k, max_q, max_k)`` takes packed ``[T, H, Dh]`` tensors (flash-attn's and torch's
    varlen signature) and may leave rows past ``cu[-1]`` undefined. Returns [B, H, N, Dh], zero
    at padded queries.
    """
    b, h, n, dh = q.shape
    plan = pack_plan(key_padding_mask)
    keep = plan.valid[:, None, None]

    def pack(t: Tensor) -> Tensor:
        flat = t.transpose(1, 2).reshape(b * n, h, dh)  # [B * N, H, Dh]
        # where(), not a product: the kernel's gradient for the tail rows is undefined (maybe
        # NaN), and where() sends exactly zero back to the padded tokens
        return torch.where(keep, flat.index_select(0, plan.src), 0.0)

    out = kernel(pack(q), pack(k), pack(v), plan.cu_seqlens, plan.cu_seqlens, n, n)
    out = torch.where(keep, out, 0.0)  # rows past cu[-1] were never written
    return out.index_select(0, plan.dest).view(b, n, h, dh).transpose(1, 2)


def varlen_attention_reference(q, k, v, cu_q, cu_k, max_q, max_k) -> Tensor:
    """Float64 reference of the varlen kernels' contract, for tests: sequences are
    ``[cu[i], cu[i + 1])``; rows past ``cu[-1]`` are NaN, and so is their gradient with respect to
    ``q``, as undefined as a kernel leaves both."""
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()  # host reads: a test-only reference
    pieces = []
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        qs, ks, vs = (t.double().transpose(0, 1) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))
        weights = torch.softmax(qs @ ks.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        pieces.append((weights @ vs).transpose(0, 1).to(q.dtype))
    pieces.append(q[bounds_q[-1] :] * float("nan"))  # the tail: NaN, and NaN gradients
    return torch.cat(pieces)


def _varlen_kernel(backend: str):
    if backend == "flash_varlen":
        return _flash_attn().flash_attn_varlen_func
    return _torch_varlen()


def attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Non-causal multi-head attention ``softmax(q k^T / sqrt(Dh)) v``.

    Args:
        q, k, v: [B, H, N, Dh].
        key_padding_mask: [B, N] bool, True = padding: no query attends to that key. Every row
            must keep at least one valid key. None (nothing padded) takes the fastest kernel.

    Returns:
        [B, H, N, Dh] in the dtype of ``q``.
    """
    if q.dim() != 4:
        raise ValueError(f"attention: q, k, v must be [B, H, N, Dh], got q {tuple(q.shape)}")
    padded = key_padding_mask is not None
    if padded and tuple(key_padding_mask.shape) != (q.shape[0], k.shape[2]):
        raise ValueError(
            f"attention: key_padding_mask must be [B, N] = [{q.shape[0]}, {k.shape[2]}], "
            f"got {tuple(key_padding_mask.shape)}"
        )
    backend = _select(q.device.type, q.dtype, q.shape[-1], padded)
    if backend == "flash":
        # flash-attn wants [B, N, H, Dh]; a transposed view suffices (last dim stays contiguous)
        out = _flash_attn().flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend in ("flash_varlen", "torch_varlen"):
        return varlen_attention(q, k, v, key_padding_mask, _varlen_kernel(backend))
    attn_mask = None
    if padded:
        b, n = key_padding_mask.shape
        # SDPA's bool mask means the opposite (True = may attend); [B, 1, 1, N] broadcasts over
        # heads and queries, so padded keys get -inf before the softmax
        attn_mask = ~key_padding_mask.view(b, 1, 1, n)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def any_padding(lengths: Tensor | None, full_length: int) -> bool:
    """Whether a batch with ``lengths`` [B] (valid samples or frames) out of ``full_length``
    needs a padding mask, decided without a host-device sync.

    ``lengths`` on the host (as the loaders hand them over, before the batch moves) are read
    directly; lengths already on an accelerator would need a sync to read, so they count as
    padded (the mask is kept, the result stays exact).
    """
    if lengths is None:
        return False
    if lengths.device.type != "cpu":
        return True
    return bool((lengths < full_length).any())


def attention_backend(device: torch.device | str | None = None, padded: bool = False) -> str:
    """The backend :func:`attention` uses on ``device`` for bf16 inputs (head dim 64).

    That is the training fast path; fp32 inputs always use ``"sdpa"``. ``device`` defaults to
    CUDA when available, else CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _select(torch.device(device).type, torch.bfloat16, 64, padded)


def attention_report() -> dict:
    """JSON-safe facts for ``fastspec info``: the request, what is installed, what runs where."""
    module = _flash_attn()
    try:
        flash_version = importlib.metadata.version("flash-attn") if module is not None else None
    except importlib.metadata.PackageNotFoundError:
        flash_version = None
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    def on(device_type: str, padded: bool) -> str:
        try:
            return decide("attention", device_type, padded=padded, probe=True).backend
        except BackendError as exc:
            return f"error: {exc}"

    report = {
        "env": {ENV_VAR: os.environ.get(ENV_VAR)},
        "requested": os.environ.get(ENV_VAR) or "auto",
        "flash_attn_installed": module is not None,
        "flash_attn_version": flash_version,
        "torch_varlen_available": _torch_varlen() is not None,
        "backend": {dev: on(dev, False) for dev in devices},
        "padded_backend": {dev: on(dev, True) for dev in devices},
    }
    if torch.cuda.is_available():
        report["sdpa_cuda_kernels"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    return report
