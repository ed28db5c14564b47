"""fastspec.masking: mask samplers and token drop/restore."""

import json
import math

import pytest
import torch

from fastspec.masking import (
    Mask,
    gather_tokens,
    list_mask_kinds,
    masking_backend,
    masking_report,
    restore_tokens,
    sample_mask,
)

GRIDS = [(1, 1), (7, 5), (13, 8), (64, 8)]
RATIOS = [0.0, 0.3, 0.75, 0.9]


def _cases(*cases):
    """pytest.param per (grid, ratio) with a readable id such as T7-F5-r0.75."""
    return [pytest.param(g, r, id=f"T{g[0]}-F{g[1]}-r{r}") for g, r in cases]


# ---- registry and argument checks ---------------------------------------------------------------


def test_kinds_listed():
    assert "random" in list_mask_kinds()
    assert list_mask_kinds() == sorted(list_mask_kinds())


def test_unknown_kind_lists_known_ones():
    with pytest.raises(ValueError, match="random"):
        sample_mask("checkerboard", 2, (4, 8), 0.5)


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="span_length"):
        sample_mask("random", 2, (4, 8), 0.5, span_length=5)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_bad_ratio_names_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        sample_mask("random", 2, (4, 8), ratio)


@pytest.mark.parametrize("grid", [(0, 8), (4,), (4, -1), None])
def test_bad_grid(grid):
    with pytest.raises(ValueError, match="grid"):
        sample_mask("random", 2, grid, 0.5)


def test_seed_and_generator_are_exclusive():
    with pytest.raises(ValueError, match="seed"):
        sample_mask("random", 2, (4, 8), 0.5, seed=0, generator=torch.Generator())


@pytest.mark.parametrize("num_masks", [0, 1.5, True])
def test_bad_num_masks(num_masks):
    with pytest.raises(ValueError, match="num_masks"):
        sample_mask("random", 2, (4, 8), 0.5, num_masks=num_masks)


def test_masking_report_is_json_safe(monkeypatch):
    monkeypatch.setenv("FASTSPEC_MASKING", "torch")
    report = json.loads(json.dumps(masking_report()))
    assert report["sampling"]["cpu"] == "torch" and report["sampling"]["requested"] == "torch"
    assert set(report) == {"cuda_available", "sampling", "patch_embed"}


def test_masking_backend_env(monkeypatch):
    monkeypatch.delenv("FASTSPEC_MASKING", raising=False)
    assert masking_backend("cpu") == "torch" and masking_backend("meta") == "torch"
    monkeypatch.setenv("FASTSPEC_MASKING", "torch")
    assert masking_backend("cuda") == "torch"
    monkeypatch.setenv("FASTSPEC_MASKING", "fast")
    with pytest.raises(ValueError, match="FASTSPEC_MASKING='fast'.*auto, triton, torch"):
        masking_backend("cpu")


def test_mask_checks_shapes():
    with pytest.raises(ValueError, match="ids_restore"):
        Mask(
            mask=torch.zeros(2, 6, dtype=torch.bool),
            ids_keep=torch.zeros(2, 6, dtype=torch.long),
            ids_restore=torch.zeros(2, 5, dtype=torch.long),
            grid=(2, 3),
        )


# ---- structure of a mask ----------------------------------------------------------------------


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("grid", GRIDS, ids=[f"T{g[0]}-F{g[1]}" for g in GRIDS])
def test_exact_keep_count_and_consistent_indices(grid, ratio):
    b, n = 5, grid[0] * grid[1]
    k = int(n * (1 - ratio))  # Audio-MAE's len_keep
    m = sample_mask("random", b, grid, ratio, seed=1)

    assert m.grid == grid and (m.batch_size, m.num_tokens, m.n_keep) == (b, n, k)
    assert m.mask.dtype == torch.bool and m.mask.shape == (b, n)
    assert m.ids_keep.dtype == torch.int64 and m.ids_keep.shape == (b, k)
    assert m.ids_restore.dtype == torch.int64 and m.ids_restore.shape == (b, n)
    # exactly N - K masked in every row
    assert torch.equal(m.mask.sum(1), torch.full((b,), n - k))
    # ids_keep strictly ascending, and exactly the unmasked positions
    assert bool((m.ids_keep[:, 1:] > m.ids_keep[:, :-1]).all())
    assert not bool(torch.gather(m.mask, 1, m.ids_keep).any())
    # ids_restore is a permutation; slots < K hold kept tokens, at their ids_keep position
    assert torch.equal(m.ids_restore.sort(1).values, torch.arange(n).expand(b, n))
    assert torch.equal(m.ids_restore < k, ~m.mask)
    slot = m.ids_restore.clamp(max=max(k - 1, 0))
    if k:
        kept_at_slot = torch.gather(m.ids_keep, 1, slot)
        grid_index = torch.arange(n).expand(b, n)
        assert torch.equal(kept_at_slot[~m.mask], grid_index[~m.mask])


@pytest.mark.parametrize("grid,ratio", _cases(((7, 5), 0.75), ((13, 8), 0.3)))
def test_from_bool_matches_sampler_and_an_independent_sort(grid, ratio, index_tensors_by_sorting):
    m = sample_mask("random", 4, grid, ratio, seed=3)
    # both sides use compact_keep inside: check them against a stable sort, which does not
    ids_keep, ids_restore = index_tensors_by_sorting(~m.mask)
    assert torch.equal(m.ids_keep, ids_keep) and torch.equal(m.ids_restore, ids_restore)
    rebuilt = Mask.from_bool(m.mask, grid, m.n_keep)
    assert torch.equal(rebuilt.ids_keep, ids_keep)
    assert torch.equal(rebuilt.ids_restore, ids_restore)


