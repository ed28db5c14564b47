"""Shared step of the structured samplers: add random shapes until a count is reached, exactly.

``inverse_block`` (blocks to keep) and ``time_freq`` (stripes to mask) both draw a fixed number R
of shapes per row, in order, and use the shortest prefix whose union reaches the target count;
the GMML loop ``while covered < target: add a shape`` without its data-dependent trip count.
:func:`prefix_priority` turns that into priorities for the exact top-K selection
(``MaskRng.select_top``): 2 for tokens of the shapes before the last one used, 1 for the tokens
the last one adds, 0 elsewhere. Selecting the top K then takes every earlier shape whole, a
uniformly random part of the last one to land on K exactly, and, in the rare row where all R
shapes fall short, uniformly random extra tokens. All of it is fixed-shape tensor work.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def prefix_priority(cover: Tensor, target: int) -> Tensor:
    """Priorities of the shortest prefix of shapes whose union holds ``target`` tokens.

    Args:
        cover: [B, R, N] bool, ``cover[b, r, n]`` = shape ``r`` of row ``b`` holds token ``n``;
            shapes in drawing order.
        target: the token count the union must reach.

    Returns:
        [B, N] int32 in {0, 1, 2} (see the module docstring).
    """
    b, r, n = cover.shape
    # first shape holding each token (R = none): weight shape i by R - i and take the max over
    # shapes; a multiply and a reduction, ~100x cheaper on CPU than argmax over the R axis
    weight = (r - torch.arange(r, device=cover.device)).to(torch.int32)[:, None]  # [R, 1]
    first = r - (cover * weight).amax(1).long()  # [B, N]
    counts = torch.zeros(b, r + 1, dtype=torch.int64, device=cover.device)
    counts.scatter_add_(1, first, torch.ones_like(first))
    union = counts[:, :r].cumsum(1)  # [B, R]: tokens covered by shapes 0..i
    # index of the shape that reaches the target (R - 1 when none does)
    last = (union < target).sum(1, keepdim=True).clamp_max(r - 1)  # [B, 1]
    return (first < last).to(torch.int32) * 2 + (first == last).to(torch.int32)


def expected_shapes(n_tokens: int, target: int, mean_area: float, margin: float = 2.0) -> int:
    """How many shapes to draw so their union reaches ``target`` of ``n_tokens`` almost surely.

    Shapes of mean area ``a`` dropped independently cover about ``N (1 - exp(-R a / N))``
    tokens; ``margin`` times the R that solves this for ``target``, plus 4, leaves a tail
    probability that the tests measure as zero at the defaults.
    """
    fraction = min(target / n_tokens, 1.0 - 1.0 / (2 * n_tokens))
    need = -n_tokens * math.log(1.0 - fraction) / max(mean_area, 1e-9)
    return max(1, math.ceil(margin * need) + 4)
