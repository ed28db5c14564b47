"""Group masking (ASiT's GMML): random rectangles on the spectrogram, filled, not dropped.

ASiT (``GMML_drop_rand_patches`` / ``GMML_replace_patches``) corrupts each log-mel crop on the
CPU, one clip at a time::

    target ~ U(min(0.5, p), p) * T * F                        p = drop_perc = 0.7
    while mask.sum() < target:                                 a host sync per rectangle
        t0 = randint(0, T - align) // align * align            (same for f0 with F)
        h  = round(min(randint(align, int(0.3 T)), T - t0) / align) * align   (same for w)
        x[t0:t0+h, f0:f0+w] = noise | zeros | another clip's bins at the same place
        mask[t0:t0+h, f0:f0+w] = 1

so the covered fraction lands in the 50-70 % band plus the overshoot of the last rectangle, and
rectangles align to spectrogram bins, not to patches (``align = 1`` for audio).

Here the loop runs without its data-dependent trip count: R rectangles per row are drawn at once,
a rasteriser (Triton on CUDA, ``fastspec.kernels.masking.rect_first_cover``) writes for every bin
the index of the first rectangle covering it, a per-row histogram of those indices gives the
coverage after each prefix of rectangles, and the bins whose first rectangle lies within the
prefix that first reaches the target are the mask: exactly the rectangles ASiT's loop would have
stopped at, for the same draws. :func:`apply_group_mask` then fills them.

Patch level (:class:`~fastspec.masking.Mask`): ``coverage`` is the covered fraction of each
patch, ``mask`` marks patches whose coverage exceeds ``threshold`` (default 0.5: a patch counts as
masked when most of its bins are; ASiT's loss itself is per bin, on ``spec_mask``). Group-masked
tokens are not dropped, but a Mask must still have a fixed K: ``K = int(N * (1 - ratio))`` from
the top of the band, and ``ids_keep`` lists the K least-covered patches (ties at random). When a
row is covered no more than the ratio, they are all unmasked; a row that overshoots the ratio may
see a few partly covered patches among them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastspec._logging import notice_once
from fastspec.kernels.masking_reference import rect_first_cover_ref
from fastspec.masking.mask import Mask
from fastspec.masking.registry import register_mask_kind
from fastspec.masking.rng import MaskRng
from fastspec.masking.shapes import expected_shapes

FILLS = ("noise", "zeros", "paste", "mix")


def _rect_sizes(extent: int, max_block: float, align: int) -> tuple[int, int]:
    """``(low, high)`` of ASiT's ``randint(align, int(extent * max_block))`` (high exclusive),
    widened so the range is never empty on small spectrograms."""
    return align, max(int(extent * max_block), align + 1)


def _draw_rects(
    rng: MaskRng, rows: int, n_rects: int, extent: int, max_block: float, align: int
) -> tuple[Tensor, Tensor]:
    """Start and end ([B, R] int64) along one axis, following ASiT's sampling (the start is
    uniform over every aligned position; ASiT's ``randint(0, extent - align)`` skips the last)."""
    shape = (rows, n_rects)
    start = rng.randint(extent - align + 1, shape) // align * align
    low, high = _rect_sizes(extent, max_block, align)
    size = low + rng.randint(high - low, shape)
    size = torch.minimum(size, extent - start)
    # Python's round: half to even, as ASiT's round(h / align) * align
    size = torch.round(size / align).to(torch.int64) * align
    return start, start + size


def _first_cover(rects: Tensor, n_time: int, n_freq: int, backend: str) -> Tensor:
    if backend == "triton":
        from fastspec.kernels.masking import rect_first_cover

        return rect_first_cover(rects, n_time, n_freq)
    return rect_first_cover_ref(rects, n_time, n_freq)


