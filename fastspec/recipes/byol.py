"""BYOL pieces shared by the ATST recipes: the loss, the student/teacher pair, FLOP counting.

ATST-Clip and ATST-Frame train the same pair (Grill et al. 2020, BYOL): a student (encoder ->
projector -> predictor) predicts the output of a teacher (encoder -> projector) that is an
exponential moving average of the student's encoder and projector, through

    loss = 2 - 2 cos(p, z) = || p / |p| - z / |z| ||^2,

with no gradient into the teacher. The projector and predictor are ATST's: Linear -> BatchNorm ->
ReLU -> Linear to 4096 then 256 (:class:`~fastspec.recipes.heads.MLPHead`). The teacher's
momentum rises from ``ema_base`` to ``ema_final`` on a cosine over the run
(:func:`~fastspec.recipes.teacher.ema_momentum`), one fused update after each optimizer step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastspec.recipes.augment import MixupMemory
from fastspec.recipes.base import Recipe, StepInput
from fastspec.recipes.heads import MLPHead
from fastspec.recipes.monitors import collapse_warnings, embedding_spread
from fastspec.recipes.teacher import EMATeacher, ema_momentum
from fastspec.recipes.views import crop_lengths, random_crops


def byol_loss(p: Tensor, z: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of ``2 - 2 cos(p, z)`` over rows, in float32 at least.

    p: [..., D] student predictions; z: [..., D] teacher targets (detached by the caller);
    weight: optional [...] row weights (e.g. 1 for masked frames of real audio, 0 elsewhere);
    the mean is then weighted, and a zero total weight gives 0, not NaN.
    """
    dtype = torch.promote_types(p.dtype, torch.float32)  # bf16 autocast outputs: fp32 loss
    cos = F.cosine_similarity(p.to(dtype), z.to(dtype), dim=-1, eps=1e-12)  # [...]
    per_row = 2.0 - 2.0 * cos
    if weight is None:
        return per_row.mean()
    weight = weight.to(per_row.dtype)
    # clamp keeps an all-zero weight finite without reading it back (no host sync)
    return (per_row * weight).sum() / weight.sum().clamp_min(1.0)


def mlp_head_flops(head: MLPHead) -> float:
    """Forward FLOPs of :class:`MLPHead` per row: its two linear layers."""
    first, last = head.net[0], head.net[3]
    return 2.0 * (first.in_features * first.out_features + last.in_features * last.out_features)


