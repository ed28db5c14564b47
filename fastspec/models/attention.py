"""Attention backend dispatch: flash-attn when it can run, else torch SDPA.

The choice is made in :func:`_select` and nowhere else. ``FASTSPEC_ATTENTION`` forces it:

- ``auto`` (default): flash-attn (``flash_attn.flash_attn_func``) for CUDA tensors in fp16/bf16
  without a padding mask when flash-attn is installed; torch SDPA otherwise (which itself picks
  its cuDNN / flash / memory-efficient / math kernel).
- ``flash``: as ``auto``, but every fallback to SDPA is announced.
- ``sdpa``: always torch SDPA.

A forced backend that cannot run falls back to SDPA with a one-line notice
(:func:`fastspec._logging.notice_once`), never an error.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from fastspec._logging import notice_once

ENV_VAR = "FASTSPEC_ATTENTION"
_CHOICES = ("auto", "flash", "sdpa")
_HALF = (torch.float16, torch.bfloat16)


@functools.cache
def _flash_attn_func():
    """``flash_attn.flash_attn_func``, or None when flash-attn is missing or fails to load."""
    try:
        from flash_attn import flash_attn_func
    except Exception:  # ImportError, or a CUDA library that fails to load on this machine
        return None
    return flash_attn_func


def _requested() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        notice_once(
            f"attention.env.{value}",
            f"{ENV_VAR}={value!r} is not one of {'|'.join(_CHOICES)}; using auto",
        )
        return "auto"
    return value


# Constant per (env, device type, dtype, head dim, padded): torch.compile evaluates it once at
# trace time and bakes the branch in, so the notices and env lookup never enter a graph.
@torch.compiler.assume_constant_result
def _select(requested: str, device_type: str, dtype: torch.dtype, head_dim: int, padded: bool):
    """The one place the attention backend is chosen: returns ``"flash"`` or ``"sdpa"``."""
    if requested == "sdpa":
        return "sdpa"
    # flash-attn is only ever a candidate on CUDA; on CPU, auto picks SDPA without a word
    announce = requested == "flash" or device_type == "cuda"
    if _flash_attn_func() is None:
        if announce:
            notice_once(
                "attention.flash.missing",
                "flash-attn is not installed; attention uses torch SDPA "
                "(pip install 'fastspec[flash]' on a CUDA machine)",
            )
        return "sdpa"
    if device_type != "cuda":
        reason = ("device", f"tensors are on {device_type}, not CUDA")
    elif dtype not in _HALF:
        reason = ("dtype", f"dtype is {dtype}, flash-attn needs float16/bfloat16 (use autocast)")
    elif padded:
        reason = ("padding", "a key padding mask is set (variable-length batch)")
    elif head_dim % 8 or head_dim > 256:
        reason = ("head_dim", f"head dim {head_dim} is not a multiple of 8 up to 256")
    else:
        return "flash"
    if announce:
        notice_once(f"attention.flash.{reason[0]}", f"flash-attn skipped: {reason[1]}; using SDPA")
    return "sdpa"


def attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Non-causal multi-head attention ``softmax(q k^T / sqrt(Dh)) v``.

    Args:
        q, k, v: [B, H, N, Dh].
        key_padding_mask: [B, N] bool, True = padding: no query attends to that key. Every row
            must keep at least one valid key (a fully padded row has no softmax and gives NaN).

    Returns:
        [B, H, N, Dh] in the dtype of ``q``.
    """
    if q.dim() != 4:
        raise ValueError(f"attention: q, k, v must be [B, H, N, Dh], got q {tuple(q.shape)}")
    padded = key_padding_mask is not None
    backend = _select(_requested(), q.device.type, q.dtype, q.shape[-1], padded)
    if backend == "flash":
        # flash-attn wants [B, N, H, Dh]; a transposed view suffices (last dim stays contiguous)
        out = _flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    attn_mask = None
    if padded:
        b, n = key_padding_mask.shape
        if b != q.shape[0] or n != k.shape[2]:
            raise ValueError(
                f"attention: key_padding_mask must be [B, N] = [{q.shape[0]}, {k.shape[2]}], "
                f"got {tuple(key_padding_mask.shape)}"
            )
        # SDPA's bool mask means the opposite (True = may attend); [B, 1, 1, N] broadcasts over
        # heads and queries, so padded keys get -inf before the softmax
        attn_mask = ~key_padding_mask.view(b, 1, 1, n)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def attention_backend(device: torch.device | str | None = None) -> str:
    """The backend :func:`attention` uses on ``device`` for bf16 inputs without padding.

    That is the training fast path; fp32 or padded inputs always use ``"sdpa"``. ``device``
    defaults to CUDA when available, else CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _select(_requested(), torch.device(device).type, torch.bfloat16, 64, False)


def attention_report() -> dict:
    """JSON-safe facts for ``fastspec info``: the request, what is installed, what runs where."""
    flash_installed = _flash_attn_func() is not None
    try:
        flash_version = importlib.metadata.version("flash-attn") if flash_installed else None
    except importlib.metadata.PackageNotFoundError:
        flash_version = None
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {
        "env": {ENV_VAR: os.environ.get(ENV_VAR)},
        "requested": _requested(),
        "flash_attn_installed": flash_installed,
        "flash_attn_version": flash_version,
        "backend": {dev: attention_backend(dev) for dev in devices},
        "padded_backend": "sdpa",
    }
    if torch.cuda.is_available():
        report["sdpa_cuda_kernels"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    return report
