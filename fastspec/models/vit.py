"""ViT encoder over log-mel patches (AST / Audio-MAE / MaskSpec layout) and its registered sizes.

A mel spectrogram ``[B, T, F]`` (time frames x mel bins) is cut into ``pt x pf`` patches on a
``(T_p, F_p) = (T / pt, F / pf)`` grid, token ``n = t * F_p + f`` (time-major). Patches are
embedded by a linear layer (the same map as a ``pt x pf`` stride-``pt x pf`` conv), get a fixed
2-D sin-cos position, and a class token with a zero position is put first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastspec.kernels.masking_reference import gather_patches_ref
from fastspec.masking import embed_kept_patches
from fastspec.models.layers import Block, init_mae_
from fastspec.models.pos_embed import cached_sincos_2d
from fastspec.models.registry import build_with_overrides, register_model


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


def pad_frames(mel: Tensor, multiple: int, min_frames: int = 0, value: float = 0.0) -> Tensor:
    """Pad the time axis at the end so patches tile it: [B, T, F] -> [B, T', F].

    ``T'`` is the smallest multiple of ``multiple`` that is ``>= max(T, min_frames)``; the new
    frames hold ``value`` (0 = the mean of a normalised log-mel). Returns ``mel`` itself when
    nothing is added. Pair it with ``token_lengths`` so the padding stays invisible.
    """
    if mel.dim() != 3:
        raise ValueError(f"pad_frames: mel must be [B, T, F], got shape {tuple(mel.shape)}")
    if multiple < 1:
        raise ValueError(f"pad_frames: multiple must be >= 1, got {multiple}")
    n_frames = max(mel.shape[1], min_frames)
    target = -(-n_frames // multiple) * multiple  # ceil to a whole number of patches
    if target == mel.shape[1]:
        return mel
    # F.pad pads the last dims first: (F left, F right, T left, T right)
    return F.pad(mel, (0, 0, 0, target - mel.shape[1]), value=value)


class ViTEncoder(nn.Module):
    """Pre-norm ViT over mel patches, with optional token drop (MAE) and key padding.

    Args:
        embed_dim: D, width of every token; a multiple of 4 (sin-cos positions) and of
            ``num_heads``.
        depth: number of transformer blocks.
        num_heads: attention heads; head dim ``D / num_heads``.
        mlp_ratio: MLP hidden width over D.
        patch_size: (pt, pf) frames x mel bins per patch.
        n_mels: F, mel bins of the input; a multiple of pf.
        qkv_bias: bias on the fused QKV projection.
        norm_eps: LayerNorm epsilon (1e-6 as timm/MAE ViTs).
        device, dtype: where and in what dtype parameters are created (``"meta"`` allocates
            nothing; then ``to_empty`` and :meth:`init_weights`).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        patch_size: tuple[int, int] | int = (16, 16),
        n_mels: int = 128,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.patch_size = _pair(patch_size, "patch_size")
        if embed_dim % 4:
            raise ValueError(f"embed_dim must be a multiple of 4 (2-D sin-cos), got {embed_dim}")
        if n_mels % self.patch_size[1]:
            raise ValueError(
                f"n_mels ({n_mels}) must be a multiple of the patch's mel size {self.patch_size[1]}"
            )
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.n_mels = n_mels
        self.qkv_bias = bool(qkv_bias)
        self.norm_eps = float(norm_eps)
        self.model_name: str | None = None  # set by create_model

        factory = {"device": device, "dtype": dtype}
        patch_dim = self.patch_size[0] * self.patch_size[1]
        # a linear map on flattened patches == a conv with kernel = stride = patch size, but it
        # can run on just the gathered kept patches (see forward_features)
        self.patch_embed = nn.Linear(patch_dim, embed_dim, **factory)
        self.cls_token = nn.Parameter(torch.empty(embed_dim, **factory))  # [D]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps, **factory)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps, **factory)
        self.init_weights()

    def init_weights(self) -> None:
        """MAE init: xavier linears (the patch embed on its flattened [D, pt*pf] view, which for
        a linear is its weight), zero biases, LayerNorm identity, class token ~ N(0, 0.02)."""
        init_mae_(self)
        with torch.no_grad():
            nn.init.normal_(self.cls_token, std=0.02)

    def arch_config(self) -> dict:
        """JSON-safe constructor kwargs: ``ViTEncoder(**cfg)`` rebuilds this architecture."""
        return {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "patch_size": list(self.patch_size),
            "n_mels": self.n_mels,
            "qkv_bias": self.qkv_bias,
            "norm_eps": self.norm_eps,
        }

    # ---- patch grid ---------------------------------------------------------------------------

    @property
    def patch_dim(self) -> int:
        """pt * pf, values per flattened patch."""
        return self.patch_size[0] * self.patch_size[1]

    def grid(self, n_frames: int) -> tuple[int, int]:
        """(T_p, F_p) patch grid of an input with ``n_frames`` frames."""
        if n_frames % self.patch_size[0] or n_frames <= 0:
            raise ValueError(
                f"n_frames ({n_frames}) must be a positive multiple of the patch's "
                f"time size {self.patch_size[0]}"
            )
        return n_frames // self.patch_size[0], self.n_mels // self.patch_size[1]

    def _check_mel(self, mel: Tensor) -> tuple[int, int]:
        if mel.dim() != 3 or mel.shape[2] != self.n_mels or mel.shape[1] % self.patch_size[0]:
            raise ValueError(
                f"mel must be [B, T, F] with F = n_mels = {self.n_mels} and T a multiple of "
                f"{self.patch_size[0]}, got shape {tuple(mel.shape)}"
            )
        return self.grid(mel.shape[1])

    def patchify(self, mel: Tensor) -> Tensor:
        """mel: [B, T, F] -> patches [B, N, pt * pf], token ``n = t * F_p + f``, each patch
        flattened time-major (``i_t * pf + i_f``), i.e. the order of a conv kernel's weights."""
        t_p, f_p = self._check_mel(mel)
        pt, pf = self.patch_size
        b = mel.shape[0]
        x = mel.reshape(b, t_p, pt, f_p, pf).permute(0, 1, 3, 2, 4)  # [B, T_p, F_p, pt, pf]
        return x.reshape(b, t_p * f_p, pt * pf)

    def unpatchify(self, patches: Tensor, grid: tuple[int, int]) -> Tensor:
        """patches: [B, N, pt * pf] on ``grid`` = (T_p, F_p) -> mel [B, T_p * pt, F_p * pf]."""
        t_p, f_p = grid
        pt, pf = self.patch_size
        if patches.dim() != 3 or patches.shape[1:] != (t_p * f_p, pt * pf):
            raise ValueError(
                f"patches must be [B, {t_p * f_p}, {pt * pf}] for grid {tuple(grid)}, "
                f"got shape {tuple(patches.shape)}"
            )
        b = patches.shape[0]
        x = patches.reshape(b, t_p, f_p, pt, pf).permute(0, 1, 3, 2, 4)  # [B, T_p, pt, F_p, pf]
        return x.reshape(b, t_p * pt, f_p * pf)

    def _gather_patches(self, mel: Tensor, ids_keep: Tensor) -> Tensor:
        """Only the kept patches, read straight from the mel: [B, T, F] -> [B, K, pt * pf].

        Equals ``gather_tokens(patchify(mel), ids_keep)`` without materialising all N patches.
        """
        self._check_mel(mel)
        return gather_patches_ref(mel, ids_keep, self.patch_size)

    def position_embedding(self, grid: tuple[int, int], device=None) -> Tensor:
        """Fixed 2-D sin-cos positions [T_p * F_p, D] (time half, then frequency half), cached
        per (grid, device, dtype), in the parameters' dtype."""
        device = torch.device(device) if device is not None else self.cls_token.device
        return cached_sincos_2d(tuple(grid), self.embed_dim, device, self.cls_token.dtype)

    def token_padding_mask(self, token_lengths: Tensor, grid: tuple[int, int]) -> Tensor:
        """token_lengths: [B] valid time patches per clip -> [B, N] bool, True = padding
        (token ``n = t * F_p + f`` with ``t >= token_lengths[b]``)."""
        t_p, f_p = grid
        t_of_token = torch.arange(t_p, device=token_lengths.device).repeat_interleave(f_p)  # [N]
        return t_of_token.unsqueeze(0) >= token_lengths.unsqueeze(1)

    # ---- forward --------------------------------------------------------------------------------

    def forward_features(
        self,
        mel: Tensor,
        ids_keep: Tensor | None = None,
        token_lengths: Tensor | None = None,
    ) -> Tensor:
        """Encode a batch of mel spectrograms.

        Args:
            mel: [B, T, F] log-mel, T a multiple of pt, F = n_mels.
            ids_keep: [B, K] int64 grid indices of the tokens to encode (``Mask.ids_keep``);
                the others are dropped before the patch embedding. None = all N tokens.
            token_lengths: [B] int, valid time patches per clip; tokens with
                ``t >= token_lengths[b]`` are padding and no token attends to them. Their own
                outputs are unspecified. With ``ids_keep``, applies to the kept tokens.

        Returns:
            [B, 1 + K, D] (or [B, 1 + N, D]) after the final LayerNorm, class token first.
        """
        grid = self._check_mel(mel)
        b = mel.shape[0]
        pos = self.position_embedding(grid, mel.device)  # [N, D]
        if ids_keep is not None and (ids_keep.dim() != 2 or ids_keep.shape[0] != b):
            raise ValueError(
                f"ids_keep must be [B, K] with B = {b}, got shape {tuple(ids_keep.shape)}"
            )
        # dropped patches are never embedded: one fused Triton kernel on CUDA (gather, matmul,
        # bias, positions), gather-then-linear elsewhere; the choice is made in
        # fastspec.masking.backend (FASTSPEC_PATCH_EMBED)
        x = embed_kept_patches(
            mel, ids_keep, self.patch_embed.weight, self.patch_embed.bias, pos, self.patch_size
        )  # [B, K (or N), D]
        # under autocast the embed is bf16 and the fp32 positions promote the sum: the residual
        # stream stays fp32 (as in timm/MAE), only matmuls run in low precision
        cls = self.cls_token.to(x.dtype).expand(b, 1, -1)  # its position term is zero
        x = torch.cat([cls, x], dim=1)

        key_padding_mask = None
        if token_lengths is not None:
            if token_lengths.shape != (b,):
                raise ValueError(
                    f"token_lengths must be [B] = [{b}], got shape {tuple(token_lengths.shape)}"
                )
            pad = self.token_padding_mask(token_lengths.to(mel.device), grid)  # [B, N]
            if ids_keep is not None:
                pad = torch.gather(pad, 1, ids_keep)  # [B, K]: padding flags of kept tokens
            cls_valid = torch.zeros(b, 1, dtype=torch.bool, device=mel.device)
            key_padding_mask = torch.cat([cls_valid, pad], dim=1)  # [B, 1 + K or N]

        for block in self.blocks:
            x = block(x, key_padding_mask)
        return self.norm(x)

    def forward(
        self,
        mel: Tensor,
        ids_keep: Tensor | None = None,
        token_lengths: Tensor | None = None,
    ) -> Tensor:
        """Same as :meth:`forward_features`: [B, T, F] -> [B, 1 + K (or N), D]."""
        return self.forward_features(mel, ids_keep, token_lengths)


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
