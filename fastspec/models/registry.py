"""Model registry: small factory functions by name (timm style), never integer mode switches."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

# name -> factory(*, device, dtype, **overrides) -> nn.Module
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory under its function name.

    The factory is called as ``fn(device=..., dtype=..., **overrides)`` and its docstring
    should state the architecture (widths, depth, heads, patch layout).
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def create_model(
    name: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model; ``overrides`` replace the factory's defaults (e.g. ``n_mels=64``).

    ``device="meta"`` builds it without allocating memory. The module's ``model_name``
    attribute records ``name``. Unknown names raise ValueError, unknown overrides TypeError.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    model = _MODELS[name](device=device, dtype=dtype, **overrides)
    model.model_name = name
    return model


def build_with_overrides(cls: type, name: str, defaults: dict, overrides: dict, **device_dtype):
    """``cls(**{**defaults, **overrides}, **device_dtype)``, with unknown override keys
    rejected by a TypeError that names them and lists the accepted ones."""
    accepted = sorted(set(inspect.signature(cls).parameters) - {"device", "dtype"})
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(
            f"{name}: unknown override(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}"
        )
    return cls(**{**defaults, **overrides}, **device_dtype)


def constructor_config(module: nn.Module, derived: tuple[str, ...] = ()) -> dict:
    """The JSON-safe constructor kwargs of ``module``: ``type(module)(**cfg)`` rebuilds it.

    Read from the constructor's signature, so a new argument cannot be left out of an exported
    architecture: each one (but ``device``, ``dtype`` and the ``derived`` ones, alternatives that
    the constructor folds into others, such as ``frame_tokens``) must be kept as the attribute
    of the same name; an attribute that is missing raises AttributeError. Tuples become lists.
    """

    def json_safe(value):
        return [json_safe(v) for v in value] if isinstance(value, (tuple, list)) else value

    skip = {"self", "device", "dtype", *derived}
    names = [n for n in inspect.signature(type(module).__init__).parameters if n not in skip]
    return {name: json_safe(getattr(module, name)) for name in names}