@register_mask_kind("group")
def group_mask(
    batch_size: int,
    grid: tuple[int, int],
    ratio: float,
    *,
    rng: MaskRng,
    patch_size: int | tuple[int, int] = 16,
    min_ratio: float = 0.5,
    max_block: float = 0.3,
    align: int = 1,
    threshold: float = 0.5,
    max_rects: int | None = None,
) -> Mask:
    """GMML rectangles on the ``(T_p * pt, F_p * pf)`` spectrogram until a random target.

    ``ratio`` is the top of the band (ASiT's ``drop_perc``, 0.7): each row's target coverage is
    uniform in ``[min(min_ratio, ratio), ratio]``, and rectangles are added until the covered
    fraction of bins reaches it (so it can exceed ``ratio`` by at most one rectangle,
    ``max_block**2`` of the area).

    Options:
        patch_size: (pt, pf) bins per patch (16 x 16 for ASiT's ViT), or one int.
        min_ratio: bottom of the band (ASiT: 0.5).
        max_block: largest rectangle side as a fraction of the spectrogram's (ASiT: 0.3).
        align: rectangle corners and sides snap to multiples of this many bins (ASiT audio: 1;
            set it to the patch size for patch-aligned rectangles).
        threshold: a patch is ``mask``-ed when more than this fraction of its bins is covered.
        max_rects: rectangles drawn per row (the rasteriser costs ``R x T x F`` per row);
            default: twice the count that reaches ``ratio`` on average, plus 4. A row whose R
            rectangles fall short of its target (not seen at the defaults) keeps the smaller
            coverage.

    Returns a :class:`Mask` with ``spec_mask`` ([B, T, F] bool) and ``coverage`` ([B, N]).
    """
    pt, pf = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    t_p, f_p = grid
    n_time, n_freq = t_p * pt, f_p * pf
    if not 0.0 <= min_ratio < 1.0 or not 0.0 < max_block <= 1.0:
        raise ValueError(
            f"group: min_ratio must be in [0, 1) and max_block in (0, 1], "
            f"got {min_ratio} and {max_block}"
        )
    if not 1 <= align <= min(n_time, n_freq):
        raise ValueError(f"group: align must be in 1..{min(n_time, n_freq)}, got {align}")
    n_bins = n_time * n_freq
    if max_rects is None:
        # mean side of ASiT's randint(align, high): (align + high - 1) / 2, ignoring the clip
        sides = [(sum(_rect_sizes(e, max_block, align)) - 1) / 2 for e in (n_time, n_freq)]
        max_rects = expected_shapes(n_bins, int(ratio * n_bins), sides[0] * sides[1])
    if not 1 <= max_rects < 1 << 15:
        raise ValueError(f"group: max_rects must be in 1..32767, got {max_rects}")
    rows, device = batch_size, rng.device

    low = min(min_ratio, ratio)
    target = (low + (ratio - low) * rng.uniform(rows, 1)) * n_bins  # [B, 1] bins
    t0, t1 = _draw_rects(rng, rows, max_rects, n_time, max_block, align)
    f0, f1 = _draw_rects(rng, rows, max_rects, n_freq, max_block, align)
    rects = torch.stack([t0, t1, f0, f1], dim=2)  # [B, R, 4]

    first = _first_cover(rects, n_time, n_freq, rng.backend).view(rows, -1).long()  # [B, T*F]
    counts = torch.zeros(rows, max_rects + 1, dtype=torch.int64, device=device)
    # a histogram of first indices per row; not bincount, which reads its input's max back
    ones = torch.ones(1, 1, dtype=torch.int64, device=device).expand_as(first)
    counts.scatter_add_(1, first, ones)
    covered = counts[:, :max_rects].cumsum(1)  # [B, R] bins covered by rectangles 0..i
    # rectangles used = 1 + how many prefixes are still short of the target (ASiT's loop count)
    n_used = ((covered < target).sum(1, keepdim=True) + 1).clamp_max(max_rects)  # [B, 1]
    spec_mask = (first < n_used).view(rows, n_time, n_freq)

    per_patch = spec_mask.view(rows, t_p, pt, f_p, pf).sum((2, 4), dtype=torch.int32)
    per_patch = per_patch.view(rows, t_p * f_p)  # [B, N] covered bins per patch
    coverage = per_patch.float() / (pt * pf)
    n = t_p * f_p
    n_keep = int(n * (1.0 - ratio))
    # least-covered patches first: priority = uncovered bins (0..pt*pf)
    _, ids_keep, ids_restore = rng.select_top(
        rows, n, n_keep, pt * pf - per_patch, (pt * pf).bit_length()
    )
    return Mask(
        mask=coverage > threshold,
        ids_keep=ids_keep,
        ids_restore=ids_restore,
        grid=grid,
        spec_mask=spec_mask,
        coverage=coverage,
    )


