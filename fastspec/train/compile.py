"""What ``train.compile`` (``--compile``) compiles: every transformer block, and the loss.

Two policies were measured on the CPU demo model (maskspec, ``vit_mini_patch16`` with its 2-block
decoder, 8 clips, Inductor, a busy 2-core CPU): compiling the recipe's whole forward
(``recipe.compile()``) broke the graph 3 times, where the mask sampler draws from the loop's
``torch.Generator`` (Dynamo cannot put a generator into a graph), and its first step took 197 s;
per block plus the loss had no graph break, 3 graphs (one encoder block shape, one decoder block
shape, the loss) and a first step of 64 s; steps after the first ran at the eager speed or
better in both. ASiT (student and EMA teacher blocks plus its loss) likewise had no break and 3
graphs; ATST-Frame's loss stage (``forward_views``: both encoders, heads and loss) traced as one
graph without a break. Per block, as torchtitan does, small graphs compile once and are reused across depth,
and the RNG-driven view making stays eager.

So :func:`compile_recipe` compiles, in place (module names and checkpoints stay the same):

- each block of every ``blocks`` ModuleList (encoders, decoders, teachers);
- the recipe's loss stage, the first of ``forward_loss`` (MaskSpec, ASiT) or ``forward_views``
  (ATST: encoders on prepared views, heads and loss) that it has.

Shapes are fixed per run (crop lengths are in frames of the run's front end), so after the first
step nothing recompiles; ``dynamic=False`` keeps it so. ``tests/test_compile.py`` checks that a
demo run has no graph break and no recompile across steps.
"""

from __future__ import annotations

import torch
from torch import nn

from fastspec._logging import get_logger

__all__ = ["LOSS_STAGES", "compile_recipe"]

# the recipe method holding the loss, in order of preference
LOSS_STAGES = ("forward_loss", "forward_views")

log = get_logger("fastspec.train")


def compile_recipe(recipe: nn.Module, *, backend: str = "inductor") -> list[str]:
    """Compile ``recipe``'s blocks and loss stage in place; returns what was compiled.

    The names are module paths (``encoder.blocks.0``) and the loss method (``forward_loss``).
    """
    compiled = []
    for name, module in recipe.named_modules():
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            for index, block in enumerate(blocks):
                block.compile(backend=backend, dynamic=False)
                compiled.append(f"{name + '.' if name else ''}blocks.{index}")
    for stage in LOSS_STAGES:
        method = getattr(recipe, stage, None)
        if method is not None:
            # an instance attribute shadows the class method: forward() calls the compiled one
            setattr(recipe, stage, torch.compile(method, backend=backend, dynamic=False))
            compiled.append(stage)
            break
    log.info(f"compiled {len(compiled)} pieces: {', '.join(_summarise(compiled))}")
    return compiled


def _summarise(names: list[str]) -> list[str]:
    """``encoder.blocks.0..3`` instead of four names."""
    groups: dict[str, list[str]] = {}
    for name in names:
        head, _, index = name.rpartition(".")
        if index.isdigit():
            groups.setdefault(head, []).append(index)
        else:
            groups[name] = []
    return [f"{head}.{idx[0]}..{idx[-1]}" if idx else head for head, idx in groups.items()]
