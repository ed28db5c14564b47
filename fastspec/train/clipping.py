"""Gradient clipping: the global norm (MAE, MaskSpec) or each parameter on its own (DINO, ASiT).

``optim.clip_mode=norm`` scales all gradients together so their joint L2 norm is at most
``optim.grad_clip`` (``torch.nn.utils.clip_grad_norm_``). ``optim.clip_mode=per_param`` is
DINO's ``utils.clip_gradients``, which ASiT calls with 3.0: each parameter's gradient ``g`` is
multiplied by ``clip / (||g||_2 + 1e-6)`` when that is below 1, so one large gradient leaves the
others as they are.

Both run on the reduced gradients (after DDP's all-reduce or FSDP2's reduce-scatter, and after
loss-scale unscaling), so every rank clips the same full gradient. Under FSDP2 a rank holds only
a dim-0 shard of each gradient (a ``DTensor``); a parameter's norm then needs every shard: the
ranks sum the squared norms of their shards in one all-reduce per step. Nothing is read back to
the host: norms and factors stay on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

CLIP_MODES = ("norm", "per_param")
PER_PARAM_EPS = 1e-6  # DINO's clip / (norm + 1e-6)


def _sharded_squares(grads: list[DTensor], dtype: torch.dtype) -> Tensor:
    """[P] squared L2 norms of the full gradients behind FSDP2's dim-0 shards."""
    group = None
    for g in grads:
        if g.device_mesh.ndim != 1 or not all(p.is_shard(0) for p in g.placements):
            raise ValueError(
                f"optim.clip_mode=per_param: a gradient is laid out as {g.placements} on a "
                f"{g.device_mesh.ndim}-D mesh; only FSDP2's dim-0 shards on one mesh are "
                "supported (use optim.clip_mode=norm)"
            )
        group = g.device_mesh.get_group()
    local = torch.stack([g.to_local().to(dtype).square().sum() for g in grads])
    dist.all_reduce(local, group=group)  # the shards' sums make each full squared norm
    return local


def grad_norms(grads: list[Tensor]) -> Tensor:
    """[P] L2 norm of each (full) gradient, in float32 or the gradients' wider type; FSDP2's
    shards are summed over the ranks."""
    dtype = functools.reduce(torch.promote_types, [g.dtype for g in grads], torch.float32)
    sharded = [isinstance(g, DTensor) for g in grads]
    if any(sharded) and not all(sharded):
        raise ValueError("optim.clip_mode=per_param: some gradients are sharded and some not")
    if all(sharded) and grads:
        return _sharded_squares(grads, dtype).sqrt()
    return torch.stack([n.to(dtype) for n in torch._foreach_norm(grads)])


@torch.no_grad()
def clip_grad_per_param_(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Scale each parameter's gradient to an L2 norm of at most ``max_norm`` (about: DINO's
    ``+ 1e-6``), in place; parameters without a gradient are skipped.

    Returns the [P] norms before clipping (on the device, not read).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = grad_norms(grads)
    factors = (max_norm / (norms + PER_PARAM_EPS)).clamp(max=1.0)  # 1: left as it is
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]  # views: in place
    torch._foreach_mul_(local, list(factors.unbind()))  # one fused pass where dtypes agree
    return norms


def clip_gradients_(parameters: Iterable[nn.Parameter], max_norm: float, mode: str) -> None:
    """Clip the gradients of ``parameters`` in place as ``optim.clip_mode`` says."""
    if mode == "norm":
        nn.utils.clip_grad_norm_(parameters, max_norm)
    elif mode == "per_param":
        clip_grad_per_param_(parameters, max_norm)
    else:
        raise ValueError(f"optim.clip_mode must be one of {CLIP_MODES}, got {mode!r}")


__all__ = ["CLIP_MODES", "PER_PARAM_EPS", "clip_grad_per_param_", "clip_gradients_", "grad_norms"]
