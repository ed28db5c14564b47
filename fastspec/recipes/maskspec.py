"""MaskSpec (Chong et al. 2022): MAE-style masked spectrogram prediction with token dropping.

The encoder sees only the kept 25 % of the 16x16 patches (masked tokens are dropped, never
embedded); a light decoder restores the full grid with a mask token and predicts every patch; the
loss is the mean squared error on the masked patches against per-patch normalised targets
(MAE's ``norm_pix_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastspec.masking import sample_mask
from fastspec.models import MAEDecoder
from fastspec.models.flops import transformer_train_flops
from fastspec.models.vit import pad_frames


class MaskSpec(nn.Module):
    """Encoder + decoder + loss of the MaskSpec recipe.

    Args:
        encoder: a ViT encoder from ``fastspec.models.create_model``.
        decoder_dim, decoder_depth, decoder_heads: the decoder (paper: 512 x 8, 16 heads).
        mask_kind, mask_ratio: the mask sampler and the fraction of patches hidden.
        norm_pix_loss: normalise each target patch to zero mean and unit variance.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_kind: str = "random",
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.encoder = encoder
        pt, pf = encoder.patch_size
        self.decoder = MAEDecoder(
            encoder.embed_dim,
            decoder_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            patch_dim=pt * pf,
            device=device,
            dtype=dtype,
        )
        self.mask_kind = mask_kind
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

    def forward_loss(self, target: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error on masked patches.

        target, pred: [B, N, P] patches; mask: [B, N] bool, True where the encoder saw nothing.
        """
        target = target.float()
        if self.norm_pix_loss:
            # per-patch statistics in fp32: bf16 variance of near-constant patches is noise
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = F.mse_loss(pred.float(), target, reduction="none").mean(dim=-1)  # [B, N]
        weight = mask.to(per_patch.dtype)
        # clamp keeps ratio 0 (nothing masked) finite; never a host sync
        return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)

    def forward(
        self,
        mel: Tensor,
        generator: torch.Generator | None = None,
        frame_lengths: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One training forward pass.

        mel: [B, T, F] normalised log-mel (T is zero-padded up to a whole number of patches).
        generator: the RNG of the mask sampler, on mel's device (seeded per step by the loop).
        frame_lengths: [B] valid frames per clip; unused: like Audio-MAE, MaskSpec trains on
            fixed-length crops whose zero padding (short clips) is part of the input.
        Returns {"loss": scalar}.
        """
        mel = pad_frames(mel, self.encoder.patch_size[0])
        grid = self.encoder.grid(mel.shape[1])
        mask = sample_mask(
            self.mask_kind,
            mel.shape[0],
            grid,
            self.mask_ratio,
            generator=generator,
            device=mel.device,
        )
        latent = self.encoder.forward_features(mel, ids_keep=mask.ids_keep)  # [B, 1 + K, D]
        pred = self.decoder(latent, mask.ids_restore, grid)  # [B, N, P]
        target = self.encoder.patchify(mel)  # [B, N, P]
        return {"loss": self.forward_loss(target, pred, mask.mask)}

    def train_flops_per_clip(self, n_frames: int) -> float:
        """Training FLOPs (forward + backward) of one clip of ``n_frames`` frames.

        Dense matmul FLOPs only (see ``transformer_train_flops``); the encoder runs on the kept
        tokens plus the class token, the decoder on the full grid plus the class token.
        """
        pt, pf = self.encoder.patch_size
        t_p, f_p = self.encoder.grid(-(-n_frames // pt) * pt)
        n = t_p * f_p
        n_keep = int(n * (1 - self.mask_ratio))
        enc = self.encoder
        dec = self.decoder
        flops = transformer_train_flops(n_keep + 1, enc.embed_dim, enc.depth, enc.mlp_ratio)
        flops += transformer_train_flops(n + 1, dec.decoder_dim, dec.depth, dec.mlp_ratio)
        # patch embedding: forward + weight gradient only (the mel input needs no gradient)
        flops += 2 * 2 * n_keep * pt * pf * enc.embed_dim
        # decoder input projection and prediction head: forward + both gradients
        flops += 3 * 2 * (n_keep + 1) * enc.embed_dim * dec.decoder_dim
        flops += 3 * 2 * n * dec.decoder_dim * pt * pf
        return float(flops)
