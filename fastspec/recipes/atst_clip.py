"""ATST-Clip (Li et al. 2022/2023): BYOL between two augmented crops of a clip, at clip level.

Per clip, two independent random crops (6 s, 600 frames = 150 full-frequency 64 x 4 patches of
40 ms) are cut from the log-mel on the device. Each crop is augmented segment-wise, as ATST's
loader does: log-mixup-exp against a memory of past crops, then a random resize crop in time and
frequency (:mod:`fastspec.recipes.augment`). Student and EMA teacher encode both crops (one
batched pass each, crops shorter than 6 s padded and hidden from attention); the student's clip
embedding (the class token, or the mean of the valid output tokens with ``pooling="mean"``) goes
through the projector and predictor, the teacher's through its projector, and the
loss is BYOL's ``2 - 2 cos`` between the student's prediction for one crop and the teacher's
projection of the other, averaged over both directions (ATST's ``ByolLoss``).

Any encoder of the contract: the recipe asks for full-frequency output tokens of
``token_frames`` frames (:meth:`ATSTClip.encoder_options`); a ViT then has ATST's 64 x 4 patches,
MAST pools frequency to one token per time step (its class token is pooled with the rest).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastspec.masking.clip_rng import view_rows
from fastspec.models import SpectrogramEncoder
from fastspec.recipes.atst_settings import ATST_DEMO, ATST_PAPER, AtstConfig, atst_common_options
from fastspec.recipes.augment import random_resize_crop
from fastspec.recipes.base import StepInput
from fastspec.recipes.byol import BYOLPair, byol_loss
from fastspec.recipes.spec import RecipeSpec

# ==== settings: section `atst` (fastspec.recipes.atst_settings), paper and demo defaults ======


def atst_clip_options(cfg) -> dict:
    """ATSTClip's constructor arguments: the ``atst`` section, two 6 s crops by default."""
    a = cfg.atst
    options = atst_common_options(cfg, default_crop_seconds=6.0)
    return {**options, "time_scale": a.time_scale, "time_canvas": a.time_canvas,
            "pooling": a.clip_pooling}  # fmt: skip


# the paper's base model (methods/atst/train_base.sh): 6 GPUs x 256 clips = 1536 per step,
# learning_rate 2e-4 per 256, 15,860 warm-up steps of 318,000, ema 0.9995; two 6 s crops
# (transform.py ATSTTrainTransform: anchor_len = positive_len = 6 s, virtual_crop 1.5)
ATST_CLIP_PAPER = {
    **ATST_PAPER,
    "atst.crop_seconds": 6.0,
    "atst.ema_momentum": 0.9995,
    "optim.blr": 2e-4,
    "optim.warmup_steps": 15_860,
    "train.steps": 318_000,
    "train.batch_size": 256,
    "train.global_batch": 1536,
}
# the demo keeps the random resize crop in time but not in frequency: on the demo corpus (a few
# events, each in a narrow band) a crop of 0.6-1 of the mel axis often cuts an event out of one
# view only, and BYOL then learns to ignore events. Measured (a linear probe with all labels of
# 2400 held-out demo clips, pretrained minus random init; tests/test_demo_learning.py): 1000
# steps of 16 clips +3.8 / 0.0 points without it, -5.7 / -8.3 with it (seeds 0 / 1); 60 steps of
# 16 clips are 1.0-2.0 points better without it on every seed.
ATST_CLIP_DEMO = {**ATST_DEMO, "atst.crop_seconds": 1.5, "atst.freq_scale": (1.0, 1.0)}

# ==== end of settings ==========================================================================


