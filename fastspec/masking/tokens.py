"""Token drop and restore: the index plumbing between a :class:`~fastspec.masking.Mask` and a model.

- :func:`gather_tokens`: keep the listed tokens of a token tensor (one ``torch.gather``).
- the fused drop + patch embedding is the encoders' first layer:
  :func:`fastspec.models.patch_embed.kept_patch_embedding`.
- :func:`restore_tokens`: kept tokens back on the grid with a mask token (and optional
  positions) for a decoder; a Triton kernel on CUDA, cat-then-gather elsewhere.

The backend is :func:`~fastspec.masking.patch_embed_backend` (``FASTSPEC_PATCH_EMBED``). All run
on the batch's device without a host sync and pass gradients to the weights / kept tokens /
mask token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastspec.kernels.masking_reference import restore_tokens_ref
from fastspec.masking.backend import patch_embed_backend


def gather_tokens(x: Tensor, ids_keep: Tensor) -> Tensor:
    """Keep the tokens listed in ``ids_keep``, in that order.

    Args:
        x: [B, N, D] tokens (or patches) in grid order.
        ids_keep: [B, K] int64, indices into the N axis of ``x`` (``Mask.ids_keep``).

    Returns:
        [B, K, D] with ``out[b, k] = x[b, ids_keep[b, k]]``.
    """
    if x.dim() != 3:
        raise ValueError(f"gather_tokens: x must be [B, N, D], got shape {tuple(x.shape)}")
    if ids_keep.dim() != 2 or ids_keep.shape[0] != x.shape[0]:
        raise ValueError(
            f"gather_tokens: ids_keep must be [B, K] with B = {x.shape[0]}, "
            f"got shape {tuple(ids_keep.shape)}"
        )
    # expand is a view: the gather reads D contiguous values per kept token, no index copy
    index = ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, index)


def restore_tokens(
    x_kept: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Tensor | None = None
) -> Tensor:
    """Put kept tokens back at their grid positions and fill the rest with ``mask_token``.

    Args:
        x_kept: [B, K, D] kept tokens in ``ids_keep`` order (ascending grid index).
        ids_restore: [B, N] int64; ``ids_restore[b, n]`` is where original token ``n`` sits in
            ``cat(kept, masked)`` order (``Mask.ids_restore``), so a gather with it undoes the drop.
        mask_token: [D] the fill value for dropped tokens (usually a learned parameter).
        pos: [N, D] positions added to every restored token (fused into the same pass), or None.

    Returns:
        [B, N, D] with kept tokens in place and ``mask_token`` (cast to ``x_kept``'s dtype) at
        every masked position, plus ``pos``; dtype of ``x_kept``, promoted with ``pos``'s.
    """
    if x_kept.dim() != 3:
        raise ValueError(
            f"restore_tokens: x_kept must be [B, K, D], got shape {tuple(x_kept.shape)}"
        )
    b, k, d = x_kept.shape
    if ids_restore.dim() != 2 or ids_restore.shape[0] != b or ids_restore.shape[1] < k:
        raise ValueError(
            f"restore_tokens: ids_restore must be [B, N] with B = {b} and N >= K = {k}, "
            f"got shape {tuple(ids_restore.shape)}"
        )
    if mask_token.numel() != d:
        raise ValueError(
            f"restore_tokens: mask_token must have D = {d} elements, "
            f"got shape {tuple(mask_token.shape)}"
        )
    if patch_embed_backend(x_kept.device) == "triton":
        from fastspec.kernels.masking_restore import restore_tokens as fused

        return fused(x_kept, ids_restore, mask_token, pos)
    # the cast keeps bf16/fp16 tokens in their dtype under autocast (the parameter is fp32)
    return restore_tokens_ref(x_kept, ids_restore, mask_token, pos)
