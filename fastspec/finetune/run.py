"""``fastspec finetune``: a protocol end to end, and the export of the fine-tuned encoders.

A single-split protocol writes ``OUT/encoder.safetensors`` + ``encoder.json`` (the encoder with
its head: :func:`fastspec.load_encoder` returns logits over ``class_names``) and
``OUT/finetune.json`` (settings, sources, per-split metric). Cross-validation (``esc50``) writes
one fine-tuned encoder per fold, ``OUT/fold-K/``, and the mean metric in ``finetune.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from fastspec._logging import get_logger
from fastspec.encoder import Encoder, load_encoder, save_encoder, set_pooling
from fastspec.evaluate.extract import resolve_device
from fastspec.evaluate.finetune import fine_tune
from fastspec.finetune.protocols import ProtocolSettings
from fastspec.finetune.tasks import open_protocol_task
from fastspec.finetune.trainer import ProtocolRecipe

__all__ = ["finetune", "fresh_encoder"]

_log = get_logger("fastspec.finetune")


def fresh_encoder(source: Encoder, pooling: str, drop_path: float) -> Encoder:
    """A trainable copy of ``source``'s backbone and front end (no head) with stochastic depth
    ``drop_path`` (an encoder option every encoder takes) and ``pooling`` (``avg``/``token``)."""
    config = dict(source.model_config, drop_path_rate=drop_path)
    enc = Encoder(source.frontend_config.to_dict(), source.model_name, config)
    enc.backbone.load_state_dict(source.backbone.state_dict())
    return set_pooling(enc, pooling)


def finetune(
    encoder_path: str | os.PathLike,
    data: str,
    protocol: str,
    settings: ProtocolSettings,
    out: str | os.PathLike,
    *,
    test_data: str | None = None,
    pooling: str = "avg",
    device: str = "auto",
    workers: int = 2,
    amp: str = "none",
) -> dict:
    """Fine-tune the encoder at ``encoder_path`` on ``data`` by ``protocol``; returns (and
    writes to ``OUT/finetune.json``) the summary: metric per split and their mean."""
    if pooling not in ("avg", "token"):
        raise ValueError(f"--pooling must be avg or token for fine-tuning, got {pooling!r}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    source = load_encoder(encoder_path)
    if source.num_classes:
        raise ValueError(f"{encoder_path} is already fine-tuned (it has a head): pass the encoder")
    task = open_protocol_task(protocol, data, test_data=test_data, seed=settings.seed)
    out = Path(out)
    _log.info(
        f"finetune {protocol}: {task.name}, {len(task.clips)} clips, {task.num_classes} "
        f"classes, {len(task.splits)} split(s), {task.protocol}; peak lr {settings.peak_lr:.3g}"
    )
    if settings.warmup_epochs >= settings.epochs:
        _log.warning(
            f"finetune: the warm-up ({settings.warmup_epochs} epochs) is not shorter than the "
            f"run ({settings.epochs}): the lr never reaches its peak {settings.peak_lr:.3g}"
        )
    splits = []
    for k, split in enumerate(task.splits):
        result = fine_tune(
            lambda: fresh_encoder(source, pooling, settings.drop_path),
            task,
            split,
            ProtocolRecipe(settings),
            device=dev,
            workers=workers,
            amp=amp,
        )
        result.encoder.class_names = list(task.class_names)
        where = out if len(task.splits) == 1 else out / f"fold-{k + 1}"
        save_encoder(result.encoder.cpu(), where)
        _log.info(f"finetune {split.name}: test {task.metric} {result.metric:.4f} -> {where}")
        splits.append(
            {
                "split": split.name,
                task.metric: result.metric,
                "epoch": result.epoch,
                "train_loss": result.train_loss,
                "val_metric": result.val_metric,
                "train_clips": len(split.train),
                "test_clips": len(split.test),
                "encoder": str(where),
                "seconds": round(result.seconds, 3),
            }
        )
    summary = {
        "protocol": protocol,
        "task": task.name,
        "splits_protocol": task.protocol,
        "encoder": os.fspath(encoder_path),
        "data": data,
        "metric": task.metric,
        "mean": float(np.mean([s[task.metric] for s in splits])),
        "class_names": list(task.class_names),
        "settings": dataclasses.asdict(settings),
        "peak_lr": settings.peak_lr,
        "splits": splits,
        "device": str(dev),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune.json").write_text(json.dumps(summary, indent=2))
    return summary
