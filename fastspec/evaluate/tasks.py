"""Evaluation tasks: labelled clips, their classes, and the protocol's train / test splits.

:func:`open_task` reads what ``fastspec evaluate DATA`` names:

========================================  ===============================================
``DATA``                                  protocol
========================================  ===============================================
``esc50:ROOT`` (``?folds=1,2,3`` to limit)  leave-one-fold-out cross-validation (5 folds)
``speechcommands:ROOT``                   train / validation / test lists of the release
``audioset:TRAIN.csv?audio=DIR&...``      train on it, test on ``--test-data`` (default:
                                          ``eval_segments.csv`` beside it); multi-label
``ROOT/train/<class>/``, ``ROOT/test/...``  folder-per-class splits (``val``/``valid``/
                                          ``validation`` optional)
``ROOT/<class>/...``                      folder-per-class, stratified k-fold CV
``labels.csv`` / ``.jsonl`` (``label``)     k-fold CV, or train / ``--test-data``
``demo`` / ``demo:N?seed=S&seconds=T``    the demo generator's six sound families (N clips,
                                          default 360, never pretraining clips:
                                          :class:`~fastspec.data.DemoEvalSet`), k-fold CV
========================================  ===============================================

Every clip of every split is listed once in a :class:`ClipTable`, so embeddings are computed
once per clip whatever the number of folds; a :class:`Split` holds indices into it. With
``shots`` (``--shots K``, :meth:`Task.limit_shots`) a single-label task is evaluated low-shot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastspec.data import (
    DataError,
    DemoCorpus,
    DemoEvalSet,
    LabeledSource,
    open_esc50,
    open_source,
    open_speech_commands,
)
from fastspec.data.audio import MIN_SECONDS
from fastspec.data.datasets import open_class_folders
from fastspec.data.demo import EVENT_KINDS
from fastspec.evaluate.folders import split_folders
from fastspec.evaluate.splits import Split, draw_per_class, kfold_splits
from fastspec.frontend.polyphase import resample

__all__ = [
    "ClipTable",
    "Split",
    "Task",
    "kfold_splits",
    "open_class_folders",
    "open_labeled",
    "open_task",
]

DATASET_KINDS = ("esc50", "speechcommands", "audioset")


class ClipTable:
    """Clips of one or more sources under one index: ``len``, ``name(i)``, ``load(i, rate)``.

    Args:
        sources: file sources (``FileSource`` / ``LabeledSource``), concatenated in order.
    """

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        # (source number, index in that source) of each clip
        self._where = [(s, i) for s, source in enumerate(self.sources) for i in range(len(source))]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return len(self._where)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Files the sources dropped at open time, as ``(name, reason)``."""
        return [item for source in self.sources for item in source.skipped]

    def name(self, index: int) -> str:
        s, i = self._where[index]
        return self.sources[s].name(i)

    def path(self, index: int) -> str | None:
        s, i = self._where[index]
        source = self.sources[s]
        return source.path(i) if hasattr(source, "path") else None

    def label_names(self, index: int) -> list[str]:
        """Class names of clip ``index`` (empty for an unlabelled source)."""
        s, i = self._where[index]
        source = self.sources[s]
        if not getattr(source, "labeled", False):
            return []
        return [source.class_names[k] for k in source.labels(i)]

    def seconds(self, index: int) -> float:
        """Length from the file header (nothing decoded); used to batch similar lengths."""
        s, i = self._where[index]
        source = self.sources[s]
        if isinstance(source, DemoCorpus):  # generated: every clip has the corpus' length
            return source.clip_seconds
        span = source.span(i)
        return span.frames / span.sample_rate

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        """Decode clip ``index`` to float32 mono [S] at ``sample_rate`` (polyphase resampling).

        Raises BadAudioError for a file that fails a decode-time check (NaN, silence...).
        """
        s, i = self._where[index]
        wave, sr = self.sources[s].load(i)
        if sr != sample_rate:
            wave = resample(wave, sr, sample_rate)
        return np.ascontiguousarray(wave, dtype=np.float32)


