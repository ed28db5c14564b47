"""Run an evaluation protocol and report it: a table for the terminal and a JSON file.

Every report has three rows, so that a user sees what pretraining bought:

- ``fastspec``: the exported encoder;
- ``random``: a randomly initialised encoder of the same architecture and front end;
- ``logmel``: no encoder at all, the mean and standard deviation of each mel bin of the
  encoder's own front end over the clip (a classic hand-crafted baseline).

Modes: ``linear`` (frozen embeddings, computed once per clip for all folds, and a linear probe,
:mod:`fastspec.evaluate.probe`) and ``finetune`` (:mod:`fastspec.evaluate.finetune`; the
log-mel row has no encoder to fine-tune and reports its linear probe only). Metrics: accuracy
and mAP for single-label tasks, mAP for multi-label tasks, as mean and standard deviation
(population, ``ddof=0``) over the protocol's splits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastspec import __version__
from fastspec._logging import get_logger
from fastspec.data import DataError
from fastspec.encoder import Encoder, load_encoder
from fastspec.evaluate.extract import encoder_embedder, extract, logmel_stats, resolve_device
from fastspec.evaluate.finetune import FinetuneSettings, fine_tune
from fastspec.evaluate.metrics import accuracy, mean_average_precision
from fastspec.evaluate.probe import DEFAULT_WEIGHT_DECAYS, fit_linear_probe
from fastspec.evaluate.tasks import Task

__all__ = ["METHODS", "MODES", "EvalSettings", "Report", "Row", "evaluate"]

_log = get_logger("fastspec.evaluate")

METHODS = ("fastspec", "random", "logmel")
MODES = ("linear", "finetune")
MODE_TITLES = {"linear": "linear probe", "finetune": "fine-tune"}


@dataclass
class EvalSettings:
    """How ``fastspec evaluate`` runs (its flags)."""

    modes: tuple[str, ...] = ("linear",)
    """``linear``, ``finetune`` or both."""
    batch_size: int = 16
    """Clips per batch when computing embeddings and test predictions."""
    workers: int = 2
    """Decoding threads."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:N."""
    amp: str = "auto"
    """Autocast: auto (bf16 on CUDA, none on CPU), bf16, none."""
    seed: int = 0
    """Seed of the random-init baseline, the probe's holdout and fine-tuning."""
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    """L2 strengths the linear probe chooses from."""
    probe_max_iter: int = 300
    """L-BFGS iterations per probe fit."""
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    """The fine-tuning schedule."""
    pooling: str = "avg"
    """Clip embeddings of the encoder and the random baseline for the linear probe: ``avg``,
    ``token`` or ``atst`` (class token + mean of the last blocks, ATST's linear evaluation)."""
    last_blocks: int = 1
    """Blocks pooled by ``atst`` pooling."""

    def __post_init__(self):
        self.modes = tuple(self.modes)
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes must be among {MODES}, got {self.modes}")
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError("batch_size must be >= 1 and workers >= 0")


@dataclass
class Row:
    """One method in one mode: ``metrics[name] = {"mean", "std", "splits": {split: value}}``."""

    method: str
    label: str
    mode: str
    metrics: dict[str, dict[str, Any]]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def _summary(values: dict[str, float]) -> dict[str, Any]:
    v = np.array(list(values.values()), dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "splits": values}


def _metrics(task: Task, scores: np.ndarray, indices: np.ndarray) -> dict[str, float]:
    """The task's metrics of ``scores`` [n, C] on the clips ``indices``."""
    targets = task.targets[indices]
    out = {"mAP": mean_average_precision(scores, targets)}
    if not task.multilabel:
        out = {"accuracy": accuracy(scores, targets), **out}
    return out


def _row(task: Task, method: str, label: str, mode: str, per_split: dict, seconds, details):
    names = next(iter(per_split.values())).keys()
    metrics = {m: _summary({s: v[m] for s, v in per_split.items()}) for m in names}
    return Row(method, label, mode, metrics, seconds, details)


