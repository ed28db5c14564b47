"""The :class:`Mask` record shared by every mask sampler, and the index maths behind it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Mask:
    """Which patch tokens of a ``(T_patches, F_patches)`` grid are hidden, per clip.

    Token ``n`` is the patch at time index ``t`` and frequency index ``f`` with
    ``n = t * F_patches + f`` (time-major), the order :meth:`ViTEncoder.patchify` produces.
    All tensors live on the batch's device.

    Attributes:
        mask: [B, N] bool, True = masked (hidden from the encoder).
        ids_keep: [B, K] int64, grid indices of the kept tokens, ascending within each row;
            every row keeps the same K, so shapes never depend on the data.
        ids_restore: [B, N] int64; ``ids_restore[b, n]`` is the position of original token ``n``
            in ``cat(kept, masked)`` order, i.e. the inverse permutation of
            ``cat(ids_keep, ids_masked)``. Gathering with it undoes the drop
            (:func:`~fastspec.masking.restore_tokens`).
        grid: (T_patches, F_patches), with N = T_patches * F_patches.
    """

    mask: Tensor
    ids_keep: Tensor
    ids_restore: Tensor
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        # shape checks only: value checks would need a host sync
        n = self.grid[0] * self.grid[1]
        b = self.mask.shape[0]
        if self.mask.shape != (b, n) or self.mask.dtype != torch.bool:
            raise ValueError(
                f"Mask.mask must be bool [B, {n}] for grid {self.grid}, "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}"
            )
        if self.ids_restore.shape != (b, n):
            raise ValueError(
                f"Mask.ids_restore must be [{b}, {n}], got {tuple(self.ids_restore.shape)}"
            )
        if self.ids_keep.dim() != 2 or self.ids_keep.shape[0] != b or self.ids_keep.shape[1] > n:
            raise ValueError(
                f"Mask.ids_keep must be [{b}, K] with K <= {n}, got {tuple(self.ids_keep.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def num_tokens(self) -> int:
        """N = T_patches * F_patches."""
        return self.mask.shape[1]

    @property
    def n_keep(self) -> int:
        """K, the number of tokens every row keeps."""
        return self.ids_keep.shape[1]

    @classmethod
    def from_bool(cls, mask: Tensor, grid: tuple[int, int], n_keep: int) -> Mask:
        """Build the index tensors from a boolean mask that keeps exactly ``n_keep`` per row.

        For samplers that draw a mask shape first (blocks, spans). ``n_keep`` is passed in
        rather than counted, because counting would sync the host; a row that keeps a different
        number gives wrong indices, so samplers must guarantee it.

        Args:
            mask: [B, N] bool, True = masked.
            grid: (T_patches, F_patches).
            n_keep: K, the number of False entries in every row.
        """
        b, n = mask.shape
        # stable sort of 0 (kept) before 1 (masked): kept ascending, then masked ascending
        ids_order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # [B, N]
        return cls(mask, ids_order[:, :n_keep], _invert_permutation(ids_order), grid)


def _invert_permutation(ids_order: Tensor) -> Tensor:
    """[B, N] permutation -> its inverse, by one scatter (cheaper than a second argsort)."""
    b, n = ids_order.shape
    positions = torch.arange(n, device=ids_order.device).expand(b, n)
    return torch.empty_like(ids_order).scatter_(1, ids_order, positions)
