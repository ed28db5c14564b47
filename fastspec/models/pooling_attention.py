"""Pooling attention and the multiscale block of MAST / MViTv2, on tokens grouped by mask unit.

Token layout. A multiscale encoder keeps its tokens as ``[B, 1 + K * a_t * a_f, C]``: a class
token first, then ``K`` mask units (the footprint of one output token of the last stage), each
holding an ``a_t x a_f`` block of tokens in time-major order. Every pooling window here has
kernel = stride and lies inside one unit, so

- pooling is a reshape and a reduction (no convolution padding, no gathers);
- a unit's tokens never mix with another unit's before attention, so dropping whole units (MAE
  masking) or padding whole units (variable length) leaves every kept unit's pooled values exactly
  what the full, unpadded input gives;
- the validity of a token is that of its unit, so a padding mask at any stage is the unit mask
  repeated (:func:`token_padding_mask`).

The ``layout`` argument that travels with the tokens is the Python tuple ``(K, a_t, a_f)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastspec.models.attention import attention
from fastspec.models.layers import DropPath, Mlp, token_padding_mask

Layout = tuple[int, int, int]  # (K units, a_t, a_f tokens per unit along time, frequency)


def _windows(x: Tensor, layout: Layout, stride: tuple[int, int]) -> Tensor:
    """[..., K * a_t * a_f, C] -> [..., K, a_t / st, st, a_f / sf, sf, C] (a view when possible)."""
    k, a_t, a_f = layout
    st, sf = stride
    return x.reshape(*x.shape[:-2], k, a_t // st, st, a_f // sf, sf, x.shape[-1])


def pooled_layout(layout: Layout, stride: tuple[int, int]) -> Layout:
    """The layout after pooling by ``stride``; raises if the windows do not tile a unit."""
    k, a_t, a_f = layout
    st, sf = stride
    if a_t % st or a_f % sf:
        raise ValueError(f"pooling stride {stride} does not tile a unit of {a_t}x{a_f} tokens")
    return k, a_t // st, a_f // sf


class UnitPool(nn.Module):
    """Learned depthwise pooling, kernel = stride, inside mask units, then LayerNorm (MViTv2's
    ``pool_q`` / ``pool_k`` / ``pool_v`` with a non-overlapping kernel).

    Each output token is ``sum_{i,j} w[i, j, c] * x[window(i, j), c] + b[c]``: a depthwise
    ``st x sf`` convolution with stride ``st x sf``. The class token is not pooled; the norm
    applies to it too, as in MViTv2. Written as a multiply and a sum over the window axes rather
    than a conv: no layout change to NCHW, and ``torch.compile`` fuses it.

    Args:
        stride: (st, sf) window along time and frequency.
        dim: C, channels of each token (the head dim when pooling per head).
    """

    def __init__(
        self, stride: tuple[int, int], dim: int, norm_eps: float = 1e-6, device=None, dtype=None
    ):
        super().__init__()
        self.stride = tuple(stride)
        self.weight = nn.Parameter(torch.empty(*self.stride, dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.norm = nn.LayerNorm(dim, eps=norm_eps, device=device, dtype=dtype)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        # start as average pooling: the pooled token is the window mean, a sensible summary
        # before training, and its scale does not depend on the window size
        self.weight.fill_(1.0 / (self.stride[0] * self.stride[1]))
        self.bias.zero_()
        self.norm.reset_parameters()

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        """x: [..., 1 + K * a_t * a_f, C], class token first -> [..., 1 + K * a_t' * a_f', C]."""
        cls, tokens = x[..., :1, :], x[..., 1:, :]
        win = _windows(tokens, layout, self.stride)  # [..., K, a_t', st, a_f', sf, C]
        w = self.weight[:, None, :, :]  # [st, 1, sf, C] broadcasts over (a_t', st, a_f', sf)
        # the sum runs in the input dtype (bf16 under autocast) over at most st * sf terms
        pooled = (win * w.to(win.dtype)).sum(dim=(-4, -2)) + self.bias.to(win.dtype)
        pooled = pooled.flatten(-4, -2)  # [..., K * a_t' * a_f', C]
        return self.norm(torch.cat([cls.to(pooled.dtype), pooled], dim=-2))


def max_pool_units(x: Tensor, layout: Layout, stride: tuple[int, int]) -> Tensor:
    """Max over each ``stride`` window inside the units (the skip path of a pooling block):
    [B, 1 + K * a_t * a_f, C] -> [B, 1 + K * a_t' * a_f', C]; the class token passes through."""
    win = _windows(x[:, 1:], layout, stride)  # [B, K, a_t', st, a_f', sf, C]
    pooled = win.amax(dim=(-4, -2)).flatten(1, 3)
    return torch.cat([x[:, :1], pooled], dim=1)


class PoolingAttention(nn.Module):
    """Multi-head pooling attention (MViTv2): queries pooled by ``q_stride``, keys and values by
    ``kv_stride``, each pooled tensor layer-normed, and the residual pooling connection
    ``out = attn(q, k, v) + q`` before the output projection.

    The QKV projection maps ``dim_in`` to ``dim_out``, so the first block of a stage widens the
    channels inside attention (MViTv2's ``dim_mul_in_att``). Pooling runs per head on the head
    dim with weights shared across heads, as MViTv2's grouped conv does.

    Args:
        dim_in, dim_out: C_in, C_out token widths.
        num_heads: H; head dim ``C_out / H``.
        q_stride, kv_stride: (st, sf) pooling windows; (1, 1) = no pooling (and no norm).
        residual_pooling: add the pooled query to the attention output (MViTv2 §4.1).
        class_token: False: the first token is a placeholder no query attends to (contract).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        num_heads: int,
        q_stride: tuple[int, int] = (1, 1),
        kv_stride: tuple[int, int] = (1, 1),
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        residual_pooling: bool = True,
        class_token: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"width {dim_out} is not divisible by num_heads {num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.dim_out = dim_out
        self.q_stride = tuple(q_stride)
        self.kv_stride = tuple(kv_stride)
        self.residual_pooling = residual_pooling
        self.class_token = bool(class_token)
        self.qkv = nn.Linear(dim_in, 3 * dim_out, bias=qkv_bias, **factory)
        self.proj = nn.Linear(dim_out, dim_out, **factory)

        def pool(stride):  # stride (1, 1): no pooling and no norm, plain attention
            if stride == (1, 1):
                return None
            return UnitPool(stride, self.head_dim, norm_eps, **factory)

        self.pool_q = pool(self.q_stride)
        self.pool_k = pool(self.kv_stride)
        self.pool_v = pool(self.kv_stride)

    def forward(self, x: Tensor, layout: Layout, unit_padding: Tensor | None = None) -> Tensor:
        """Pooling self-attention.

        Args:
            x: [B, 1 + K * a_t * a_f, C_in], class token first, tokens grouped by unit.
            layout: (K, a_t, a_f) of ``x``.
            unit_padding: [B, K] bool, True = a padded unit: no query attends to its tokens.

        Returns:
            [B, 1 + K * a_t' * a_f', C_out] on the query-pooled layout ``pooled_layout(layout,
            q_stride)``.
        """
        b, n, _ = x.shape
        # [B, 1 + N, 3 * C] -> [3, B, H, 1 + N, Dh]: one projection, then views for q, k, v
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.pool_q is not None:
            q = self.pool_q(q, layout)
        if self.pool_k is not None:
            k = self.pool_k(k, layout)
            v = self.pool_v(v, layout)
        # under autocast the pooling norms return fp32: back to the projection's dtype, so q, k
        # and v agree and flash kernels stay eligible
        q, k, v = q.to(qkv.dtype), k.to(qkv.dtype), v.to(qkv.dtype)
        kv_layout = pooled_layout(layout, self.kv_stride)
        key_padding = token_padding_mask(
            unit_padding, kv_layout[1] * kv_layout[2], self.class_token
        )
        out = attention(q, k, v, key_padding)  # [B, H, 1 + N_q, Dh]
        if self.residual_pooling:
            out = out + q
        out = out.transpose(1, 2).reshape(b, q.shape[2], self.dim_out)
        return self.proj(out)


class MultiscaleBlock(nn.Module):
    """Pre-norm MViTv2 block: ``skip(x) + attn(ln(x))``, then ``x + mlp(ln(x))``.

    When the block pools queries, the skip path is max-pooled by the same stride so both terms
    sit on the pooled layout; when it widens (``dim_in != dim_out``) the skip is a linear
    projection of the normed input, as in MViTv2.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: tuple[int, int] = (1, 1),
        kv_stride: tuple[int, int] = (1, 1),
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        residual_pooling: bool = True,
        drop_path: float = 0.0,
        class_token: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.drop_path = DropPath(drop_path)
        self.dim_in, self.dim_out = dim_in, dim_out
        self.q_stride = tuple(q_stride)
        self.kv_stride = tuple(kv_stride)
        self.norm1 = nn.LayerNorm(dim_in, eps=norm_eps, **factory)
        self.attn = PoolingAttention(
            dim_in,
            dim_out,
            num_heads,
            q_stride,
            kv_stride,
            qkv_bias,
            norm_eps,
            residual_pooling,
            class_token,
            **factory,
        )
        self.proj_skip = nn.Linear(dim_in, dim_out, **factory) if dim_in != dim_out else None
        self.norm2 = nn.LayerNorm(dim_out, eps=norm_eps, **factory)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), **factory)

    def forward(
        self, x: Tensor, layout: Layout, unit_padding: Tensor | None = None
    ) -> tuple[Tensor, Layout]:
        """x: [B, 1 + K * a_t * a_f, C_in] on ``layout`` -> ([B, 1 + K * a_t' * a_f', C_out],
        the new layout); ``unit_padding``: [B, K] bool, True = padding."""
        x_norm = self.norm1(x)
        out = self.attn(x_norm, layout, unit_padding)
        skip = self.proj_skip(x_norm) if self.proj_skip is not None else x
        if self.q_stride != (1, 1):
            skip = max_pool_units(skip, layout, self.q_stride)
            layout = pooled_layout(layout, self.q_stride)
        x = skip + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x))), layout
