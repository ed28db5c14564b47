"""Time-span masking (ATST-Frame): whole time steps are masked in spans of L tokens.

ATST-Frame masks frame tokens in spans of 5 (65 %, at least 2 spans) with the fairseq /
wav2vec 2.0 ``compute_mask_indices`` recipe (HuggingFace's ``_compute_mask_indices``, which
audiossl copies): ``S = int(ratio * T_p / L + eps)`` spans, ``eps ~ U[0, 1)`` (probabilistic
rounding; drawn per clip here, per batch there: the same distribution for every clip), at least ``min_spans``, at most ``(T_p - L + 1)``; S distinct
start steps drawn uniformly from ``[0, T_p - L]``; every step of ``[start, start + L)`` masked.
Spans may overlap, so fewer than ``ratio`` of the steps end up masked (about 48 % at 0.65, L = 5,
T_p = 250: :func:`expected_overlap_coverage`) and the count varies per clip. That is
``overlap=True``, which the atst-frame recipe asks for (``atst.span_overlap``, as the paper).

With ``overlap=False`` (the default of the kind: a dropping kind, like ``random``, hides the
same number of tokens in every row) the count is exact and the spans never overlap:

    M = T_p - int(T_p * (1 - ratio))    masked time steps (at least ``min_spans * L``)
    S = M // L spans, one of them L + (M - S * L) long, the others exactly L

Placing S non-overlapping spans uniformly is choosing S of the ``T_p - M + S`` slots left when
each span shrinks to one slot (stars and bars): an exact top-S random subset, which the same
selection kernel as ``random`` draws. Adjacent spans may touch, so masked runs are at least L
long. On a grid with F_p > 1 every token of a masked time step is masked.

Overlapping masks keep ``K = (T_p - S_max * L) * F_p`` tokens in ``ids_keep`` (``S_max`` the
larger of the two rounded span counts): never more than a row leaves unmasked, so every token of
``ids_keep`` is unmasked, but ``mask`` may leave more tokens unmasked than ``ids_keep`` lists
(as ``group`` does). A recipe that needs the masked tokens reads ``mask``, not the complement
of ``ids_keep``.
"""

from __future__ import annotations

import math

import torch

from fastspec.kernels.masking_reference import compact_keep
from fastspec.masking.mask import Mask
from fastspec.masking.registry import register_mask_kind
from fastspec.masking.rng import MaskRng


