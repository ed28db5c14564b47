"""Time and frequency stripes on the patch grid (SpecAugment-style, for fine-tuning).

SpecAugment (and AST's fine-tuning: ``timem=192`` of 1024 frames, ``freqm=48`` of 128 bins) masks
a few full-height time stripes and full-width frequency stripes of random width. On the patch
grid a time stripe is ``w`` consecutive time indices across all frequencies, a frequency stripe
``w`` frequency indices across all time. Stripes are drawn with a random orientation and width
and added in order until ``N - K`` tokens are masked, the last one trimmed at random to land on
the count exactly (:func:`~fastspec.masking.shapes.prefix_priority`), so fine-tuning batches can
drop the masked tokens like any other kind.
"""

from __future__ import annotations

import torch

from fastspec.masking.mask import Mask
from fastspec.masking.registry import register_mask_kind
from fastspec.masking.rng import MaskRng
from fastspec.masking.shapes import expected_shapes, prefix_priority


@register_mask_kind("time_freq")
def time_freq_mask(
    batch_size: int,
    grid: tuple[int, int],
    ratio: float,
    *,
    rng: MaskRng,
    max_time_width: int | None = None,
    max_freq_width: int | None = None,
    freq_share: float = 0.5,
    max_stripes: int | None = None,
) -> Mask:
    """Mask ``N - K`` tokens, ``K = int(N * (1 - ratio))``, as a union of stripes.

    Options:
        max_time_width: widest time stripe in time patches, widths uniform in
            ``1..max_time_width``; default ``max(1, T_p // 5)`` (AST: 192 of 1024 frames).
        max_freq_width: widest frequency stripe in frequency patches; default
            ``max(1, 3 * F_p // 8)`` (AST: 48 of 128 mel bins).
        freq_share: probability that a stripe runs along time (a frequency stripe). On a grid
            with F_p = 1 (full-frequency patches) a frequency stripe would cover everything, so
            only time stripes are drawn there.
        max_stripes: stripes drawn per row; default: enough to reach the count almost surely
            (a row that falls short gets uniformly random extra tokens).
    """
    t_p, f_p = grid
    n = t_p * f_p
    n_keep = int(n * (1.0 - ratio))
    max_tw = max(1, t_p // 5) if max_time_width is None else int(max_time_width)
    max_fw = max(1, 3 * f_p // 8) if max_freq_width is None else int(max_freq_width)
    if not (1 <= max_tw <= t_p and 1 <= max_fw <= f_p):
        raise ValueError(
            f"time_freq: widths must be in 1..{t_p} (time) and 1..{f_p} (frequency), "
            f"got {max_tw} and {max_fw}"
        )
    if not 0.0 <= freq_share <= 1.0:
        raise ValueError(f"time_freq: freq_share must be in [0, 1], got {freq_share}")
    if f_p == 1:
        freq_share = 0.0
    if max_stripes is None:
        mean_area = (1 - freq_share) * (1 + max_tw) / 2 * f_p + freq_share * (1 + max_fw) / 2 * t_p
        max_stripes = min(expected_shapes(n, n - n_keep, mean_area), 4 * n)
    elif max_stripes < 1:
        raise ValueError(f"max_stripes must be >= 1, got {max_stripes}")
    device = rng.device
    shape = (batch_size, max_stripes)

    is_freq = rng.uniform(*shape) < freq_share  # [B, R]
    max_w = torch.where(is_freq, max_fw, max_tw)
    width = 1 + rng.randint(max_w, shape)
    extent = torch.where(is_freq, f_p, t_p)
    start = rng.randint(extent - width + 1, shape)
    t = torch.arange(t_p, device=device).repeat_interleave(f_p)  # [N] time index of token n
    f = torch.arange(f_p, device=device).repeat(t_p)  # [N] frequency index of token n
    coord = torch.where(is_freq[..., None], f, t)  # [B, R, N] the coordinate a stripe spans
    cover = (coord >= start[..., None]) & (coord < (start + width)[..., None])
    # masked tokens are the priority-2/1 ones; keeping the complement means inverting it
    keep_priority = 2 - prefix_priority(cover, n - n_keep)
    mask, ids_keep, ids_restore = rng.select_top(batch_size, n, n_keep, keep_priority, 2)
    return Mask(mask=mask, ids_keep=ids_keep, ids_restore=ids_restore, grid=grid)
