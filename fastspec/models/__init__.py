"""Encoders, decoder and heads by name, and the attention backend dispatch (DESIGN.md §1, §5).

Every encoder implements :class:`SpectrogramEncoder` (``fastspec.models.contract``), the one
interface recipes, the export and HEAR use.

``create_model("vit_base_patch16")`` (or ``"mast_base"``) builds an encoder from the registry;
``list_models()`` names them and ``count_macs`` counts their multiply-accumulates. Models may
import :mod:`fastspec.kernels`, :mod:`fastspec.masking` and :mod:`fastspec._logging` only.
"""

# the function `attention` is not re-exported: it would shadow the submodule of the same name
from fastspec.models.attention import attention_backend, attention_report
from fastspec.models.contract import SpectrogramEncoder, pad_frames
from fastspec.models.decoder import MAEDecoder
from fastspec.models.macs import MacReport, count_macs
from fastspec.models.mast import MASTEncoder  # importing it registers mast_*
from fastspec.models.patch_embed import kept_patch_embedding
from fastspec.models.pos_embed import cached_sincos_2d, sincos_1d, sincos_2d
from fastspec.models.registry import create_model, list_models, register_model
from fastspec.models.vit import ViTEncoder

__all__ = [
    "MAEDecoder",
    "MASTEncoder",
    "MacReport",
    "SpectrogramEncoder",
    "ViTEncoder",
    "attention_backend",
    "attention_report",
    "cached_sincos_2d",
    "count_macs",
    "create_model",
    "kept_patch_embedding",
    "list_models",
    "pad_frames",
    "register_model",
    "sincos_1d",
    "sincos_2d",
]
