"""ViT encoder over log-mel patches (AST / Audio-MAE / MaskSpec layout) and its registered sizes.

A mel spectrogram ``[B, T, F]`` (time frames x mel bins) is cut into ``pt x pf`` patches on a
``(T_p, F_p) = (T / pt, F / pf)`` grid, token ``n = t * F_p + f`` (time-major). Patches are
embedded by a linear layer (the same map as a ``pt x pf`` stride-``pt x pf`` conv), get a fixed
2-D sin-cos position, and a class token with a zero position is put first.
"""

from __future__ import annotations

from torch import Tensor, nn

from fastspec.models.contract import BlockShape, SpectrogramEncoder, as_pair
from fastspec.models.layers import (
    Block,
    init_class_token,
    init_mae_,
    make_class_token,
    token_padding_mask,
)
from fastspec.models.registry import build_with_overrides, constructor_config, register_model


class ViTEncoder(SpectrogramEncoder):
    """Pre-norm ViT over mel patches, with optional token drop (MAE) and key padding.

    Implements :class:`~fastspec.models.contract.SpectrogramEncoder` with one stage and
    ``unit_size = (1, 1)``: every patch is an output token and a mask unit.

    Args:
        embed_dim: D, width of every token; a multiple of 4 (sin-cos positions) and of
            ``num_heads``.
        depth: number of transformer blocks.
        num_heads: attention heads; head dim ``D / num_heads``.
        mlp_ratio: MLP hidden width over D.
        patch_size: (pt, pf) frames x mel bins per patch; None = 16 x 16.
        n_mels: F, mel bins of the input; a multiple of pf.
        frame_tokens: full-frequency patches of this many frames (``patch_size = (frame_tokens,
            n_mels)``, ATST's 40 ms tokens at 4); exclusive with ``patch_size``.
        pos_embed, max_frames: ``sincos`` fixed 2-D positions (any length) or a ``learned``
            table for inputs up to ``max_frames`` frames.
        qkv_bias: bias on the fused QKV projection.
        drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks).
        norm_eps: LayerNorm epsilon (1e-6 as timm/MAE ViTs).
        class_token: a learned class token; False: a masked placeholder (ATST-Frame, contract).
        device, dtype: where and in what dtype parameters are created (``"meta"`` allocates
            nothing; then ``to_empty`` and :meth:`init_weights`).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        patch_size: tuple[int, int] | int | None = None,
        n_mels: int = 128,
        frame_tokens: int | None = None,
        pos_embed: str = "sincos",
        max_frames: int = 1024,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        class_token: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if frame_tokens is not None:
            if patch_size is not None:
                raise ValueError("give patch_size or frame_tokens, not both")
            patch_size = (int(frame_tokens), n_mels)
        patch_size = as_pair((16, 16) if patch_size is None else patch_size, "patch_size")
        if embed_dim % 4:
            raise ValueError(f"embed_dim must be a multiple of 4 (2-D sin-cos), got {embed_dim}")
        self.set_geometry(patch_size, (1, 1), n_mels)
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.drop_path_rate = float(drop_path_rate)
        self.norm_eps = float(norm_eps)
        self.stage_dims, self.stage_tokens, self.stage_ends = (embed_dim,), (1,), [depth - 1]

        factory = {"device": device, "dtype": dtype}
        self.make_positions(pos_embed, max_frames, embed_dim, **factory)
        # a linear map on flattened patches == a conv with kernel = stride = patch size, but it
        # can run on just the gathered kept patches (SpectrogramEncoder.embed)
        self.patch_embed = nn.Linear(self.patch_dim, embed_dim, **factory)
        make_class_token(self, class_token, embed_dim, **factory)  # cls_token [D]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps,
                  drop_path=self.drop_path_rate * i / max(depth - 1, 1), **factory)
            for i in range(depth)
        )  # fmt: skip
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps, **factory)
        self.init_weights()

    def init_weights(self) -> None:
        """MAE init: xavier linears (the patch embed on its flattened [D, pt*pf] view, which for
        a linear is its weight), zero biases, LayerNorm identity, class token ~ N(0, 0.02)."""
        init_mae_(self)
        self.init_positions()
        init_class_token(self)

    def arch_config(self) -> dict:
        """JSON-safe constructor kwargs: ``ViTEncoder(**cfg)`` rebuilds this architecture
        (``frame_tokens`` is recorded as the ``patch_size`` it stands for)."""
        return constructor_config(self, derived=("frame_tokens",))

    def forward_blocks(
        self, x: Tensor, n_units: int, unit_padding: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        """x: [B, 1 + K, D] -> ([B, 1 + K, D] normed, [[B, K, 1, D]] the one stage)."""
        key_padding_mask = token_padding_mask(unit_padding, 1, self.class_token)  # [B, 1 + K]
        for block in self.blocks:
            x = block(x, key_padding_mask)
        return self.norm(x), [x[:, 1:].unsqueeze(2)]

    def block_shapes(self) -> list[BlockShape]:
        hidden = int(self.embed_dim * self.mlp_ratio)
        return [BlockShape(self.embed_dim, self.embed_dim, hidden=hidden)] * self.depth


# ---- registered sizes -----------------------------------------------------------------------
# Parameter counts are for 16x16 patches; they do not depend on the number of frames.


def _vit(name: str, defaults: dict, overrides: dict, device, dtype) -> ViTEncoder:
    return build_with_overrides(ViTEncoder, name, defaults, overrides, device=device, dtype=dtype)


@register_model
def vit_mini_patch16(*, device=None, dtype=None, **overrides) -> ViTEncoder:
    """ViT-Mini/16 for the CPU demo and tests: D 128, 4 blocks, 4 heads (head dim 32), MLP 512,
    16x16 patches over 128 mel (F_p = 8); about 0.83 M parameters."""
    defaults = {"embed_dim": 128, "depth": 4, "num_heads": 4}
    return _vit("vit_mini_patch16", defaults, overrides, device, dtype)


@register_model
def vit_tiny_patch16(*, device=None, dtype=None, **overrides) -> ViTEncoder:
    """ViT-Ti/16: D 192, 12 blocks, 3 heads (head dim 64), MLP 768, 16x16 patches over
    128 mel (F_p = 8); about 5.4 M parameters."""
    defaults = {"embed_dim": 192, "depth": 12, "num_heads": 3}
    return _vit("vit_tiny_patch16", defaults, overrides, device, dtype)


@register_model
def vit_small_patch16(*, device=None, dtype=None, **overrides) -> ViTEncoder:
    """ViT-S/16: D 384, 12 blocks, 6 heads (head dim 64), MLP 1536, 16x16 patches over
    128 mel (F_p = 8); about 21.4 M parameters."""
    defaults = {"embed_dim": 384, "depth": 12, "num_heads": 6}
    return _vit("vit_small_patch16", defaults, overrides, device, dtype)


@register_model
def vit_base_patch16(*, device=None, dtype=None, **overrides) -> ViTEncoder:
    """ViT-B/16, the AST / Audio-MAE / MaskSpec encoder: D 768, 12 blocks, 12 heads (head dim
    64), MLP 3072, 16x16 patches over 128 mel (F_p = 8, 512 tokens for 1024 frames);
    about 85.3 M parameters."""
    defaults = {"embed_dim": 768, "depth": 12, "num_heads": 12}
    return _vit("vit_base_patch16", defaults, overrides, device, dtype)


@register_model
def vit_large_patch16(*, device=None, dtype=None, **overrides) -> ViTEncoder:
    """ViT-L/16: D 1024, 24 blocks, 16 heads (head dim 64), MLP 4096, 16x16 patches over
    128 mel (F_p = 8); about 303 M parameters."""
    defaults = {"embed_dim": 1024, "depth": 24, "num_heads": 16}
    return _vit("vit_large_patch16", defaults, overrides, device, dtype)
