"""Which implementation runs masking and token drop: ``triton`` | ``torch`` (DESIGN.md §5).

Two choices, made here and nowhere else:

- mask sampling (``FASTSPEC_MASKING``): Triton Philox kernels (``fastspec.kernels.masking``) on
  CUDA, torch generators elsewhere;
- fused drop + embed and the decoder's restore scatter (``FASTSPEC_PATCH_EMBED``): Triton kernels
  (``fastspec.kernels.patch_embed`` / ``patch_embed_bwd`` / ``masking_restore``) on CUDA, the
  torch reference (gather then linear; cat then gather) elsewhere.

Each variable takes ``auto`` (default), ``triton`` or ``torch``. ``triton`` on CPU tensors runs the
kernels under the interpreter when ``TRITON_INTERPRET=1`` was set before import (tests do this).
A request that cannot be honoured falls back to torch with one notice per process, never
silently; a value that is not one of the choices is an error listing them
(:mod:`fastspec.backends`, where every backend choice is made the same way). Meta tensors
always take the torch path (they hold no values to launch a kernel on).
"""

from __future__ import annotations

import importlib
import os

import torch

from fastspec import backends

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


def _decider(env: str):
    """The :class:`fastspec.backends.Piece` decision for the kernels behind ``env``."""

    def decide_kernels(value: str, device_type: str, forced: bool, **context) -> backends.Decision:
        if value == "torch":
            return backends.Decision("torch", "torch (asked for)")
        if device_type == "meta":
            return backends.Decision("torch", "meta tensors hold no values to launch a kernel on")
        if value == "auto" and device_type != "cuda":
            # the designed CPU path: torch, without a word
            return backends.Decision("torch", "torch (auto off CUDA)")
        ok, why, interpreted = _kernels_import(env)
        return backends.triton_decision(
            device_type, why, interpreted, what=_WHAT[env], notice_key=f"{env}.{device_type}"
        )

    return decide_kernels


_PIECE_OF = {MASKING_ENV: "masking", PATCH_EMBED_ENV: "patch_embed"}
for _env, _name in _PIECE_OF.items():
    backends.register(
        backends.Piece(
            name=_name, title=_WHAT[_env], env=_env, choices=CHOICES, decide=_decider(_env)
        )
    )


@torch.compiler.assume_constant_result
def _choose(env: str, device_type: str) -> str:
    # constant per (environment, device type): torch.compile bakes the branch in at trace time
    return backends.choose(_PIECE_OF[env], device_type)


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

        def on(device_type: str, name: str = _PIECE_OF[env]) -> str:
            try:
                return backends.decide(name, device_type).backend
            except backends.BackendError as exc:  # a bad value: reported here, raised when used
                return f"error: {exc}"

        report[key] = {
            "env": env,
            "requested": os.environ.get(env),
            "cpu": on("cpu"),
            "cuda": on("cuda") if torch.cuda.is_available() else None,
            "triton_kernels": "importable" if ok else f"unavailable: {why}",
            "triton_interpret": interpreted,
        }
    return report
