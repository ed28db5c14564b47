"""The :class:`Mask` record shared by every mask sampler, and the index maths behind it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fastspec.kernels.masking_reference import compact_keep


@dataclass(frozen=True, eq=False)
class Mask:
    """Which patch tokens of a ``(T_patches, F_patches)`` grid are hidden, per clip.

    Token ``n`` is the patch at time index ``t`` and frequency index ``f`` with
    ``n = t * F_patches + f`` (time-major), the order :meth:`ViTEncoder.patchify` produces.
    All tensors live on the batch's device.

    With ``num_masks = M > 1`` (:func:`~fastspec.masking.sample_mask`), B counts masks, not
    clips: row ``b * M + j`` is mask ``j`` of clip ``b`` (pair it with
    ``mel.repeat_interleave(M, 0)``).

    Attributes:
        mask: [B, N] bool, True = masked (hidden from the encoder, or corrupted). For the
            dropping kinds every row masks exactly ``N - K`` tokens, the complement of
            ``ids_keep``. For ``group`` (not dropped) it is the per-patch threshold on
            ``coverage`` and its row counts vary; see ``ids_keep``.
        ids_keep: [B, K] int64, grid indices of the kept tokens, ascending within each row;
            every row keeps the same K, so shapes never depend on the data. For ``group``: the
            K least-covered patches (K from the ratio), which are unmasked except when a row's
            coverage overshoots the ratio.
        ids_restore: [B, N] int64; ``ids_restore[b, n]`` is the position of original token ``n``
            in ``cat(kept, masked)`` order, i.e. the inverse permutation of
            ``cat(ids_keep, ids_masked)``. Gathering with it undoes the drop
            (:func:`~fastspec.masking.restore_tokens`).
        grid: (T_patches, F_patches), with N = T_patches * F_patches.
        spec_mask: ``group`` only: [B, T, F] bool, the spectrogram bins under a rectangle
            (T = T_patches * pt, F = F_patches * pf); feed it to
            :func:`~fastspec.masking.apply_group_mask`. None for the other kinds.
        coverage: ``group`` only: [B, N] float32, the covered fraction of each patch.
    """

    mask: Tensor
    ids_keep: Tensor
    ids_restore: Tensor
    grid: tuple[int, int]
    spec_mask: Tensor | None = None
    coverage: Tensor | None = None

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
        # prefix sums, not a sort: kept tokens ascending, then masked tokens ascending
        ids_keep, ids_restore = compact_keep(~mask, n_keep)
        return cls(mask, ids_keep, ids_restore, grid)
