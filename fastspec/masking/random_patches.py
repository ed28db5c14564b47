"""Uniform random patch masking (MaskSpec, Audio-MAE, MAE).

Every row keeps exactly ``K = int(N * (1 - ratio))`` tokens chosen uniformly at random without
replacement, the same count Audio-MAE's ``random_masking`` keeps. Drawing is one ``torch.rand``
plus sorts on the batch's device: no host sync and no data-dependent shapes.
"""

from __future__ import annotations

import torch

from fastspec.masking.mask import Mask, _invert_permutation
from fastspec.masking.registry import register_mask_kind


@register_mask_kind("random")
def random_mask(
    batch_size: int,
    grid: tuple[int, int],
    ratio: float,
    *,
    generator: torch.Generator | None,
    device: torch.device,
) -> Mask:
    """Hide ``N - K`` uniformly chosen patches per row, ``K = int(N * (1 - ratio))``."""
    n = grid[0] * grid[1]
    n_keep = int(n * (1.0 - ratio))
    # argsort of i.i.d. uniforms is a uniformly random permutation; its first K entries are a
    # uniform K-subset (ties have probability ~N^2 / 2^24 and only perturb the order slightly)
    noise = torch.rand(batch_size, n, generator=generator, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)  # [B, N] random order of grid indices
    # sort each part so ids_keep is ascending (memory-friendly gathers, order-free consumers)
    ids_keep = torch.sort(ids_shuffle[:, :n_keep], dim=1).values  # [B, K]
    ids_masked = torch.sort(ids_shuffle[:, n_keep:], dim=1).values  # [B, N - K]
    ids_order = torch.cat([ids_keep, ids_masked], dim=1)  # [B, N]: cat(kept, masked) order
    mask = torch.ones(batch_size, n, dtype=torch.bool, device=device)
    mask.scatter_(1, ids_keep, False)
    return Mask(mask=mask, ids_keep=ids_keep, ids_restore=_invert_permutation(ids_order), grid=grid)
