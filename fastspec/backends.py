"""One helper for every backend choice: front end, masking, patch embed, attention, loader, precision.

DESIGN.md §5 asks that each choice be made in one place, forced by an environment variable,
reported by ``fastspec info`` and, when it falls back, announced in one line. The pieces differ
only in what they know about their hardware, so each registers a :class:`Piece` here: its
environment variable, its valid values and a ``decide`` function that turns a request into a
:class:`Decision` (the backend, and the reason for it). This module does the rest, the same way
for all of them:

- the environment variable replaces the caller's request (``FASTSPEC_FRONTEND_BACKEND``,
  ``FASTSPEC_MASKING``, ``FASTSPEC_PATCH_EMBED``, ``FASTSPEC_ATTENTION``, ``FASTSPEC_LOADER``,
  ``FASTSPEC_PRECISION``);
- a value that is not one of the piece's choices raises :class:`BackendError`, which lists them;
- a decision that could not honour the request logs one line per process
  (:func:`fastspec._logging.notice_once`), never silently and never as an error;
- :func:`report` gives, per piece and device, the backend ``auto`` (or the forced value) takes and
  why, without building or announcing anything: what ``fastspec info`` prints.

Precision is decided here too (:func:`choose_precision`): it needs nothing but torch. CPU
autocast to bfloat16 is emulated, about 12x slower than float32, on CPUs without native bf16
(AVX2 only), so ``bf16`` asked for by the config trains in float32 there, with a notice;
``FASTSPEC_PRECISION=bf16`` forces bf16 anyway.

This module sits below every other one (it imports only torch and the logger): the pieces import
it and register themselves when they are imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastspec._logging import notice_once

__all__ = [
    "BackendError",
    "Decision",
    "Piece",
    "choose",
    "choose_precision",
    "cpu_has_native_bf16",
    "decide",
    "pieces",
    "register",
    "report",
    "requested",
    "triton_decision",
]


class BackendError(ValueError):
    """A backend name (from the caller or an environment variable) that is not a valid choice."""


@dataclass(frozen=True)
class Decision:
    """What runs, and why.

    ``notice_key`` is set when the request could not be honoured as asked: the decision is then
    a fallback, announced once per key with ``reason``.
    """

    backend: str
    reason: str
    notice_key: str | None = None

    @property
    def fallback(self) -> bool:
        return self.notice_key is not None


@dataclass(frozen=True)
class Piece:
    """One stage of the data path with interchangeable implementations.

    ``decide(request, device_type, forced, **context)`` returns the :class:`Decision`;
    ``forced`` says the request came from the environment variable. With ``probe=True`` in the
    context it must build, load and announce nothing (``fastspec info``).
    """

    name: str
    title: str
    env: str
    choices: tuple[str, ...]
    decide: Callable[..., Decision]
    default: str = "auto"


_PIECES: dict[str, Piece] = {}


def register(piece: Piece) -> Piece:
    """Add (or replace, on module reload) a piece; returns it."""
    if piece.default not in piece.choices:
        raise ValueError(f"{piece.name}: default {piece.default!r} not in {piece.choices}")
    _PIECES[piece.name] = piece
    return piece


def pieces() -> dict[str, Piece]:
    """The registered pieces by name, in registration order."""
    return dict(_PIECES)


def _piece(name: str) -> Piece:
    try:
        return _PIECES[name]
    except KeyError:
        raise KeyError(f"no backend piece {name!r}; registered: {', '.join(_PIECES)}") from None


def requested(name: str, given: str | None = None) -> tuple[str, bool]:
    """``(request, forced)``: the environment variable if set, else ``given``, else the default.

    Raises :class:`BackendError` naming the variable (or the argument) and the valid choices.
    """
    piece = _piece(name)
    raw = os.environ.get(piece.env, "").strip()
    if raw:
        value, forced = raw.lower(), True
        if value not in piece.choices:
            raise BackendError(
                f"{piece.env}={raw!r} is not a valid {piece.title} backend; "
                f"choose one of: {', '.join(piece.choices)}"
            )
        return value, forced
    value = piece.default if given is None else str(given).strip().lower()
    if value not in piece.choices:
        raise BackendError(
            f"unknown {piece.title} backend {given!r}; choose one of: {', '.join(piece.choices)}"
        )
    return value, False


def decide(name: str, device_type: str, given: str | None = None, **context) -> Decision:
    """The decision for tensors on ``device_type``, without announcing a fallback."""
    value, forced = requested(name, given)
    return _piece(name).decide(value, device_type, forced, **context)


def choose(name: str, device_type: str, given: str | None = None, **context) -> str:
    """The backend that runs for tensors on ``device_type``; a fallback says so once."""
    decision = decide(name, device_type, given, **context)
    if decision.notice_key is not None:
        notice_once(decision.notice_key, decision.reason)
    return decision.backend


def report(devices: tuple[str, ...] | None = None) -> dict:
    """Per piece: its variable, its value, its choices, and per device the backend and reason.

    JSON-safe; builds, loads and announces nothing. A bad environment value is reported, not
    raised, so that ``fastspec info`` still prints.
    """
    if devices is None:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    out = {}
    for name, piece in _PIECES.items():
        entry = {
            "title": piece.title,
            "env": piece.env,
            "env_value": os.environ.get(piece.env) or None,
            "choices": list(piece.choices),
        }
        for device_type in devices:
            try:
                decision = decide(name, device_type, probe=True)
            except BackendError as exc:
                entry[device_type] = {"backend": "error", "reason": str(exc), "fallback": True}
                continue
            entry[device_type] = {
                "backend": decision.backend,
                "reason": decision.reason,
                "fallback": decision.fallback,
            }
        out[name] = entry
    return out


def triton_decision(
    device_type: str,
    unavailable: str | None,
    interpreted: bool,
    *,
    what: str,
    notice_key: str,
    fallback: str = "torch",
) -> Decision:
    """The decision of a piece whose Triton kernels were asked for (or ``auto`` on CUDA).

    Args:
        device_type: of the tensors.
        unavailable: why the kernel modules do not import, or None when they do.
        interpreted: whether they were decorated under ``TRITON_INTERPRET=1`` (then they run on
            CPU tensors too).
        what: the piece, as the notice names it; notice_key: the notice's key;
        fallback: what runs instead, as the notice says it.

    CUDA tensors run the kernels, CPU tensors under the interpreter too; anything else falls
    back to ``torch`` with a notice.
    """
    if unavailable is not None:
        reason = f"{what}: Triton kernels unavailable ({unavailable}); using {fallback}"
        return Decision("torch", reason, notice_key)
    if device_type == "cuda":
        return Decision("triton", "Triton kernels (CUDA tensors)")
    if device_type == "cpu" and interpreted:
        return Decision("triton", "Triton kernels under the interpreter (TRITON_INTERPRET=1)")
    return Decision(
        "torch",
        f"{what}: Triton kernels cannot run on {device_type} tensors (CUDA only, or CPU with "
        f"TRITON_INTERPRET=1 set before import); using {fallback}",
        notice_key,
    )


# ---- precision ------------------------------------------------------------------------------

PRECISION_ENV = "FASTSPEC_PRECISION"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX), per oneDNN.

    Tests replace this function to exercise both branches of :func:`choose_precision`.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def _decide_precision(value: str, device_type: str, forced: bool, **context) -> Decision:
    if value == "none":
        return Decision("none", "float32 (no autocast)")
    if value == "fp16":
        if device_type != "cuda":
            # fp16 needs loss scaling, which only CUDA autocast provides
            return Decision("none", "fp16 autocast needs CUDA; float32 on CPU", "precision.fp16")
        return Decision("fp16", "fp16 autocast with loss scaling")
    if device_type == "cuda":
        return Decision("bf16", "bf16 autocast (tensor cores)")
    if cpu_has_native_bf16():
        return Decision("bf16", "bf16 autocast (the CPU has native bf16: AVX-512 BF16 / AMX)")
    if forced:
        return Decision(
            "bf16",
            f"bf16 autocast forced by {PRECISION_ENV}, emulated on this CPU (about 12x slower)",
        )
    return Decision(
        "none",
        "bf16 asked for, but this CPU has no native bf16 (AVX2 only: emulated, about 12x "
        f"slower than float32); training in float32 ({PRECISION_ENV}=bf16 forces bf16)",
        "precision.cpu_bf16",
    )


register(
    Piece(
        name="precision",
        title="precision",
        env=PRECISION_ENV,
        choices=("bf16", "fp16", "none"),
        decide=_decide_precision,
        default="bf16",
    )
)


def choose_precision(amp: str, device_type: str) -> str:
    """The autocast mode a run uses: ``bf16`` | ``fp16`` | ``none`` for the request ``amp``
    (``train.amp``) on ``device_type``; ``FASTSPEC_PRECISION`` replaces the request."""
    return choose("precision", device_type, amp)
