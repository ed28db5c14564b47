"""Per-step schedules of the optimizer: learning rate, weight decay, and its parameter groups."""

from __future__ import annotations

import math

from torch import nn

from fastspec.train.config import Config


def lr_at(step: int, cfg: Config) -> float:
    """Learning rate of optimizer step ``step``: linear warm-up, then cosine to ``min_lr``."""
    peak, floor = cfg.abs_lr, cfg.optim.min_lr
    total = max(cfg.train.steps, 1)
    warmup = min(cfg.optim.warmup_steps, total)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def weight_decay_at(step: int, cfg: Config) -> float:
    """Weight decay of step ``step``: constant, or cosine to ``optim.weight_decay_end`` (DINO)."""
    start, end = cfg.optim.weight_decay, cfg.optim.weight_decay_end
    if end is None:
        return start
    progress = min(step / max(cfg.train.steps - 1, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms and learned tokens (anything with < 2 dims).

    Parameters with ``requires_grad=False`` (an EMA teacher) are left out of the optimizer.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "decay": False},
    ]


def set_schedules(optimizer, step: int, cfg: Config) -> float:
    """Write step ``step``'s learning rate and weight decay into ``optimizer``; returns the lr."""
    lr, wd = lr_at(step, cfg), weight_decay_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("decay", True):
            group["weight_decay"] = wd
    return lr


__all__ = ["lr_at", "param_groups", "set_schedules", "weight_decay_at"]
