"""Pieces shared by the encoders and decoders: pre-norm transformer block, MLP, stochastic depth,
the key-padding mask of unit-grouped tokens, and MAE's init."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastspec.models.attention import attention


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection; the kernel is picked by
    :func:`fastspec.models.attention.attention`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x: [B, N, D], key_padding_mask: [B, N] bool (True = padding) -> [B, N, D]."""
        b, n, d = x.shape
        # [B, N, 3 * D] -> [3, B, H, N, Dh]: one projection, then views for q, k, v
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], key_padding_mask)  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def token_padding_mask(
    unit_padding: Tensor | None, tokens_per_unit: int, class_token: bool = True
) -> Tensor | None:
    """unit_padding: [B, K] bool (True = padding) -> [B, 1 + K * tokens_per_unit] bool, the
    class token first and always valid (so every attention row keeps a valid key); without a
    class token (``class_token=False``) slot 0 is a placeholder, always padding."""
    if unit_padding is None:
        return None
    b, k = unit_padding.shape
    # explicit sizes: K may be 0 (everything masked), where -1 would be ambiguous
    per_token = unit_padding[:, :, None].expand(b, k, tokens_per_unit)
    per_token = per_token.reshape(b, k * tokens_per_unit)
    prefix = torch.full((b, 1), not class_token, dtype=torch.bool, device=unit_padding.device)
    return torch.cat([prefix, per_token], dim=1)


def make_class_token(encoder: nn.Module, class_token: bool, width: int, **factory) -> None:
    """Give ``encoder`` its ``class_token`` flag and ``cls_token`` [width]: a parameter
    (initialised by :func:`init_class_token`), or without a class token a zero buffer kept out
    of the state dict, the placeholder of ``fastspec.models.contract``."""
    encoder.class_token = bool(class_token)
    if encoder.class_token:
        encoder.cls_token = nn.Parameter(torch.empty(width, **factory))
    else:
        encoder.register_buffer("cls_token", torch.zeros(width, **factory), persistent=False)


@torch.no_grad()
def init_class_token(encoder: nn.Module) -> None:
    """A class token starts as N(0, 0.02) (MAE, timm); the placeholder is zero."""
    if encoder.class_token:
        nn.init.normal_(encoder.cls_token, std=0.02)
    else:
        encoder.cls_token.zero_()


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016, timm's ``DropPath``): in training, a residual
    branch's output is zeroed for a random ``rate`` of the samples and the rest scaled by
    ``1 / (1 - rate)``; the identity in eval or at rate 0 (no random draw)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *(1,) * (x.dim() - 1)).bernoulli_(1.0 - self.rate)
        return x * keep / (1.0 - self.rate)


class Mlp(nn.Module):
    """Linear -> GELU (exact erf, as timm/MAE) -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.drop_path = DropPath(drop_path)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, device=device, dtype=dtype)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, device=device, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), device=device, dtype=dtype)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x: [B, N, D], key_padding_mask: [B, N] bool (True = padding) -> [B, N, D]."""
        x = x + self.drop_path(self.attn(self.norm1(x), key_padding_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@torch.no_grad()
def init_mae_(module: nn.Module) -> None:
    """MAE's init, applied to every submodule: xavier-uniform linear weights, zero biases,
    LayerNorm to identity. Works on the meta device (the init calls are no-ops there)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            # xavier on the whole [out, in] weight, including the fused QKV (as MAE, not timm)
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
