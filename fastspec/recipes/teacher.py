"""The EMA teacher and the schedules of teacher-student recipes (ASiT, ATST-Clip, ATST-Frame).

The teacher is a frozen copy of student modules that follows them by an exponential moving
average, ``teacher <- m * teacher + (1 - m) * student``, applied in one fused pass over all
parameters (``torch._foreach_lerp_``) rather than a Python loop of small kernels. ``m`` rises on a
cosine from its base value to 1 over the run (BYOL, DINO, ASiT and ATST all use this schedule).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_schedule(start: float, end: float, step: int, total: int) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``total - 1`` and after)."""
    progress = min(max(step, 0) / max(total - 1, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_then_constant(start: float, end: float, step: int, warmup: int) -> float:
    """Linear from ``start`` to ``end`` over ``warmup`` steps, then ``end`` (DINO's teacher
    temperature)."""
    if step >= warmup:
        return end
    return start + (end - start) * step / max(warmup, 1)


def ema_momentum(step: int, total: int, base: float, final: float = 1.0) -> float:
    """Teacher momentum of step ``step``: cosine from ``base`` to ``final`` (BYOL eq. 1)."""
    return cosine_schedule(base, final, step, total)


class EMATeacher(nn.Module):
    """A frozen copy of ``student`` that follows it by EMA.

    The copy is made once, at construction (before any ``torch.compile``), with
    ``requires_grad=False`` so the optimizer never sees it; it is part of the recipe's state dict,
    so checkpoints hold it and a resumed run continues with the same teacher.

    Args:
        student: the module (or a container of modules, e.g. encoder + head) to follow.
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(student).requires_grad_(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student``, one fused pass.

        Buffers (e.g. batch-norm statistics) are copied from the student: they are not learned.
        """
        teacher_params = list(self.module.parameters())
        student_params = list(student.parameters())
        if len(teacher_params) != len(student_params):
            raise ValueError(
                f"EMATeacher.update: student has {len(student_params)} parameters, "
                f"the teacher {len(teacher_params)}: not the module it was copied from"
            )
        # lerp_(t, s, w) = t + w (s - t) = (1 - w) t + w s, with w = 1 - momentum
        torch._foreach_lerp_(teacher_params, [p.detach() for p in student_params], 1.0 - momentum)
        for t_buf, s_buf in zip(self.module.buffers(), student.buffers()):
            t_buf.copy_(s_buf)
