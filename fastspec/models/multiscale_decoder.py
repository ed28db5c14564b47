"""MAE decoder for a multiscale encoder (MAST): reads every stage, reconstructs whole mask units.

A multiscale encoder drops whole mask units, and its last stage holds one token per unit
(:class:`~fastspec.models.mast.MASTEncoder`). Its earlier stages hold the same units at finer
resolution, the detail a pixel-level reconstruction needs; so, as Hiera's multi-scale fusion
does, each stage's tokens of a unit are flattened and projected to the decoder width, and the
projections are summed into one decoder token per kept unit. From there it is the MAE decoder:
a learned mask token at every dropped unit, 2-D sin-cos positions on the unit grid, transformer
blocks with the class token first, and a linear head predicting all values of each unit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastspec.masking import restore_tokens
from fastspec.models.layers import Block, init_mae_
from fastspec.models.pos_embed import cached_sincos_2d


class MultiscaleMAEDecoder(nn.Module):
    """Light transformer from the kept units' multiscale features to every unit's values.

    Args:
        stage_dims: C_s, width of each encoder stage; the last is the output width D_enc.
        stage_tokens: a_s, tokens per unit at the end of each stage; the last must be 1.
        decoder_dim: D_dec; a multiple of 4 and of ``num_heads``.
        depth: decoder blocks.
        num_heads: attention heads.
        patch_dim: values predicted per unit (``encoder.patch_dim``, P_t * P_f).
        mlp_ratio: MLP hidden width over D_dec.
        device, dtype: where and in what dtype parameters are created.
    """

    def __init__(
        self,
        stage_dims: tuple[int, ...],
        stage_tokens: tuple[int, ...],
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        patch_dim: int = 4096,
        mlp_ratio: float = 4.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        stage_dims, stage_tokens = tuple(stage_dims), tuple(stage_tokens)
        if len(stage_dims) != len(stage_tokens) or not stage_dims or stage_tokens[-1] != 1:
            raise ValueError(
                f"stage_dims and stage_tokens need one entry per stage and the last stage one "
                f"token per unit; got {stage_dims}, {stage_tokens}"
            )
        if decoder_dim % 4:
            raise ValueError(
                f"decoder_dim must be a multiple of 4 (2-D sin-cos), got {decoder_dim}"
            )
        self.stage_dims, self.stage_tokens = stage_dims, stage_tokens
        self.decoder_dim = decoder_dim
        self.depth = depth
        self.num_heads = num_heads
        self.patch_dim = patch_dim
        self.mlp_ratio = float(mlp_ratio)

        factory = {"device": device, "dtype": dtype}
        # the earlier stages' outputs are raw residual streams: normalise before projecting;
        # the last stage arrives after the encoder's own final norm
        self.stage_norms = nn.ModuleList(
            nn.LayerNorm(c, eps=1e-6, **factory) for c in stage_dims[:-1]
        )
        # per stage, [a_s * C_s] -> [D_dec]: a conv with kernel = stride = the unit on that
        # stage's grid; the last one is the MAE decoder's input projection (class token too)
        self.fuse = nn.ModuleList(
            nn.Linear(a * c, decoder_dim, **factory) for a, c in zip(stage_tokens, stage_dims)
        )
        self.mask_token = nn.Parameter(torch.empty(decoder_dim, **factory))  # [D_dec]
        self.blocks = nn.ModuleList(
            Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_eps=1e-6, **factory)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6, **factory)
        self.decoder_pred = nn.Linear(decoder_dim, patch_dim, **factory)
        self.init_weights()

    def init_weights(self) -> None:
        """MAE init: xavier linears, zero biases, LayerNorm identity, mask token ~ N(0, 0.02)."""
        init_mae_(self)
        with torch.no_grad():
            nn.init.normal_(self.mask_token, std=0.02)

    def arch_config(self) -> dict:
        """JSON-safe constructor kwargs: ``MultiscaleMAEDecoder(**cfg)`` rebuilds it."""
        return {
            "stage_dims": list(self.stage_dims),
            "stage_tokens": list(self.stage_tokens),
            "decoder_dim": self.decoder_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "patch_dim": self.patch_dim,
            "mlp_ratio": self.mlp_ratio,
        }

    def fuse_stages(self, latent: Tensor, stages: list[Tensor]) -> Tensor:
        """latent: [B, 1 + K, D_enc]; stages: per stage [B, K, a_s, C_s] -> [B, 1 + K, D_dec],
        the class token first (from the last stage only)."""
        if len(stages) != len(self.fuse):
            raise ValueError(f"expected {len(self.fuse)} stage outputs, got {len(stages)}")
        x = self.fuse[-1](latent)  # [B, 1 + K, D_dec]
        units = x[:, 1:]
        for norm, fuse, stage in zip(self.stage_norms, self.fuse[:-1], stages[:-1]):
            units = units + fuse(norm(stage).flatten(2))  # [B, K, a_s * C_s] -> [B, K, D_dec]
        return torch.cat([x[:, :1], units], dim=1)

    def forward(
        self, latent: Tensor, stages: list[Tensor], ids_restore: Tensor, grid: tuple[int, int]
    ) -> Tensor:
        """Predict every unit.

        Args:
            latent: [B, 1 + K, D_enc] encoder output, class token first, kept units in
                ``ids_keep`` order.
            stages: the encoder's per-stage tokens of the kept units, each [B, K, a_s, C_s]
                (``MASTEncoder.forward_multiscale``).
            ids_restore: [B, N] int64 (``Mask.ids_restore`` on the unit grid).
            grid: (T_u, F_u) unit grid, T_u * F_u = N.

        Returns:
            pred: [B, N, patch_dim] in grid order, each unit's values laid out as
            ``encoder.patchify`` lays out its target.
        """
        b, n = ids_restore.shape
        if grid[0] * grid[1] != n:
            raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} units, ids_restore {n}")
        x = self.fuse_stages(latent, stages)  # [B, 1 + K, D_dec]
        tokens = restore_tokens(x[:, 1:], ids_restore, self.mask_token)  # [B, N, D_dec]
        # fp32 positions promote the sum, as in the encoder
        tokens = tokens + cached_sincos_2d(
            tuple(grid), self.decoder_dim, latent.device, self.mask_token.dtype
        )
        x = torch.cat([x[:, :1].to(tokens.dtype), tokens], dim=1)  # class token: zero position
        for block in self.blocks:
            x = block(x)
        return self.decoder_pred(self.norm(x)[:, 1:])  # drop the class token
