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

from fastspec.models.flops import transformer_train_flops
from fastspec.recipes.heads import MLPHead
from fastspec.recipes.monitors import collapse_warnings
from fastspec.recipes.teacher import EMATeacher, ema_momentum


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


def encoder_forward_flops(encoder: nn.Module, n_frames: int) -> tuple[float, float]:
    """Dense-matmul FLOPs of one forward pass of one clip: (blocks, patch embedding).

    ``n_frames`` is the (padded) input length, a multiple of the encoder's ``patch_size[0]``; all
    tokens plus the class token are encoded. MAST encoders count themselves
    (``forward_flops``); ViTs follow :func:`~fastspec.models.flops.transformer_train_flops`.
    """
    if hasattr(encoder, "forward_flops"):
        flops = encoder.forward_flops(n_frames)
        return float(flops["blocks"]), float(flops["patch_embed"])
    t_p, f_p = encoder.grid(n_frames)
    n = t_p * f_p
    blocks = transformer_train_flops(n + 1, encoder.embed_dim, encoder.depth, encoder.mlp_ratio)
    return blocks / 3.0, 2.0 * n * encoder.patch_dim * encoder.embed_dim


def mlp_head_flops(head: MLPHead) -> float:
    """Forward FLOPs of :class:`MLPHead` per row: its two linear layers."""
    first, last = head.net[0], head.net[3]
    return 2.0 * (first.in_features * first.out_features + last.in_features * last.out_features)


class BYOLPair(nn.Module):
    """Student encoder + projector + predictor, and the EMA teacher of encoder + projector.

    Subclasses (the recipes) run the networks and compute their losses; this class owns the
    parameters, the teacher update hook and the collapse warnings.

    The exported encoder is the teacher's: :attr:`encoder` (what the training loop exports) is
    the EMA teacher's backbone, as ATST evaluates it (audiossl's downstream code loads
    ``model.teacher.encoder``); the student's is :attr:`student_encoder`. Both are in every
    checkpoint.

    Args:
        encoder: the student encoder; the teacher starts as a copy of it.
        proj_hidden, proj_dim: projector and predictor widths (ATST: 4096 and 256).
        ema_base, ema_final: teacher momentum at the first and at the last step.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        ema_base: float = 0.99,
        ema_final: float = 1.0,
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
        blocks, patch_embed = encoder_forward_flops(self.student_encoder, n_frames)
        return views * (3.0 * blocks + 2.0 * patch_embed + blocks + patch_embed)


def token_lengths_of(frame_lengths: Tensor, patch_frames: int) -> Tensor:
    """Valid time tokens per crop, ``ceil(frames / pt)``, at least 1 (as the exported
    encoder counts them): a partly filled last patch is real audio."""
    return ((frame_lengths + patch_frames - 1) // patch_frames).clamp_min(1)


def whole_patch_frames(crop_frames: int, patch_frames: int) -> int:
    """``crop_frames`` cut down to whole patches (at least one): ATST drops the frames that
    do not fill a last patch (600 of 601 frames for 6 s, 1000 of 1001 for 10 s)."""
    if crop_frames < 1:
        raise ValueError(f"crop_frames must be >= 1, got {crop_frames}")
    return max(patch_frames, crop_frames // patch_frames * patch_frames)


def crop_lengths(starts: Tensor, frame_lengths: Tensor | None, n_frames: int, crop: int) -> Tensor:
    """Valid frames of crops that start at ``starts`` [...] in clips of ``frame_lengths`` [B]
    (default: all ``n_frames``), between 1 and ``crop``."""
    if frame_lengths is None:
        total = torch.full_like(starts, n_frames)
    else:
        total = frame_lengths.to(device=starts.device, dtype=torch.long).expand_as(starts)
    return (total - starts).clamp(1, crop)


__all__ = [
    "BYOLPair",
    "byol_loss",
    "crop_lengths",
    "encoder_forward_flops",
    "mlp_head_flops",
    "token_lengths_of",
    "whole_patch_frames",
]
