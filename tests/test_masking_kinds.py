"""The structured mask kinds (group, inverse_block, time_span, time_freq) on the torch backend:
structure, exact counts, the statistics each paper's recipe promises, and determinism.

Random masking (structure, no position bias) is in test_masking.py; the Triton kernels behind
the same samplers are in test_masking_triton.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from fastspec.kernels.masking_reference import rect_first_cover_ref

from fastspec import _logging
from fastspec.masking import MaskRng, apply_group_mask, list_mask_kinds, sample_mask
from fastspec.masking import group as group_module
from fastspec.masking.time_span import span_counts

DROPPING_KINDS = ["inverse_block", "random", "time_freq", "time_span"]


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("FASTSPEC_MASKING", "torch")


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
    edges = padded.diff()
    return (torch.nonzero(edges == -1)[:, 0] - torch.nonzero(edges == 1)[:, 0]).tolist()


def _check_dropping_structure(m, n_keep, index_tensors):
    b, n = m.mask.shape
    assert m.n_keep == n_keep
    assert torch.equal(m.mask.sum(1), torch.full((b,), n - n_keep))
    ids_keep, ids_restore = index_tensors(~m.mask)  # independent of the samplers' compact_keep
    assert torch.equal(m.ids_keep, ids_keep) and torch.equal(m.ids_restore, ids_restore)


# ---- every kind ---------------------------------------------------------------------------------


def test_all_kinds_registered():
    assert list_mask_kinds() == ["group", "inverse_block", "random", "time_freq", "time_span"]


@pytest.mark.parametrize("kind", DROPPING_KINDS)
@pytest.mark.parametrize(
    "grid, ratio",
    [((64, 8), 0.8), ((13, 5), 0.5), ((25, 1), 0.65), ((3, 3), 0.0)],
    ids=["T64-F8-r0.8", "T13-F5-r0.5", "T25-F1-r0.65", "T3-F3-r0.0"],
)
def test_exact_keep_count(kind, grid, ratio, index_tensors_by_sorting):
    opts = {"span_length": 1} if kind == "time_span" and grid == (3, 3) else {}
    m = sample_mask(kind, 16, grid, ratio, seed=0, **opts)
    n = grid[0] * grid[1]
    if kind == "time_span":
        masked, _ = span_counts(grid[0], ratio, opts.get("span_length", 5), 2)
        n_keep = (grid[0] - masked) * grid[1]
    else:
        n_keep = int(n * (1 - ratio))
    _check_dropping_structure(m, n_keep, index_tensors_by_sorting)


@pytest.mark.parametrize("kind", sorted(list_mask_kinds()))
def test_deterministic_per_seed_and_masks_per_clip(kind):
    opts = {"patch_size": 4} if kind == "group" else {}
    a = sample_mask(kind, 3, (16, 6), 0.6, seed=7, num_masks=4, **opts)
    b = sample_mask(kind, 3, (16, 6), 0.6, seed=7, num_masks=4, **opts)
    c = sample_mask(kind, 3, (16, 6), 0.6, seed=8, num_masks=4, **opts)
    assert a.batch_size == 12
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_restore, b.ids_restore)
    assert not torch.equal(a.mask, c.mask)
    # the 4 masks of a clip are different draws
    assert len({tuple(row.tolist()) for row in a.mask[:4]}) == 4


@pytest.mark.parametrize("kind", sorted(list_mask_kinds()))
def test_static_shapes_on_meta_device(kind):
    # meta tensors hold no values: any .item(), .tolist(), .cpu() or data-dependent shape on
    # the sampling path would raise here
    opts = {"patch_size": 4} if kind == "group" else {}
    m = sample_mask(kind, 3, (20, 8), 0.7, device="meta", num_masks=2, **opts)
    assert m.mask.device.type == "meta" and m.mask.shape == (6, 160)
    assert m.ids_keep.shape[0] == 6 and m.ids_restore.shape == (6, 160)
    if kind == "group":
        mel = torch.empty(3, 80, 32, device="meta")
        corrupted, _ = apply_group_mask(mel, m.spec_mask, "mix")
        assert corrupted.shape == (6, 80, 32)


def test_unknown_kind_option_is_named():
    with pytest.raises(TypeError, match="block_size"):
        sample_mask("time_span", 2, (20, 1), 0.5, block_size=3)


# ---- time_span (ATST-Frame) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "t_p, ratio, span",
    [(250, 0.65, 5), (40, 0.5, 5), (23, 0.65, 3), (12, 0.1, 5)],
    ids=["T250-r0.65-L5", "T40-r0.5-L5", "T23-r0.65-L3", "T12-r0.1-L5"],
)
def test_time_span_lengths_and_counts(t_p, ratio, span):
    m = sample_mask("time_span", 64, (t_p, 2), ratio, seed=1, span_length=span)
    masked, n_spans = span_counts(t_p, ratio, span, 2)
    assert n_spans >= 2 and masked >= 2 * span
    masked_t = m.mask.view(64, t_p, 2)
    # whole time steps: both frequency tokens of a step agree
    assert torch.equal(masked_t[..., 0], masked_t[..., 1])
    runs_per_row = [_runs(row) for row in masked_t[..., 0]]
    for runs in runs_per_row:
        assert sum(runs) == masked
        # spans never overlap and may touch, so every masked run is at least one span long
        assert min(runs) >= span
        # S spans make at most S runs (fewer where spans touch)
        assert 1 <= len(runs) <= n_spans
    # uniform placement: spans touch where their slots among the T' = T_p - M + S left after
    # shrinking each span to one slot are adjacent; of the T' - 1 adjacent slot pairs each is
    # chosen with probability S (S - 1) / (T' (T' - 1)), so E[runs] = S - S (S - 1) / T'
    slots = t_p - masked + n_spans
    expected = n_spans - n_spans * (n_spans - 1) / slots
    counts = torch.tensor([len(r) for r in runs_per_row], dtype=torch.float64)
    assert abs(counts.mean().item() - expected) < 5 * counts.std().item() / 8 + 0.05


def test_time_span_minimum_two_spans_even_at_ratio_zero():
    m = sample_mask("time_span", 32, (30, 1), 0.0, seed=2)
    assert torch.equal(m.mask.sum(1), torch.full((32,), 10))
    with pytest.raises(ValueError, match="spans"):
        sample_mask("time_span", 2, (9, 1), 0.5)  # 2 spans of 5 do not fit in 9 steps


def test_time_span_interior_is_unbiased():
    # away from the ends, every time step is masked at the asked rate M / T_p; the ends are
    # masked less often (as in wav2vec 2.0 / ATST span masking, where spans must fit)
    t_p, ratio, rows = 60, 0.5, 8192
    m = sample_mask("time_span", rows, (t_p, 1), ratio, seed=3)
    masked, _ = span_counts(t_p, ratio, 5, 2)
    p = masked / t_p
    freq = m.mask.double().mean(0)
    sigma = math.sqrt(p * (1 - p) / rows)
    # spans are 5 long: far from both ends (> 4 spans of margin), the rate is flat
    interior = freq[20:40]
    assert (interior - p).abs().max().item() < 5 * sigma * math.sqrt(5)
    assert freq[0].item() < p


# ---- inverse_block (EAT) ------------------------------------------------------------------------


def test_inverse_block_keeps_blocks(index_tensors_by_sorting):
    grid, ratio, rows = (64, 8), 0.8, 64
    m = sample_mask("inverse_block", rows, grid, ratio, seed=4, block_size=5)
    _check_dropping_structure(m, int(512 * 0.2), index_tensors_by_sorting)
    keep = (~m.mask).view(rows, *grid).float()
    # kept tokens cluster: count kept 4-neighbours per kept token, against a random mask
    padded = torch.nn.functional.pad(keep, (1, 1, 1, 1))
    neighbours = (
        padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    )
    block_score = (neighbours * keep).sum() / keep.sum()
    rand = (~sample_mask("random", rows, grid, ratio, seed=4).mask).view(rows, *grid).float()
    padded = torch.nn.functional.pad(rand, (1, 1, 1, 1))
    rand_nb = (
        padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    )
    rand_score = (rand_nb * rand).sum() / rand.sum()
    # 5x5 blocks: interior tokens have 4 kept neighbours; random 20 % masks about 0.8
    assert block_score > 2.0 > 1.0 > rand_score


def test_inverse_block_with_one_block_short_falls_back_to_random_fill(index_tensors_by_sorting):
    # max_blocks=1 cannot reach K = 50 with a 3x3 block: the rest is drawn uniformly, exactly
    m = sample_mask("inverse_block", 8, (10, 10), 0.5, seed=5, block_size=3, max_blocks=1)
    _check_dropping_structure(m, 50, index_tensors_by_sorting)


# ---- time_freq (SpecAugment stripes) ---------------------------------------------------------------


def test_time_freq_masks_whole_stripes_but_one(index_tensors_by_sorting):
    grid, ratio, rows = (32, 8), 0.4, 64
    max_tw, max_fw = 4, 2
    m = sample_mask(
        "time_freq", rows, grid, ratio, seed=6, max_time_width=max_tw, max_freq_width=max_fw
    )
    _check_dropping_structure(m, int(256 * 0.6), index_tensors_by_sorting)
    masked = m.mask.view(rows, *grid)
    full_time = masked.all(2, keepdim=True)  # [B, T, 1] time steps masked across frequency
    full_freq = masked.all(1, keepdim=True)  # [B, 1, F] bins masked across time
    loose = masked & ~full_time & ~full_freq
    # only the last stripe may be cut short: at most one stripe's worth of tokens is loose
    assert loose.sum((1, 2)).max().item() <= max(max_tw * grid[1], max_fw * grid[0])
    assert full_time.any() and full_freq.any()


def test_time_freq_on_full_frequency_patches_draws_time_stripes_only(index_tensors_by_sorting):
    m = sample_mask("time_freq", 16, (50, 1), 0.3, seed=7)
    _check_dropping_structure(m, 35, index_tensors_by_sorting)


# ---- group (ASiT's GMML) ------------------------------------------------------------------------


def test_group_matches_asit_sequential_loop():
    # the same draws, replayed through ASiT's `while covered < target: add a rectangle`
    rows, grid, patch, ratio, n_rects = 6, (6, 4), 4, 0.7, 60
    t, f = grid[0] * patch, grid[1] * patch
    m = sample_mask("group", rows, grid, ratio, seed=9, patch_size=patch, max_rects=n_rects)
    rng = MaskRng(torch.device("cpu"), seed=9)
    u = rng.uniform(rows, 1)
    t0, t1 = group_module._draw_rects(rng, rows, n_rects, t, 0.3, 1)
    f0, f1 = group_module._draw_rects(rng, rows, n_rects, f, 0.3, 1)
    target = (0.5 + 0.2 * u[:, 0]) * t * f
    for b in range(rows):
        loop_mask = torch.zeros(t, f, dtype=torch.bool)
        i = 0
        while loop_mask.sum() < target[b] and i < n_rects:
            loop_mask[t0[b, i] : t1[b, i], f0[b, i] : f1[b, i]] = True
            i += 1
        assert torch.equal(m.spec_mask[b], loop_mask), b


@pytest.mark.parametrize("r", [1, 62, 63, 130], ids=lambda r: f"B3-T40-F24-R{r}")
def test_rect_first_cover_reference_paints_in_order(r):
    # the bit-set rasteriser against painting rectangles last to first, one slice at a time;
    # R crosses the 62-rectangle words
    g = torch.Generator().manual_seed(r)
    t0, f0 = torch.randint(0, 40, (3, r), generator=g), torch.randint(0, 24, (3, r), generator=g)
    t1 = (t0 + torch.randint(1, 12, (3, r), generator=g)).clamp(max=40)
    f1 = (f0 + torch.randint(1, 8, (3, r), generator=g)).clamp(max=24)
    rects = torch.stack([t0, t1, f0, f1], dim=2)
    painted = torch.full((3, 40, 24), r, dtype=torch.int16)
    for b in range(3):
        for i in reversed(range(r)):
            painted[b, t0[b, i] : t1[b, i], f0[b, i] : f1[b, i]] = i
    assert torch.equal(rect_first_cover_ref(rects, 40, 24), painted)


@pytest.mark.parametrize(
    "grid, patch, ratio, min_ratio",
    [((37, 8), 16, 0.7, 0.5), ((8, 8), 4, 0.9, 0.5), ((5, 3), 4, 0.3, 0.5)],
    ids=["T592-F128-r0.7", "T32-F32-r0.9", "T20-F12-r0.3"],
)
def test_group_coverage_in_band(grid, patch, ratio, min_ratio):
    rows = 48 if grid[0] > 10 else 256
    m = sample_mask("group", rows, grid, ratio, seed=10, patch_size=patch)
    cover = m.spec_mask.double().mean((1, 2))
    low = min(min_ratio, ratio)
    # at least the row's target (>= the band's bottom); at most the band's top plus the last
    # rectangle, whose sides are at most 0.3 of the spectrogram's
    assert cover.min().item() >= low
    assert cover.max().item() <= ratio + 0.3 * 0.3
    # targets are spread over the band, not stuck at one end
    if ratio > low:
        assert cover.std().item() > (ratio - low) / 6


def test_group_patch_level_fields(index_tensors_by_sorting):
    rows, grid, patch, ratio = 32, (8, 4), 4, 0.7
    m = sample_mask("group", rows, grid, ratio, seed=11, patch_size=patch, threshold=0.5)
    per_patch = m.spec_mask.view(rows, 8, 4, 4, 4).float().mean((2, 4)).view(rows, 32)
    torch.testing.assert_close(m.coverage, per_patch)
    assert torch.equal(m.mask, m.coverage > 0.5)
    # rectangles are not patch-aligned: some patches are partly covered
    assert bool(((m.coverage > 0) & (m.coverage < 1)).any())
    # ids_keep: the K least-covered patches, K from the ratio
    n_keep = int(32 * (1 - ratio))
    assert m.n_keep == n_keep
    kept = torch.zeros(rows, 32, dtype=torch.bool).scatter_(1, m.ids_keep, True)
    assert bool(
        (m.coverage.masked_fill(~kept, -1).amax(1) <= m.coverage.masked_fill(kept, 2).amin(1)).all()
    )
    ids_keep, ids_restore = index_tensors_by_sorting(kept)
    assert torch.equal(m.ids_keep, ids_keep) and torch.equal(m.ids_restore, ids_restore)


def test_group_aligned_rectangles_cover_whole_patches():
    m = sample_mask("group", 16, (6, 4), 0.7, seed=12, patch_size=4, align=4)
    assert bool(((m.coverage == 0) | (m.coverage == 1)).all())


def test_group_fills():
    rows, grid, patch = 4, (4, 3), 4
    m = sample_mask("group", rows, grid, 0.7, seed=13, patch_size=patch)
    mel = torch.randn(rows, 16, 12, dtype=torch.float64)
    spec = m.spec_mask
    for fill in ("zeros", "noise", "paste", "mix"):
        out, returned = apply_group_mask(mel, spec, fill, seed=1)
        assert returned is spec and out.dtype == mel.dtype and out.shape == mel.shape
        assert torch.equal(out[~spec], mel[~spec]), fill  # unmasked bins untouched
    zeros, _ = apply_group_mask(mel, spec, "zeros")
    assert bool((zeros[spec] == 0).all())
    pasted, _ = apply_group_mask(mel, spec, "paste", seed=2)
    for b in range(rows):
        sources = [c for c in range(rows) if torch.equal(pasted[b][spec[b]], mel[c][spec[b]])]
        assert sources and b not in sources, b  # another clip of the batch, never its own
    noisy, _ = apply_group_mask(mel, spec, "noise", seed=3, noise_mean=1.0, noise_std=2.0)
    values = noisy[spec]
    n = values.numel()
    assert abs(values.mean().item() - 1.0) < 5 * 2.0 / math.sqrt(n)
    assert abs(values.std().item() - 2.0) < 0.2
    assert torch.equal(
        noisy, apply_group_mask(mel, spec, "noise", seed=3, noise_mean=1.0, noise_std=2.0)[0]
    )


def test_group_fill_with_several_masks_per_clip():
    m = sample_mask("group", 2, (4, 3), 0.6, seed=14, patch_size=4, num_masks=3)
    mel = torch.randn(2, 16, 12)
    out, _ = apply_group_mask(mel, m.spec_mask, "paste", seed=0)
    assert out.shape == (6, 16, 12)
    # row 3 * c + j corrupts clip c; pasted bins come from the other clip
    for row in range(6):
        clip, spec = row // 3, m.spec_mask[row]
        assert torch.equal(out[row][~spec], mel[clip][~spec])
        assert torch.equal(out[row][spec], mel[1 - clip][spec])


def test_group_paste_with_one_clip_falls_back_to_noise_with_notice(monkeypatch):
    monkeypatch.setattr(_logging, "_seen", {})
    m = sample_mask("group", 1, (4, 3), 0.6, seed=15, patch_size=4)
    mel = torch.randn(1, 16, 12)
    out, _ = apply_group_mask(mel, m.spec_mask, "paste", seed=0)
    assert "masking.group.paste1" in _logging.notices()
    assert not torch.equal(out[m.spec_mask], mel[m.spec_mask])


def test_group_fill_checks_shapes():
    with pytest.raises(ValueError, match="spec_mask"):
        apply_group_mask(torch.randn(2, 16, 12), torch.zeros(2, 16, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="fill"):
        apply_group_mask(torch.randn(2, 16, 12), torch.zeros(2, 16, 12, dtype=torch.bool), "blur")
