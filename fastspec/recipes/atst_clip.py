"""ATST-Clip (Li et al. 2022/2023): BYOL between two augmented crops of a clip, at clip level.

Per clip, two independent random crops (6 s, 600 frames = 150 full-frequency 64 x 4 patches of
40 ms) are cut from the log-mel on the device. Each crop is augmented segment-wise, as ATST's
loader does: log-mixup-exp against a memory of past crops, then a random resize crop in time and
frequency (:mod:`fastspec.recipes.augment`). Student and EMA teacher encode both crops (one
batched pass each, crops shorter than 6 s padded and hidden from attention); the student's class
token goes through the projector and predictor, the teacher's through its projector, and the
loss is BYOL's ``2 - 2 cos`` between the student's prediction for one crop and the teacher's
projection of the other, averaged over both directions (ATST's ``ByolLoss``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastspec.models.vit import pad_frames
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


class ATSTClip(BYOLPair):
    """Encoder + BYOL heads + EMA teacher + augmentations of the ATST-Clip recipe.

    Args:
        encoder: a ViT (``patch_size=(4, 64)``, ``n_mels=64`` for the paper's 40 ms tokens) or
            any encoder with ``forward_features(mel, token_lengths=...)`` returning the class
            token first (MAST).
        crop_frames: frames per crop (paper: 6 s = 601 frames at a 10 ms hop); cut down to whole
            patches (600).
        proj_hidden, proj_dim: projector / predictor widths (4096, 256).
        ema_base, ema_final: teacher momentum, cosine from base to final over the run (the
            paper's base model: 0.9995; its code default: 0.99).
        mixup_ratio, memory_size: largest background weight of log-mixup-exp (0.4) and the
            number of past crops remembered (2000).
        freq_scale, time_scale, time_canvas: the random resize crop (0.6-1.5 on both axes, a
            canvas 1.5x as long as the crop; frequency canvas 1x).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        crop_frames: int = 601,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        ema_base: float = 0.99,
        ema_final: float = 1.0,
        mixup_ratio: float = 0.4,
        memory_size: int = 2000,
        freq_scale: tuple[float, float] = (0.6, 1.5),
        time_scale: tuple[float, float] = (0.6, 1.5),
        time_canvas: float = 1.5,
        device=None,
        dtype=None,
    ):
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
        self.freq_scale = tuple(float(s) for s in freq_scale)
        self.time_scale = tuple(float(s) for s in time_scale)
        self.time_canvas = float(time_canvas)
        self.memory = MixupMemory(
            memory_size, self.crop_frames, encoder.n_mels, mixup_ratio, device=device
        )

    # ---- views --------------------------------------------------------------------------------

    @torch.no_grad()
    def make_views(
        self,
        mel: Tensor,
        generator: torch.Generator | None = None,
        frame_lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Two augmented crops per clip.

        mel: [B, T, F] log-mel; frame_lengths: [B] valid frames (default all T).
        Returns views [2B, crop_frames, F] float32 (rows 0..B-1 the first crop of each clip,
        B..2B-1 the second) and their valid frames [2B] int64.
        """
        batch = mel.shape[0]
        crops, starts = random_time_crops(
            mel, self.crop_frames, 2, frame_lengths=frame_lengths, generator=generator
        )  # [2, B, crop, F], [2, B]
        lengths = crop_lengths(starts, frame_lengths, mel.shape[1], self.crop_frames)
        views = crops.reshape(2 * batch, self.crop_frames, mel.shape[2]).float()
        lengths = lengths.reshape(2 * batch)
        # segment-wise, as ATST's loader: mixup with a past crop, then resize crop
        views = self.memory(views, generator, lengths)
        views = random_resize_crop(
            views,
            frame_lengths=lengths,
            generator=generator,
            freq_scale=self.freq_scale,
            time_scale=self.time_scale,
            time_canvas=self.time_canvas,
        )
        return views, lengths

    # ---- loss ---------------------------------------------------------------------------------

    def forward_views(self, views: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        """BYOL loss of two views per clip.

        views: [2B, T, F] (first crops, then second crops); lengths: [2B] valid frames.
        Returns {"loss", "spread_student", "spread_teacher"} scalars.
        """
        views = pad_frames(views, self.patch_frames)
        token_lengths = token_lengths_of(lengths, self.patch_frames)
        cls_student = self.student_encoder.forward_features(views, token_lengths=token_lengths)
        cls_student = cls_student[:, 0]  # [2B, D] the class token
        p = self.predictor(self.projector(cls_student))  # [2B, proj_dim]
        with torch.no_grad():
            cls_teacher = self.teacher_encoder.forward_features(views, token_lengths=token_lengths)
            z = self.teacher_projector(cls_teacher[:, 0])  # [2B, proj_dim]
        p1, p2 = p.chunk(2)
        z1, z2 = z.chunk(2)
        # each view's prediction matches the teacher's projection of the other view
        loss = 0.5 * (byol_loss(p1, z2) + byol_loss(p2, z1))
        return {
            "loss": loss,
            "spread_student": embedding_spread(p.detach()),
            "spread_teacher": embedding_spread(z),
        }

    def forward(
        self,
        mel: Tensor,
        generator: torch.Generator | None = None,
        frame_lengths: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One training forward pass.

        mel: [B, T, F] normalised log-mel (``atst`` preset); generator: the RNG of crops and
        augmentations, on mel's device; frame_lengths: [B] valid frames per clip.
        Returns {"loss", "spread_student", "spread_teacher"}.
        """
        views, lengths = self.make_views(mel, generator, frame_lengths)
        return self.forward_views(views, lengths)

    def train_flops_per_clip(self, n_frames: int) -> float:
        """Training FLOPs of one clip (dense matmuls, ``fastspec.models.flops`` convention).

        The cost is set by the two crops, not by ``n_frames``: clips shorter than a crop are
        padded to it. Per crop: student encoder forward + backward, teacher encoder forward,
        and the heads on the class token (student projector + predictor trained, teacher
        projector forward).
        """
        del n_frames  # every crop is crop_frames long, padded when the clip is shorter
        padded = -(-self.crop_frames // self.patch_frames) * self.patch_frames
        flops = self.encoders_train_flops(padded, views=2)
        return float(flops + self.heads_train_flops(rows=1, views=2))


__all__ = ["ATSTClip"]
