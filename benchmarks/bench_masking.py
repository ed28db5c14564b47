"""Mask sampling and token drop + embed: fastspec against the implementations recipes use today.

Run with ``pytest benchmarks/bench_masking.py`` (results land in benchmarks/results/, see
conftest.py). Every provider of a group gets identical inputs; ``extra_info`` records
``provider``, ``shape``, ``ms_per_batch`` (median), ``ms_per_batch_min``, the 1-minute load
average while it ran (shared CPU machines: with load above the core count, trust the minimum),
and a rate from the median: ``masks_per_s`` (mask rows drawn per second) for sampling,
``clips_per_s`` for drop + embed.

Sampling, batch 256 x 512 tokens (the MaskSpec grid 64 x 8 of a 10 s clip; time_span on ATST's
512 frame tokens; group on the 1024 x 128 spectrogram behind that grid):

- ``fastspec``: :func:`fastspec.masking.sample_mask` (torch generator on CPU, Triton Philox
  kernels on CUDA);
- ``argsort-noise``: MAE / Audio-MAE ``random_masking`` (noise, argsort, argsort, gather);
- ``row-loop``: the per-clip CPU loops of the data loaders / collate functions of EAT
  (data2vec 2.0 block mask with a per-row count fix-up), ASiT (GMML rectangles until coverage,
  one ``mask.sum()`` per rectangle) and ATST-Frame (wav2vec-style spans, NumPy per clip), and
  a plain per-row permutation for random masking. Written here from the published algorithms.

Drop + embed, 10 s ViT-B/16 clips (1024 x 128 mel, 512 patches, D 768), 75 % masked:

- ``fastspec``: :func:`fastspec.models.patch_embed.kept_patch_embedding` (the fused Triton kernel on CUDA;
  on CPU its torch path, gather then linear);
- ``gather-linear``: patchify all, gather the kept patches, linear, add gathered positions;
- ``embed-all-gather``: Audio-MAE's order: conv patch embedding of all N patches, add positions,
  then gather the kept tokens.

Modes: ``fwd`` and ``fwd+bwd`` (backward to weight and bias, as in training). The Triton
provider runs only on CUDA; tensor providers synchronise inside the timed call.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastspec.masking import sample_mask
from fastspec.models.patch_embed import kept_patch_embedding
from fastspec.models.pos_embed import sincos_2d

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BATCH = 256
GRID = (64, 8)  # 1024 frames x 128 mel in 16 x 16 patches
RATIO = 0.75


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _run(benchmark, fn, rounds):
    # one warm-up (Triton compile, allocator) then `rounds` timed calls
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def _record(benchmark, *, provider, kind, shape, rows=None, clips=None, mode=None):
    median, fastest = benchmark.stats.stats.median, benchmark.stats.stats.min
    info = {
        "provider": provider,
        "kind": kind,
        "shape": shape,
        "device": DEVICE,
        "ms_per_batch": median * 1e3,
        "ms_per_batch_min": fastest * 1e3,
        # the CPU machines are shared: a load above the core count inflates the median, and
        # the minimum is then the better estimate of the cost
        "load_avg_1min": os.getloadavg()[0],
    }
    if rows is not None:
        info["masks_per_s"] = rows / median
    if clips is not None:
        info["clips_per_s"] = clips / median
    if mode is not None:
        info["mode"] = mode
    benchmark.extra_info.update(info)


# ---- peers: sampling --------------------------------------------------------------------------


def audio_mae_random_masking(batch: int, n: int, ratio: float, device) -> tuple:
    """MAE / Audio-MAE ``random_masking``'s index work (without the token gather)."""
    n_keep = int(n * (1 - ratio))
    noise = torch.rand(batch, n, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(batch, n, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return mask, ids_keep, ids_restore


def row_loop_random(batch: int, n: int, ratio: float, rng: np.random.Generator, device):
    """A per-clip loop, as in collate functions that mask on the CPU."""
    n_keep = int(n * (1 - ratio))
    masks = np.ones((batch, n), dtype=bool)
    for b in range(batch):
        masks[b, np.sort(rng.permutation(n)[:n_keep])] = False
    return torch.from_numpy(masks).to(device)


def row_loop_inverse_block(batch: int, grid, ratio: float, block: int, device):
    """data2vec 2.0 / EAT ``compute_block_mask_2d(inverse_mask=True)``: block centres, clipped
    5 x 5 blocks of kept tokens, then a per-row multinomial fix-up to the exact count."""
    t_p, f_p = grid
    n = t_p * f_p
    keep_prob = 1 - ratio
    n_centres = int(n * keep_prob / block**2)
    keep = torch.zeros(batch, t_p, f_p)
    centres = torch.randint(0, n, (batch, n_centres))
    rows = torch.arange(batch)[:, None].expand(-1, n_centres)
    for i in range(block):
        for j in range(block):
            t = (centres // f_p + i - block // 2).clamp(0, t_p - 1)
            f = (centres % f_p + j - block // 2).clamp(0, f_p - 1)
            keep[rows, t, f] = 1
    keep = keep.view(batch, n)
    target = int(n * keep_prob)
    for b in range(batch):  # the per-row count fix-up (one host read per row)
        have = int(keep[b].sum())
        if have > target:
            keep[b, torch.multinomial(keep[b], have - target)] = 0
        elif have < target:
            keep[b, torch.multinomial(1 - keep[b], target - have)] = 1
    return keep.bool().logical_not().to(device)


def row_loop_group(batch: int, n_time: int, n_freq: int, ratio: float, rng):
    """ASiT's ``GMML_drop_rand_patches`` mask loop, one clip at a time (mask only)."""
    masks = torch.zeros(batch, n_time, n_freq)
    max_h, max_w = int(n_time * 0.3), int(n_freq * 0.3)
    for b in range(batch):
        target = rng.uniform(min(0.5, ratio), ratio) * n_time * n_freq
        mask = masks[b]
        while mask.sum() < target:  # a host read per rectangle
            r = rng.integers(0, n_time - 1)
            c = rng.integers(0, n_freq - 1)
            h = min(rng.integers(1, max_h), n_time - r)
            w = min(rng.integers(1, max_w), n_freq - c)
            mask[r : r + h, c : c + w] = 1
    return masks.bool()


def row_loop_time_span(batch: int, n: int, ratio: float, span: int, rng):
    """wav2vec 2.0 / HF ``compute_mask_indices`` as ATST-Frame uses it (min 2 spans)."""
    masks = np.zeros((batch, n), dtype=bool)
    for b in range(batch):
        n_spans = max(2, int(ratio * n / span + rng.random()))
        starts = rng.choice(n - span + 1, n_spans, replace=False)
        masks[b, (starts[:, None] + np.arange(span)).ravel()] = True
    return torch.from_numpy(masks)


# ---- sampling benchmarks ------------------------------------------------------------------------

SAMPLING = [
    pytest.param("random", "fastspec", id="random-fastspec"),
    pytest.param("random", "argsort-noise", id="random-argsort-noise"),
    pytest.param("random", "row-loop", id="random-row-loop"),
    pytest.param("inverse_block", "fastspec", id="inverse_block-fastspec"),
    pytest.param("inverse_block", "fastspec-x16", id="inverse_block-fastspec-16-per-clip"),
    pytest.param("inverse_block", "row-loop", id="inverse_block-row-loop"),
    pytest.param("time_span", "fastspec", id="time_span-fastspec"),
    pytest.param("time_span", "row-loop", id="time_span-row-loop"),
    pytest.param("group", "fastspec", id="group-fastspec"),
    pytest.param("group", "row-loop", id="group-row-loop"),
]


@pytest.mark.parametrize("kind, provider", SAMPLING)
def test_sampling(benchmark, kind, provider):
    ratio = {"inverse_block": 0.8, "time_span": 0.65, "group": 0.7}.get(kind, RATIO)
    grid = (512, 1) if kind == "time_span" else GRID
    n = grid[0] * grid[1]
    rng = np.random.default_rng(0)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    rows = BATCH * (16 if provider == "fastspec-x16" else 1)
    shape = f"B{BATCH}-N{n}" + ("-x16" if provider == "fastspec-x16" else "")

    if provider.startswith("fastspec"):
        num_masks = 16 if provider == "fastspec-x16" else 1

        def fn():
            m = sample_mask(
                kind, BATCH, grid, ratio, generator=gen, device=DEVICE, num_masks=num_masks
            )
            _sync()
            return m

    elif provider == "argsort-noise":

        def fn():
            out = audio_mae_random_masking(BATCH, n, ratio, DEVICE)
            _sync()
            return out

    elif kind == "random":

        def fn():
            out = row_loop_random(BATCH, n, ratio, rng, DEVICE)
            _sync()
            return out

    elif kind == "inverse_block":

        def fn():
            out = row_loop_inverse_block(BATCH, grid, ratio, 5, DEVICE)
            _sync()
            return out

    elif kind == "time_span":

        def fn():
            out = row_loop_time_span(BATCH, n, ratio, 5, rng).to(DEVICE)
            _sync()
            return out

    else:

        def fn():
            out = row_loop_group(BATCH, GRID[0] * 16, GRID[1] * 16, ratio, rng).to(DEVICE)
            _sync()
            return out

    _run(benchmark, fn, rounds=2 if kind == "group" else 9)
    _record(benchmark, provider=provider, kind=kind, shape=shape, rows=rows)


# ---- drop + embed -------------------------------------------------------------------------------

EMBED_BATCH = 256 if CUDA else 32
EMBED = ["fastspec", "gather-linear", "embed-all-gather"]


@pytest.fixture(scope="module")
def embed_inputs():
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(EMBED_BATCH, 1024, 128, generator=g).to(DEVICE)
    linear = torch.nn.Linear(256, 768).to(DEVICE)
    pos = sincos_2d(GRID, 768, device=DEVICE)
    m = sample_mask("random", EMBED_BATCH, GRID, RATIO, seed=0, device=DEVICE)
    return mel, linear, pos, m.ids_keep


def _gather_linear(mel, linear, pos, ids_keep):
    b = mel.shape[0]
    patches = mel.reshape(b, 64, 16, 8, 16).permute(0, 1, 3, 2, 4).reshape(b, 512, 256)
    kept = torch.gather(patches, 1, ids_keep[..., None].expand(-1, -1, 256))
    return linear(kept) + pos[ids_keep]


def _embed_all_gather(mel, linear, pos, ids_keep):
    # Audio-MAE: Conv2d(1, D, 16, stride 16) over everything, positions, then drop
    w = linear.weight.view(768, 1, 16, 16)
    x = F.conv2d(mel[:, None], w, linear.bias, stride=16).flatten(2).transpose(1, 2) + pos
    return torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, 768))


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", EMBED)
def test_drop_and_embed(benchmark, embed_inputs, provider, mode):
    mel, linear, pos, ids_keep = embed_inputs
    fn_embed = {
        "fastspec": lambda: kept_patch_embedding(mel.device)(
            mel, ids_keep, linear.weight, linear.bias, pos, (16, 16)
        ),
        "gather-linear": lambda: _gather_linear(mel, linear, pos, ids_keep),
        "embed-all-gather": lambda: _embed_all_gather(mel, linear, pos, ids_keep),
    }[provider]

    def fn():
        if mode == "fwd":
            with torch.no_grad():
                out = fn_embed()
        else:
            linear.zero_grad(set_to_none=True)
            out = fn_embed()
            out.backward(torch.ones_like(out))
        _sync()
        return out

    # the providers compute the same tokens
    with torch.no_grad():
        torch.testing.assert_close(
            fn_embed(), _gather_linear(mel, linear, pos, ids_keep), rtol=1e-4, atol=1e-4
        )
    _run(benchmark, fn, rounds=5)
    shape = f"B{EMBED_BATCH}-T1024-F128-D768-K{ids_keep.shape[1]}"
    _record(
        benchmark, provider=provider, kind="drop+embed", shape=shape, clips=EMBED_BATCH, mode=mode
    )
