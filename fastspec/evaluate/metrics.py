"""Classification metrics: accuracy (single-label) and mAP (mean of per-class average precision).

Average precision follows scikit-learn's ``average_precision_score`` (no interpolation):
``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in decreasing order, where
``P_n`` and ``R_n`` are the precision and recall of predicting positive every clip scored at or
above the n-th threshold; tied scores form one threshold. This is the AudioSet mAP of AST,
PANNs and Audio-MAE, which call scikit-learn per class and average.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "average_precision", "mean_average_precision", "per_class_average_precision"]


def _as_2d(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(
            f"scores and targets must both be [N, C], got {scores.shape} and {targets.shape}"
        )
    return scores, targets


def accuracy(scores, labels) -> float:
    """Top-1 accuracy in [0, 1].

    scores: [N, C] (logits or probabilities); labels: [N] class indices, or [N, C] one-hot.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be [N, C] and labels [N], got {scores.shape}, {labels.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError("accuracy of zero clips is undefined")
    return float((scores.argmax(axis=1) == labels).mean())


def average_precision(scores, targets) -> float:
    """Average precision of one class: scores [N] (higher = more likely positive), targets [N]
    in {0, 1}. NaN when there is no positive (AP is undefined)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets).reshape(-1) > 0
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in length")
    n_pos = int(targets.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")  # stable: ties keep their input order
    scores, targets = scores[order], targets[order]
    tp = np.cumsum(targets)
    fp = np.cumsum(~targets)
    # one threshold per distinct score: the last position of each run of tied scores
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_average_precision(scores, targets) -> np.ndarray:
    """[C] average precision of each class of scores / targets [N, C]; NaN where a class has no
    positive clip."""
    scores, targets = _as_2d(scores, targets)
    return np.array(
        [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    )


def mean_average_precision(scores, targets) -> float:
    """mAP: the mean of :func:`per_class_average_precision` over the classes that have at least
    one positive clip in ``targets`` (the others have no AP). NaN if no class has one."""
    ap = per_class_average_precision(scores, targets)
    if np.isnan(ap).all():
        return float("nan")
    return float(np.nanmean(ap))
