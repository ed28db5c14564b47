"""Pretraining recipes: each turns a batch of log-mel features into a loss.

One recipe, one file. A recipe is an ``nn.Module`` holding every part it needs (the student
encoder under ``.encoder``, plus decoders, heads or an EMA teacher) with:

- ``forward(mel, generator, frame_lengths) -> dict``: the package's recipes derive from
  :class:`~fastspec.recipes.base.Recipe`, which gathers the three into a
  :class:`~fastspec.recipes.base.StepInput` (described there) and calls their
  ``training_loss(batch)``. The dict holds ``"loss"`` (the scalar to minimise) and optionally
  other scalar tensors (loss terms, collapse monitors), averaged over each logging interval and
  written to ``metrics.jsonl`` under their names. They stay on the device until then.
- ``train_flops_per_clip(n_frames) -> float``: analytic FLOPs of one clip, for MFU;
- ``encoder_options(**options) -> dict`` (a static method, optional like the hooks below): the
  contract options the recipe asks of its encoder (``frame_tokens`` for the ATST recipes),
  passed to ``create_model`` by the loop (:func:`encoder_options`).

Recipes see encoders only through ``fastspec.models.contract.SpectrogramEncoder``; every recipe
runs with every encoder.

and, optionally, hooks the training loop calls when they exist:

- ``before_step(step, total_steps)``: set per-step schedules (teacher temperature, ...);
- ``after_step(step, total_steps)``: after each optimizer step (the EMA teacher update);
- ``health(stats: dict[str, float]) -> list[str]``: warnings (e.g. collapse) for the logged stats;
- ``waveform_views(wave, lengths, generator) -> views``: a recipe whose paper cuts its views from
  the waveform (ASiT: roll, then two crops of samples) returns them ([V * B, S'], view-major,
  each featurised whole); the loop runs its front end on them and passes their features to
  ``forward`` with ``frame_lengths=None`` and the same generator, whose draws continue there.

Statistics over the batch (centres, batch norm, memories) go through
:mod:`~fastspec.recipes.collective`, so under torchrun they cover every rank's clips.

Each recipe module declares ``RECIPE_SPECS`` (:class:`~fastspec.recipes.spec.RecipeSpec`): its
config section and settings dataclass, paper and demo defaults, and how its constructor options
are read from the run config, in a marked block at the top of the file. This package collects
them, so a new recipe is one new file.

Parameters with ``requires_grad=False`` (a teacher) are not optimised but are checkpointed.
``.encoder`` is also what the loop exports: a recipe whose paper evaluates its EMA teacher
(``asit``) exposes the teacher's backbone there and keeps the student elsewhere.

Shared pieces of teacher-student recipes: ``teacher`` (EMA teacher, momentum and temperature
schedules), ``heads`` (DINO head, BYOL MLP head), ``monitors`` (collapse monitors), ``views``
(random crops on device), ``byol`` (BYOL loss and student/teacher pair of the ATST recipes),
``augment`` (ATST's log-mixup-exp memory and random resize crop, batched on device).
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from fastspec.recipes.asit import ASiT
from fastspec.recipes.atst_clip import ATSTClip
from fastspec.recipes.atst_frame import ATSTFrame
from fastspec.recipes.base import Recipe, StepInput
from fastspec.recipes.maskspec import MaskSpec
from fastspec.recipes.spec import RecipeSpec

# every module of this package that declares RECIPE_SPECS is a recipe: adding one touches one file
_SPECS: dict[str, RecipeSpec] = {}
for _module in pkgutil.iter_modules(__path__):
    for _spec in getattr(importlib.import_module(f"{__name__}.{_module.name}"), "RECIPE_SPECS", ()):
        _SPECS[_spec.name] = _spec


def register_recipe(name: str, cls) -> None:
    """Make ``cls`` (an ``nn.Module`` taking ``(encoder, **options)``) buildable as ``name``
    (no config section, no options: for recipes defined outside the package)."""
    _SPECS[name] = RecipeSpec(name, cls)


def unregister_recipe(name: str) -> None:
    """Forget recipe ``name`` (one that :func:`register_recipe` added)."""
    _SPECS.pop(name, None)


def list_recipes() -> list[str]:
    return sorted(_SPECS)


def recipe_spec(name: str) -> RecipeSpec:
    """The :class:`RecipeSpec` of recipe ``name`` (settings, defaults, options)."""
    if name not in _SPECS:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(list_recipes())}")
    return _SPECS[name]


def recipe_sections() -> dict[str, type]:
    """Config section name -> settings dataclass, over every recipe (shared ones once)."""
    return {s.section: s.settings for s in _SPECS.values() if s.section is not None}


def build_recipe(name: str, encoder: nn.Module, **options) -> nn.Module:
    """Wrap ``encoder`` in the recipe ``name`` with its options (e.g. ``mask_ratio``)."""
    return recipe_spec(name).cls(encoder, **options)


def encoder_options(name: str, **options) -> dict:
    """Contract options (``create_model`` keyword arguments) that recipe ``name`` with
    ``options`` asks of its encoder, e.g. ``{"frame_tokens": 4}`` for the ATST recipes; a
    recipe class without the optional ``encoder_options`` hook asks for nothing."""
    ask = getattr(recipe_spec(name).cls, "encoder_options", None)  # an optional recipe hook
    return ask(**options) if ask is not None else {}


__all__ = [
    "ASiT",
    "ATSTClip",
    "ATSTFrame",
    "MaskSpec",
    "Recipe",
    "RecipeSpec",
    "StepInput",
    "build_recipe",
    "encoder_options",
    "list_recipes",
    "recipe_sections",
    "recipe_spec",
    "register_recipe",
    "unregister_recipe",
]
