"""Pretraining recipes: each turns a batch of log-mel features into a loss.

One recipe, one file. A recipe is an ``nn.Module`` holding every part it needs (the student
encoder under ``.encoder``, plus decoders, heads or an EMA teacher) with:

- ``forward(mel, generator) -> dict``: ``"loss"`` (the scalar to minimise) and optionally other
  scalar tensors (loss terms, collapse monitors), averaged over each logging interval and written
  to ``metrics.jsonl`` under their names. They stay on the device until the logging interval.
- ``train_flops_per_clip(n_frames) -> float``: analytic FLOPs of one clip, for MFU.

and, optionally, hooks the training loop calls when they exist:

- ``before_step(step, total_steps)``: set per-step schedules (teacher temperature, ...);
- ``after_step(step, total_steps)``: after each optimizer step (the EMA teacher update);
- ``health(stats: dict[str, float]) -> list[str]``: warnings (e.g. collapse) for the logged stats.

Parameters with ``requires_grad=False`` (a teacher) are not optimised but are checkpointed.
"""

from __future__ import annotations

from torch import nn

from fastspec.recipes.maskspec import MaskSpec

_RECIPES = {"maskspec": MaskSpec}


def register_recipe(name: str, cls) -> None:
    """Make ``cls`` (an ``nn.Module`` taking ``(encoder, **options)``) buildable as ``name``."""
    _RECIPES[name] = cls


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def build_recipe(name: str, encoder: nn.Module, **options) -> nn.Module:
    """Wrap ``encoder`` in the recipe ``name`` with its options (e.g. ``mask_ratio``)."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(list_recipes())}")
    return _RECIPES[name](encoder, **options)


__all__ = ["MaskSpec", "build_recipe", "list_recipes", "register_recipe"]
