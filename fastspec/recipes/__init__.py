"""Pretraining recipes: each turns a batch of log-mel features into a loss.

One recipe, one file. A recipe is an ``nn.Module`` holding every trainable part it needs (the
encoder under ``.encoder``, plus decoders, heads or teachers), whose ``forward(mel, generator)``
returns a dict with at least ``"loss"``, and whose ``train_flops_per_clip(n_frames)`` gives the
analytic FLOPs used for MFU.
"""

from __future__ import annotations

from torch import nn

from fastspec.recipes.maskspec import MaskSpec

_RECIPES = {"maskspec": MaskSpec}


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def build_recipe(name: str, encoder: nn.Module, **options) -> nn.Module:
    """Wrap ``encoder`` in the recipe ``name`` with its options (e.g. ``mask_ratio``)."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(list_recipes())}")
    return _RECIPES[name](encoder, **options)


__all__ = ["MaskSpec", "build_recipe", "list_recipes"]
