"""Triton mask-sampling kernels (Philox RNG, exact top-K select, rectangle rasteriser).

On a CPU-only machine they run under the Triton interpreter (tests/conftest.py sets
``TRITON_INTERPRET=1``) at small shapes; many rows go into one launch, since the interpreter's
cost is per operation, not per element. The CUDA tests (no host sync, determinism on the GPU)
skip here.
"""

from __future__ import annotations

import math

import pytest
import torch
from fastspec.kernels.masking_reference import compact_keep, rect_first_cover_ref

from fastspec.masking import MaskRng, apply_group_mask, list_mask_kinds, sample_mask

triton = pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _kernels():
    from fastspec.kernels import masking

    return masking


def _interpreted() -> bool:
    try:
        return _kernels().INTERPRETED
    except Exception:
        return False


pytestmark = pytest.mark.skipif(
    not CUDA and not _interpreted(),
    reason="Triton kernels need CUDA, or TRITON_INTERPRET=1 set before import "
    "(tests/conftest.py sets it on CPU-only machines)",
)


def _seed(value: int) -> torch.Tensor:
    return torch.full((1,), value, dtype=torch.int64, device=DEVICE)


def _check_structure(mask, ids_keep, ids_restore, n_keep):
    """Exact K per row, ids_keep ascending = unmasked positions, ids_restore consistent."""
    b, n = mask.shape
    assert torch.equal(mask.sum(1), torch.full((b,), n - n_keep, device=mask.device))
    assert ids_keep.shape == (b, n_keep)
    if n_keep > 1:
        assert bool((ids_keep[:, 1:] > ids_keep[:, :-1]).all())
    expected_keep, expected_restore = compact_keep(~mask, n_keep)
    assert torch.equal(ids_keep, expected_keep)
    assert torch.equal(ids_restore, expected_restore)


SELECT_CASES = [
    pytest.param(5, 24, 6, id="B5-N24-K6"),
    pytest.param(3, 7, 0, id="B3-N7-K0"),
    pytest.param(3, 7, 7, id="B3-N7-K7"),
    pytest.param(4, 300, 77, id="B4-N300-K77"),
    pytest.param(1, 1, 1, id="B1-N1-K1"),
]


@pytest.mark.parametrize("b, n, k", SELECT_CASES)
def test_select_top_exact_count_and_indices(b, n, k):
    mask, ids_keep, ids_restore = _kernels().select_top(_seed(11), b, n, k, stream=0)
    assert mask.dtype == torch.bool and ids_keep.dtype == ids_restore.dtype == torch.int64
    _check_structure(mask, ids_keep, ids_restore, k)


def test_select_top_respects_priority_and_draws_ties_at_random():
    b, n, k = 64, 40, 13
    g = torch.Generator().manual_seed(0)
    priority = torch.randint(0, 4, (b, n), generator=g).to(DEVICE)
    mask, ids_keep, ids_restore = _kernels().select_top(_seed(3), b, n, k, 0, priority, 2)
    _check_structure(mask, ids_keep, ids_restore, k)
    kept_min = torch.where(mask, 99, priority).amin(1)
    dropped_max = torch.where(mask, priority, -1).amax(1)
    assert bool((kept_min >= dropped_max).all())
    # the boundary priority level is split at random, not by grid position: over rows, kept
    # tokens at that level are spread over the whole row
    boundary = (priority == kept_min[:, None]) & ~mask
    positions = torch.nonzero(boundary)[:, 1].float()
    assert positions.min() < n / 4 and positions.max() > 3 * n / 4


def test_select_top_is_deterministic_per_seed_and_stream():
    select = _kernels().select_top
    a = select(_seed(5), 8, 50, 12, stream=0)[0]
    assert torch.equal(a, select(_seed(5), 8, 50, 12, stream=0)[0])
    assert not torch.equal(a, select(_seed(5), 8, 50, 12, stream=1)[0])
    assert not torch.equal(a, select(_seed(6), 8, 50, 12, stream=0)[0])
    # rows are independent draws
    assert len({tuple(row.tolist()) for row in a.cpu()}) == 8


def test_select_top_has_no_position_bias():
    # one launch of 4096 rows: every position is kept with probability K / N exactly
    rows, n, k = 4096, 24, 6
    mask, _, _ = _kernels().select_top(_seed(123), rows, n, k, stream=0)
    p = k / n
    freq = (~mask).double().mean(0).cpu()
    # each position: a Bernoulli(p) per row (exact K only correlates positions negatively,
    # which shrinks the variance); 5 sigma keeps a false alarm over 24 positions below 1e-5
    sigma = math.sqrt(p * (1 - p) / rows)
    assert (freq - p).abs().max().item() < 5 * sigma


