"""Embeddings and evaluation of an exported encoder (``fastspec embed``, ``fastspec evaluate``).

- :func:`open_task`: a dataset and its protocol (ESC-50 5-fold CV, Speech Commands v2
  train / validation / test, AudioSet multi-label, folder-per-class, labelled manifests);
- :func:`evaluate`: linear probe and / or fine-tuning (:func:`fine_tune`, the one loop
  ``fastspec finetune`` runs too) of the encoder, plus two baselines (log-mel
  mean+std pooling, and a randomly initialised encoder of the same architecture), as a
  :class:`Report` (terminal table, JSON);
- :func:`write_embeddings`: clip and frame embeddings of audio files into ``.npy`` files;
- metrics: :func:`accuracy`, :func:`average_precision`, :func:`mean_average_precision`.

Depends on :mod:`fastspec.encoder` and :mod:`fastspec.data` only; the CLI sits on top.
"""

from fastspec.evaluate.embed import EmbedSummary, open_inputs, write_embeddings
from fastspec.evaluate.extract import Extraction, extract, logmel_stats
from fastspec.evaluate.finetune import (
    FinetuneRecipe,
    FinetuneResult,
    FinetuneSettings,
    fine_tune,
)
from fastspec.evaluate.metrics import (
    accuracy,
    average_precision,
    mean_average_precision,
    per_class_average_precision,
)
from fastspec.evaluate.probe import LinearProbe, fit_linear_probe
from fastspec.evaluate.report import EvalSettings, Report, Row, evaluate, random_encoder
from fastspec.evaluate.tasks import (
    ClipTable,
    Split,
    Task,
    kfold_splits,
    open_class_folders,
    open_labeled,
    open_task,
)

__all__ = [
    "ClipTable",
    "EmbedSummary",
    "EvalSettings",
    "Extraction",
    "FinetuneRecipe",
    "FinetuneResult",
    "FinetuneSettings",
    "LinearProbe",
    "Report",
    "Row",
    "Split",
    "Task",
    "accuracy",
    "average_precision",
    "evaluate",
    "extract",
    "fine_tune",
    "fit_linear_probe",
    "kfold_splits",
    "logmel_stats",
    "mean_average_precision",
    "open_class_folders",
    "open_inputs",
    "open_labeled",
    "open_task",
    "per_class_average_precision",
    "random_encoder",
    "write_embeddings",
]
