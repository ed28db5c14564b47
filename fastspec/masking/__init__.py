"""Mask samplers and token drop/restore (DESIGN.md §1, §3).

A sampler draws, on the batch's device and without a host sync, which patch tokens each clip
hides (:func:`sample_mask`); :func:`gather_tokens` drops them before the encoder (whose first
layer, ``fastspec.models.patch_embed.kept_patch_embedding``, fuses the drop into the embedding) and :func:`restore_tokens` puts a mask token back in their place for a decoder.

Kinds: ``random`` (MaskSpec / Audio-MAE), ``group`` (ASiT's GMML, with :func:`apply_group_mask`
for the fill), ``inverse_block`` (EAT), ``time_span`` (ATST-Frame), ``time_freq`` (SpecAugment
stripes). Backends (Triton on CUDA, torch elsewhere) are chosen in :mod:`.backend` and reported
by :func:`masking_report`.
"""

from fastspec.masking.backend import masking_backend, masking_report, patch_embed_backend
from fastspec.masking.group import apply_group_mask
from fastspec.masking.mask import Mask
from fastspec.masking.registry import list_mask_kinds, register_mask_kind, sample_mask
from fastspec.masking.rng import MaskRng
from fastspec.masking.tokens import gather_tokens, restore_tokens

# imported for their side effect: each registers its kind
from fastspec.masking import (  # noqa: E402, F401  isort: skip
    inverse_block,
    random_patches,
    time_freq,
    time_span,
)

__all__ = [
    "Mask",
    "MaskRng",
    "apply_group_mask",
    "gather_tokens",
    "list_mask_kinds",
    "masking_backend",
    "masking_report",
    "patch_embed_backend",
    "register_mask_kind",
    "restore_tokens",
    "sample_mask",
]