def test_static_shapes_on_meta_device():
    # meta tensors carry no values: building a mask there proves there is no .item()/.cpu()
    # and that every shape follows from the arguments alone
    m = sample_mask("random", 3, (64, 8), 0.75, device="meta")
    assert m.ids_keep.device.type == "meta" and m.ids_keep.shape == (3, 128)
    assert m.ids_restore.shape == (3, 512) and m.mask.shape == (3, 512)


# ---- randomness ---------------------------------------------------------------------------------


def test_same_seed_same_mask_and_seeds_differ():
    a = sample_mask("random", 4, (13, 8), 0.75, seed=7)
    b = sample_mask("random", 4, (13, 8), 0.75, seed=7)
    c = sample_mask("random", 4, (13, 8), 0.75, seed=8)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_restore, b.ids_restore)
    assert not torch.equal(a.mask, c.mask)
    # rows of one batch are independent draws
    assert len({tuple(row.tolist()) for row in a.mask}) == 4


def test_generator_advances_and_matches_seed():
    g = torch.Generator().manual_seed(7)
    first = sample_mask("random", 4, (13, 8), 0.75, generator=g)
    second = sample_mask("random", 4, (13, 8), 0.75, generator=g)
    assert torch.equal(first.mask, sample_mask("random", 4, (13, 8), 0.75, seed=7).mask)
    assert not torch.equal(first.mask, second.mask)


def test_no_position_bias():
    grid, ratio = (12, 8), 0.75
    n = grid[0] * grid[1]
    k = int(n * (1 - ratio))
    p = (n - k) / n  # exact expected masked fraction at every position
    masks = torch.cat([sample_mask("random", 64, grid, ratio, seed=s).mask for s in range(100)])
    rows = masks.shape[0]
    freq = masks.double().mean(0)  # [N] masked fraction per position
    # each position is a Bernoulli(p) per row (exact K only makes positions slightly negatively
    # correlated, which shrinks the variance): 5 sigma bounds a false alarm over N positions
    # below 1e-4
    sigma = math.sqrt(p * (1 - p) / rows)
    assert (freq - p).abs().max().item() < 5 * sigma, (freq - p).abs().max().item()
    # no drift along time or frequency either (means over whole rows / columns)
    per_time = freq.view(grid).mean(1)
    per_freq = freq.view(grid).mean(0)
    assert (per_time - p).abs().max().item() < 5 * sigma / math.sqrt(grid[1])
    assert (per_freq - p).abs().max().item() < 5 * sigma / math.sqrt(grid[0])
    assert abs(freq.mean().item() - p) < 1e-12


# ---- token drop and restore -----------------------------------------------------------------


@pytest.mark.parametrize("grid,ratio", _cases(((7, 5), 0.75), ((13, 8), 0.0), ((1, 1), 0.0)))
def test_restore_undoes_gather(grid, ratio):
    b, d = 3, 6
    n = grid[0] * grid[1]
    x = torch.randn(b, n, d)
    mask_token = torch.randn(d)
    m = sample_mask("random", b, grid, ratio, seed=0)
    kept = gather_tokens(x, m.ids_keep)
    assert kept.shape == (b, m.n_keep, d)
    assert torch.equal(kept, x[torch.arange(b)[:, None], m.ids_keep])
    full = restore_tokens(kept, m.ids_restore, mask_token)
    assert torch.equal(full[~m.mask], x[~m.mask])
    assert torch.equal(full[m.mask], mask_token.expand(int(m.mask.sum()), d))


def test_gradients_flow_through_gather_and_restore():
    b, grid, d = 2, (7, 5), 4
    m = sample_mask("random", b, grid, 0.6, seed=0)
    x = torch.randn(b, 35, d, requires_grad=True)
    mask_token = torch.randn(d, requires_grad=True)
    weight = torch.randn(d)
    restored = restore_tokens(gather_tokens(x, m.ids_keep), m.ids_restore, mask_token)
    (restored * weight).sum().backward()
    expected = (~m.mask).unsqueeze(-1) * weight  # d/dx: weight where kept, 0 where dropped
    torch.testing.assert_close(x.grad, expected.expand_as(x).to(x.dtype))
    torch.testing.assert_close(mask_token.grad, m.mask.sum() * weight)


def test_restore_keeps_low_precision():
    m = sample_mask("random", 2, (4, 4), 0.5, seed=0)
    kept = torch.randn(2, m.n_keep, 8, dtype=torch.bfloat16)
    out = restore_tokens(kept, m.ids_restore, torch.randn(8))  # fp32 parameter, bf16 tokens
    assert out.dtype == torch.bfloat16


def test_token_op_shape_errors():
    with pytest.raises(ValueError, match="ids_keep"):
        gather_tokens(torch.randn(2, 5, 3), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="mask_token"):
        restore_tokens(torch.randn(2, 2, 3), torch.zeros(2, 5, dtype=torch.long), torch.zeros(4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mask_without_host_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        m = sample_mask("random", 8, (64, 8), 0.75, seed=0, device="cuda")
        x = torch.randn(8, 512, 16, device="cuda")
        restore_tokens(gather_tokens(x, m.ids_keep), m.ids_restore, torch.zeros(16, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert m.mask.is_cuda and m.ids_keep.is_cuda