@dataclass
class Report:
    """The result of :func:`evaluate`; :meth:`table` for people, :meth:`to_dict` / :meth:`save`
    for machines."""

    task: dict[str, Any]
    encoder: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row]
    environment: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "fastspec-evaluation",
            "task": self.task,
            "encoder": self.encoder,
            "settings": self.settings,
            "results": [dataclasses.asdict(r) for r in self.rows],
            "environment": self.environment,
            "seconds": self.seconds,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON report (atomically: temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)
        return path

    def metric_names(self) -> list[str]:
        return ["mAP"] if self.task["multilabel"] else ["accuracy", "mAP"]

    def value(self, method: str, mode: str, metric: str) -> dict[str, Any] | None:
        """``{"mean", "std", "splits"}`` of one cell, or None when it was not run."""
        for row in self.rows:
            if row.method == method and row.mode == mode:
                return row.metrics.get(metric)
        return None

    def table(self) -> str:
        """The terminal table: one row per method, a column per (mode, metric), in percent."""
        t = self.task
        modes = [m for m in MODES if any(r.mode == m for r in self.rows)]
        metrics = self.metric_names()
        spread = "mean ± std over splits" if t["splits"] > 1 else "one split"
        lines = [
            f"{t['name']}: {t['protocol']}, {t['classes']} classes, {t['clips']} clips "
            f"({', '.join(metrics)} in %, {spread})"
        ]
        labels = {r.method: r.label for r in self.rows}
        width = max(len(label) for label in labels.values()) + 2
        cell = 15
        header1 = " " * width + "".join(f"{MODE_TITLES[m]:<{cell * len(metrics)}}" for m in modes)
        header2 = f"{'method':<{width}}" + "".join(f"{x:<{cell}}" for _ in modes for x in metrics)
        lines += [header1.rstrip(), header2.rstrip()]
        for method in METHODS:
            if method not in labels:
                continue
            text = f"{labels[method]:<{width}}"
            for mode in modes:
                for metric in metrics:
                    v = self.value(method, mode, metric)
                    if v is None:
                        text += f"{'n/a':<{cell}}"
                    elif t["splits"] > 1:
                        text += f"{100 * v['mean']:5.1f} ± {100 * v['std']:<{cell - 8}.1f}"
                    else:
                        text += f"{100 * v['mean']:<{cell}.1f}"
            lines.append(text.rstrip())
        if "finetune" in modes:
            lines.append("n/a: the log-mel baseline has no encoder to fine-tune")
        return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def random_encoder(encoder: Encoder, seed: int) -> Encoder:
    """A freshly initialised encoder of ``encoder``'s architecture and front end (CPU RNG seeded
    with ``seed``, global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = Encoder(encoder.frontend_config.to_dict(), encoder.model_name, encoder.model_config)
    fresh.global_pool, fresh.last_blocks = encoder.global_pool, encoder.last_blocks
    return fresh.to(encoder.device).eval()


def evaluate(
    encoder_path: str | os.PathLike,
    task: Task,
    settings: EvalSettings | None = None,
) -> Report:
    """Evaluate the encoder at ``encoder_path`` and the two baselines on ``task``.

    Raises DataError when, after dropping files that fail to decode, a split has no training
    or no test clip.
    """
    s = settings or EvalSettings()
    t_start = time.perf_counter()
    device = resolve_device(s.device)
    encoder = load_encoder(
        encoder_path, device=device, pooling=s.pooling, last_blocks=s.last_blocks
    )
    labels = {
        "fastspec": f"fastspec {encoder.model_name}",
        "random": "random init, same architecture",
        "logmel": f"log-mel mean+std ({2 * encoder.frontend_config.n_mels}-d)",
    }
    used = np.unique(np.concatenate([_split_indices(sp) for sp in task.splits]))
    _log.info(
        f"evaluate: {task.name}, {task.protocol}, {len(used)} clips, "
        f"{task.num_classes} classes, modes {', '.join(s.modes)}, device {device}"
    )

    # one decoding pass computes every embedding the linear probes need; the log-mel one is
    # always computed, as it is also the check that every clip decodes
    embedders = {"logmel": logmel_stats(encoder.frontend)}
    if "linear" in s.modes:
        embedders["fastspec"] = encoder_embedder(encoder)
        embedders["random"] = encoder_embedder(random_encoder(encoder, s.seed))
    extraction = extract(
        task.clips,
        embedders,
        sample_rate=encoder.sample_rate,
        device=device,
        indices=used,
        batch_size=s.batch_size,
        workers=s.workers,
        amp=s.amp,
    )
    _log.info(f"embeddings of {int(extraction.valid.sum())} clips in {extraction.seconds:.1f} s")
    task.restrict(extraction.valid)
    for sp in task.splits:
        if len(sp.train) == 0 or len(sp.test) == 0:
            raise DataError(
                f"{task.name} {sp.name}: no usable {'training' if len(sp.train) == 0 else 'test'} "
                "clip left after skipping files that fail to decode"
            )

    rows: list[Row] = []
    if "linear" in s.modes:
        for method in ("fastspec", "random", "logmel"):
            rows.append(_linear_row(task, method, labels[method], extraction, s, device))
    else:
        rows.append(_linear_row(task, "logmel", labels["logmel"], extraction, s, device))
    if "finetune" in s.modes:
        factories = {
            "fastspec": lambda: load_encoder(encoder_path, device=device),
            "random": lambda: random_encoder(encoder, s.seed),
        }
        for method, make in factories.items():
            per_split, epochs, t0 = {}, {}, time.perf_counter()
            for sp in task.splits:
                result = fine_tune(
                    make,
                    task,
                    sp,
                    s.finetune,
                    device=device,
                    eval_batch_size=s.batch_size,
                    workers=s.workers,
                    amp=s.amp,
                    label=method,
                )
                per_split[sp.name] = _metrics(task, result.test_scores, sp.test)
                epochs[sp.name] = {
                    "epoch": result.epoch,
                    "train_loss": result.train_loss,
                    "val_metric": result.val_metric,
                }
                _log.info(f"fine-tune {method} {sp.name}: {per_split[sp.name]}")
            rows.append(
                _row(
                    task,
                    method,
                    labels[method],
                    "finetune",
                    per_split,
                    time.perf_counter() - t0,
                    {"splits": epochs},
                )
            )

    skipped = [(n, r) for n, r in task.clips.skipped] + [(n, r) for _, n, r in extraction.skipped]
    return Report(
        task={
            "name": task.name,
            "data": task.data,
            "protocol": task.protocol,
            "classes": task.num_classes,
            "class_names": task.class_names,
            "multilabel": task.multilabel,
            "metric": task.metric,
            "clips": int(extraction.valid.sum()),
            "splits": len(task.splits),
            "split_sizes": {
                sp.name: {
                    "train": len(sp.train),
                    "val": 0 if sp.val is None else len(sp.val),
                    "test": len(sp.test),
                }
                for sp in task.splits
            },
            "skipped": [{"name": n, "reason": r} for n, r in skipped],
        },
        encoder={
            "path": str(encoder_path),
            "model_name": encoder.model_name,
            "embed_dim": encoder.embed_dim,
            "pooling": encoder.global_pool,
            "pooled_dim": encoder.pooled_dim,
            "sample_rate": encoder.sample_rate,
            "parameters": sum(p.numel() for p in encoder.backbone.parameters()),
        },
        settings=dataclasses.asdict(s),
        rows=rows,
        environment={
            "fastspec": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "embedding_seconds": extraction.seconds,
        },
        seconds=time.perf_counter() - t_start,
    )


def _split_indices(sp) -> np.ndarray:
    parts = [sp.train, sp.test] + ([sp.val] if sp.val is not None else [])
    return np.concatenate(parts)


def _linear_row(task: Task, method: str, label: str, extraction, s: EvalSettings, device) -> Row:
    """Fit and test a linear probe on ``method``'s embeddings in every split."""
    t0 = time.perf_counter()
    x = extraction.features[method]
    per_split, chosen = {}, {}
    for sp in task.splits:
        val = sp.val if sp.val is not None and len(sp.val) else None
        probe = fit_linear_probe(
            x[sp.train],
            task.targets[sp.train],
            multilabel=task.multilabel,
            x_val=None if val is None else x[val],
            y_val=None if val is None else task.targets[val],
            weight_decays=s.weight_decays,
            max_iter=s.probe_max_iter,
            seed=s.seed,
            device=device,
        )
        per_split[sp.name] = _metrics(task, probe.scores(x[sp.test]), sp.test)
        chosen[sp.name] = probe.weight_decay
    _log.info(f"linear probe {method}: { ({k: v for k, v in per_split.items()}) }")
    return _row(
        task,
        method,
        label,
        "linear",
        per_split,
        time.perf_counter() - t0,
        {"weight_decay": chosen, "embed_dim": int(x.shape[1])},
    )
