"""MaskSpec with a multiscale encoder (MAST): whole mask units dropped, a multiscale decoder.

The recipe is MaskSpec's (MAE-style masked spectrogram prediction, masked tokens dropped from
the encoder, MSE on per-patch normalised targets of the masked part), adapted to pooling:

- the mask is sampled on the encoder's unit grid (``encoder.grid``: one unit = one output token
  of the last stage, e.g. 64 frames x 64 mel for ``mast_base``), so every pooling window of a
  kept unit is whole and the encoder computes on kept units only;
- the decoder (:class:`~fastspec.models.multiscale_decoder.MultiscaleMAEDecoder`) fuses the
  kept units' tokens of every stage, fills dropped units with a mask token and predicts every
  unit's values;
- targets are normalised per embedding patch (``encoder.embed_patch_size``, e.g. 8x8), the
  patch the encoder reads, as MAE normalises per ViT patch.

Same constructor arguments as :class:`~fastspec.recipes.maskspec.MaskSpec`, so the training
loop's options for ``maskspec`` apply unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastspec.masking import sample_mask
from fastspec.models.flops import transformer_train_flops
from fastspec.models.multiscale_decoder import MultiscaleMAEDecoder
from fastspec.models.vit import pad_frames


class MaskSpecMAST(nn.Module):
    """Encoder + multiscale decoder + loss of MaskSpec for a MAST encoder.

    Args:
        encoder: a ``MASTEncoder`` (``create_model("mast_base")``); anything with its
            ``forward_multiscale``, ``grid``, ``patchify``, ``stage_grids`` and
            ``embed_patch_size``.
        decoder_dim, decoder_depth, decoder_heads: the decoder (paper: 512 x 8, 16 heads).
        mask_kind, mask_ratio: the mask sampler, run on the unit grid, and the fraction of
            units hidden.
        norm_pix_loss: normalise each embedding patch of the target to zero mean, unit variance.
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
        u_t, u_f = encoder.unit_size
        # tokens per unit at the end of each stage: the unit shrinks by each query stride
        stage_tokens, a_t, a_f = [], u_t, u_f
        for stage in range(len(encoder.dims)):
            if stage > 0:
                st, sf = encoder.q_strides[stage - 1]
                a_t, a_f = a_t // st, a_f // sf
            stage_tokens.append(a_t * a_f)
        self.decoder = MultiscaleMAEDecoder(
            encoder.dims,
            stage_tokens,
            decoder_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            patch_dim=encoder.patch_dim,
            device=device,
            dtype=dtype,
        )
        self.mask_kind = mask_kind
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

    def forward_loss(self, target: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error on masked units.

        target, pred: [B, N, P_t * P_f] unit footprints (``encoder.patchify`` layout);
        mask: [B, N] bool, True where the encoder saw nothing.
        """
        target = target.float()
        if self.norm_pix_loss:
            (u_t, u_f), (pt, pf) = self.encoder.unit_size, self.encoder.embed_patch_size
            # a unit's footprint [P_t, P_f] = [u_t, pt, u_f, pf]: statistics per embedding
            # patch (dims pt, pf), in fp32 (bf16 variance of near-constant patches is noise)
            patches = target.unflatten(-1, (u_t, pt, u_f, pf))
            mean = patches.mean(dim=(-3, -1), keepdim=True)
            var = patches.var(dim=(-3, -1), keepdim=True)
            target = ((patches - mean) / (var + 1e-6).sqrt()).flatten(-4)
        per_unit = F.mse_loss(pred.float(), target, reduction="none").mean(dim=-1)  # [B, N]
        weight = mask.to(per_unit.dtype)
        # clamp keeps ratio 0 (nothing masked) finite; never a host sync
        return (per_unit * weight).sum() / weight.sum().clamp_min(1.0)

    def forward(
        self,
        mel: Tensor,
        generator: torch.Generator | None = None,
        frame_lengths: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One training forward pass.

        mel: [B, T, F] normalised log-mel (T is zero-padded up to a whole number of units).
        generator: the RNG of the mask sampler, on mel's device (seeded per step by the loop).
        frame_lengths: [B] valid frames per clip; unused, as in ``MaskSpec``: the recipe trains
            on fixed-length crops whose zero padding (short clips) is part of the input.
        Returns {"loss": scalar}.
        """
        mel = pad_frames(mel, self.encoder.patch_size[0])
        grid = self.encoder.grid(mel.shape[1])  # the mask-unit grid
        mask = sample_mask(
            self.mask_kind,
            mel.shape[0],
            grid,
            self.mask_ratio,
            generator=generator,
            device=mel.device,
        )
        latent, stages = self.encoder.forward_multiscale(mel, ids_keep=mask.ids_keep)
        pred = self.decoder(latent, stages, mask.ids_restore, grid)  # [B, N, P]
        target = self.encoder.patchify(mel)  # [B, N, P]
        return {"loss": self.forward_loss(target, pred, mask.mask)}

    def train_flops_per_clip(self, n_frames: int) -> float:
        """Training FLOPs (forward + backward) of one clip of ``n_frames`` frames.

        Dense matmul FLOPs only: the encoder's analytic count on the kept units
        (``MASTEncoder.forward_flops``), times 3 except the patch embedding (its input needs no
        gradient: times 2), plus the decoder's fusion projections, blocks and head, times 3.
        """
        p_t = self.encoder.patch_size[0]
        n_frames = -(-n_frames // p_t) * p_t
        t_u, f_u = self.encoder.grid(n_frames)
        n = t_u * f_u
        n_keep = int(n * (1 - self.mask_ratio))
        enc = self.encoder.forward_flops(n_frames, n_units=n_keep)
        dec = self.decoder
        flops = 3 * enc["blocks"] + 2 * enc["patch_embed"]
        for i, (a, c) in enumerate(zip(dec.stage_tokens, dec.stage_dims)):
            rows = n_keep + 1 if i == len(dec.stage_dims) - 1 else n_keep  # + class token
            flops += 3 * 2 * rows * a * c * dec.decoder_dim
        flops += transformer_train_flops(n + 1, dec.decoder_dim, dec.depth, dec.mlp_ratio)
        flops += 3 * 2 * n * dec.decoder_dim * dec.patch_dim
        return float(flops)
