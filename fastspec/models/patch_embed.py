"""Fused token drop + patch embedding: the first layer of every encoder, on kept patches only.

:func:`embed_kept_patches` embeds only the kept patches of a log-mel and adds their positions,
straight from the mel (no [B, N, pt * pf] patch tensor): the fused Triton kernel on CUDA
(``fastspec.kernels.patch_embed``), gather-then-linear elsewhere. The backend is
:func:`~fastspec.masking.patch_embed_backend` (``FASTSPEC_PATCH_EMBED``). Runs on the batch's
device without a host sync and passes gradients to the weights.
"""

from __future__ import annotations

from torch import Tensor

from fastspec.kernels.masking_reference import embed_kept_patches_ref
from fastspec.masking.backend import patch_embed_backend


def embed_kept_patches(
    mel: Tensor,
    ids_keep: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    pos: Tensor,
    patch_size: tuple[int, int],
) -> Tensor:
    """Patch-embed only the kept patches of a log-mel and add their positions.

    Equals ``linear(gather_tokens(patchify(mel), ids_keep), weight, bias) + pos[ids_keep]``
    (computed exactly that way by the torch backend), without materialising the N patches.

    Args:
        mel: [B, T, F] log-mel, T and F multiples of ``patch_size``.
        ids_keep: [B, K] int64 patch-grid indices to keep, or None for all N.
        weight: [D, pt * pf]; bias: [D] or None (an ``nn.Linear``'s parameters).
        pos: [N, D] positions of the full grid (no gradient).
        patch_size: (pt, pf).

    Returns:
        [B, K, D] in ``pos``'s dtype (under autocast the matmul runs in the autocast dtype and
        the fp32 positions promote the sum, as in the reference).
    """
    if patch_embed_backend(mel.device) == "triton":
        # imported here: Triton is optional, and only this backend needs it
        from fastspec.kernels.patch_embed import embed_kept_patches as fused

        # the kernel reads int64 indices; the torch path takes any integer dtype, so cast here
        ids = ids_keep.long() if ids_keep is not None else None
        return fused(mel, ids, weight, bias, pos, tuple(patch_size))
    return embed_kept_patches_ref(mel, ids_keep, weight, bias, pos, tuple(patch_size))


__all__ = ["embed_kept_patches"]