@dataclass
class Task:
    """Labelled clips and the splits of an evaluation protocol.

    ``targets`` is float32 [N, C] multi-hot over ``class_names``; ``multilabel`` selects the
    metric (mAP) and the losses (sigmoid / BCE instead of softmax / cross-entropy).
    """

    name: str
    protocol: str
    clips: ClipTable
    targets: np.ndarray
    class_names: list[str]
    multilabel: bool
    splits: list[Split]
    data: str = ""  # what the user passed
    notes: list[str] = field(default_factory=list)
    cross_validation: bool = False  # splits are k-fold CV of the whole data

    @property
    def metric(self) -> str:
        """The headline metric: ``mAP`` for multi-label tasks, else ``accuracy``."""
        return "mAP" if self.multilabel else "accuracy"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels(self) -> np.ndarray:
        """[N] class index of each clip (single-label tasks)."""
        return self.targets.argmax(axis=1)

    def limit_shots(self, shots: int, seed: int = 0) -> None:
        """The low-shot protocol (``--shots``), single-label tasks only. Cross-validated data:
        each split becomes a draw of ``shots`` clips per class from all the clips, tested on
        every other clip. Data with their own splits: each split trains on ``shots`` clips per
        class of its training clips. Draw k uses the stream ``(seed, k)``."""
        if self.multilabel or shots < 1:
            raise DataError(f"{self.name}: shots={shots} needs >= 1 and a single-label task")
        labels, every = self.labels(), np.arange(len(self.targets))
        for k, split in enumerate(self.splits):
            pool = every if self.cross_validation else split.train
            where = f"{self.name} {split.name}"
            rng = np.random.default_rng([seed, k])
            split.train = draw_per_class(pool, labels, shots, rng, self.class_names, where)
            if self.cross_validation:
                split.name, split.test = f"draw {k + 1}", np.setdiff1d(every, split.train)
        self.protocol = (
            f"low-shot, {len(self.splits)} draws of {shots} labelled clips per class, each "
            f"tested on all other clips (seed {seed})"
            if self.cross_validation
            else f"{self.protocol}, {shots} labelled training clips per class"
        )

    def restrict(self, keep: np.ndarray) -> None:
        """Drop from every split the clips with ``keep[i]`` False (files that failed to decode)."""
        for split in self.splits:
            split.train = split.train[keep[split.train]]
            split.test = split.test[keep[split.test]]
            if split.val is not None:
                split.val = split.val[keep[split.val]]


# ---- opening ------------------------------------------------------------------------------------


DEMO_OPTIONS = {"seed": int, "seconds": float, "background": float, "rate": int}


def open_demo_task(spec: str, folds: int = 5) -> Task:
    """The labelled demo evaluation ``demo[:N][?seed=S&seconds=T&background=B&rate=R]``: N
    clips (default 360) of :class:`~fastspec.data.DemoEvalSet` (six balanced classes, never
    pretraining clips), in stratified ``folds``-fold cross-validation, so every clip is tested
    once."""
    _, _, rest = spec.partition(":")
    count, _, query = rest.partition("?")
    options = _query(query)
    unknown = set(options) - set(DEMO_OPTIONS)
    if unknown:
        raise DataError(
            f"{spec!r}: unknown option {sorted(unknown)[0]!r} for demo "
            f"(options: {', '.join(DEMO_OPTIONS)})"
        )
    try:
        n = int(count) if count else 360
        kw = {k: DEMO_OPTIONS[k](v) for k, v in options.items()}
    except ValueError as e:
        raise DataError(f"{spec!r}: not a demo evaluation spec (demo:N?seed=S...): {e}") from None
    if n < folds * len(EVENT_KINDS):
        raise DataError(f"{spec!r}: {folds}-fold CV of 6 classes needs >= {6 * folds} clips")
    seed = kw.pop("seed", 0)
    try:
        source = DemoEvalSet(
            n,
            seed=seed,
            clip_seconds=kw.pop("seconds", 2.0),
            background=kw.pop("background", 0.3),
            sample_rate=kw.pop("rate", 16000),
        )
    except ValueError as e:
        raise DataError(f"{spec!r}: {e}") from None
    return _cross_validated("demo", source, spec, folds, seed, multilabel=False)


