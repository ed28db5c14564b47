"""Fused token drop + patch embedding: the first layer of every encoder, on kept patches only.

:func:`kept_patch_embedding` gives the function that embeds only the kept patches of a log-mel
and adds their positions, straight from the mel (no [B, N, pt * pf] patch tensor): the fused
Triton kernel (``fastspec.kernels.patch_embed.embed_kept_patches``) on CUDA, gather-then-linear
(``fastspec.kernels.masking_reference.embed_kept_patches_ref``) elsewhere. The backend is
:func:`~fastspec.masking.patch_embed_backend` (``FASTSPEC_PATCH_EMBED``). Both run on the
batch's device without a host sync and pass gradients to the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fastspec.kernels.masking_reference import embed_kept_patches_ref
from fastspec.masking.backend import patch_embed_backend


def kept_patch_embedding(device: torch.device) -> Callable[..., Tensor]:
    """The kept-patch embedding of the backend chosen for ``device``.

    Either function is called as ``embed(mel, ids_keep, weight, bias, pos, patch_size)`` and
    equals ``linear(gather_tokens(patchify(mel), ids_keep), weight, bias) + pos[ids_keep]``
    (computed exactly that way by the torch backend), without materialising the N patches:

    - mel: [B, T, F] log-mel, T and F multiples of ``patch_size`` (pt, pf);
    - ids_keep: [B, K] integer patch-grid indices to keep, or None for all N;
    - weight: [D, pt * pf]; bias: [D] or None (an ``nn.Linear``'s parameters);
    - pos: [N, D] positions of the full grid (no gradient);
    - returns [B, K, D] in ``pos``'s dtype (under autocast the matmul runs in the autocast
      dtype and the fp32 positions promote the sum, as in the reference).
    """
    if patch_embed_backend(device) == "triton":
        # imported here: Triton is optional, and only this backend needs it
        from fastspec.kernels.patch_embed import embed_kept_patches

        return embed_kept_patches
    return embed_kept_patches_ref


__all__ = ["kept_patch_embedding"]
