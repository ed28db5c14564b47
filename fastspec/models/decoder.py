"""MAE decoder (MaskSpec / Audio-MAE): reconstructs every output token's patch from the kept ones.

One decoder for every encoder. For a pooling encoder (MAST) the earlier stages hold each kept
unit at finer resolution, the detail a pixel-level reconstruction needs; so, as Hiera's
multi-scale fusion does, each earlier stage's tokens of a unit are normalised, flattened and
projected to the decoder width and summed with the projection of the output token. A ViT has a
single stage and the decoder is exactly MAE's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastspec.masking import restore_tokens
from fastspec.models.layers import Block, init_mae_
from fastspec.models.pos_embed import cached_sincos_2d
from fastspec.models.registry import constructor_config


class MAEDecoder(nn.Module):
    """Light transformer that maps encoder latents of the kept tokens to all N patches.

    Steps: project to ``decoder_dim``; put a learned mask token at every dropped position;
    add 2-D sin-cos positions of the full grid; run blocks with the class token first; final
    LayerNorm; linear to ``patch_dim`` values per patch; drop the class token.

    Args:
        encoder_dim: D_enc, width of the encoder output.
        decoder_dim: D_dec (512 in MAE / Audio-MAE); a multiple of 4 and of ``num_heads``.
        depth: decoder blocks (8 in MAE).
        num_heads: attention heads (16 in MAE).
        patch_dim: values predicted per output token, its footprint (256 for 16x16).
        mlp_ratio: MLP hidden width over D_dec.
        stage_dims, stage_tokens: width C_s and tokens per unit a_s of the encoder's stages
            before the last (``encoder.stage_dims[:-1]``, ``encoder.stage_tokens[:-1]``); empty
            for a single-stage encoder (ViT).
        device, dtype: where and in what dtype parameters are created.
    """

    def __init__(
        self,
        encoder_dim: int,
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        patch_dim: int = 256,
        mlp_ratio: float = 4.0,
        stage_dims: tuple[int, ...] = (),
        stage_tokens: tuple[int, ...] = (),
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.stage_dims, self.stage_tokens = tuple(stage_dims), tuple(stage_tokens)
        if len(self.stage_dims) != len(self.stage_tokens):
            raise ValueError(
                f"stage_dims and stage_tokens need one entry per earlier stage; got "
                f"{self.stage_dims}, {self.stage_tokens}"
            )
        if decoder_dim % 4:
            raise ValueError(
                f"decoder_dim must be a multiple of 4 (2-D sin-cos), got {decoder_dim}"
            )
        self.encoder_dim = encoder_dim
        self.decoder_dim = decoder_dim
        self.depth = depth
        self.num_heads = num_heads
        self.patch_dim = patch_dim
        self.mlp_ratio = float(mlp_ratio)

        factory = {"device": device, "dtype": dtype}
        self.decoder_embed = nn.Linear(encoder_dim, decoder_dim, **factory)
        # earlier stages are raw residual streams: normalised before projecting; per stage,
        # [a_s * C_s] -> [D_dec], a conv with kernel = stride = the unit on that stage's grid
        self.stage_norms = nn.ModuleList(
            nn.LayerNorm(c, eps=1e-6, **factory) for c in self.stage_dims
        )
        self.stage_fuse = nn.ModuleList(
            nn.Linear(a * c, decoder_dim, **factory)
            for a, c in zip(self.stage_tokens, self.stage_dims)
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
        """JSON-safe constructor kwargs: ``MAEDecoder(**cfg)`` rebuilds this architecture."""
        return constructor_config(self)

    def forward(
        self,
        latent: Tensor,
        ids_restore: Tensor,
        grid: tuple[int, int],
        stages: list[Tensor] | None = None,
    ) -> Tensor:
        """Predict every output token's patch.

        Args:
            latent: [B, 1 + K, D_enc] encoder output, class token first, kept tokens in
                ``ids_keep`` order.
            stages: the encoder's per-stage tokens of the kept units, each [B, K, a_s, C_s]
                (``forward_multiscale``); only the stages before the last are read.
            ids_restore: [B, N] int64 (``Mask.ids_restore``): where each grid token sits in
                ``cat(kept, masked)`` order.
            grid: (T_p, F_p) with T_p * F_p = N.

        Returns:
            pred: [B, N, patch_dim] in grid order (``n = t * F_p + f``), for every token; the
            loss usually keeps only the masked ones.
        """
        b, n = ids_restore.shape
        if grid[0] * grid[1] != n:
            raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} tokens, ids_restore {n}")
        if latent.dim() != 3 or latent.shape[0] != b or not 1 <= latent.shape[1] <= n + 1:
            raise ValueError(
                f"latent must be [B, 1 + K, D_enc] with B = {b}, K <= {n}, "
                f"got shape {tuple(latent.shape)}"
            )
        x = self.decoder_embed(latent)  # [B, 1 + K, D_dec]
        if self.stage_fuse:
            if stages is None or len(stages) != len(self.stage_fuse) + 1:
                raise ValueError(f"expected {len(self.stage_fuse) + 1} stage outputs")
            units = x[:, 1:]
            for norm, fuse, stage in zip(self.stage_norms, self.stage_fuse, stages):
                units = units + fuse(norm(stage).flatten(2))  # [B, K, a_s * C_s] -> [B, K, D_dec]
            x = torch.cat([x[:, :1], units], dim=1)
        # positions of the full grid, added in the same pass as the restore (one Triton kernel
        # on CUDA); fp32 parameters promote the sum as in the encoder
        pos = cached_sincos_2d(tuple(grid), self.decoder_dim, latent.device, self.mask_token.dtype)
        tokens = restore_tokens(x[:, 1:], ids_restore, self.mask_token, pos)  # [B, N, D_dec]
        x = torch.cat([x[:, :1].to(tokens.dtype), tokens], dim=1)  # class token: zero position
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.decoder_pred(x[:, 1:])  # drop the class token -> [B, N, patch_dim]
