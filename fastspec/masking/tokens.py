"""Token drop and restore: the index plumbing between a :class:`~fastspec.masking.Mask` and a model.

Both ops are a single ``torch.gather`` over the token axis, so they run on the batch's device,
need no host sync, and pass gradients to the kept tokens (and, for :func:`restore_tokens`, to the
mask token).
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def restore_tokens(x_kept: Tensor, ids_restore: Tensor, mask_token: Tensor) -> Tensor:
    """Put kept tokens back at their grid positions and fill the rest with ``mask_token``.

    Args:
        x_kept: [B, K, D] kept tokens in ``ids_keep`` order (ascending grid index).
        ids_restore: [B, N] int64; ``ids_restore[b, n]`` is where original token ``n`` sits in
            ``cat(kept, masked)`` order (``Mask.ids_restore``), so a gather with it undoes the drop.
        mask_token: [D] the fill value for dropped tokens (usually a learned parameter).

    Returns:
        [B, N, D] with kept tokens in place and ``mask_token`` at every masked position.
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
    n = ids_restore.shape[1]
    # cast: under autocast x_kept is bf16/fp16 while the parameter stays fp32, and cat would
    # otherwise promote the whole sequence to fp32
    fill = mask_token.reshape(1, 1, d).to(x_kept.dtype).expand(b, n - k, d)
    full = torch.cat([x_kept, fill], dim=1)  # [B, N, D] in cat(kept, masked) order
    index = ids_restore.unsqueeze(-1).expand(-1, -1, d)
    return torch.gather(full, 1, index)
