"""Statistics over the global batch when the recipe runs on several ranks (torchrun).

A run must be a function of its config, not of its world size, so every statistic a recipe takes
over the batch is taken over the whole step's batch of all ranks: DINO centres (ASiT), the
masked-bin count of ASiT's reconstruction loss, batch norm in the BYOL heads (ATST, as the
paper's SyncBatchNorm), and the log-mixup-exp memory (ATST), which every rank fills with the
whole batch so that it behaves as one memory. With one process (or no process group) each
function is the identity and costs nothing.

Every rank must call these in the same order (they are collectives); the recipes call them
unconditionally in ``forward``, so they do.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> int:
    """Ranks taking part in the step (1 without an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank (0 without an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over ranks (no gradient); ``x`` itself with one rank."""
    if world() == 1:
        return x
    out = x.clone()
    dist.all_reduce(out)
    return out / world()


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over ranks, differentiable (the gradient is summed back over ranks, so
    each rank's loss sees how its rows moved the global statistic)."""
    if world() == 1:
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x)


@torch.no_grad()
def gather_rows(x: Tensor) -> Tensor:
    """Rows of every rank, in rank order: [R, ...] -> [world * R, ...] (no gradient)."""
    if world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def gather_view_major(x: Tensor, n_views: int) -> Tensor:
    """View-major rows of every rank in the global view-major order.

    x: [V * B, ...] (row ``v * B + b`` is view ``v`` of local clip ``b``) -> [V * W * B, ...]
    with row ``v * W * B + r * B + b`` view ``v`` of clip ``b`` of rank ``r``: the layout one
    process holding the whole batch would have.
    """
    if world() == 1:
        return x
    parts = gather_rows(x)  # [W * V * B, ...]
    w, rest = world(), x.shape[1:]
    return parts.reshape(w, n_views, -1, *rest).transpose(0, 1).reshape(-1, *rest)


__all__ = [
    "all_reduce_mean",
    "all_reduce_sum",
    "gather_rows",
    "gather_view_major",
    "rank",
    "world",
]
