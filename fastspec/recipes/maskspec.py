"""MaskSpec (Chong et al. 2022): MAE-style masked spectrogram prediction with token dropping.

The encoder sees only the kept 25 % of its mask units (masked units are dropped, never
embedded); a light decoder restores the full grid with a mask token and predicts every unit's
values; the loss is the mean squared error on the masked units against targets normalised per
embedding patch (MAE's ``norm_pix_loss``).

Any encoder of the contract (``fastspec.models.contract``): with a ViT a unit is a 16x16 patch
and this is MaskSpec / Audio-MAE exactly; with a pooling encoder (MAST) a unit is one output
token of the last stage (e.g. 64 frames x 64 mel), the mask is sampled on that grid so every
pooling window of a kept unit is whole, the decoder also reads the kept units' earlier stages
(``MAEDecoder`` with ``stage_dims``), and targets are normalised per embedding patch (8x8), the
patch the encoder reads, as MAE normalises per ViT patch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fastspec.masking import sample_mask
from fastspec.models import MAEDecoder, SpectrogramEncoder
from fastspec.models.flops import mae_decoder_train_flops
from fastspec.recipes.base import Recipe, StepInput
from fastspec.recipes.spec import RecipeSpec

# ==== settings: sections `model` (decoder) and `masking`, paper and demo defaults ==============


def maskspec_options(cfg) -> dict:
    """MaskSpec's constructor arguments: the decoder of ``model``, the mask of ``masking``
    (the paper's defaults are the sections' own: decoder 512 x 8, 16 heads, random 75 %)."""
    return {
        "decoder_dim": cfg.model.decoder_dim,
        "decoder_depth": cfg.model.decoder_depth,
        "decoder_heads": cfg.model.decoder_heads,
        "mask_kind": cfg.masking.kind,
        "mask_ratio": cfg.masking.ratio,
        "norm_pix_loss": cfg.masking.norm_pix_loss,
    }


# MaskSpec's pretraining (WangHelin1997/MaskSpec scripts/pretrain_vit.sh with the defaults of
# trainer/main_pretrain.py; models/models_mae.py): 32 kHz, the `maskspec` front end (per-bin
# statistics from frontend.stats, written by `fastspec stats DATA --preset maskspec`), 992 frames
# = 62 patches of 16 (the reference crops 10 s to its first 992 frames; 9.92 s gives exactly
# 992: centred framing of the pre-emphasised clip, 1 + (samples - 1) // 320), ViT-B with fixed
# sin-cos positions and qkv bias, decoder 512 x 8 x 16 heads, random masking 0.75 with
# norm_pix_loss; 8 GPUs x 64 = 512 clips per step, AdamW (0.9, 0.95), weight decay 0.05, blr 1e-3
# (lr = blr x 512 / 256), 40 warm-up epochs of 400, cosine to 0, no gradient clipping. In
# training its AugmentMelSTFT draws the mel range (fmin_aug_range 10, fmax_aug_range 2000: low
# edge 0-9 Hz, high edge 14,001-16,000 Hz; fastspec.frontend.mel_range, a range per clip).
MASKSPEC_PAPER = {
    "data.sample_rate": 32000,
    "data.clip_seconds": 9.92,
    "frontend.preset": "maskspec",
    "frontend.mel_range_jitter": (10, 2000),
    "model.name": "vit_base_patch16",
    "model.pos_embed": "sincos",
    "model.qkv_bias": True,
    "model.drop_path": 0.0,
    "masking.kind": "random",
    "masking.ratio": 0.75,
    "masking.norm_pix_loss": True,
    "optim.blr": 1e-3,
    "optim.min_lr": 0.0,
    "optim.weight_decay": 0.05,
    "optim.betas": (0.9, 0.95),
    "optim.grad_clip": 0.0,
    "optim.warmup_epochs": 40.0,
    "train.epochs": 400.0,
    "train.batch_size": 64,
    "train.global_batch": 512,
}
# about a minute on a 2-core CPU: a 2-block, 128-wide decoder behind the demo's 4-block ViT.
# 90 % masking and blr 0.02: with the paper's 75 % and the demo's blr 4e-3 the features do not
# beat the encoder's random init on the demo evaluation; with both changes they do
# (tests/test_demo_learning.py: what was measured, and why)
MASKSPEC_DEMO = {
    "model.decoder_dim": 128,
    "model.decoder_depth": 2,
    "model.decoder_heads": 4,
    "masking.ratio": 0.9,
    "optim.blr": 0.02,
}

# ==== end of settings ==========================================================================


class MaskSpec(Recipe):
    """Encoder + decoder + loss of the MaskSpec recipe.

    Args:
        encoder: any encoder from ``fastspec.models.create_model``.
        decoder_dim, decoder_depth, decoder_heads: the decoder (paper: 512 x 8, 16 heads).
        mask_kind, mask_ratio: the mask sampler, run on the encoder's unit grid, and the
            fraction of units hidden.
        norm_pix_loss: normalise each embedding patch of the target to zero mean, unit variance.
    """

    def __init__(
        self,
        encoder: SpectrogramEncoder,
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
        self.decoder = MAEDecoder(
            encoder.embed_dim,
            decoder_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            patch_dim=encoder.patch_dim,
            stage_dims=encoder.stage_dims[:-1],
            stage_tokens=encoder.stage_tokens[:-1],
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

    def training_loss(self, batch: StepInput) -> dict[str, Tensor]:
        """``{"loss": scalar}`` of one batch: mask, encode the kept units, reconstruct.

        The generator draws the masks; ``frame_lengths`` is unused: like Audio-MAE, MaskSpec
        trains on fixed-length crops whose zero padding (short clips) is part of the input.
        """
        mel = self.encoder.pad_frames(batch.mel)
        grid = self.encoder.grid(mel.shape[1])  # the mask-unit grid
        mask = sample_mask(
            self.mask_kind,
            mel.shape[0],
            grid,
            self.mask_ratio,
            generator=batch.generator,
            device=mel.device,
        )
        latent, stages = self.encoder.forward_multiscale(mel, ids_keep=mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore, grid, stages)  # [B, N, P]
        target = self.encoder.patchify(mel)  # [B, N, P]
        return {"loss": self.forward_loss(target, pred, mask.mask)}

    def train_flops_per_clip(self, n_frames: int) -> float:
        """Training FLOPs (forward + backward) of one clip of ``n_frames`` frames.

        Dense matmul FLOPs only: the encoder's analytic count on the kept units
        (``SpectrogramEncoder.train_flops``) and the decoder's on the full grid
        (``mae_decoder_train_flops``).
        """
        t_p, f_p = self.encoder.grid(
            -(-n_frames // self.encoder.frame_hop) * self.encoder.frame_hop
        )
        n = t_p * f_p
        n_keep = int(n * (1 - self.mask_ratio))
        flops = self.encoder.train_flops(n_frames, n_units=n_keep)
        return float(flops + mae_decoder_train_flops(self.decoder, n_keep, n))


RECIPE_SPECS = (
    RecipeSpec("maskspec", MaskSpec, maskspec_options, paper=MASKSPEC_PAPER, demo=MASKSPEC_DEMO),
)
