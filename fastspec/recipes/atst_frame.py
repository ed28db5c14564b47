"""ATST-Frame (Li et al. 2023): BYOL between masked student frames and unmasked teacher frames.

One random 10 s crop per clip (1000 frames = 250 full-frequency 64 x 4 tokens of 40 ms) gives
two copies: a clean one and one augmented with log-mixup-exp and a random resize crop along the
mel axis only (the time axis must stay aligned frame for frame). One ``time_span`` mask per clip
(spans of 5 tokens, 65 %, at least 2 spans) is shared by both copies. The student embeds each
copy with the masked tokens' patch embeddings replaced by a learned mask embedding (before the
positions are added), the teacher sees each copy unmasked; both outputs at the masked frames go
through the heads, and the loss is BYOL's ``2 - 2 cos`` on masked frames of real audio only.

Symmetric (the paper's setting, ``symmetric=True``): both copies go through student and teacher,
and the student's prediction for each copy matches the teacher's frames of the other copy, the
two directions averaged (ATST-Frame's ``ByolLoss(symmetric=True)``). With ``symmetric=False`` the
student sees only the augmented copy and the teacher only the clean one.

No host sync: every mask kind except ``group`` hides the same number of tokens in every row, so
the masked frames are gathered into a fixed-shape [R, M, D] tensor, and frames that fall in a
crop's padding are kept out of the batch-norm statistics and the loss by weights, not by
boolean indexing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastspec.masking import sample_mask
from fastspec.models.vit import ViTEncoder
from fastspec.recipes.augment import MixupMemory, random_resize_crop
from fastspec.recipes.byol import (
    BYOLPair,
    byol_loss,
    crop_lengths,
    token_lengths_of,
    whole_patch_frames,
)
from fastspec.recipes.monitors import embedding_spread
from fastspec.recipes.views import random_time_crops


def encode_with_mask_embedding(
    encoder: ViTEncoder,
    mel: Tensor,
    mask: Tensor,
    mask_embed: Tensor,
    token_lengths: Tensor | None = None,
) -> Tensor:
    """ViT forward with masked tokens replaced by a learned embedding (ATST-Frame's student).

    Same computation as ``encoder.forward_features(mel, token_lengths=...)`` on all N tokens,
    except that the patch embedding of every token with ``mask`` True is replaced by
    ``mask_embed`` before the fixed positions are added, so a masked token still knows where it
    is but not what it held.

    mel: [B, T, F]; mask: [B, N] bool on the patch grid (True = masked); mask_embed: [D];
    token_lengths: [B] valid time patches (the rest is padding no token attends to).
    Returns [B, 1 + N, D] after the final LayerNorm, class token first.
    """
    grid = encoder.grid(mel.shape[1])
    batch = mel.shape[0]
    if mask.shape != (batch, grid[0] * grid[1]):
        raise ValueError(
            f"mask must be [B, N] = [{batch}, {grid[0] * grid[1]}], got {tuple(mask.shape)}"
        )
    x = encoder.patch_embed(encoder.patchify(mel))  # [B, N, D]
    # where() promotes a bf16 embedding (autocast) and the fp32 mask embedding to fp32, and the
    # fp32 positions keep the residual stream in fp32, as ViTEncoder.forward_features does
    x = torch.where(mask[..., None], mask_embed, x)
    x = x + encoder.position_embedding(grid, mel.device)
    cls = encoder.cls_token.to(x.dtype).expand(batch, 1, -1)  # its position term is zero
    x = torch.cat([cls, x], dim=1)
    key_padding_mask = None
    if token_lengths is not None:
        pad = encoder.token_padding_mask(token_lengths.to(mel.device), grid)  # [B, N]
        cls_valid = torch.zeros(batch, 1, dtype=torch.bool, device=mel.device)
        key_padding_mask = torch.cat([cls_valid, pad], dim=1)  # [B, 1 + N]
    for block in encoder.blocks:
        x = block(x, key_padding_mask)
    return encoder.norm(x)


def masked_token_ids(ids_restore: Tensor, n_keep: int) -> Tensor:
    """Grid indices [B, N - K] of the masked tokens, from a Mask's ``ids_restore`` [B, N].

    ``ids_restore`` places token n at its slot in ``cat(kept, masked)``; inverting the
    permutation with one scatter lists the tokens slot by slot (no sort, no sync).
    """
    batch, n = ids_restore.shape
    positions = torch.arange(n, device=ids_restore.device).expand(batch, n)
    order = torch.empty_like(ids_restore).scatter_(1, ids_restore, positions)
    return order[:, n_keep:]


class ATSTFrame(BYOLPair):
    """Encoder + mask embedding + BYOL heads + EMA teacher + augmentations of ATST-Frame.

    Args:
        encoder: a :class:`~fastspec.models.vit.ViTEncoder`, normally with
            ``patch_size=(4, 64)`` and ``n_mels=64`` (one token per 40 ms); the frame loss needs
            a token per patch, so pooling encoders (MAST) are refused.
        crop_frames: frames of the one crop per clip (paper: 10 s = 1001 frames), cut down to
            whole patches (1000 = 250 tokens).
        mask_kind, mask_ratio, mask_options: the mask sampler (``time_span``, 0.65, spans of 5
            tokens and at least 2 spans). Any kind that hides a fixed number of tokens per row
            works; ``group`` does not.
        symmetric: both copies through both networks, the two directions averaged (paper).
        proj_hidden, proj_dim, ema_base, ema_final: as :class:`~fastspec.recipes.byol.BYOLPair`
            (paper base: 4096, 256, 0.9996 -> 1).
        mixup_ratio, memory_size, freq_scale: the student copy's log-mixup-exp (0.4, 2000) and
            mel-axis random resize crop (0.6-1.5).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        crop_frames: int = 1001,
        mask_kind: str = "time_span",
        mask_ratio: float = 0.65,
        mask_options: dict | None = None,
        symmetric: bool = True,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        ema_base: float = 0.99,
        ema_final: float = 1.0,
        mixup_ratio: float = 0.4,
        memory_size: int = 2000,
        freq_scale: tuple[float, float] = (0.6, 1.5),
        device=None,
        dtype=None,
    ):
        if not isinstance(encoder, ViTEncoder):
            raise ValueError(
                f"atst-frame needs a ViT encoder (one output token per patch for the frame "
                f"loss); got {type(encoder).__name__}, which pools tokens"
            )
        if mask_kind == "group":
            raise ValueError(
                "atst-frame needs a mask kind that hides the same number of tokens in every "
                "row; 'group' does not (use time_span, random, time_freq or inverse_block)"
            )
        super().__init__(
            encoder,
            proj_hidden=proj_hidden,
            proj_dim=proj_dim,
            ema_base=ema_base,
            ema_final=ema_final,
            device=device,
            dtype=dtype,
        )
        self.patch_frames = encoder.patch_size[0]
        self.crop_frames = whole_patch_frames(crop_frames, self.patch_frames)
        self.mask_kind = mask_kind
        self.mask_ratio = float(mask_ratio)
        if mask_options is None:
            mask_options = {"span_length": 5, "min_spans": 2} if mask_kind == "time_span" else {}
        self.mask_options = dict(mask_options)
        self.symmetric = bool(symmetric)
        self.freq_scale = tuple(float(s) for s in freq_scale)
        # ATST-Frame's mask_embed: [D], truncated normal std 0.02; the student's alone
        self.mask_embed = nn.Parameter(torch.empty(encoder.embed_dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.mask_embed, std=0.02)
        self.memory = MixupMemory(
            memory_size, self.crop_frames, encoder.n_mels, mixup_ratio, device=device
        )
        # draw one mask now: a bad kind, ratio or option fails at construction, not at step 1
        grid = encoder.grid(self.crop_frames)
        probe = self._sample_mask(1, torch.Generator().manual_seed(0), "cpu")
        self.n_masked = grid[0] * grid[1] - probe.ids_keep.shape[1]  # M, the same in every row

    def _sample_mask(self, batch: int, generator, device):
        return sample_mask(
            self.mask_kind,
            batch,
            self.student_encoder.grid(self.crop_frames),
            self.mask_ratio,
            generator=generator,
            device=device,
            **self.mask_options,
        )

    # ---- views and mask ----------------------------------------------------------------------

    @torch.no_grad()
    def make_views(
        self,
        mel: Tensor,
        generator: torch.Generator | None = None,
        frame_lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The two copies of one crop per clip, and the mask they share.

        mel: [B, T, F]; frame_lengths: [B] valid frames (default all T).
        Returns clean [B, crop, F] float32, augmented [B, crop, F] float32, lengths [B] valid
        frames, mask [B, N] bool and ids_masked [B, M] (grid indices of the masked tokens).
        """
        crops, starts = random_time_crops(
            mel, self.crop_frames, 1, frame_lengths=frame_lengths, generator=generator
        )  # [1, B, crop, F], [1, B]
        clean = crops[0].float()
        lengths = crop_lengths(starts, frame_lengths, mel.shape[1], self.crop_frames)[0]
        # the student's copy: mixup with a past crop, then resize crop along mel only
        augmented = self.memory(clean, generator, lengths)
        augmented = random_resize_crop(
            augmented,
            frame_lengths=lengths,
            generator=generator,
            freq_scale=self.freq_scale,
            time_scale=(1.0, 1.0),
            time_canvas=1.0,
        )
        mask = self._sample_mask(mel.shape[0], generator, mel.device)
        ids_masked = masked_token_ids(mask.ids_restore, mask.ids_keep.shape[1])
        return clean, augmented, lengths, mask.mask, ids_masked

    # ---- loss ---------------------------------------------------------------------------------

    def _frames_at(self, tokens: Tensor, ids: Tensor) -> Tensor:
        """tokens [R, 1 + N, D] (class token first) -> the frames at ``ids`` [R, M]: [R, M, D]."""
        patch_tokens = tokens[:, 1:]
        return torch.gather(patch_tokens, 1, ids[..., None].expand(-1, -1, tokens.shape[-1]))

    def forward_views(
        self,
        clean: Tensor,
        augmented: Tensor,
        lengths: Tensor,
        mask: Tensor,
        ids_masked: Tensor,
    ) -> dict[str, Tensor]:
        """BYOL loss on the masked frames of the two copies.

        clean, augmented: [B, T, F] (T = crop frames); lengths: [B] valid frames; mask: [B, N]
        bool; ids_masked: [B, M] grid indices of the masked tokens (M the same for every row).
        Returns {"loss", "spread_student", "spread_teacher"} scalars.
        """
        token_lengths = token_lengths_of(lengths, self.patch_frames)  # [B]
        t_of_token = ids_masked // self.student_encoder.grid(clean.shape[1])[1]  # [B, M] time index
        real = t_of_token < token_lengths[:, None]  # [B, M] masked frames of real audio
        if self.symmetric:  # both copies through both networks: rows [clean; augmented]
            student_in = teacher_in = torch.cat([clean, augmented])
            rows = 2
        else:
            student_in, teacher_in, rows = augmented, clean, 1
        r_lengths, r_mask = token_lengths.repeat(rows), mask.repeat(rows, 1)
        r_ids, r_real = ids_masked.repeat(rows, 1), real.repeat(rows, 1)

        tokens = encode_with_mask_embedding(
            self.student_encoder, student_in, r_mask, self.mask_embed, r_lengths
        )
        frames = self._frames_at(tokens, r_ids)  # [R, M, D]
        p = self.predictor(self.projector(frames, r_real), r_real)  # [R, M, proj_dim]
        with torch.no_grad():
            t_tokens = self.teacher_encoder.forward_features(teacher_in, token_lengths=r_lengths)
            z = self.teacher_projector(self._frames_at(t_tokens, r_ids), r_real)  # [R, M, P]
        if self.symmetric:
            p_clean, p_aug = p.chunk(2)
            z_clean, z_aug = z.chunk(2)
            # each copy's masked frames predict the teacher's frames of the other copy
            loss = 0.5 * (byol_loss(p_clean, z_aug, real) + byol_loss(p_aug, z_clean, real))
        else:
            loss = byol_loss(p, z, real)
        return {
            "loss": loss,
            "spread_student": embedding_spread(p.detach().flatten(0, 1)),
            "spread_teacher": embedding_spread(z.flatten(0, 1)),
        }

    def forward(
        self,
        mel: Tensor,
        generator: torch.Generator | None = None,
        frame_lengths: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One training forward pass.

        mel: [B, T, F] normalised log-mel (``atst`` preset); generator: the RNG of crops,
        augmentations and masks, on mel's device; frame_lengths: [B] valid frames per clip.
        Returns {"loss", "spread_student", "spread_teacher"}.
        """
        return self.forward_views(*self.make_views(mel, generator, frame_lengths))

    def train_flops_per_clip(self, n_frames: int) -> float:
        """Training FLOPs of one clip (dense matmuls, ``fastspec.models.flops`` convention).

        Set by the crop (shorter clips are padded to it), not by ``n_frames``. Per copy that
        goes through the networks (2 symmetric, else 1 each): student encoder forward +
        backward on all tokens (masked ones carry the mask embedding), teacher encoder forward,
        and the heads on the M masked frames.
        """
        del n_frames  # the crop is crop_frames long, padded when the clip is shorter
        copies = 2 if self.symmetric else 1
        flops = self.encoders_train_flops(self.crop_frames, views=copies)
        return float(flops + self.heads_train_flops(rows=self.n_masked, views=copies))


__all__ = ["ATSTFrame", "encode_with_mask_embedding", "masked_token_ids"]
