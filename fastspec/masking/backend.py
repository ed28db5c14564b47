"""Which implementation runs masking and token drop: ``triton`` | ``torch`` (DESIGN.md §5).

Two choices, made here and nowhere else:

- mask sampling (``FASTSPEC_MASKING``): Triton Philox kernels (``fastspec.kernels.masking``) on
  CUDA, torch generators elsewhere;
- fused drop + embed and the decoder's restore scatter (``FASTSPEC_PATCH_EMBED``): Triton kernels
  (``fastspec.kernels.patch_embed`` / ``patch_embed_bwd`` / ``masking_restore``) on CUDA, the
  torch reference (gather then linear; cat then gather) elsewhere.

Each variable takes ``auto`` (default), ``triton`` or ``torch``. ``triton`` on CPU tensors runs the
kernels under the interpreter when ``TRITON_INTERPRET=1`` was set before import (tests do this).
A request that cannot be honoured falls back to torch with one notice per process
(:func:`fastspec._logging.notice_once`), never silently and never with an error. Meta tensors
always take the torch path (they hold no values to launch a kernel on).
"""

from __future__ import annotations

import importlib
import os

import torch

from fastspec._logging import notice_once

__all__ = [
    "CHOICES",
    "MASKING_ENV",
    "PATCH_EMBED_ENV",
    "masking_backend",
    "masking_report",
    "patch_embed_backend",
]

CHOICES = ("auto", "triton", "torch")
MASKING_ENV = "FASTSPEC_MASKING"
PATCH_EMBED_ENV = "FASTSPEC_PATCH_EMBED"
_KERNELS = {
    MASKING_ENV: ("fastspec.kernels.masking",),
    PATCH_EMBED_ENV: (
        "fastspec.kernels.patch_embed",
        "fastspec.kernels.patch_embed_bwd",
        "fastspec.kernels.masking_restore",
    ),
}
_WHAT = {MASKING_ENV: "mask sampling", PATCH_EMBED_ENV: "fused patch embed / restore"}


def _requested(env: str, quiet: bool = False) -> str:
    value = os.environ.get(env, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        if not quiet:
            notice_once(
                f"{env}.bad", f"{env}={value!r} is not one of {'|'.join(CHOICES)}; using auto"
            )
        return "auto"
    return value


def _kernels_import(env: str) -> tuple[bool, str | None, bool]:
    """(importable, why not, interpreted) for the kernel modules behind ``env``; interpreted
    means every one of them was decorated under ``TRITON_INTERPRET=1``."""
    interpreted = True
    for name in _KERNELS[env]:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # no triton, or one too old for the kernels
            return False, f"{type(exc).__name__}: {exc}", False
        interpreted = interpreted and bool(getattr(module, "INTERPRETED", False))
    return True, None, interpreted


def _resolve(env: str, device_type: str, quiet: bool = False) -> tuple[str, str | None]:
    """``(choice, notice)`` for tensors on ``device_type``; the notice explains a fallback."""
    requested = _requested(env, quiet)
    if requested == "torch" or device_type == "meta":
        return "torch", None
    if requested == "auto" and device_type != "cuda":
        # the designed CPU path: torch, without a word
        return "torch", None
    ok, why, interpreted = _kernels_import(env)
    if not ok:
        return "torch", f"{_WHAT[env]}: Triton kernels unavailable ({why}); using torch"
    if device_type == "cuda" or (device_type == "cpu" and interpreted):
        return "triton", None
    return "torch", (
        f"{_WHAT[env]}: Triton kernels cannot run on {device_type} tensors (CUDA only, or CPU "
        "with TRITON_INTERPRET=1 set before import); using torch"
    )


@torch.compiler.assume_constant_result
def _choose(env: str, device_type: str) -> str:
    # constant per (environment, device type): torch.compile bakes the branch in at trace time
    choice, notice = _resolve(env, device_type)
    if notice is not None:
        notice_once(f"{env}.{device_type}", notice)
    return choice


def masking_backend(device: torch.device | str) -> str:
    """``"triton"`` or ``"torch"``: who samples masks for tensors on ``device``."""
    return _choose(MASKING_ENV, torch.device(device).type)


def patch_embed_backend(device: torch.device | str) -> str:
    """``"triton"`` or ``"torch"``: who runs drop + embed and restore on ``device``."""
    return _choose(PATCH_EMBED_ENV, torch.device(device).type)


def masking_report() -> dict:
    """What ``fastspec info`` shows about masking and token drop (JSON-safe, emits no notices)."""
    report: dict = {"cuda_available": torch.cuda.is_available()}
    for key, env in (("sampling", MASKING_ENV), ("patch_embed", PATCH_EMBED_ENV)):
        ok, why, interpreted = _kernels_import(env)
        report[key] = {
            "env": env,
            "requested": os.environ.get(env),
            "cpu": _resolve(env, "cpu", quiet=True)[0],
            "cuda": _resolve(env, "cuda", quiet=True)[0] if torch.cuda.is_available() else None,
            "triton_kernels": "importable" if ok else f"unavailable: {why}",
            "triton_interpret": interpreted,
        }
    return report
