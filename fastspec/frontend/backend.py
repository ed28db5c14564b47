"""Which implementation computes the front end: ``triton`` | ``cpp`` | ``torch``.

The choice is made here and only here (DESIGN.md §5):

- ``auto`` takes the fused Triton kernel for CUDA tensors when Triton imports, and the C++
  extension ``fastspec._C`` for CPU tensors. On CPU, ``auto`` builds the extension on first use
  when it is neither installed nor cached: one ``c++`` call of about 2 s (the extension needs only
  the CPython headers), once per machine and source version, cached under ``~/.cache/fastspec``
  (``fastspec.frontend.cpp``). ``FASTSPEC_CPP_BUILD=0`` forbids that build; ``auto`` then uses a
  prebuilt or cached extension only.
- ``cpp`` asks for the extension explicitly (same build-on-first-use).
- ``FASTSPEC_FRONTEND_BACKEND`` overrides whatever the caller asked for.

A backend that cannot run falls back with one notice per process
(``fastspec._logging.notice_once``), never silently: to the torch reference, or, for ``cpp`` on a
CUDA tensor, to what ``auto`` picks there (featurising GPU audio on the CPU would be a host round
trip).
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

from fastspec._logging import notice_once

__all__ = ["BACKENDS", "ENV_VAR", "resolve_backend", "backend_report"]

BACKENDS = ("auto", "torch", "triton", "cpp")
ENV_VAR = "FASTSPEC_FRONTEND_BACKEND"
_KERNEL_MODULE = "fastspec.kernels.logmel"


def _triton_import() -> tuple[bool, str | None]:
    """Whether ``triton`` imports, and why not."""
    try:
        importlib.import_module("triton")
    except Exception as exc:  # any import failure means "no Triton", reported with its reason
        return False, f"{type(exc).__name__}: {exc}"
    return True, None


def _interpret_active() -> bool:
    """Whether the Triton kernel is (or, once imported, will be) an interpreted function.

    triton.jit decides at decoration time, so once the kernel module is imported its own flag
    wins over the current environment.
    """
    module = sys.modules.get(_KERNEL_MODULE)
    if module is not None:
        return bool(module.INTERPRETED)
    try:
        import triton

        return bool(triton.knobs.runtime.interpret)
    except Exception:
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernel_import() -> tuple[bool, str | None]:
    try:
        importlib.import_module(_KERNEL_MODULE)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, None


def _cpp_state(build: bool) -> tuple[bool, str | None]:
    """Whether the C++ extension is usable (building it if ``build``), and why not."""
    from . import cpp

    if build:
        ok = cpp.load() is not None
        return ok, None if ok else cpp.status().get("reason")
    state = cpp.status()
    # without building: "buildable" counts, since the first real call will build it
    return state["state"] != "unavailable", state.get("reason")


def _resolve(backend: str, device, build: bool = True) -> tuple[str, str | None, str | None]:
    """``(chosen, notice_key, notice)``; ``build=False`` never compiles the extension."""
    # the environment wins over the caller, so a user can force a backend without code changes
    forced = os.environ.get(ENV_VAR)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={forced!r} is not one of {BACKENDS}")
        backend = forced
    if backend not in BACKENDS:
        raise ValueError(f"unknown front-end backend {backend!r}; valid: {BACKENDS}")
    device = torch.device(device)
    if backend == "torch":
        return "torch", None, None
    if backend == "cpp" and device.type == "cuda":
        chosen = _resolve("auto", device, build)[0]
        return (
            chosen,
            "frontend.cpp.cuda",
            f"front end: the C++ backend runs on CPU tensors; using {chosen} for CUDA tensors",
        )
    if backend == "cpp" or (backend == "auto" and device.type != "cuda"):
        ok, why = _cpp_state(build)
        if ok:
            return "cpp", None, None
        return (
            "torch",
            "frontend.cpp",
            f"front end: the C++ extension fastspec._C is unavailable ({why}); "
            "using the torch reference",
        )
    # importing the kernel module, not just triton, catches a Triton too old for the kernel
    ok, why = _triton_import()
    if ok:
        ok, why = _kernel_import()
    if not ok:
        return (
            "torch",
            f"frontend.triton.{device.type}",
            f"front end: Triton is unavailable ({why}); using the torch reference",
        )
    if device.type == "cuda" or (device.type == "cpu" and _interpret_active()):
        return "triton", None, None
    return (
        "torch",
        f"frontend.triton.{device.type}",
        f"front end: the Triton kernel cannot run on {device.type} tensors "
        "(CUDA only, or CPU with TRITON_INTERPRET=1 set before import); using the torch reference",
    )


def resolve_backend(backend: str, device) -> str:
    """The backend that will run for tensors on ``device``: ``torch``, ``triton`` or ``cpp``.

    Args:
        backend: ``auto`` | ``torch`` | ``triton`` | ``cpp``.
        device: ``torch.device`` or string.

    The environment variable ``FASTSPEC_FRONTEND_BACKEND`` replaces ``backend`` when set.
    """
    chosen, key, message = _resolve(backend, device)
    if message is not None:
        notice_once(key, message)
    return chosen


def backend_report() -> dict:
    """What ``fastspec info`` prints about the front end (emits no notices)."""
    triton_ok, triton_why = _triton_import()
    version = None
    if triton_ok:
        import triton

        version = triton.__version__

    def auto(device):
        try:
            return _resolve("auto", device, build=False)[0]
        except ValueError as exc:  # a bad FASTSPEC_FRONTEND_BACKEND: report it, don't crash info
            return f"error: {exc}"

    report = {
        "auto_cpu": auto("cpu"),
        "auto_cuda": auto("cuda") if torch.cuda.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "triton_importable": triton_ok,
        "triton_version": version,
        "triton_error": triton_why,
        "triton_interpret": _interpret_active(),
        "env_override": os.environ.get(ENV_VAR),
        "cpp": _cpp_report(),
    }
    return report


def _cpp_report() -> str:
    from . import cpp

    state = cpp.status()
    if state["state"] in ("loaded", "installed", "cached"):
        lanes = f", {state['simd_lanes']} SIMD lanes" if "simd_lanes" in state else ""
        return f"{state['state']} ({state['path']}{lanes})"
    if state["state"] == "buildable":
        return f"not built yet: built on first CPU use (~2 s) with {state['compiler']}"
    return f"unavailable: {state['reason']}"
