"""Time-span masking (ATST-Frame): whole time steps are masked in spans of L tokens.

ATST-Frame masks frame tokens in spans of 5 (65 %, at least 2 spans) with the wav2vec 2.0 /
HuggingFace ``compute_mask_indices`` recipe, whose spans may overlap, so the masked fraction is
only an upper bound and varies per clip. Here the count is exact and the spans never overlap:

    M = T_p - int(T_p * (1 - ratio))    masked time steps (at least ``min_spans * L``)
    S = M // L spans, one of them L + (M - S * L) long, the others exactly L

Placing S non-overlapping spans uniformly is choosing S of the ``T_p - M + S`` slots left when
each span shrinks to one slot (stars and bars): an exact top-S random subset, which the same
selection kernel as ``random`` draws. Adjacent spans may touch, so masked runs are at least L
long. On a grid with F_p > 1 every token of a masked time step is masked.
"""

from __future__ import annotations

import torch

from fastspec.kernels.masking_reference import compact_keep
from fastspec.masking.mask import Mask
from fastspec.masking.registry import register_mask_kind
from fastspec.masking.rng import MaskRng


def span_counts(n_time: int, ratio: float, span_length: int, min_spans: int) -> tuple[int, int]:
    """``(M, S)``: masked time steps and spans for ``n_time`` steps (see the module docstring)."""
    masked = max(n_time - int(n_time * (1.0 - ratio)), min_spans * span_length)
    if masked > n_time:
        raise ValueError(
            f"time_span: {min_spans} spans of {span_length} need {min_spans * span_length} time "
            f"steps, the grid has {n_time}"
        )
    return masked, masked // span_length


@register_mask_kind("time_span")
def time_span_mask(
    batch_size: int,
    grid: tuple[int, int],
    ratio: float,
    *,
    rng: MaskRng,
    span_length: int = 5,
    min_spans: int = 2,
) -> Mask:
    """Mask ``M`` whole time steps per row in non-overlapping spans of ``span_length``.

    Options:
        span_length: L, time steps per span (ATST-Frame: 5).
        min_spans: at least this many spans, so at least ``min_spans * L`` steps are masked
            even when ``ratio`` asks for fewer (ATST-Frame: 2).

    K = ``(T_p - M) * F_p`` tokens are kept per row.
    """
    if span_length < 1 or min_spans < 1:
        raise ValueError(
            f"span_length and min_spans must be >= 1, got {span_length} and {min_spans}"
        )
    t_p, f_p = grid
    masked, n_spans = span_counts(t_p, ratio, span_length, min_spans)
    device = rng.device
    extra = masked - n_spans * span_length  # 0 <= extra < L, added to one span

    # stars and bars: S distinct slots out of T_p - M + S, ascending, uniformly
    n_slots = t_p - masked + n_spans
    _, slots, _ = rng.select_top(batch_size, n_slots, n_spans)  # [B, S]
    long_span = rng.randint(n_spans, (batch_size, 1))  # [B, 1] which span gets the extra
    j = torch.arange(n_spans, device=device)
    start = slots + j * (span_length - 1) + extra * (j > long_span)  # [B, S]
    length = span_length + extra * (j == long_span)  # [B, S]

    # spans never overlap: +1 at each start, -1 at each end, and a running sum marks them
    edges = torch.zeros(batch_size, t_p + 1, dtype=torch.int32, device=device)
    edges.scatter_add_(1, start, torch.ones_like(start, dtype=torch.int32))
    edges.scatter_add_(1, start + length, torch.full_like(start, -1, dtype=torch.int32))
    masked_t = edges[:, :t_p].cumsum(1) > 0  # [B, T_p]
    mask = masked_t.repeat_interleave(f_p, dim=1)  # [B, N], token n = t * F_p + f
    n_keep = (t_p - masked) * f_p
    ids_keep, ids_restore = compact_keep(~mask, n_keep)
    return Mask(mask=mask, ids_keep=ids_keep, ids_restore=ids_restore, grid=grid)
