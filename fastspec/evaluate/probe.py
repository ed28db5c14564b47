"""Linear probe: a linear classifier trained in torch on frozen, precomputed embeddings.

Features are standardised with the training set's mean and standard deviation, then a
multinomial logistic regression (softmax + cross-entropy; sigmoid + binary cross-entropy for
multi-label data) with an L2 penalty ``weight_decay / 2 * ||W||^2`` is fitted full-batch by
L-BFGS from zero weights. The problem is convex, so the fit is deterministic and close to the
optimum, which keeps the comparison between encoders (and baselines) about the features, not
the optimiser. The L2 strength is chosen on validation clips (given, or a stratified 20 % of
the training clips), then the probe is refitted on the training clips with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastspec.evaluate.metrics import accuracy, mean_average_precision

__all__ = ["DEFAULT_WEIGHT_DECAYS", "LinearProbe", "fit_linear_probe", "holdout_split"]

# L2 strengths tried; on standardised features with a mean loss, 1e-3 is about scikit-learn's
# LogisticRegression(C=1) on a thousand clips
DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearProbe:
    """A fitted probe: ``scores(x [N, D]) -> [N, C]`` probabilities (softmax, or sigmoid for
    multi-label). ``mean``/``std`` [D] standardise the input; ``weight`` [C, D], ``bias`` [C]."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    multilabel: bool
    weight_decay: float
    val_score: float | None = None  # validation metric of the chosen weight decay

    def logits(self, x) -> Tensor:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.weight.device)
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias

    def scores(self, x) -> np.ndarray:
        logits = self.logits(x)
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
        return probs.cpu().numpy()  # host copy: the metrics run in numpy


def _fit(x: Tensor, y: Tensor, multilabel: bool, weight_decay: float, max_iter: int, init=None):
    """L-BFGS fit of W [C, D], b [C] on standardised x [N, D] and multi-hot y [N, C], from
    zeros or from ``init`` = (W, b) (a warm start along the regularisation path)."""
    n_classes = y.shape[1]
    if init is None:
        init = (
            torch.zeros(n_classes, x.shape[1], device=x.device),
            torch.zeros(n_classes, device=x.device),
        )
    weight = init[0].clone().requires_grad_(True)
    bias = init[1].clone().requires_grad_(True)
    labels = y.argmax(dim=1)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        logits = x @ weight.T + bias
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, y)
        else:
            loss = F.cross_entropy(logits, labels)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # runs up to max_iter L-BFGS iterations
    return weight.detach(), bias.detach()


def holdout_split(targets: np.ndarray, fraction: float = 0.2, seed: int = 0):
    """(train, val) positions of a stratified holdout of ``fraction`` of the clips: per class
    (first label), a seeded shuffle and the first ``round(fraction * n)`` go to validation;
    classes with a single clip stay in training."""
    rng = np.random.default_rng(seed)
    primary = targets.argmax(axis=1)
    val = []
    for c in np.unique(primary):
        members = rng.permutation(np.flatnonzero(primary == c))
        if len(members) >= 2:
            val.extend(members[: max(1, round(fraction * len(members)))])
    val = np.sort(np.array(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(targets)), val), val


def _score(probe: LinearProbe, x, y: np.ndarray) -> float:
    scores = probe.scores(x)
    if probe.multilabel:
        value = mean_average_precision(scores, y)
        return -1.0 if np.isnan(value) else value
    return accuracy(scores, y)


def fit_linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    multilabel: bool,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    weight_decays=DEFAULT_WEIGHT_DECAYS,
    max_iter: int = 300,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> LinearProbe:
    """Fit a linear probe, choosing the L2 strength on validation clips.

    Args:
        x_train: [N, D] embeddings; y_train: [N, C] multi-hot targets.
        x_val, y_val: validation clips; None: a stratified 20 % holdout of the training clips
            picks the strength, and the probe is then refitted on all training clips.
        weight_decays: the L2 strengths tried (one value: no selection).
        max_iter: L-BFGS iterations per fit.

    Returns:
        The probe fitted on the training clips with the best strength (ties go to the stronger).
    """
    x_all = torch.as_tensor(np.asarray(x_train), dtype=torch.float32, device=device)
    y_all = torch.as_tensor(np.asarray(y_train), dtype=torch.float32, device=device)
    if x_all.shape[0] == 0:
        raise ValueError("a linear probe needs training clips, got none")

    def fitted(x: Tensor, y: Tensor, wd: float, init=None) -> LinearProbe:
        mean = x.mean(dim=0)
        # floor the scale: a constant feature (e.g. a mel bin that is always at the log floor)
        # would otherwise be divided by zero
        std = x.std(dim=0, correction=0).clamp_min(1e-5)
        w, b = _fit((x - mean) / std, y, multilabel, wd, max_iter, init)
        return LinearProbe(w, b, mean, std, multilabel, wd)

    weight_decays = tuple(weight_decays)
    best_wd, best_val, best_init = weight_decays[0], None, None
    if len(weight_decays) > 1:
        if x_val is None:
            fit_idx, val_idx = holdout_split(np.asarray(y_train), 0.2, seed)
            if len(val_idx) == 0 or len(fit_idx) == 0:
                fit_idx = val_idx = np.arange(x_all.shape[0])  # too few clips to hold any out
            x_fit, y_fit = x_all[fit_idx], y_all[fit_idx]
            x_v, y_v = x_all[val_idx].cpu().numpy(), np.asarray(y_train)[val_idx]
        else:
            x_fit, y_fit, x_v, y_v = x_all, y_all, np.asarray(x_val), np.asarray(y_val)
        # strongest first, each fit warm-started from the previous one (the solutions move
        # little between neighbouring strengths), and only a strictly better score wins: ties
        # keep the stronger L2
        previous = None
        for wd in sorted(weight_decays, reverse=True):
            probe = fitted(x_fit, y_fit, wd, previous)
            previous = (probe.weight, probe.bias)
            value = _score(probe, x_v, y_v)
            if best_val is None or value > best_val:
                best_wd, best_val, best_init = wd, value, previous
    probe = fitted(x_all, y_all, best_wd, best_init)
    probe.val_score = best_val
    return probe
