"""One fine-tuning run of a protocol on one split: the whole encoder and a fresh linear head.

The training forward goes through the encoder contract only (``backbone.pad_frames``,
``grid``, ``forward_features`` over kept units with token lengths), so it runs on every
encoder: front end (no gradient) -> mixup -> SpecAugment -> patch-out (``ids_keep``) ->
backbone -> mean of the kept, valid output tokens (or the class token) -> head.
Evaluation uses :meth:`Encoder.forward` on whole clips, exactly as the exported model runs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastspec._logging import get_logger
from fastspec.encoder import Encoder
from fastspec.evaluate.extract import autocast, clip_batches
from fastspec.evaluate.finetune import predict, random_crop, task_metric
from fastspec.evaluate.tasks import Split, Task
from fastspec.finetune.augment import (
    balanced_order,
    balanced_weights,
    layer_decay_groups,
    lr_at,
    mixup,
    patch_out_ids,
    spec_augment,
)
from fastspec.finetune.protocols import ProtocolSettings

__all__ = ["SplitResult", "evaluate_on", "pool_tokens", "train_split", "training_logits"]

_log = get_logger("fastspec.finetune")


@dataclass
class SplitResult:
    """Outcome of one split: the fine-tuned encoder (head set, eval mode), its test metric,
    the tested epoch, per-epoch mean loss and validation metric, seconds taken."""

    encoder: Encoder
    metric: float
    epoch: int
    train_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    seconds: float = 0.0


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


def _loss(logits: Tensor, targets: Tensor, multilabel: bool) -> Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()  # soft targets


def evaluate_on(encoder: Encoder, task: Task, indices: np.ndarray, **run) -> float:
    """The task's metric of ``encoder`` (whole clips, as exported) on clips ``indices``;
    ``run``: ``predict``'s device, batch_size, workers and amp."""
    return task_metric(task, predict(encoder, task, indices, **run), indices)


def train_split(
    make_encoder: Callable[[], Encoder],
    task: Task,
    split: Split,
    s: ProtocolSettings,
    *,
    device: torch.device,
    workers: int = 2,
    eval_batch_size: int = 16,
    amp: str = "none",
) -> SplitResult:
    """Fine-tune a fresh ``make_encoder()`` on ``split.train`` with the recipe ``s``; test on
    ``split.test`` at the best validation epoch (``split.val``) or the last one."""
    t0 = time.perf_counter()
    encoder = make_encoder().to(device)
    with torch.random.fork_rng(devices=[]):  # the head from the seed, global RNG untouched
        torch.manual_seed(s.seed)
        encoder.reset_classifier(task.num_classes)
    groups = layer_decay_groups(encoder.backbone, encoder.head, s.weight_decay, s.layer_decay)
    # foreach: one kernel per op over all tensors (the per-tensor loop dominates small models)
    params = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    opt = torch.optim.AdamW(params, foreach=True)
    gen = torch.Generator().manual_seed(s.seed)
    sr = encoder.sample_rate
    crop = max(1, round(s.clip_seconds * sr))
    weights = balanced_weights(task.targets[split.train]) if s.balanced else None
    per_epoch = s.epoch_len or len(split.train)
    steps_per_epoch = math.ceil(per_epoch / s.batch_size)
    targets = torch.from_numpy(task.targets)
    run = {"device": device, "batch_size": eval_batch_size, "workers": workers, "amp": amp}
    result = SplitResult(encoder, 0.0, s.epochs)
    best, best_state = None, None
    for epoch in range(s.epochs):
        encoder.train()
        if weights is not None:
            order = split.train[balanced_order(weights, per_epoch, (s.seed, epoch))]
        else:
            order = np.random.default_rng((s.seed, epoch)).permutation(split.train)[:per_epoch]
        loss_sum, n_steps = torch.zeros((), device=device), 0
        crops = random_crop(crop, s.seed, epoch)
        batches = clip_batches(task.clips, order, sr, s.batch_size, workers, False, crops)
        for step, batch in enumerate(batches):
            if not batch.indices:
                continue
            t = epoch + step / steps_per_epoch
            base = lr_at(t, s.peak_lr, s.min_lr, s.warmup_epochs, s.epochs)
            for group in opt.param_groups:
                group["lr"] = base * group["lr_scale"]
            y = targets[batch.indices].to(device)
            with autocast(device, amp):
                logits, y = training_logits(encoder, batch.wave, batch.lengths, y, s, gen)
            loss = _loss(logits, y, task.multilabel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            n_steps += 1
        mean_loss = float(loss_sum) / max(n_steps, 1)  # host sync: once per epoch
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"fine-tuning loss became {mean_loss} in epoch {epoch + 1}")
        result.train_loss.append(mean_loss)
        message = f"finetune {split.name} epoch {epoch + 1}/{s.epochs}: loss {mean_loss:.4f}"
        if split.val is not None and len(split.val):
            value = evaluate_on(encoder, task, split.val, **run)
            result.val_metric.append(value)
            message += f", val {task.metric} {value:.4f}"
            if best is None or value > best:
                best, result.epoch = value, epoch + 1
                best_state = copy.deepcopy(encoder.state_dict())
        _log.info(message)
    if best_state is not None:
        encoder.load_state_dict(best_state)
    result.metric = evaluate_on(encoder, task, split.test, **run)
    result.seconds = time.perf_counter() - t0
    encoder.eval()
    return result
