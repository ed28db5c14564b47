"""ATST-Frame's time-span masking as the paper: fairseq's overlapping spans.

The reference (audiossl's copy of HuggingFace's ``_compute_mask_indices``) is re-implemented
here in NumPy, float64, line for line in what it computes; both samplers' coverage must match
the closed-form expectation :func:`expected_overlap_coverage`, which is itself checked against
an independent float64 evaluation of the same formula.
"""

import math

import numpy as np
import pytest
import torch

from fastspec.masking import sample_mask
from fastspec.masking.time_span import expected_overlap_coverage, overlap_span_counts


def reference_spans(
    rng: np.random.Generator, batch: int, n_time: int, prob: float, span: int, min_spans: int
) -> np.ndarray:
    """The reference sampler (no attention mask): one eps per batch, S distinct starts per row
    drawn without replacement from ``[0, T - L]``, each masking ``[start, start + L)``."""
    eps = rng.random()
    n_spans = max(int(prob * n_time / span + eps), min_spans)
    if n_spans * span > n_time:
        n_spans = n_time // span
    n_spans = min(n_spans, n_time - span + 1)
    mask = np.zeros((batch, n_time), dtype=bool)
    for row in range(batch):
        for start in rng.choice(n_time - span + 1, n_spans, replace=False):
            mask[row, start : start + span] = True
    return mask


def coverage_by_enumeration(n_time: int, prob: float, span: int, min_spans: int) -> float:
    """The expectation again, summed over steps with float64 log-binomials (not math.comb)."""
    base = prob * n_time / span
    frac = base - math.floor(base)
    n = n_time - span + 1
    out = 0.0
    for extra, weight in ((0, 1.0 - frac), (1, frac)):
        s = min(max(int(base) + extra, min_spans), n_time // span, n)
        t = np.arange(n_time, dtype=np.float64)
        w = np.minimum(t, n - 1) - np.maximum(0, t - span + 1) + 1
        # C(n - w, s) / C(n, s) = prod_{i<s} (n - w - i) / (n - i)
        i = np.arange(s, dtype=np.float64)[None, :]
        ratio = np.clip((n - w[:, None] - i) / (n - i), 0.0, None).prod(axis=1)
        out += weight * (1.0 - ratio.mean())
    return out


@pytest.mark.parametrize("n_time,prob,span", [(250, 0.65, 5), (101, 0.65, 5), (40, 0.3, 3)])
def test_expected_coverage_formula(n_time, prob, span):
    assert expected_overlap_coverage(n_time, prob, span, 2) == pytest.approx(
        coverage_by_enumeration(n_time, prob, span, 2), abs=1e-12
    )


def test_paper_setting_masks_about_half_not_65_percent():
    # ATST-Frame: 10 s at 40 ms tokens = 250 steps, 65 %, spans of 5
    assert overlap_span_counts(250, 0.65, 5, 2) == (32, 33)
    assert expected_overlap_coverage(250, 0.65, 5, 2) == pytest.approx(0.5036, abs=5e-4)


@pytest.mark.parametrize("n_time,prob,span", [(250, 0.65, 5), (40, 0.3, 3)])
def test_sampler_and_reference_match_the_expected_coverage(n_time, prob, span):
    expected = expected_overlap_coverage(n_time, prob, span, 2)
    rng = np.random.default_rng(0)
    ref = np.mean([reference_spans(rng, 50, n_time, prob, span, 2).mean() for _ in range(120)])
    ours = np.mean(
        [
            sample_mask("time_span", 50, (n_time, 1), prob, seed=k, span_length=span, overlap=True)
            .mask.double()
            .mean()
            .item()
            for k in range(120)
        ]
    )
    # 6,000 rows (the reference draws eps per batch, fastspec per clip): a standard error of
    # the mean coverage well under 0.5 %
    assert ref == pytest.approx(expected, abs=0.006)
    assert ours == pytest.approx(expected, abs=0.006)


def test_spans_overlap_and_every_masked_run_is_whole_spans():
    m = sample_mask("time_span", 400, (60, 1), 0.65, seed=3, overlap=True)
    counts = m.mask.sum(1)
    s_lo, s_hi = overlap_span_counts(60, 0.65, 5, 2)
    assert int(counts.max()) <= s_hi * 5
    assert int(counts.min()) < s_lo * 5  # some rows overlap, so they mask fewer steps
    # every run of masked steps is at least one span long
    for row in m.mask[:50].tolist():
        runs = [len(r) for r in "".join("1" if v else "0" for v in row).split("0") if r]
        assert min(runs) >= 5


def test_ids_keep_lists_only_unmasked_tokens_and_restores():
    grid = (30, 2)
    m = sample_mask("time_span", 16, grid, 0.65, seed=4, overlap=True)
    assert m.ids_keep.shape[1] == (30 - overlap_span_counts(30, 0.65, 5, 2)[1] * 5) * 2
    assert not bool(m.mask.gather(1, m.ids_keep).any())
    # whole time steps: both frequency tokens of a step share its state
    assert torch.equal(m.mask.view(16, 30, 2)[..., 0], m.mask.view(16, 30, 2)[..., 1])
    # ids_restore inverts cat(ids_keep, rest)
    perm = torch.argsort(m.ids_restore, dim=1)
    assert torch.equal(perm[:, : m.ids_keep.shape[1]], m.ids_keep)


def test_non_overlapping_variant_is_exact():
    m = sample_mask("time_span", 32, (50, 1), 0.65, seed=5, overlap=False)
    assert torch.unique(m.mask.sum(1)).numel() == 1
