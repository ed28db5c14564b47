"""Fine-tuning: the one loop every fine-tuning recipe runs, and the plain recipe of
``fastspec evaluate --mode finetune``.

:func:`fine_tune` trains the whole encoder with a fresh linear head on one split: per-step lr
(linear warm-up, then a half-cycle cosine, Audio-MAE ``util/lr_sched.py``), AdamW or SGD, a random
crop of ``clip_seconds`` per training clip (drawn from ``(seed, epoch, clip)``, so a run is
reproducible), a non-finite loss stops the run; test clips are encoded whole. With validation
clips, the epoch with the best validation metric is the one tested; otherwise the last epoch.

What differs between recipes is a :class:`FinetuneRecipe`: the optimizer groups, the order of
the training clips and the training forward. :class:`FinetuneSettings` is the plain recipe, so
that ``evaluate`` measures the starting weights rather than tricks: mean-pooled patch tokens ->
``nn.Linear`` head, a larger lr on the fresh head, no weight decay on 1-D parameters, no
augmentation. The papers' protocols (``fastspec finetune``) are
:class:`fastspec.finetune.trainer.ProtocolRecipe`.
"""

from __future__ import annotations

import abc
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
from fastspec.evaluate.metrics import accuracy, mean_average_precision
from fastspec.evaluate.tasks import Split, Task

__all__ = [
    "FinetuneRecipe",
    "FinetuneResult",
    "FinetuneSettings",
    "fine_tune",
    "lr_at",
    "predict",
    "random_crop",
    "task_metric",
]

_log = get_logger("fastspec.evaluate")


class FinetuneRecipe(abc.ABC):
    """The choices of one fine-tuning recipe; :func:`fine_tune` is the loop that runs them.

    A recipe has ``epochs``, ``batch_size``, ``clip_seconds``, ``seed`` and the schedule's
    ``peak_lr``, ``min_lr`` and ``warmup_epochs`` (see :func:`lr_at`).
    """

    epochs: int
    batch_size: int
    clip_seconds: float
    seed: int
    warmup_epochs: float
    peak_lr: float
    min_lr: float = 0.0
    optimizer: str = "adamw"
    """``adamw`` (Audio-MAE, AST) or ``sgd`` (momentum 0.9, ATST)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0: no clipping; ATST: 3)."""

    @abc.abstractmethod
    def param_groups(self, encoder: Encoder) -> list[dict]:
        """AdamW groups over the backbone and the head, each with ``weight_decay`` and
        ``lr_scale`` (its lr is the schedule's lr times ``lr_scale``)."""

    def epoch_order(self, train: np.ndarray, targets: np.ndarray, epoch: int) -> np.ndarray:
        """The training clips of ``epoch`` in order (default: a permutation of ``train``)."""
        return np.random.default_rng((self.seed, epoch)).permutation(train)

    def training_logits(
        self, encoder: Encoder, wave: Tensor, lengths: Tensor, targets: Tensor, gen
    ) -> tuple[Tensor, Tensor]:
        """wave [B, S], lengths [B] (host), targets [B, C] -> (logits [B, C], targets as
        trained on); default: the exported forward, no augmentation."""
        device = encoder.device
        return encoder(wave.to(device), lengths.to(device)), targets