class BYOLPair(Recipe):
    """Student encoder + projector + predictor, and the EMA teacher of encoder + projector.

    Subclasses (the recipes) cut and augment their views (``make_views``) and compute their
    losses (``forward_views``); this class owns what both ATST recipes share: the parameters,
    the crop length, the log-mixup-exp memory, the teacher update hook, the collapse warnings
    and the token layout asked of the encoder.

    The exported encoder is the teacher's: :attr:`encoder` (what the training loop exports) is
    the EMA teacher's backbone, as ATST evaluates it (audiossl's downstream code loads
    ``model.teacher.encoder``); the student's is :attr:`student_encoder`. Both are in every
    checkpoint.

    Args:
        encoder: the student encoder; the teacher starts as a copy of it.
        crop_frames: frames of each crop, cut down to whole output tokens (ATST drops the
            frames that do not fill a last patch: 600 of 601 for 6 s, 1000 of 1001 for 10 s).
        proj_hidden, proj_dim: projector and predictor widths (ATST: 4096 and 256).
        ema_base, ema_final: teacher momentum at the first and at the last step.
        mixup_ratio, memory_size: largest background weight of log-mixup-exp (0.4) and the
            number of past crops remembered (2000).
        freq_scale: random resize crop, range of the crop height over the mel bins (0.6-1.5).
        token_frames: frames per full-frequency output token asked of the encoder (4 = 40 ms).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        crop_frames: int,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        ema_base: float = 0.99,
        ema_final: float = 1.0,
        mixup_ratio: float = 0.4,
        memory_size: int = 2000,
        freq_scale: tuple[float, float] = (0.6, 1.5),
        token_frames: int = 4,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not 0.0 <= ema_base <= ema_final <= 1.0:
            raise ValueError(
                f"need 0 <= ema_base <= ema_final <= 1, got ema_base={ema_base}, "
                f"ema_final={ema_final}"
            )
        kw = {"device": device, "dtype": dtype}
        self.student_encoder = encoder
        self.projector = MLPHead(encoder.embed_dim, proj_hidden, proj_dim, **kw)
        self.predictor = MLPHead(proj_dim, proj_hidden, proj_dim, **kw)
        self.ema_base, self.ema_final = float(ema_base), float(ema_final)
        # the teacher starts as an exact copy of encoder + projector (ATST's load_state_dict)
        self.teacher = EMATeacher(self._student_branch())
        self.token_frames = int(token_frames)
        self.crop_frames = whole_patch_frames(crop_frames, encoder.frame_hop)
        self.freq_scale = tuple(float(s) for s in freq_scale)
        self.memory = MixupMemory(
            memory_size, self.crop_frames, encoder.n_mels, mixup_ratio, device=device
        )

    @staticmethod
    def encoder_options(token_frames: int = 4, **options) -> dict:
        """Contract options asked of the encoder: full-frequency tokens of ``token_frames``."""
        del options
        return {"frame_tokens": int(token_frames)}

    def crop_views(self, batch: StepInput, n_views: int) -> tuple[Tensor, Tensor | None]:
        """``n_views`` independent random crops of ``crop_frames`` per clip of ``batch.mel``
        [B, T, F]: views [V * B, crop_frames, F] float32, view-major (rows 0..B-1 the first
        crop of each clip), and their valid frames [V * B], or None when no crop is padded (no
        attention mask is needed then)."""
        mel, frame_lengths = batch.mel, batch.frame_lengths
        crops, starts = random_crops(
            mel, self.crop_frames, n_views, lengths=frame_lengths, generator=batch.generator
        )  # [V, B, crop, F], [V, B]
        lengths = crop_lengths(starts, frame_lengths, mel.shape[1], self.crop_frames)
        views = crops.reshape(-1, self.crop_frames, mel.shape[2]).float()
        return views, None if lengths is None else lengths.reshape(-1)

    @staticmethod
    def spread_monitors(p: Tensor, z: Tensor) -> dict[str, Tensor]:
        """Collapse monitors of the student's predictions ``p`` and the teacher's projections
        ``z`` ([..., P], one row per clip or frame): their normalised spread."""
        return {
            "spread_student": embedding_spread(p.detach().flatten(0, -2)),
            "spread_teacher": embedding_spread(z.flatten(0, -2)),
        }

    def training_loss(self, batch: StepInput) -> dict[str, Tensor]:
        """The recipe's views of the batch (``atst`` log-mel; the generator draws crops,
        augmentations and masks), then their loss: {"loss", "spread_student", "spread_teacher"}."""
        return self.forward_views(*self.make_views(batch))

    def _student_branch(self) -> nn.ModuleDict:
        # what the teacher follows, in the order of the teacher's own copy; a fresh container
        # each call, so the recipe itself registers each module once
        return nn.ModuleDict({"encoder": self.student_encoder, "projector": self.projector})

    @property
    def encoder(self) -> nn.Module:
        """The encoder the run exports: the EMA teacher's backbone (class docstring)."""
        return self.teacher.module["encoder"]

    @property
    def teacher_encoder(self) -> nn.Module:
        return self.teacher.module["encoder"]

    @property
    def teacher_projector(self) -> MLPHead:
        return self.teacher.module["projector"]

    def momentum(self, step: int, total_steps: int) -> float:
        """Teacher momentum after optimizer step ``step`` of ``total_steps``."""
        return ema_momentum(step, total_steps, self.ema_base, self.ema_final)

    def after_step(self, step: int, total_steps: int) -> None:
        """Training-loop hook: the teacher follows the student (one fused foreach lerp)."""
        self.teacher.update(self._student_branch(), self.momentum(step, total_steps))

    def health(self, stats: dict[str, float]) -> list[str]:
        """Training-loop hook: warn when student or teacher outputs stop varying (collapse)."""
        warnings = collapse_warnings(stats, spread_key="spread_teacher")
        return warnings + collapse_warnings(stats, spread_key="spread_student")

    def heads_train_flops(self, rows: int, views: int) -> float:
        """FLOPs of the heads for ``rows`` output rows per view and ``views`` views per clip:
        student projector + predictor forward and backward (3x), teacher projector forward."""
        student = 3.0 * (mlp_head_flops(self.projector) + mlp_head_flops(self.predictor))
        return views * rows * (student + mlp_head_flops(self.projector))

    def encoders_train_flops(self, n_frames: int, views: int) -> float:
        """FLOPs of the encoders for ``views`` inputs of ``n_frames`` frames per clip: the
        student forward and backward (3x, the patch embedding 2x: the mel needs no gradient)
        and the teacher forward."""
        enc = self.student_encoder
        forward = sum(enc.forward_flops(n_frames).values())
        return views * (enc.train_flops(n_frames) + forward)


def whole_patch_frames(crop_frames: int, patch_frames: int) -> int:
    """``crop_frames`` cut down to whole patches (at least one): ATST drops the frames that
    do not fill a last patch (600 of 601 frames for 6 s, 1000 of 1001 for 10 s)."""
    if crop_frames < 1:
        raise ValueError(f"crop_frames must be >= 1, got {crop_frames}")
    return max(patch_frames, crop_frames // patch_frames * patch_frames)


__all__ = [
    "BYOLPair",
    "byol_loss",
    "mlp_head_flops",
    "whole_patch_frames",
]
