"""The pieces of the fine-tuning recipes: balanced sampling, mixup, SpecAugment, patch-out and
layer-wise learning-rate decay (sources in :mod:`fastspec.finetune.protocols`; the schedule is
the fine-tuning loop's, :func:`fastspec.evaluate.finetune.lr_at`).

Every random draw takes an explicit ``torch.Generator`` / numpy seed, so a run is a function of
its seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fastspec.models import SpectrogramEncoder

__all__ = [
    "balanced_order",
    "balanced_weights",
    "layer_decay_groups",
    "mixup",
    "patch_out_ids",
    "spec_augment",
]


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """[N] sampling weight of each clip: the sum over its labels of 1000 / (count + 0.01), the
    count taken over ``targets`` [N, C] (multi-hot) -- Audio-MAE / AST ``gen_weight``."""
    counts = targets.sum(axis=0)
    return (targets * (1000.0 / (counts + 0.01))[None, :]).sum(axis=1)


def balanced_order(weights: np.ndarray, count: int, seed) -> np.ndarray:
    """``count`` positions in 0..N-1 drawn without replacement with probability proportional
    to ``weights`` [N] (``WeightedRandomSampler(replacement=False)``); ``count`` <= N."""
    if count > len(weights):
        raise ValueError(f"epoch_len {count} exceeds the {len(weights)} training clips")
    p = np.asarray(weights, dtype=np.float64)
    return np.random.default_rng(seed).choice(len(p), size=count, replace=False, p=p / p.sum())


def mixup(
    mel: Tensor, targets: Tensor, lengths: Tensor, alpha: float, prob: float, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Batch mixup (timm ``Mixup`` mode ``batch``): with probability ``prob``, lambda ~
    Beta(alpha, alpha) and every row is mixed with the batch reversed.

    mel [B, T, F], targets [B, C] float, lengths [B] (valid time tokens: a mixed row is valid
    where either clip is). Returns (mel, targets, lengths, lambda); lambda 1.0 = unmixed.
    """
    if alpha <= 0 or mel.shape[0] < 2:
        return mel, targets, lengths, 1.0
    # host sync: two scalars per batch decide the mix (drawn on the CPU generator)
    if float(torch.rand((), generator=gen)) >= prob:
        return mel, targets, lengths, 1.0
    a = torch.tensor(float(alpha), dtype=torch.float64)
    draw = torch.distributions.Beta(a, a).sample  # uses the global RNG: fork it, seed from gen
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (), generator=gen)))
        lam = float(draw())
    mixed = lam * mel + (1.0 - lam) * mel.flip(0)
    mixed_targets = lam * targets + (1.0 - lam) * targets.flip(0)
    return mixed, mixed_targets, torch.maximum(lengths, lengths.flip(0)), lam


def spec_augment(
    mel: Tensor, n_frames: Tensor, freqm: int, timem: int, gen: torch.Generator
) -> Tensor:
    """One frequency mask of width ~ U[0, freqm) bins and one time mask of width ~ U[0, timem)
    frames per clip (torchaudio ``FrequencyMasking`` / ``TimeMasking`` as AST applies them),
    set to 0 (the normalised mean); time masks fall inside each clip's ``n_frames`` [B].

    mel: [B, T, F]; returns a new tensor.
    """
    b, t, f = mel.shape
    keep = torch.ones(b, t, f, dtype=mel.dtype)
    for row in range(b):
        for width_max, size, axis in ((freqm, f, 2), (timem, int(n_frames[row]), 1)):
            if width_max <= 0 or size <= 0:
                continue
            width = int(torch.rand((), generator=gen) * min(width_max, size))
            start = int(torch.rand((), generator=gen) * (size - width))
            if axis == 2:
                keep[row, :, start : start + width] = 0
            else:
                keep[row, start : start + width, :] = 0
    return mel * keep.to(mel.device)


def patch_out_ids(
    grid: tuple[int, int],
    token_lengths: Tensor,
    mask_t_prob: float,
    mask_f_prob: float,
    gen: torch.Generator,
) -> Tensor | None:
    """Audio-MAE's 2-D fine-tuning mask (``random_masking_2d``): drop ``mask_t_prob`` of the
    time columns and ``mask_f_prob`` of the frequency rows of the output-token grid; the kept
    units are the crossings of kept columns and rows, the same count in every row.

    grid: (T_p, F_p); token_lengths: [B] (CPU) valid time columns (padding columns are
    dropped first, so a short clip keeps its valid ones). Returns ids_keep [B, K] sorted (time-major
    order), or None when nothing is dropped.
    """
    t_p, f_p = grid
    keep_t = max(1, int(t_p * (1 - mask_t_prob)))
    keep_f = max(1, int(f_p * (1 - mask_f_prob)))
    if keep_t == t_p and keep_f == f_p:
        return None
    b = token_lengths.shape[0]
    noise_t = torch.rand(b, t_p, generator=gen)
    noise_t += (torch.arange(t_p)[None, :] >= token_lengths[:, None]).float()  # pad last
    cols = noise_t.argsort(dim=1)[:, :keep_t].sort(dim=1).values  # [B, keep_t]
    rows = torch.rand(b, f_p, generator=gen).argsort(dim=1)[:, :keep_f].sort(dim=1).values
    ids = cols[:, :, None] * f_p + rows[:, None, :]  # [B, keep_t, keep_f]
    return ids.flatten(1)


def layer_decay_groups(
    backbone: SpectrogramEncoder, head: nn.Module, weight_decay: float, layer_decay: float
) -> list[dict]:
    """AdamW groups with layer-wise lr decay (BEiT / Audio-MAE ``param_groups_lrd``).

    With L blocks there are L + 2 layers: 0 = the patch embedding, class token and positions,
    i + 1 = block i, L + 1 = everything after the blocks (final norm, head). Layer l gets
    ``lr_scale = layer_decay ** (L + 1 - l)``. 1-D parameters, the class token and a learned
    position table get no weight decay. Each group holds ``lr_scale``, the factor on the schedule's lr.
    """
    n_layers = len(backbone.blocks) + 1
    groups: dict[tuple[int, bool], dict] = {}

    def add(name: str, p: nn.Parameter, layer: int) -> None:
        if not p.requires_grad:
            return
        decay = p.dim() > 1 and name not in ("cls_token", "pos_table")
        key = (layer, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (n_layers - layer),
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)

    for name, p in backbone.named_parameters():
        if name.startswith(("cls_token", "patch_embed", "pos_table")):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = n_layers
        add(name, p, layer)
    for name, p in head.named_parameters():
        add(f"head.{name}", p, n_layers)
    return [groups[k] for k in sorted(groups)]
