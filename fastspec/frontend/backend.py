"""Which implementation computes the front end: ``triton`` | ``cpp`` | ``torch``.

The choice is made here and only here (DESIGN.md §5):

- ``auto`` takes the fused Triton kernel for CUDA tensors when Triton imports, and the C++
  extension ``fastspec._C`` for CPU tensors. On CPU, ``auto`` builds the extension on first use
  when it is neither installed nor cached: one ``c++`` call of about 2 s (the extension needs only
  the CPython headers), once per machine and source version, cached under ``~/.cache/fastspec``
  (``fastspec.frontend.cpp``). ``FASTSPEC_CPP_BUILD=0`` forbids that build; ``auto`` then uses a
  prebuilt or cached extension only.
- ``cpp`` asks for the extension explicitly (same build-on-first-use).
- ``FASTSPEC_FRONTEND_BACKEND`` overrides whatever the caller asked for; a bad value is an error
  that lists the choices.
- A config the C++ extension cannot compute (``cpp.supports``) is part of the same decision.

The mechanics (environment override, the error, the one-line notice, the ``fastspec info``
report) are those of :mod:`fastspec.backends`. A backend that cannot run falls back with one
notice per process, never silently: to the torch reference, or, for ``cpp`` on a CUDA tensor, to
what ``auto`` picks there (featurising GPU audio on the CPU would be a host round trip).
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

from fastspec.backends import (
    BackendError,
    Decision,
    Piece,
    choose,
    decide,
    register,
    triton_decision,
)

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


def _decide(value: str, device_type: str, forced: bool, probe: bool = False, cfg=None) -> Decision:
    """The front end's :class:`fastspec.backends.Decision`; ``probe`` never compiles the
    extension, ``cfg`` (a FrontendConfig) lets the C++ backend refuse a config it cannot do."""
    build = not probe
    if value == "torch":
        return Decision("torch", "torch reference (asked for)")
    if value == "cpp" and device_type == "cuda":
        chosen = _decide("auto", device_type, forced, probe, cfg).backend
        return Decision(
            chosen,
            f"front end: the C++ backend runs on CPU tensors; using {chosen} for CUDA tensors",
            "frontend.cpp.cuda",
        )
    if value == "cpp" or (value == "auto" and device_type != "cuda"):
        ok, why = _cpp_state(build)
        if not ok:
            return Decision(
                "torch",
                f"front end: the C++ extension fastspec._C is unavailable ({why}); "
                "using the torch reference",
                "frontend.cpp",
            )
        if cfg is not None:
            from . import cpp

            reason = cpp.supports(cfg)
            if reason is not None:
                return Decision(
                    "torch",
                    f"front end: the C++ backend cannot compute this config ({reason}); "
                    "using the torch reference",
                    "frontend.cpp.config." + ("log_offset" if cfg.log_offset else str(cfg.n_fft)),
                )
        return Decision("cpp", "C++ extension fastspec._C (OpenMP, CPU tensors)")
    if cfg is not None and cfg.log_offset:
        return Decision(
            "torch",
            f"front end: the Triton kernel has no log offset (log_offset={cfg.log_offset}); "
            "using the torch reference",
            "frontend.triton.log_offset",
        )
    # importing the kernel module, not just triton, catches a Triton too old for the kernel
    ok, why = _triton_import()
    if ok:
        ok, why = _kernel_import()
    return triton_decision(
        device_type,
        None if ok else why,
        ok and _interpret_active(),
        what="front end",
        notice_key=f"frontend.triton.{device_type}",
        fallback="the torch reference",
    )


register(
    Piece(
        name="frontend",
        title="front end",
        env=ENV_VAR,
        choices=BACKENDS,
        decide=_decide,
    )
)


def resolve_backend(backend: str, device, cfg=None) -> str:
    """The backend that will run for tensors on ``device``: ``torch``, ``triton`` or ``cpp``.

    Args:
        backend: ``auto`` | ``torch`` | ``triton`` | ``cpp``.
        device: ``torch.device`` or string.
        cfg: the :class:`~fastspec.frontend.FrontendConfig` to compute, when known: a config
            the C++ extension cannot do then falls back to torch here, the one place it is
            decided.

    The environment variable ``FASTSPEC_FRONTEND_BACKEND`` replaces ``backend`` when set; a
    bad value raises :class:`fastspec.backends.BackendError` listing the valid ones.
    """
    return choose("frontend", torch.device(device).type, backend, cfg=cfg)


def backend_report() -> dict:
    """What ``fastspec info`` prints about the front end (builds and announces nothing)."""
    triton_ok, triton_why = _triton_import()
    version = None
    if triton_ok:
        import triton

        version = triton.__version__

    def auto(device_type):
        try:
            return decide("frontend", device_type, "auto", probe=True).backend
        except BackendError as exc:  # a bad FASTSPEC_FRONTEND_BACKEND: report it, don't crash info
            return f"error: {exc}"

    return {
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


def _cpp_report() -> str:
    from . import cpp

    state = cpp.status()
    if state["state"] in ("loaded", "installed", "cached"):
        lanes = f", {state['simd_lanes']} SIMD lanes" if "simd_lanes" in state else ""
        return f"{state['state']} ({state['path']}{lanes})"
    if state["state"] == "buildable":
        return f"not built yet: built on first CPU use (~2 s) with {state['compiler']}"
    return f"unavailable: {state['reason']}"
