"""Uniform random patch masking (MaskSpec, Audio-MAE, MAE).

Every row keeps exactly ``K = int(N * (1 - ratio))`` tokens chosen uniformly at random without
replacement, the same count Audio-MAE's ``random_masking`` keeps. On CPU the draw is Audio-MAE's
argsort of uniform noise (the K smallest are kept); on CUDA one Triton kernel draws Philox bits
and selects the K tokens by radix select, writing mask, ``ids_keep`` and ``ids_restore`` at once.
No host sync and no data-dependent shapes either way.
"""

from __future__ import annotations

from fastspec.masking.mask import Mask
from fastspec.masking.registry import register_mask_kind
from fastspec.masking.rng import MaskRng


@register_mask_kind("random")
def random_mask(batch_size: int, grid: tuple[int, int], ratio: float, *, rng: MaskRng) -> Mask:
    """Hide ``N - K`` uniformly chosen patches per row, ``K = int(N * (1 - ratio))``."""
    n = grid[0] * grid[1]
    n_keep = int(n * (1.0 - ratio))
    mask, ids_keep, ids_restore = rng.select_top(batch_size, n, n_keep)
    return Mask(mask=mask, ids_keep=ids_keep, ids_restore=ids_restore, grid=grid)
