"""The papers' fine-tuning protocols as a recipe of the one fine-tuning loop
(:func:`fastspec.evaluate.finetune.fine_tune`): layer-wise lr decay, balanced sampling, and a
training forward with mixup, SpecAugment and patch-out.

The training forward goes through the encoder contract only (``backbone.pad_frames``,
``grid``, ``forward_features`` over kept units with token lengths), so it runs on every
encoder: front end (no gradient) -> mixup -> SpecAugment -> patch-out (``ids_keep``) ->
backbone -> mean of the kept, valid output tokens (or the class token) -> head.
Evaluation uses :meth:`Encoder.forward` on whole clips, exactly as the exported model runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fastspec.encoder import Encoder
from fastspec.evaluate.finetune import FinetuneRecipe
from fastspec.finetune.augment import (
    balanced_order,
    balanced_weights,
    layer_decay_groups,
    mixup,
    patch_out_ids,
    spec_augment,
)
from fastspec.finetune.protocols import ProtocolSettings

__all__ = ["ProtocolRecipe", "pool_tokens", "training_logits"]


class ProtocolRecipe(FinetuneRecipe):
    """A protocol's :class:`ProtocolSettings` as a fine-tuning recipe."""

    def __init__(self, settings: ProtocolSettings):
        s = self.settings = settings
        self.epochs, self.batch_size, self.seed = s.epochs, s.batch_size, s.seed
        self.clip_seconds, self.warmup_epochs = s.clip_seconds, s.warmup_epochs
        self.peak_lr, self.min_lr = s.peak_lr, s.min_lr
        self.optimizer, self.grad_clip = s.optimizer, s.grad_clip

    def param_groups(self, encoder: Encoder) -> list[dict]:
        s = self.settings
        return layer_decay_groups(encoder.backbone, encoder.head, s.weight_decay, s.layer_decay)

    def epoch_order(self, train: np.ndarray, targets: np.ndarray, epoch: int) -> np.ndarray:
        """``epoch_len`` clips (default: all): by inverse label frequency without replacement
        when ``balanced``, else a permutation."""
        s = self.settings
        count = s.epoch_len or len(train)
        if s.balanced:
            return train[balanced_order(balanced_weights(targets[train]), count, (s.seed, epoch))]
        return np.random.default_rng((s.seed, epoch)).permutation(train)[:count]

    def training_logits(
        self, encoder: Encoder, wave: Tensor, lengths: Tensor, targets: Tensor, gen
    ) -> tuple[Tensor, Tensor]:
        return training_logits(encoder, wave, lengths, targets, self.settings, gen)


def pool_tokens(
    tokens: Tensor, ids: Tensor, token_lengths: Tensor, f_p: int, pooling: str
) -> Tensor:
    """tokens [B, 1 + K, D] (class token first) of units ``ids`` [B, K] on a grid with ``f_p``
    frequency tokens -> [B, D]: the class token, or the mean of units in valid time steps."""
    if pooling == "token":
        return tokens[:, 0]
    valid = (torch.div(ids, f_p, rounding_mode="floor") < token_lengths[:, None]).float()
    patch = tokens[:, 1:]
    return (patch * valid[..., None]).sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp_min(1)


def training_logits(
    encoder: Encoder,
    wave: Tensor,
    lengths: Tensor,
    targets: Tensor,
    s: ProtocolSettings,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """wave [B, S], lengths [B], targets [B, C] -> (logits [B, C] float32, mixed targets)."""
    backbone = encoder.backbone
    device = encoder.device
    lengths = lengths.cpu()  # from the loader: the token bookkeeping stays on the host, no sync
    n_frames = encoder.frontend.num_frames(lengths)
    token_lengths = backbone.token_lengths(n_frames)
    with torch.no_grad():  # features are data: no graph through the front end or augmentation
        mel = encoder.frontend(wave.to(device), lengths.to(device))  # [B, T, F], 0 past the end
        mel = backbone.pad_frames(mel, min_frames=encoder.frames_per_token)
        mel, targets, token_lengths, _ = mixup(
            mel, targets, token_lengths, s.mixup_alpha, s.mixup_prob, gen
        )
        freqm = round(s.freqm * mel.shape[2] / 128)  # reference widths are in bins of 128
        mel = spec_augment(mel, n_frames, freqm, s.timem, gen)
    grid = backbone.grid(mel.shape[1])
    ids = patch_out_ids(grid, token_lengths, s.mask_t_prob, s.mask_f_prob, gen)
    ids = ids.to(device) if ids is not None else None
    token_lengths = token_lengths.to(device)
    tokens = backbone.forward_features(mel, ids_keep=ids, token_lengths=token_lengths)
    if ids is None:
        ids = torch.arange(grid[0] * grid[1], device=device).expand(mel.shape[0], -1)
    pooled = pool_tokens(tokens.float(), ids, token_lengths, grid[1], encoder.global_pool)
    return encoder.head(pooled).float(), targets
