"""Typed dataclass configs: checks, ``key.sub=value`` parsing, JSON round trips.

The generic machinery of the run config (``fastspec.train.config``), kept low in the layering so
that every recipe can declare its own settings section next to its code
(``fastspec.recipes.<recipe>``) with the same checks and error type, without importing ``train``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union


class ConfigError(ValueError):
    """A bad config value or key: raised before any training starts."""


def check(ok: bool, key: str, value: Any, why: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` and ``value`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"bad config value {key}={value!r}: {why}")


def check_all(node: Any, section: str, keys: tuple[str, ...], test, why: str) -> None:
    """:func:`check` ``test(value)`` for each field of ``node`` named in ``keys``."""
    for key in keys:
        value = getattr(node, key)
        check(test(value), f"{section}.{key}", value, why)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(raw: str, hint: Any, key: str) -> Any:
    """Parse ``raw`` as a value of type ``hint`` (bool, int, float, str, X | None, tuple)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and raw.lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(raw, inner[0], key)
    if origin is tuple:
        items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
        elem_types = typing.get_args(hint)
        if len(items) != len(elem_types):
            raise ConfigError(f"{key} takes {len(elem_types)} comma-separated values, got {raw!r}")
        return tuple(parse_value(s.strip(), t, key) for s, t in zip(items, elem_types))
    try:
        if hint is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {hint.__name__}") from None
    raise ConfigError(f"{key} has a type ({hint}) that overrides cannot set")


def set_key(root: Any, key: str, raw: str | None = None, value: Any = None) -> None:
    """Set the field ``key`` (``section.field``) of the dataclass tree ``root`` in place.

    ``raw`` is parsed by the field's type (a command-line override); otherwise ``value`` is set
    as given (defaults declared in code). Unknown keys and whole sections are refused; the
    changed section's checks (``__post_init__``) run again, then the root's.
    """
    parts = key.strip().split(".")
    node: Any = root
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(node)}
        if part not in names:
            where = ".".join(parts[:i]) or "config"
            raise ConfigError(f"unknown config key {key!r}: {where} has {', '.join(sorted(names))}")
        if i < len(parts) - 1:
            node = getattr(node, part)
            continue
        hint = typing.get_type_hints(type(node))[part]
        if dataclasses.is_dataclass(hint):
            raise ConfigError(f"config key {key!r} is a section; set one of its fields")
        setattr(node, part, parse_value(raw.strip(), hint, key) if raw is not None else value)
        if node is not root:
            node.__post_init__()
        root.__post_init__()


def from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """Rebuild the dataclass ``cls`` from ``dataclasses.asdict`` output; unknown keys fail."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, prefix=f"{prefix}{name}.")
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


__all__ = ["ConfigError", "check", "check_all", "from_dict", "parse_value", "set_key"]