def overlap_span_counts(
    n_time: int, ratio: float, span_length: int, min_spans: int
) -> tuple[int, int]:
    """``(S_lo, S_hi)``: the two span counts probabilistic rounding gives (``S_lo`` when
    ``eps < 1 - frac(ratio * T_p / L)``), with the reference's clamps to ``min_spans`` and to
    the ``T_p - L + 1`` possible starts."""
    if span_length > n_time:
        raise ValueError(f"time_span: spans of {span_length} do not fit in {n_time} time steps")
    n_starts = n_time - span_length + 1

    def clamp(count: int) -> int:
        count = max(count, min_spans)
        count = min(count, n_time // span_length)  # as the reference: S * L <= T_p
        return min(count, n_starts)

    base = ratio * n_time / span_length
    return clamp(int(base)), clamp(int(base) + 1)


def span_counts(n_time: int, ratio: float, span_length: int, min_spans: int) -> tuple[int, int]:
    """``(M, S)``: masked time steps and spans for ``n_time`` steps (see the module docstring)."""
    masked = max(n_time - int(n_time * (1.0 - ratio)), min_spans * span_length)
    if masked > n_time:
        raise ValueError(
            f"time_span: {min_spans} spans of {span_length} need {min_spans * span_length} time "
            f"steps, the grid has {n_time}"
        )
    return masked, masked // span_length


@register_mask_kind("time_span")
def time_span_mask(
    batch_size: int,
    grid: tuple[int, int],
    ratio: float,
    *,
    rng: MaskRng,
    span_length: int = 5,
    min_spans: int = 2,
    overlap: bool = False,
) -> Mask:
    """Mask whole time steps in spans of ``span_length`` (see the module docstring).

    Options:
        span_length: L, time steps per span (ATST-Frame: 5).
        min_spans: at least this many spans (ATST-Frame: 2).
        overlap: True (ATST-Frame's reference): fairseq's overlapping spans, a varying masked
            count; False (default): exactly ``M`` masked steps in non-overlapping spans, K = ``(T_p - M) * F_p``
            kept tokens per row.
    """
    if span_length < 1 or min_spans < 1:
        raise ValueError(
            f"span_length and min_spans must be >= 1, got {span_length} and {min_spans}"
        )
    if overlap:
        return _overlapping_spans(batch_size, grid, ratio, rng, span_length, min_spans)
    t_p, f_p = grid
    masked, n_spans = span_counts(t_p, ratio, span_length, min_spans)
    device = rng.device
    extra = masked - n_spans * span_length  # 0 <= extra < L, added to one span

    # stars and bars: S distinct slots out of T_p - M + S, ascending, uniformly
    n_slots = t_p - masked + n_spans
    _, slots, _ = rng.select_top(batch_size, n_slots, n_spans)  # [B, S]
    long_span = rng.randint(n_spans, (batch_size, 1))  # [B, 1] which span gets the extra
    j = torch.arange(n_spans, device=device)
    start = slots + j * (span_length - 1) + extra * (j > long_span)  # [B, S]
    length = span_length + extra * (j == long_span)  # [B, S]

    # spans never overlap: +1 at each start, -1 at each end, and a running sum marks them
    edges = torch.zeros(batch_size, t_p + 1, dtype=torch.int32, device=device)
    edges.scatter_add_(1, start, torch.ones_like(start, dtype=torch.int32))
    edges.scatter_add_(1, start + length, torch.full_like(start, -1, dtype=torch.int32))
    masked_t = edges[:, :t_p].cumsum(1) > 0  # [B, T_p]
    mask = masked_t.repeat_interleave(f_p, dim=1)  # [B, N], token n = t * F_p + f
    n_keep = (t_p - masked) * f_p
    ids_keep, ids_restore = compact_keep(~mask, n_keep)
    return Mask(mask=mask, ids_keep=ids_keep, ids_restore=ids_restore, grid=grid)


def _overlapping_spans(
    batch_size: int, grid: tuple[int, int], ratio: float, rng: MaskRng, span: int, min_spans: int
) -> Mask:
    """fairseq's overlapping spans, with no host sync: each row's S (one of two values) is a
    device tensor, and a row's starts are its S lowest keys."""
    t_p, f_p = grid
    s_lo, s_hi = overlap_span_counts(t_p, ratio, span, min_spans)
    n_starts = t_p - span + 1
    base = ratio * t_p / span
    # probabilistic rounding: S = S_hi when int(base + eps) > int(base), i.e. when
    # eps >= 1 - frac(base). The reference draws one eps per batch; here each clip draws its
    # own, so a clip's mask does not depend on its batch (nor on the world size), and each
    # clip's S has the reference's distribution
    eps = rng.uniform(batch_size, 1)  # [B, 1]
    n_spans = torch.where(eps >= 1.0 - (base - int(base)), s_hi, s_lo)  # [B, 1] int64
    # S distinct starts, uniform: the S lowest of i.i.d. uniform keys over the T_p - L + 1 starts
    keys = rng.uniform(batch_size, n_starts)  # [B, n_starts]
    rank = keys.argsort(dim=1).argsort(dim=1)  # [B, n_starts] rank of each start's key
    is_start = (rank < n_spans).to(torch.int32)  # [B, n_starts], S per row
    # step t is masked when a span starts in [t - L + 1, t]: a windowed sum of the starts
    counts = torch.zeros(batch_size, t_p + 1, dtype=torch.int32, device=keys.device)
    counts[:, 1 : n_starts + 1] = is_start.cumsum(1)
    counts[:, n_starts + 1 :] = counts[:, n_starts : n_starts + 1]
    t = torch.arange(t_p, device=keys.device)
    covered = counts[:, t + 1] - counts[:, (t + 1 - span).clamp_min(0)]  # [B, T_p]
    masked_t = covered > 0
    # ids_keep: K_t = T_p - S_hi * L unmasked steps per row (a row leaves at least that many),
    # chosen uniformly among its unmasked steps
    n_keep_t = t_p - s_hi * span
    keep_t, _, _ = rng.select_top(batch_size, t_p, n_keep_t, (~masked_t).to(torch.int32), 1)
    keep_t = ~keep_t  # select_top's mask is True where a step is not selected
    ids_keep, ids_restore = compact_keep(keep_t.repeat_interleave(f_p, dim=1), n_keep_t * f_p)
    mask = masked_t.repeat_interleave(f_p, dim=1)  # [B, N], token n = t * F_p + f
    return Mask(mask=mask, ids_keep=ids_keep, ids_restore=ids_restore, grid=grid)


def expected_overlap_coverage(
    n_time: int, ratio: float, span_length: int = 5, min_spans: int = 2
) -> float:
    """The expected masked fraction of fairseq's overlapping spans, in float64.

    A step t is unmasked when none of the S distinct starts (of ``n = T_p - L + 1``) falls in
    the ``w_t`` starts that cover it: probability ``C(n - w_t, S) / C(n, S)``; S is S_lo or
    S_hi with the probabilities of the rounding.
    """
    s_lo, s_hi = overlap_span_counts(n_time, ratio, span_length, min_spans)
    base = ratio * n_time / span_length
    p_hi = base - int(base)
    n = n_time - span_length + 1
    total = 0.0
    for count, prob in ((s_lo, 1.0 - p_hi), (s_hi, p_hi)):
        free = 0.0
        for t in range(n_time):
            w = min(t, n - 1) - max(0, t - span_length + 1) + 1  # starts covering step t
            free += math.comb(n - w, count) / math.comb(n, count)
        total += prob * (1.0 - free / n_time)
    return total
