"""What a recipe declares beside its code: settings section, defaults, constructor options.

Each recipe module ends with ``RECIPE_SPECS = (RecipeSpec(...),)``; ``fastspec.recipes`` collects
them, and the run config (``fastspec.train.config``) builds its recipe sections, its defaults and
the recipe's constructor arguments from them, so adding a recipe touches one file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn


def no_options(cfg: Any) -> dict:
    """A recipe that takes no options from the run config."""
    del cfg
    return {}


@dataclass(frozen=True)
class RecipeSpec:
    """One buildable recipe.

    Attributes:
        name: what ``--recipe`` / ``recipe=`` says (``asit``).
        cls: the ``nn.Module`` built as ``cls(encoder, **options(cfg))``.
        options: the run config -> the constructor's keyword arguments (it reads the recipe's
            section and shared sections such as ``masking``; duck-typed, no import of train).
        section: name of the recipe's own config section (``asit`` -> ``asit.fill=noise``), or
            None; recipes may share one (both ATST recipes use ``atst``).
        settings: the dataclass of that section, checked in its ``__post_init__``.
        paper: ``dotted.key -> value`` applied over the run defaults for real data (``--data``).
        demo: the same for the CPU demo (about a minute on 2 cores).
    """

    name: str
    cls: Callable[..., nn.Module]
    options: Callable[[Any], dict] = no_options
    section: str | None = None
    settings: type | None = None
    paper: Mapping[str, Any] = field(default_factory=dict)
    demo: Mapping[str, Any] = field(default_factory=dict)


__all__ = ["RecipeSpec", "no_options"]
