"""The base class of the package's recipes: what one training step hands a recipe.

The training loop calls ``recipe(mel, generator=..., frame_lengths=...)`` (DDP and FSDP wrap
exactly that call); :class:`Recipe` gathers those arguments into one :class:`StepInput` and hands
it to the recipe's :meth:`Recipe.training_loss`, so the step's inputs are described once, here,
and a recipe's view making (``make_views(batch)``) takes the same object.

A recipe defined outside the package need not derive from :class:`Recipe`: any ``nn.Module``
whose ``forward(mel, generator, frame_lengths)`` returns the loss dict trains
(:func:`fastspec.recipes.register_recipe`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


@dataclass(frozen=True)
class StepInput:
    """One micro-step's batch, as the training loop hands it to a recipe.

    Attributes:
        mel: [B, T, F] normalised log-mel features (T zero-padded up to whole units); for a
            recipe with the ``waveform_views`` hook, the features of its views.
        generator: the RNG of masks, crops and augmentations, on mel's device: a
            ``torch.Generator`` or the loop's per-clip
            :class:`~fastspec.masking.clip_rng.ClipRng` (every sampler accepts either), so the
            same clip draws the same however the batch is split over ranks; None: torch's
            default generator.
        frame_lengths: [B] valid frames per clip, or None when every clip fills ``T`` (and
            always None for views featurised whole).
    """

    mel: Tensor
    generator: Any = None
    frame_lengths: Tensor | None = None


class Recipe(nn.Module, ABC):
    """An ``nn.Module`` whose forward is one training step's loss (see :mod:`fastspec.recipes`).

    Subclasses implement :meth:`training_loss`; :meth:`forward` keeps the loop's call signature.
    """

    def forward(self, mel: Tensor, generator=None, frame_lengths=None) -> dict[str, Tensor]:
        """The loss dict of one micro-step (:class:`StepInput` describes the arguments)."""
        return self.training_loss(StepInput(mel, generator, frame_lengths))

    @abstractmethod
    def training_loss(self, batch: StepInput) -> dict[str, Tensor]:
        """``{"loss": scalar, ...}``: the scalar to minimise and, optionally, other scalar
        tensors (loss terms, collapse monitors) logged under their names."""


__all__ = ["Recipe", "StepInput"]