def apply_group_mask(
    mel: Tensor,
    spec_mask: Tensor,
    fill: str = "noise",
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    noise_mean: float = 0.0,
    noise_std: float = 1.0,
    paste_prob: float = 0.5,
    pool: Tensor | None = None,
    pool_offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Corrupt the covered bins of a batch of log-mels (ASiT's GMML fill).

    Args:
        mel: [C, T, F] log-mel of C clips.
        spec_mask: [C * M, T, F] bool from ``sample_mask("group", C, ..., num_masks=M).spec_mask``;
            row ``c * M + j`` corrupts clip ``c``.
        fill: ``noise`` (``noise_mean + noise_std * N(0, 1)`` per bin, ASiT's ``normal_()``),
            ``zeros``, ``paste`` (the same bins of another clip of the batch, chosen uniformly
            among the other C - 1; ASiT's ``GMML_replace_list``), or ``mix`` (per row, paste
            with probability ``paste_prob``, else noise: ASiT's default of replacing with
            probability 1/2 and keeping the noise-corrupted crop otherwise).
        seed, generator: randomness of the fill, as in :func:`~fastspec.masking.sample_mask`
            (Philox on CUDA, torch generator elsewhere); no host sync.
        pool, pool_offset: the clips to paste from, [P, T, F] (default: ``mel`` itself), clip
            ``c`` of ``mel`` being row ``pool_offset + c`` of it. Under torchrun the pool is the
            step's whole batch gathered from every rank, so partners are drawn over the global
            batch exactly as one process would draw them.

    Returns:
        ``(corrupted [C * M, T, F] in mel's dtype, spec_mask)``. ``mel`` is not modified.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if mel.dim() != 3 or spec_mask.dim() != 3 or spec_mask.shape[1:] != mel.shape[1:]:
        raise ValueError(
            f"mel must be [C, T, F] and spec_mask [C * M, T, F] on the same (T, F), got "
            f"{tuple(mel.shape)} and {tuple(spec_mask.shape)}"
        )
    clips, rows = mel.shape[0], spec_mask.shape[0]
    if rows % clips:
        raise ValueError(f"spec_mask has {rows} rows, not a multiple of the {clips} clips")
    if spec_mask.dtype != torch.bool:
        raise ValueError(f"spec_mask must be bool, got {spec_mask.dtype}")
    per_clip = rows // clips
    rng = MaskRng(mel.device, seed=seed, generator=generator)
    source = mel.repeat_interleave(per_clip, 0) if per_clip > 1 else mel  # [rows, T, F]
    pool = mel if pool is None else pool
    if fill in ("paste", "mix") and pool.shape[0] == 1:
        notice_once(
            "masking.group.paste1",
            "apply_group_mask: a batch of one clip has no other clip to paste from; "
            "filling with noise instead",
        )
        fill = "noise"
    if fill == "zeros":
        return source.masked_fill(spec_mask, 0.0), spec_mask

    if fill != "paste":
        noise = (noise_mean + noise_std * rng.normal(*source.shape)).to(mel.dtype)
        if fill == "noise":
            return torch.where(spec_mask, noise, source), spec_mask
    # another clip than the row's own: shift its index by 1..C-1, uniformly
    own = torch.arange(rows, device=mel.device) // per_clip + pool_offset
    n_pool = pool.shape[0]
    other = (own + 1 + rng.randint(n_pool - 1, (rows,))) % n_pool  # [rows]
    replacement = pool[other]  # [rows, T, F]
    if fill == "mix":
        use_paste = (rng.uniform(rows) < paste_prob)[:, None, None]
        replacement = torch.where(use_paste, replacement, noise)
    return torch.where(spec_mask, replacement, source), spec_mask
