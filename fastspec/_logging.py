"""One logger for the package, and one-line notices for fallbacks.

Every backend choice that falls back (no Triton, no CUDA, no flash-attn, no C++ extension)
calls :func:`notice_once`, so the user sees one line per fallback per process, and
``fastspec info`` can list them through :func:`notices`.
"""

from __future__ import annotations

import logging
import sys

_ROOT = "fastspec"
_seen: dict[str, str] = {}


def get_logger(name: str = _ROOT) -> logging.Logger:
    """The package logger (or a child of it), with a stderr handler set up once."""
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[fastspec] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root if name == _ROOT else root.getChild(name.removeprefix(_ROOT + "."))


def notice_once(key: str, message: str) -> None:
    """Log ``message`` as a one-line warning the first time ``key`` is seen in this process."""
    if key in _seen:
        return
    _seen[key] = message
    get_logger().warning(message)


def notices() -> dict[str, str]:
    """The fallback notices issued so far in this process, keyed by what fell back."""
    return dict(_seen)
