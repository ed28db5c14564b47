"""Collapse monitors of teacher-student recipes, computed on device and logged as metrics.

Self-distillation fails in two known ways (DINO, section 5.3): every input gets the same output
(the embeddings stop varying across the batch), or one prototype dominates (the teacher's
distribution becomes one-hot, or uniform). The monitors below measure both; the recipe returns
them from ``forward`` (no host sync) and its ``health`` hook turns the logged means into warnings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def softmax_entropy(probs: Tensor) -> Tensor:
    """Mean entropy (nats) of the distributions ``probs`` [N, K] (rows sum to 1)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()


@torch.no_grad()
def marginal_entropy(probs: Tensor) -> Tensor:
    """Entropy (nats) of the batch-mean distribution of ``probs`` [N, K]: low when all rows
    favour the same few prototypes."""
    return softmax_entropy(probs.mean(dim=0, keepdim=True))


@torch.no_grad()
def embedding_spread(z: Tensor) -> Tensor:
    """Spread of embeddings ``z`` [N, D] across the batch, about 1 when healthy, 0 at collapse.

    The standard deviation over the batch of the L2-normalised embeddings, averaged over
    dimensions and scaled by sqrt(D): unit vectors spread uniformly have a per-dimension std of
    1 / sqrt(D) (SimSiam, section 4.1).
    """
    z = torch.nn.functional.normalize(z.float(), dim=-1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[-1])


def collapse_warnings(
    stats: dict[str, float],
    *,
    spread_key: str | None = None,
    entropy_key: str | None = None,
    n_prototypes: int | None = None,
    min_spread: float = 0.05,
    min_entropy_frac: float = 0.02,
    max_entropy_frac: float = 0.98,
) -> list[str]:
    """Warnings for logged monitor values heading toward collapse.

    ``spread_key`` names an :func:`embedding_spread` stat; ``entropy_key`` a mean teacher
    entropy over ``n_prototypes`` outputs, warned about when it nears 0 (one-hot) or log K
    (uniform).
    """
    warnings = []
    if spread_key is not None and spread_key in stats and stats[spread_key] < min_spread:
        warnings.append(
            f"{spread_key}={stats[spread_key]:.3g} < {min_spread}: embeddings barely vary "
            "across the batch (collapse?)"
        )
    if entropy_key is not None and entropy_key in stats and n_prototypes:
        frac = stats[entropy_key] / math.log(n_prototypes)
        if frac < min_entropy_frac:
            warnings.append(
                f"{entropy_key}={stats[entropy_key]:.3g} nats: the teacher output is nearly "
                "one-hot (collapse to one prototype?)"
            )
        elif frac > max_entropy_frac:
            warnings.append(
                f"{entropy_key}={stats[entropy_key]:.3g} nats, near log K: the teacher output "
                "is nearly uniform (collapse?)"
            )
    return warnings
