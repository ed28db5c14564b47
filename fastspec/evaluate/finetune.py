"""Fine-tuning: the whole encoder unfrozen with a linear head, on a short schedule.

The recipe is deliberately plain, so that it measures the starting weights rather than tricks:
mean-pooled patch tokens -> ``nn.Linear`` head (:meth:`Encoder.reset_classifier`), AdamW with a
10x larger learning rate on the fresh head than on the pretrained backbone, no weight decay on
biases, norms and the class token, a linear warm-up then a cosine decay per step, and a random
crop of ``clip_seconds`` per training clip (drawn from ``(seed, epoch, clip)``, so a run is
reproducible); test clips are encoded whole. With validation clips, the epoch with the best
validation metric is the one tested; otherwise the last epoch.
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

from fastspec._logging import get_logger
from fastspec.encoder import Encoder
from fastspec.evaluate.extract import autocast, clip_batches
from fastspec.evaluate.metrics import accuracy, mean_average_precision
from fastspec.evaluate.tasks import Split, Task

__all__ = [
    "FinetuneResult",
    "FinetuneSettings",
    "fine_tune",
    "predict",
    "random_crop",
    "task_metric",
]

_log = get_logger("fastspec.evaluate")


@dataclass
class FinetuneSettings:
    """The fine-tuning schedule (``fastspec evaluate --ft-*`` flags)."""

    epochs: int = 10
    """Passes over the training clips."""
    batch_size: int = 16
    """Clips per optimizer step."""
    lr: float = 1e-4
    """Peak learning rate of the encoder."""
    head_lr: float = 1e-3
    """Peak learning rate of the freshly initialised head."""
    weight_decay: float = 0.05
    """AdamW weight decay of matrices (not of biases, norms or the class token)."""
    warmup_epochs: float = 1.0
    """Linear warm-up length, in epochs."""
    clip_seconds: float = 10.0
    """Training crop: longer clips are cut at a random offset, shorter ones kept whole."""
    seed: int = 0
    """Seed of the head's initial weights, the clip order and the crops."""

    def __post_init__(self):
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "head_lr": self.head_lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "clip_seconds": self.clip_seconds > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid fine-tuning settings: {', '.join(bad)} out of range")


@dataclass
class FinetuneResult:
    """Test scores [N_test, C] (probabilities) in the order of ``split.test``, the tested
    epoch, per-epoch mean training loss and validation metric, and the seconds taken."""

    test_scores: np.ndarray
    epoch: int
    train_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _param_groups(encoder: Encoder, s: FinetuneSettings) -> list[dict]:
    """AdamW groups: head at ``head_lr``; backbone matrices with weight decay, and biases,
    norm scales and the class token (all 1-D) without."""
    decay, no_decay = [], []
    for p in encoder.backbone.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    head = list(encoder.head.parameters())
    groups = [
        {"params": decay, "lr": s.lr, "weight_decay": s.weight_decay, "peak": s.lr},
        {"params": no_decay, "lr": s.lr, "weight_decay": 0.0, "peak": s.lr},
        {"params": head, "lr": s.head_lr, "weight_decay": s.weight_decay, "peak": s.head_lr},
    ]
    return [g for g in groups if g["params"]]


def _lr_scale(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets.argmax(dim=1))


def predict(
    encoder: Encoder,
    task: Task,
    indices: np.ndarray,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    amp: str = "auto",
) -> np.ndarray:
    """[len(indices), C] probabilities (softmax, or sigmoid for multi-label) of whole clips."""
    encoder.eval()
    scores = np.zeros((len(indices), task.num_classes), dtype=np.float32)
    row_of = {int(i): r for r, i in enumerate(indices)}
    sr = encoder.sample_rate
    with torch.no_grad():
        for batch in clip_batches(task.clips, indices, sr, batch_size, workers):
            if not batch.indices:
                continue
            with autocast(device, amp):
                logits = encoder(batch.wave.to(device), batch.lengths.to(device)).float()
            probs = torch.sigmoid(logits) if task.multilabel else torch.softmax(logits, dim=1)
            # host sync: scores are collected on the host once per batch
            scores[[row_of[i] for i in batch.indices]] = probs.cpu().numpy()
    return scores


