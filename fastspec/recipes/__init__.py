"""Pretraining recipes: each turns a batch of log-mel features into a loss.

One recipe, one file. A recipe is an ``nn.Module`` holding every part it needs (the student
encoder under ``.encoder``, plus decoders, heads or an EMA teacher) with:

- ``forward(mel, generator, frame_lengths) -> dict`` (mel [B, T, F]; the loop-seeded RNG of
  masks and views; [B] valid frames per clip): ``"loss"`` (the scalar to minimise) and optionally other
  scalar tensors (loss terms, collapse monitors), averaged over each logging interval and written
  to ``metrics.jsonl`` under their names. They stay on the device until the logging interval.
- ``train_flops_per_clip(n_frames) -> float``: analytic FLOPs of one clip, for MFU.

and, optionally, hooks the training loop calls when they exist:

- ``before_step(step, total_steps)``: set per-step schedules (teacher temperature, ...);
- ``after_step(step, total_steps)``: after each optimizer step (the EMA teacher update);
- ``health(stats: dict[str, float]) -> list[str]``: warnings (e.g. collapse) for the logged stats.

Parameters with ``requires_grad=False`` (a teacher) are not optimised but are checkpointed.
``.encoder`` is also what the loop exports: a recipe whose paper evaluates its EMA teacher
(``asit``) exposes the teacher's backbone there and keeps the student elsewhere.

Shared pieces of teacher-student recipes: ``teacher`` (EMA teacher, momentum and temperature
schedules), ``heads`` (DINO head, BYOL MLP head), ``monitors`` (collapse monitors), ``views``
(random crops on device), ``byol`` (BYOL loss and student/teacher pair of the ATST recipes),
``augment`` (ATST's log-mixup-exp memory and random resize crop, batched on device).
"""

from __future__ import annotations

from torch import nn

from fastspec.recipes.asit import ASiT
from fastspec.recipes.atst_clip import ATSTClip
from fastspec.recipes.atst_frame import ATSTFrame
from fastspec.recipes.maskspec import MaskSpec
from fastspec.recipes.maskspec_mast import MaskSpecMAST

_RECIPES = {"maskspec": MaskSpec, "atst-clip": ATSTClip, "atst-frame": ATSTFrame}
_RECIPES["asit"] = ASiT


def register_recipe(name: str, cls) -> None:
    """Make ``cls`` (an ``nn.Module`` taking ``(encoder, **options)``) buildable as ``name``."""
    _RECIPES[name] = cls


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def build_recipe(name: str, encoder: nn.Module, **options) -> nn.Module:
    """Wrap ``encoder`` in the recipe ``name`` with its options (e.g. ``mask_ratio``)."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(list_recipes())}")
    cls = _RECIPES[name]
    # a multiscale encoder (MAST) drops whole mask units and needs a decoder reading every stage
    if name == "maskspec" and hasattr(encoder, "forward_multiscale"):
        cls = MaskSpecMAST
    return cls(encoder, **options)


__all__ = [
    "ASiT",
    "ATSTClip",
    "ATSTFrame",
    "MaskSpec",
    "MaskSpecMAST",
    "build_recipe",
    "list_recipes",
    "register_recipe",
]