def _is_dataset_spec(spec: str) -> bool:
    kind = spec.split(":", 1)[0]
    return kind in DATASET_KINDS and ":" in spec and not Path(spec).exists()


def open_labeled(spec: str | os.PathLike, **options) -> LabeledSource:
    """One labelled source: a folder of class folders, a labelled manifest, or a dataset spec
    (``esc50:ROOT?folds=5``, ``speechcommands:ROOT?split=test``, ``audioset:CSV?...``)."""
    spec = os.fspath(spec)
    path = Path(os.path.expanduser(spec))
    if not _is_dataset_spec(spec) and path.is_dir():
        return open_class_folders(path, **options)
    source = open_source(spec, **options)
    if not isinstance(source, LabeledSource):
        raise DataError(
            f"{spec!r} carries no labels: evaluation needs class folders (ROOT/<class>/*.wav), "
            "a manifest with a 'label' column, or a dataset (esc50:, speechcommands:, audioset:)"
        )
    return source


def _merged_targets(sources: Sequence[LabeledSource]) -> tuple[list[str], np.ndarray]:
    """One class list for several sources (the first source's order, then new names), and the
    float32 [N, C] multi-hot targets of all their clips in order."""
    class_names: list[str] = []
    for source in sources:
        class_names += [c for c in source.class_names if c not in class_names]
    index = {name: k for k, name in enumerate(class_names)}
    rows = []
    for source in sources:
        remap = np.array([index[c] for c in source.class_names])
        t = np.zeros((len(source), len(class_names)), dtype=np.float32)
        for i in range(len(source)):
            t[i, remap[list(source.labels(i))]] = 1.0
        rows.append(t)
    return class_names, np.concatenate(rows)


def _task(name, protocol, sources, splits_of, data, multilabel=None, notes=()) -> Task:
    """Assemble a Task from its sources; ``splits_of(offsets, targets)`` builds the splits."""
    class_names, targets = _merged_targets(sources)
    table = ClipTable(sources)
    if multilabel is None:
        multilabel = bool((targets.sum(axis=1) != 1).any())
    return Task(
        name=name,
        protocol=protocol,
        clips=table,
        targets=targets,
        class_names=class_names,
        multilabel=multilabel,
        splits=splits_of(table.offsets, targets),
        data=data,
        notes=list(notes),
    )


def _cross_validated(name, source, data, folds, seed, **kw) -> Task:
    """Stratified ``folds``-fold cross-validation of one labelled source."""
    protocol = f"stratified {folds}-fold cross-validation (seed {seed})"

    def splits_of(offsets, targets):
        return kfold_splits(targets, folds, seed)

    task = _task(name, protocol, [source], splits_of, data, **kw)
    task.cross_validation = True
    return task


def _range(offsets, k) -> np.ndarray:
    return np.arange(offsets[k], offsets[k + 1])


def _train_val_test(name, sources, data, **kw) -> Task:
    """sources = [train, test] or [train, val, test]."""

    def splits_of(offsets, _):
        if len(sources) == 3:
            return [Split("test", _range(offsets, 0), _range(offsets, 2), _range(offsets, 1))]
        return [Split("test", _range(offsets, 0), _range(offsets, 1))]

    protocol = "train / validation / test" if len(sources) == 3 else "train / test"
    return _task(name, protocol, sources, splits_of, data, **kw)


def _parse_spec(spec: str) -> tuple[str, str, str]:
    """``KIND:PATH?QUERY`` -> (kind, path, query)."""
    kind, rest = spec.split(":", 1)
    path, _, query = rest.partition("?")
    return kind, path, query


def _query(query: str) -> dict[str, str]:
    return dict(part.partition("=")[::2] for part in query.split("&") if part)