def task_metric(task: Task, scores: np.ndarray, indices: np.ndarray) -> float:
    """The task's headline metric (mAP or accuracy) of ``scores`` on clips ``indices``."""
    if task.multilabel:
        return mean_average_precision(scores, task.targets[indices])
    return accuracy(scores, task.targets[indices])


def random_crop(crop: int, seed: int, epoch: int) -> Callable[[int, np.ndarray], np.ndarray]:
    """A ``clip_batches`` transform: clips longer than ``crop`` samples are cut at a random
    offset, shorter ones kept whole."""

    def apply(index: int, wave: np.ndarray) -> np.ndarray:
        if wave.shape[0] <= crop:
            return wave
        # the offset depends on (seed, epoch, clip) only: reproducible with any thread count
        rng = np.random.default_rng((seed, epoch, index))
        start = int(rng.integers(0, wave.shape[0] - crop + 1))
        return wave[start : start + crop]

    return apply


def fine_tune(
    make_encoder: Callable[[], Encoder],
    task: Task,
    split: Split,
    settings: FinetuneSettings,
    *,
    device: torch.device,
    eval_batch_size: int = 16,
    workers: int = 2,
    amp: str = "auto",
    label: str = "",
) -> FinetuneResult:
    """Fine-tune a fresh encoder from ``make_encoder()`` on ``split.train``, test on
    ``split.test`` (choosing the epoch on ``split.val`` when the split has one); ``label``
    names the run in the log."""
    t0 = time.perf_counter()
    s = settings
    encoder = make_encoder().to(device)
    with torch.random.fork_rng(devices=[]):  # seed the head without touching global RNG state
        torch.manual_seed(s.seed)
        encoder.reset_classifier(task.num_classes)
    opt = torch.optim.AdamW(_param_groups(encoder, s), betas=(0.9, 0.999))
    sr = encoder.sample_rate
    crop = max(1, round(s.clip_seconds * sr))
    steps_per_epoch = math.ceil(len(split.train) / s.batch_size)
    total, warmup = s.epochs * steps_per_epoch, round(s.warmup_epochs * steps_per_epoch)
    targets = torch.from_numpy(task.targets)

    step, best, best_state, best_epoch = 0, None, None, s.epochs
    result = FinetuneResult(np.zeros(0), s.epochs)
    for epoch in range(s.epochs):
        encoder.train()
        order = np.random.default_rng((s.seed, epoch)).permutation(split.train)
        loss_sum = torch.zeros((), device=device)
        n_steps = 0
        batches = clip_batches(
            task.clips,
            order,
            sr,
            s.batch_size,
            workers,
            sort_by_length=False,
            transform=random_crop(crop, s.seed, epoch),
        )
        for batch in batches:
            if not batch.indices:
                continue
            for group in opt.param_groups:
                group["lr"] = group["peak"] * _lr_scale(step, total, warmup)
            y = targets[batch.indices].to(device)
            with autocast(device, amp):
                logits = encoder(batch.wave.to(device), batch.lengths.to(device))
            loss = _loss(logits.float(), y, task.multilabel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            n_steps += 1
            step += 1
        # host sync: once per epoch, for the log and the non-finite check
        mean_loss = float(loss_sum) / max(n_steps, 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"fine-tuning loss became {mean_loss} in epoch {epoch + 1}")
        result.train_loss.append(mean_loss)
        message = f"fine-tune {label + ' ' if label else ''}{split.name} epoch {epoch + 1}/{s.epochs}: loss {mean_loss:.4f}"
        if split.val is not None and len(split.val):
            val_scores = predict(
                encoder,
                task,
                split.val,
                device=device,
                batch_size=eval_batch_size,
                workers=workers,
                amp=amp,
            )
            value = task_metric(task, val_scores, split.val)
            result.val_metric.append(value)
            message += f", val {task.metric} {value:.4f}"
            if best is None or value > best:
                best, best_epoch = value, epoch + 1
                best_state = copy.deepcopy(encoder.state_dict())
        _log.info(message)
    if best_state is not None:
        encoder.load_state_dict(best_state)
    result.epoch = best_epoch
    result.test_scores = predict(
        encoder,
        task,
        split.test,
        device=device,
        batch_size=eval_batch_size,
        workers=workers,
        amp=amp,
    )
    result.seconds = time.perf_counter() - t0
    return result