class ATSTClip(BYOLPair):
    """Encoder + BYOL heads + EMA teacher + augmentations of the ATST-Clip recipe.

    Args:
        encoder: any encoder, normally built with :meth:`encoder_options` (``n_mels=64`` and
            ``frame_tokens=4`` for the paper's 40 ms tokens).
        crop_frames: frames per crop (paper: 6 s = 601 frames at a 10 ms hop); cut down to whole
            patches (600).
        time_scale, time_canvas: the random resize crop in time (0.6-1.5 of the crop, cut from a
            canvas 1.5x as long as the crop); its frequency range is ``freq_scale``.
        pooling: the clip embedding BYOL compares: ``cls`` (the class token, ATST) or ``mean``
            (the mean of the valid output tokens).
        common: the options of :class:`~fastspec.recipes.byol.BYOLPair` (heads 4096 / 256, the
            teacher's momentum, from 0.9995 for the paper's base model, the mixup memory,
            ``freq_scale``, ``token_frames``, ``device``, ``dtype``).
    """

    def __init__(
        self,
        encoder: SpectrogramEncoder,
        *,
        crop_frames: int = 601,
        time_scale: tuple[float, float] = (0.6, 1.5),
        time_canvas: float = 1.5,
        pooling: str = "cls",
        **common,
    ):
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be cls or mean, got {pooling!r}")
        super().__init__(encoder, crop_frames=crop_frames, **common)
        self.pooling = pooling
        self.time_scale = tuple(float(s) for s in time_scale)
        self.time_canvas = float(time_canvas)

    # ---- views --------------------------------------------------------------------------------

    @torch.no_grad()
    def make_views(self, batch: StepInput) -> tuple[Tensor, Tensor]:
        """Two augmented crops per clip of ``batch.mel`` [B, T, F] (log-mel).

        Returns views [2B, crop_frames, F] float32 (rows 0..B-1 the first crop of each clip,
        B..2B-1 the second) and their valid frames [2B] int64 (None when no crop is padded).
        """
        views, lengths = self.crop_views(batch, 2)  # [2B, crop, F], [2B] or None: all whole
        generator = view_rows(batch.generator, 2)  # per-clip keyed draws: one source per row
        # segment-wise, as ATST's loader: mixup with a past crop, then resize crop
        views = self.memory(views, generator, lengths, n_views=2)
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

    def forward_views(self, views: Tensor, lengths: Tensor | None) -> dict[str, Tensor]:
        """BYOL loss of two views per clip.

        views: [2B, T, F] (first crops, then second crops); lengths: [2B] valid frames, or None
        when no view is padded (then no attention mask at all). Returns {"loss",
        "spread_student", "spread_teacher"} scalars.
        """
        padded = lengths is not None
        if not padded:  # whole views: lengths for the pooling, no mask for the attention
            lengths = torch.full((views.shape[0],), views.shape[1], device=views.device)
        views = self.student_encoder.pad_frames(views)
        token_lengths = self.student_encoder.token_lengths(lengths)
        attn_lengths = token_lengths if padded else None
        student = self.student_encoder.forward_features(views, token_lengths=attn_lengths)
        p = self.predictor(self.projector(self.clip_embedding(student, token_lengths)))
        with torch.no_grad():
            teacher = self.teacher_encoder.forward_features(views, token_lengths=attn_lengths)
            z = self.teacher_projector(self.clip_embedding(teacher, token_lengths))  # [2B, P]
        p1, p2 = p.chunk(2)
        z1, z2 = z.chunk(2)
        # each view's prediction matches the teacher's projection of the other view
        loss = 0.5 * (byol_loss(p1, z2) + byol_loss(p2, z1))
        return {
            "loss": loss,
            **self.spread_monitors(p, z),
        }

    def clip_embedding(self, tokens: Tensor, token_lengths: Tensor) -> Tensor:
        """tokens [R, 1 + N, D] (class token first, grid order) -> [R, D]: the class token, or
        the mean of the output tokens of the valid time steps (``pooling``)."""
        if self.pooling == "cls":
            return tokens[:, 0]
        enc = self.student_encoder
        steps = (tokens.shape[1] - 1) // enc.grid(self.crop_frames)[1]  # output time steps
        frames = enc.frame_tokens(tokens, steps * enc.frame_hop)  # [R, T, D]
        valid = torch.arange(frames.shape[1], device=tokens.device) < token_lengths[:, None]
        weight = valid.to(frames.dtype)[..., None]  # [R, T, 1]
        return (frames * weight).sum(dim=1) / weight.sum(dim=1)

    def train_flops_per_clip(self, n_frames: int) -> float:
        """Training FLOPs of one clip (dense matmuls, ``fastspec.models.flops`` convention).

        The cost is set by the two crops, not by ``n_frames``: clips shorter than a crop are
        padded to it. Per crop: student encoder forward + backward, teacher encoder forward,
        and the heads on the class token (student projector + predictor trained, teacher
        projector forward).
        """
        del n_frames  # every crop is crop_frames long, padded when the clip is shorter
        flops = self.encoders_train_flops(self.crop_frames, views=2)
        return float(flops + self.heads_train_flops(rows=1, views=2))


RECIPE_SPECS = (
    RecipeSpec("atst-clip", ATSTClip, atst_clip_options, "atst", AtstConfig,
               paper=ATST_CLIP_PAPER, demo=ATST_CLIP_DEMO),
)  # fmt: skip

__all__ = ["ATSTClip", "RECIPE_SPECS", "atst_clip_options"]
