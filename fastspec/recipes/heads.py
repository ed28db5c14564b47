"""Projection heads of teacher-student recipes.

- :class:`DINOHead` (ASiT's global and local distillation): an MLP to a bottleneck, L2
  normalisation, and a weight-normalised linear layer to a large number of prototypes whose
  softmax the student matches to the teacher's; :func:`gelu_mlp` is the MLP of DINO's and ASiT's
  heads.
- :class:`MLPHead` (ATST's BYOL projector and predictor): Linear -> BatchNorm -> ReLU -> Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastspec.recipes.collective import all_reduce_sum, world


def gelu_mlp(dims: list[int], *, act_last: bool, device=None, dtype=None) -> nn.Sequential:
    """Linear layers through ``dims`` with GELU between them, and after the last one too when
    ``act_last`` (ASiT's reconstruction head); weights truncated normal (std 0.02), biases 0,
    as DINO's and ASiT's heads initialise them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        linear = nn.Linear(a, b, device=device, dtype=dtype)
        nn.init.trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if act_last or i < len(dims) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def prototype_layer(
    bottleneck_dim: int, out_dim: int, norm_last_layer: bool = True, device=None, dtype=None
) -> nn.Module:
    """A weight-normalised ``Linear(bottleneck_dim, out_dim, bias=False)``: the prototypes of a
    DINO head. The magnitude starts at 1 and, with ``norm_last_layer``, is frozen there, which
    keeps the logits bounded and steadies the start of training (DINO, section 3)."""
    layer = nn.utils.parametrizations.weight_norm(
        nn.Linear(bottleneck_dim, out_dim, bias=False, device=device, dtype=dtype)
    )
    layer.parametrizations.weight.original0.data.fill_(1.0)
    if norm_last_layer:
        layer.parametrizations.weight.original0.requires_grad_(False)
    return layer


class DINOHead(nn.Module):
    """MLP ``in_dim -> hidden -> hidden -> bottleneck``, L2-normalise, prototypes ``out_dim``.

    Args:
        in_dim: width of the encoder tokens.
        out_dim: number of prototypes (the softmax size).
        hidden_dim, bottleneck_dim, n_layers: the MLP (DINO: 2048, 256, 3).
        norm_last_layer: freeze the prototypes' magnitude at 1 (:func:`prototype_layer`).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        self.mlp = gelu_mlp(dims, act_last=False, device=device, dtype=dtype)
        # what further prototype sets of a subclass (ASiT's patch tokens) are built with
        self.prototype_options = {"bottleneck_dim": bottleneck_dim,
                                  "norm_last_layer": norm_last_layer,
                                  "device": device, "dtype": dtype}  # fmt: skip
        self.last_layer = self.make_prototypes(out_dim)

    def make_prototypes(self, out_dim: int) -> nn.Module:
        """A set of ``out_dim`` prototypes on this head's bottleneck (:func:`prototype_layer`)."""
        return prototype_layer(out_dim=out_dim, **self.prototype_options)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_dim] -> logits [..., out_dim]."""
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)


class MLPHead(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear (BYOL's projector and predictor).

    Both linear layers have no bias, as ATST's ``build_mlp(2, ..., last_bn=False)``
    (audiossl models/atst/byol.py, methods/atstframe/byol.py): the batch norm's shift stands
    in for the first one, and a last bias would give every output one shared direction, which
    the predictor could match to the teacher's projections without looking at the input.

    Accepts [N, in_dim] or [B, L, in_dim] (batch norm over all leading positions).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False, **kw),
            nn.BatchNorm1d(hidden_dim, **kw),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False, **kw),
        )

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """x: [N, in_dim] or [B, L, in_dim] -> [..., out_dim].

        valid: optional bool of x's leading shape ([N] or [B, L]): in training, batch-norm
        statistics (and its running averages) come from the valid rows only, so rows that are
        padding do not shift them (ATST-Frame's head sees only masked frames of real audio).
        Every row is still transformed; no host sync. Under torchrun the statistics are those
        of the whole step's batch over all ranks (ATST's SyncBatchNorm); with gradient
        accumulation they remain those of one micro-batch.
        """
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if (valid is None and world() == 1) or not self.training:
            return self.net(x).reshape(*shape[:-1], -1)
        if valid is None:
            valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        linear1, bn, act, linear2 = self.net
        h = _masked_batch_norm(linear1(x), bn, valid.reshape(-1))
        return linear2(act(h)).reshape(*shape[:-1], -1)


def _masked_batch_norm(h: Tensor, bn: nn.BatchNorm1d, valid: Tensor) -> Tensor:
    """``bn(h)`` in training mode with statistics over the rows where ``valid`` [N] is True.

    Same maths as BatchNorm1d: biased variance to normalise, unbiased in the running average;
    computed in float32 at least, returned in h's dtype.
    """
    dtype = torch.promote_types(h.dtype, torch.float32)
    hf, w = h.to(dtype), valid.to(dtype)[:, None]  # [N, C], [N, 1]
    # sums over every rank's rows under torchrun (identities on one process)
    n = all_reduce_sum(w.sum()).clamp_min(1.0)  # stays on the device: no sync
    mean = all_reduce_sum((hf * w).sum(dim=0)) / n
    var = all_reduce_sum(((hf - mean).square() * w).sum(dim=0)) / n
    out = (hf - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        out = out * bn.weight + bn.bias
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 0.0
            if bn.momentum is None:  # cumulative average, as BatchNorm1d with momentum=None
                momentum = 1.0 / bn.num_batches_tracked.to(dtype)
            unbiased = var * n / (n - 1).clamp_min(1.0)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    return out.to(h.dtype)


__all__ = ["DINOHead", "MLPHead", "gelu_mlp", "prototype_layer"]