def test_philox_uniform_range_moments_and_streams():
    uniform = _kernels().philox_uniform
    u = uniform(_seed(9), (256, 64), stream=0)
    assert u.dtype == torch.float32 and u.shape == (256, 64)
    assert bool((u >= 0).all()) and bool((u < 1).all())
    n = u.numel()
    # mean 1/2 and variance 1/12 within 5 standard errors
    assert abs(u.double().mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.double().var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    assert torch.equal(u, uniform(_seed(9), (256, 64), stream=0))
    other = uniform(_seed(9), (256, 64), stream=1)
    assert not torch.equal(u, other)
    # independent streams: correlation near 0
    corr = torch.corrcoef(torch.stack([u.flatten(), other.flatten()]).double())[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(n)


def test_seed_from_a_generator_stays_on_device_and_reproduces():
    g = torch.Generator(device=DEVICE).manual_seed(42)
    first = MaskRng(DEVICE, generator=g, backend="triton")
    second = MaskRng(
        DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(42), backend="triton"
    )
    assert first.seed.device.type == torch.device(DEVICE).type
    assert torch.equal(first.uniform(100), second.uniform(100))
    # the generator advanced: the next call draws a different key
    assert not torch.equal(first.seed, MaskRng(DEVICE, generator=g, backend="triton").seed)


@pytest.mark.parametrize(
    "b, t, f, r",
    [pytest.param(2, 37, 19, 9, id="B2-T37-F19-R9"), pytest.param(1, 64, 8, 1, id="B1-T64-F8-R1")],
)
def test_rect_first_cover_matches_reference(b, t, f, r):
    g = torch.Generator().manual_seed(b * t + r)
    t0 = torch.randint(0, t, (b, r), generator=g)
    f0 = torch.randint(0, f, (b, r), generator=g)
    t1 = (t0 + torch.randint(1, t // 2, (b, r), generator=g)).clamp(max=t)
    f1 = (f0 + torch.randint(1, max(2, f // 2), (b, r), generator=g)).clamp(max=f)
    rects = torch.stack([t0, t1, f0, f1], dim=2)
    got = _kernels().rect_first_cover(rects.to(DEVICE), t, f)
    assert got.dtype == torch.int16
    assert torch.equal(got.cpu(), rect_first_cover_ref(rects, t, f))


# ---- the samplers on the Triton backend ----------------------------------------------------------

KIND_OPTIONS = {
    "random": {},
    "inverse_block": {"block_size": 3},
    "time_span": {"span_length": 2},
    "time_freq": {},
    "group": {"patch_size": (4, 4)},
}


@pytest.mark.parametrize("kind", sorted(KIND_OPTIONS))
def test_every_kind_on_triton_backend(kind, monkeypatch):
    assert set(KIND_OPTIONS) == set(list_mask_kinds())
    monkeypatch.setenv("FASTSPEC_MASKING", "triton")
    grid, ratio, opts = (9, 4), 0.6, KIND_OPTIONS[kind]
    m = sample_mask(kind, 3, grid, ratio, seed=4, device=DEVICE, num_masks=2, **opts)
    assert m.batch_size == 6 and m.mask.device.type == torch.device(DEVICE).type
    if kind == "group":
        assert m.spec_mask.shape == (6, 36, 16)
        cover = m.spec_mask.float().mean((1, 2))
        assert bool((cover >= 0.5).all()) and bool((cover <= 0.6 + 0.09 + 1e-6).all())
    else:
        _check_structure(m.mask, m.ids_keep, m.ids_restore, m.n_keep)
    again = sample_mask(kind, 3, grid, ratio, seed=4, device=DEVICE, num_masks=2, **opts)
    assert torch.equal(m.mask, again.mask) and torch.equal(m.ids_keep, again.ids_keep)


def test_group_fill_on_triton_backend(monkeypatch):
    monkeypatch.setenv("FASTSPEC_MASKING", "triton")
    m = sample_mask("group", 2, (4, 3), 0.7, seed=0, device=DEVICE, patch_size=(4, 4))
    mel = torch.randn(2, 16, 12, device=DEVICE)
    noisy, _ = apply_group_mask(mel, m.spec_mask, "mix", seed=1)
    assert torch.equal(noisy[~m.spec_mask], mel[~m.spec_mask])
    assert not torch.equal(noisy[m.spec_mask], mel[m.spec_mask])


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kind", sorted(KIND_OPTIONS))
def test_cuda_sampling_without_host_sync(kind, monkeypatch):
    monkeypatch.delenv("FASTSPEC_MASKING", raising=False)
    g = torch.Generator(device="cuda").manual_seed(0)
    opts = KIND_OPTIONS[kind]
    sample_mask(kind, 8, (64, 8), 0.75, generator=g, device="cuda", **opts)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        m = sample_mask(kind, 8, (64, 8), 0.75, generator=g, device="cuda", num_masks=4, **opts)
        if kind == "group":
            apply_group_mask(
                torch.randn(8, 256, 32, device="cuda"), m.spec_mask, "mix", generator=g
            )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert m.mask.is_cuda and m.ids_keep.is_cuda and m.batch_size == 32
