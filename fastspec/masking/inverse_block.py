"""Inverse block masking (EAT, after data2vec 2.0): square-ish blocks are *kept*, the rest masked.

data2vec 2.0's ``compute_block_mask_2d(..., inverse_mask=True)`` draws block centres uniformly
over the grid, grows each into a ``mask_length x mask_length`` block clipped at the grid edges,
and then adds or removes random tokens per row until every row keeps the same count. Here the
same blocks are drawn on the device and the count is made exact by
:func:`~fastspec.masking.shapes.prefix_priority`: blocks are added in drawing order until the
kept union reaches K, the last block is trimmed at random to land on K. So the kept region is a
union of whole blocks plus one partial block, and every row keeps exactly K tokens, which lets
EAT's student drop the masked tokens.
"""

from __future__ import annotations

import torch

from fastspec.masking.mask import Mask
from fastspec.masking.registry import register_mask_kind
from fastspec.masking.rng import MaskRng
from fastspec.masking.shapes import expected_shapes, prefix_priority


def _mean_clipped_length(extent: int, size: int) -> float:
    """Mean length of a ``size`` window centred uniformly on ``0..extent-1``, clipped (plain
    Python: a shape constant, never a tensor the compiler would have to trace)."""
    starts = [c - size // 2 for c in range(extent)]
    return sum(min(s + size, extent) - max(s, 0) for s in starts) / extent


@register_mask_kind("inverse_block")
def inverse_block_mask(
    batch_size: int,
    grid: tuple[int, int],
    ratio: float,
    *,
    rng: MaskRng,
    block_size: int | tuple[int, int] = 5,
    max_blocks: int | None = None,
) -> Mask:
    """Keep ``K = int(N * (1 - ratio))`` tokens per row as a union of random blocks.

    Options:
        block_size: (time, frequency) size of a kept block in patches, or one int for a square
            (EAT / data2vec 2.0: 5). Blocks are centred on a uniformly drawn token and clipped
            at the grid edges, so edge tokens are kept slightly less often than central ones.
        max_blocks: blocks drawn per row (the tensor work is ``B x max_blocks x N``); default:
            enough that the union reaches K with near certainty. Should a row fall short anyway,
            its remaining kept tokens are drawn uniformly.
    """
    t_p, f_p = grid
    n = t_p * f_p
    n_keep = int(n * (1.0 - ratio))
    bt, bf = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    if bt < 1 or bf < 1:
        raise ValueError(f"block_size must be positive, got {block_size!r}")
    if max_blocks is None:
        mean_area = _mean_clipped_length(t_p, bt) * _mean_clipped_length(f_p, bf)
        max_blocks = min(expected_shapes(n, n_keep, mean_area), 4 * n)
    elif max_blocks < 1:
        raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
    device = rng.device

    centre = rng.randint(n, (batch_size, max_blocks))  # [B, R] token index of each centre
    t0 = torch.div(centre, f_p, rounding_mode="floor") - bt // 2
    f0 = centre % f_p - bf // 2
    t = torch.arange(t_p, device=device)
    f = torch.arange(f_p, device=device)
    in_t = (t >= t0[..., None]) & (t < t0[..., None] + bt)  # [B, R, T_p]
    in_f = (f >= f0[..., None]) & (f < f0[..., None] + bf)  # [B, R, F_p]
    cover = (in_t[..., :, None] & in_f[..., None, :]).reshape(batch_size, max_blocks, n)
    priority = prefix_priority(cover, n_keep)
    mask, ids_keep, ids_restore = rng.select_top(batch_size, n, n_keep, priority, 2)
    return Mask(mask=mask, ids_keep=ids_keep, ids_restore=ids_restore, grid=grid)