@dataclass
class FinetuneSettings(FinetuneRecipe):
    """The plain recipe and its schedule (``fastspec evaluate --ft-*`` flags)."""

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

    @property
    def peak_lr(self) -> float:
        return self.lr

    def param_groups(self, encoder: Encoder) -> list[dict]:
        """Backbone matrices with weight decay, 1-D backbone parameters (biases, norm scales,
        the class token) without, at ``lr``; the head at ``head_lr``."""
        decay, no_decay = [], []
        for p in encoder.backbone.parameters():
            (no_decay if p.dim() <= 1 else decay).append(p)
        head = list(encoder.head.parameters())
        groups = [
            {"params": decay, "weight_decay": self.weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
            {"params": head, "weight_decay": self.weight_decay, "lr_scale": self.head_lr / self.lr},
        ]
        return [g for g in groups if g["params"]]


@dataclass
class FinetuneResult:
    """One split: the fine-tuned ``encoder`` (head set, eval mode), its test scores [N_test, C]
    (probabilities, in the order of ``split.test``) and the task's ``metric`` of them, the
    tested epoch, per-epoch mean training loss and validation metric, and the seconds taken."""

    encoder: Encoder
    test_scores: np.ndarray
    metric: float
    epoch: int
    train_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    seconds: float = 0.0


def lr_at(epoch: float, peak: float, min_lr: float, warmup: float, epochs: float) -> float:
    """Audio-MAE ``util/lr_sched.py``: linear warm-up to ``peak`` over ``warmup`` epochs, then
    a half-cycle cosine down to ``min_lr`` at ``epochs``; ``epoch`` is fractional."""
    if epoch < warmup:
        return peak * epoch / warmup
    progress = (epoch - warmup) / max(epochs - warmup, 1e-12)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _loss(logits: Tensor, targets: Tensor, multilabel: bool) -> Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets)
    # soft targets (mixup); equal to cross-entropy with the class index for one-hot rows
    return torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()


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
    recipe: FinetuneRecipe,
    *,
    device: torch.device,
    eval_batch_size: int = 16,
    workers: int = 2,
    amp: str = "auto",
    label: str = "",
) -> FinetuneResult:
    """Fine-tune a fresh encoder from ``make_encoder()`` on ``split.train`` with ``recipe``,
    test on ``split.test`` (at the best epoch on ``split.val`` when the split has one);
    ``label`` names the run in the log."""
    t0 = time.perf_counter()
    s = recipe
    encoder = make_encoder().to(device)
    with torch.random.fork_rng(devices=[]):  # seed the head without touching global RNG state
        torch.manual_seed(s.seed)
        encoder.reset_classifier(task.num_classes)
    # a group may carry its parameters' "names" (for inspection): no optimizer option
    params = [{k: v for k, v in g.items() if k != "names"} for g in s.param_groups(encoder)]
    # foreach: one kernel per op over all tensors (the per-tensor loop dominates small models)
    if s.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=0.0, momentum=0.9, foreach=True)
    else:
        opt = torch.optim.AdamW(params, foreach=True)
    gen = torch.Generator().manual_seed(s.seed)  # augmentation draws of the recipe
    sr = encoder.sample_rate
    crop = max(1, round(s.clip_seconds * sr))
    targets = torch.from_numpy(task.targets)
    run = {"device": device, "batch_size": eval_batch_size, "workers": workers, "amp": amp}
    name = f"{label} {split.name}" if label else split.name
    train_loss, val_metric = [], []
    best, best_state, best_epoch = None, None, s.epochs
    for epoch in range(s.epochs):
        encoder.train()
        order = s.epoch_order(split.train, task.targets, epoch)
        steps_per_epoch = math.ceil(len(order) / s.batch_size)
        crops = random_crop(crop, s.seed, epoch)
        batches = clip_batches(task.clips, order, sr, s.batch_size, workers, False, crops)
        loss_sum, n_steps = torch.zeros((), device=device), 0
        for step, batch in enumerate(batches):
            if not batch.indices:
                continue
            lr = lr_at(
                epoch + step / steps_per_epoch, s.peak_lr, s.min_lr, s.warmup_epochs, s.epochs
            )
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            y = targets[batch.indices].to(device)
            with autocast(device, amp):
                logits, y = s.training_logits(encoder, batch.wave, batch.lengths, y, gen)
            loss = _loss(logits.float(), y, task.multilabel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), s.grad_clip, foreach=True)
            opt.step()
            loss_sum += loss.detach()
            n_steps += 1
        mean_loss = float(loss_sum) / max(n_steps, 1)  # host sync: once per epoch
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"fine-tuning loss became {mean_loss} in epoch {epoch + 1}")
        train_loss.append(mean_loss)
        message = f"fine-tune {name} epoch {epoch + 1}/{s.epochs}: loss {mean_loss:.4f}"
        if split.val is not None and len(split.val):
            value = task_metric(task, predict(encoder, task, split.val, **run), split.val)
            val_metric.append(value)
            message += f", val {task.metric} {value:.4f}"
            if best is None or value > best:
                best, best_epoch = value, epoch + 1
                best_state = copy.deepcopy(encoder.state_dict())
        _log.info(message)
    if best_state is not None:
        encoder.load_state_dict(best_state)
    scores = predict(encoder, task, split.test, **run)  # leaves the encoder in eval mode
    metric = task_metric(task, scores, split.test)
    seconds = time.perf_counter() - t0
    return FinetuneResult(encoder, scores, metric, best_epoch, train_loss, val_metric, seconds)
