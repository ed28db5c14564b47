"""Mask samplers and token drop/restore (DESIGN.md §1, §3).

A sampler draws, on the batch's device and without a host sync, which patch tokens each clip
hides; :func:`gather_tokens` drops them before the encoder and :func:`restore_tokens` puts a mask
token back in their place for a decoder. Kinds: ``random`` (MaskSpec / Audio-MAE).
"""

from fastspec.masking.mask import Mask
from fastspec.masking.registry import list_mask_kinds, register_mask_kind, sample_mask
from fastspec.masking.tokens import gather_tokens, restore_tokens

# imported for its side effect: registers the "random" kind
from fastspec.masking import random_patches  # noqa: E402, F401  isort: skip

__all__ = [
    "Mask",
    "gather_tokens",
    "list_mask_kinds",
    "register_mask_kind",
    "restore_tokens",
    "sample_mask",
]