def open_task(
    data: str | os.PathLike,
    *,
    test_data: str | os.PathLike | None = None,
    val_data: str | os.PathLike | None = None,
    folds: int = 5,
    seed: int = 0,
    shots: int | None = None,
    min_seconds: float = MIN_SECONDS,
) -> Task:
    """The evaluation task ``data`` names (table in the module docstring).

    Args:
        data: the dataset (or its training part when ``test_data`` is given).
        test_data, val_data: labelled sources (same forms as ``data``) for the test and
            validation clips; with ``test_data`` the protocol is train / (val /) test.
        folds: k of the k-fold cross-validation used when the data bring no split of their own.
        seed: seed of the k-fold assignment and of the low-shot draws.
        shots: train on this many clips per class of each split (:meth:`Task.limit_shots`).
    """
    task = _open_task(os.fspath(data), test_data, val_data, folds, seed, min_seconds)
    if shots is not None:
        task.limit_shots(shots, seed)
    return task


def _open_task(data, test_data, val_data, folds, seed, min_seconds) -> Task:
    opts = {"min_seconds": min_seconds}
    if (data == "demo" or data.startswith("demo:")) and not Path(data).exists():
        if test_data is not None:
            raise DataError("the demo evaluation brings its own test clips: drop --test-data")
        return open_demo_task(data, folds)
    if test_data is None and val_data is not None:
        raise DataError("--val-data needs --test-data")
    if test_data is not None:
        train = open_labeled(data, **opts)
        parts = [train] + ([open_labeled(val_data, **opts)] if val_data is not None else [])
        parts.append(open_labeled(test_data, **opts))
        return _train_val_test(_display_name(data), parts, data)

    if _is_dataset_spec(data):
        kind, root, query = _parse_spec(data)
        options = _query(query)
        if kind == "esc50":
            unknown = set(options) - {"folds"}
            if unknown:
                raise DataError(f"unknown option {sorted(unknown)[0]!r} for esc50 (options: folds)")
            fold_ids = sorted({int(f) for f in options.get("folds", "1,2,3,4,5").split(",") if f})
            if len(fold_ids) < 2:
                raise DataError(f"ESC-50 cross-validation needs at least 2 folds, got {fold_ids}")
            sources = [open_esc50(root, folds=k, **opts) for k in fold_ids]

            def esc_splits(offsets, _):
                every = np.arange(offsets[-1])
                out = []
                for j, k in enumerate(fold_ids):
                    test = _range(offsets, j)
                    out.append(Split(f"fold {k}", np.setdiff1d(every, test), test))
                return out

            protocol = f"leave-one-fold-out cross-validation ({len(fold_ids)} folds)"
            return _task("ESC-50", protocol, sources, esc_splits, data, multilabel=False)
        if kind == "speechcommands":
            if options:
                raise DataError(
                    "speechcommands: evaluation uses the train, validation and test lists of "
                    f"the release; drop the options {sorted(options)}"
                )
            sources = [
                open_speech_commands(root, s, **opts) for s in ("train", "validation", "test")
            ]
            return _train_val_test("Speech Commands v2", sources, data, multilabel=False)
        # audioset: the test segments default to eval_segments.csv next to the training CSV
        eval_csv = Path(root).with_name("eval_segments.csv")
        if Path(root).name == eval_csv.name or not eval_csv.is_file():
            raise DataError(
                f"AudioSet: no test segments for {root!r}: pass --test-data "
                "audioset:eval_segments.csv?audio=DIR (or put eval_segments.csv beside it)"
            )
        test_spec = f"audioset:{eval_csv}" + (f"?{query}" if query else "")
        sources = [open_labeled(data, **opts), open_labeled(test_spec, **opts)]
        return _train_val_test("AudioSet", sources, data, multilabel=True)

    path = Path(os.path.expanduser(data))
    if path.is_dir():
        splits = split_folders(path)
        if splits:
            train = open_class_folders(splits["train"], **opts)
            parts = [train]
            if "val" in splits:
                parts.append(open_class_folders(splits["val"], **opts))
            parts.append(open_class_folders(splits["test"], **opts))
            return _train_val_test(_display_name(data), parts, data)
    source = open_labeled(data, **opts)
    return _cross_validated(_display_name(data), source, data, folds, seed)


def _display_name(data: str) -> str:
    """A short name for a dataset given by path: its folder or file stem."""
    return Path(data.rstrip("/")).name or data
