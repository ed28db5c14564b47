"""ASiT's losses: DINO-style global and local self-distillation, masked L1 reconstruction, and
the teacher centres (``Sara-Ahmed/ASiT``: ``losses.py``). Pure functions of tensors, computed in
float32 at least: the tests compare them with a float64 reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastspec.recipes.collective import all_reduce_mean, all_reduce_sum, world


def _fp32(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it already is (the reference tests run in float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def distillation_cross_entropy(
    student_logits: Tensor,
    teacher_logits: Tensor,
    center: Tensor,
    student_temp: float | Tensor,
    teacher_temp: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """DINO's cross-entropy of each row: ``-sum_k p_t[k] log p_s[k]``.

    student_logits, teacher_logits: [M, K] (the teacher's without gradient); center: [K].
    ``p_t = softmax((teacher - center) / teacher_temp)``, ``log p_s = log_softmax(student /
    student_temp)``, both in float32 whatever the autocast dtype (logits divided by 0.04 need
    the range). Returns (per-row loss [M] float32, teacher probabilities [M, K] float32).
    """
    t_probs = F.softmax((_fp32(teacher_logits) - center) / teacher_temp, dim=-1).detach()
    s_logp = F.log_softmax(_fp32(student_logits) / student_temp, dim=-1)
    return -(t_probs * s_logp).sum(dim=-1), t_probs


def global_distillation_loss(
    student_cls: Tensor,
    teacher_cls: Tensor,
    center: Tensor,
    student_temp: float | Tensor,
    teacher_temp: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """Cross-crop class-token loss (ASiT's ``CLSLoss``).

    student_cls, teacher_cls: [2B, K] crop-major (rows ``0..B-1`` crop 0, ``B..2B-1`` crop 1).
    The teacher of crop 0 teaches the student of crop 1 and vice versa; the two means are
    averaged. Returns (scalar, teacher probabilities [2B, K]).
    """
    rows = student_cls.shape[0]
    if rows % 2 or teacher_cls.shape[0] != rows:
        raise ValueError(
            f"global loss needs [2B, K] logits of two crops, got {tuple(student_cls.shape)} "
            f"and {tuple(teacher_cls.shape)}"
        )
    # rolling the student's rows by B pairs teacher crop 0 with student crop 1 and back
    swapped = student_cls.roll(rows // 2, dims=0)
    per_row, t_probs = distillation_cross_entropy(
        swapped, teacher_cls, center, student_temp, teacher_temp
    )
    # (mean over crop-0 rows + mean over crop-1 rows) / 2 == mean over all rows (equal halves)
    return per_row.mean(), t_probs


def local_distillation_loss(
    student_patches: Tensor,
    teacher_patches: Tensor,
    center: Tensor,
    student_temp: float | Tensor,
    teacher_temp: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-patch loss within each crop (ASiT's ``DATALoss``).

    student_patches, teacher_patches: [R, N, K] (crop, patch, prototype), the same crop and
    patch on both sides. Returns (mean over all R * N patches, teacher probabilities [R * N, K]).
    """
    k = student_patches.shape[-1]
    per_row, t_probs = distillation_cross_entropy(
        student_patches.reshape(-1, k), teacher_patches.reshape(-1, k), center, student_temp,
        teacher_temp,
    )  # fmt: skip
    return per_row.mean(), t_probs


def masked_l1_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the masked bins only.

    pred, target: [R, T, F]; mask: [R, T, F] bool, True = corrupted. The mean runs over all
    masked bins of the batch at once (``rloss[mask == 1].mean()``), without a host sync; 0 when
    nothing is masked.
    """
    err = (_fp32(pred) - _fp32(target)).abs()
    weight = mask.to(err.dtype)
    err = err * weight
    # under torchrun the mean runs over the masked bins of every rank (the rank's sum over the
    # global count, times the world size, which the gradient average divides out again)
    count = all_reduce_sum(weight.sum().detach()) / world()
    return err.sum() / count.clamp_min(1.0 / world())


@torch.no_grad()
def update_center(center: Tensor, teacher_logits: Tensor, momentum: float) -> None:
    """``center <- momentum * center + (1 - momentum) * mean over rows of teacher_logits``.

    center: [K] float32 (updated in place); teacher_logits: [M, K]. Under torchrun the batch
    mean is all-reduced over the ranks, as the paper's ``all_reduce`` (identity on one process).
    """
    batch_center = all_reduce_mean(teacher_logits.to(center.dtype).mean(dim=0))
    center.lerp_(batch_center, 1.0 - momentum)


__all__ = [
    "distillation_cross_entropy",
    "global_distillation_loss",
    "local_distillation_loss",
    "masked_l1_loss",
    "update_center",
]
