"""Per-parameter gradient clipping (DINO's / ASiT's ``utils.clip_gradients``, ``optim.clip_mode=
per_param``) against a float64 NumPy re-implementation, on plain and on FSDP2-sharded gradients."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.tensor import DTensor

from fastspec.train.clipping import clip_grad_per_param_, clip_gradients_

CLIP = 3.0


def reference_clip(grads: list[np.ndarray | None], clip: float) -> list[np.ndarray | None]:
    """ASiT's utils.clip_gradients in float64: ``coef = clip / (||g||_2 + 1e-6)``, and
    ``g *= coef`` where ``coef < 1``; a parameter without a gradient is skipped."""
    out = []
    for g in grads:
        if g is None:
            out.append(None)
            continue
        g = g.astype(np.float64)
        coef = clip / (np.sqrt(np.sum(g * g)) + 1e-6)
        out.append(g * coef if coef < 1 else g)
    return out


def params_with_grads(dtype) -> list[nn.Parameter]:
    """Gradients of norm ~0.03 to ~40 (some under the clip, some over), one exactly at zero,
    one missing (a frozen parameter, a teacher's)."""
    g = torch.Generator().manual_seed(0)
    shapes_scales = [((7, 5), 4.0), ((5,), 0.01), ((3, 4, 2), 1.0), ((9,), 0.0), ((11, 3), 0.3)]
    params = []
    for shape, scale in shapes_scales:
        p = nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
        p.grad = scale * torch.randn(shape, generator=g, dtype=dtype)
        params.append(p)
    params.append(nn.Parameter(torch.randn(4, dtype=dtype)))  # grad None
    return params


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_per_param_clipping_matches_the_float64_reference(dtype, rtol):
    params = params_with_grads(dtype)
    before = [None if p.grad is None else p.grad.double().numpy().copy() for p in params]
    norms = clip_grad_per_param_(params, CLIP)
    expected = reference_clip(before, CLIP)
    clipped = 0
    for p, want, old in zip(params, expected, before):
        if want is None:
            assert p.grad is None
            continue
        np.testing.assert_allclose(p.grad.double().numpy(), want, rtol=rtol, atol=1e-30)
        assert np.sqrt((want**2).sum()) <= CLIP + 1e-9
        clipped += int(not np.array_equal(want, old))
    assert 0 < clipped < len(expected) - 1  # some clipped, some left as they were
    present = [g for g in before if g is not None]
    np.testing.assert_allclose(norms.double().numpy(), [np.sqrt((g**2).sum()) for g in present],
                               rtol=1e-6)  # fmt: skip


def test_norm_mode_clips_the_global_norm_and_a_bad_mode_is_refused():
    params = params_with_grads(torch.float64)
    grads = [p.grad.numpy().copy() for p in params if p.grad is not None]
    total = np.sqrt(sum((g**2).sum() for g in grads))
    clip_gradients_(params, CLIP, "norm")
    scale = CLIP / (total + 1e-6)  # clip_grad_norm_'s own epsilon
    got = [p.grad.numpy() for p in params if p.grad is not None]
    for g, want in zip(got, grads):
        np.testing.assert_allclose(g, want * scale, rtol=1e-12)
    with pytest.raises(ValueError, match="clip_mode"):
        clip_gradients_(params, CLIP, "value")


def _sharded_worker(rank: int, world: int, store_path: str) -> None:
    """FSDP2 on ``world`` gloo ranks: per-parameter clipping of the sharded gradients must give
    each rank its shard of what the unsharded reference gives."""
    from torch.distributed.fsdp import fully_shard

    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 9), nn.GELU(), nn.Linear(9, 5))
        plain = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        for layer in (model[0], model[2]):
            fully_shard(layer)
        fully_shard(model)
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1)) * 20
        (model(x) ** 2).sum().backward()  # the same batch on every rank: the mean is the same
        clip_grad_per_param_(model.parameters(), CLIP)
        # the reference: the same loss on unsharded copies, clipped in float64
        w1, b1, w2, b2 = plain
        y = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(
            x, w1, b1)), w2, b2)  # fmt: skip
        (y**2).sum().backward()
        expected = reference_clip([p.grad.double().numpy() for p in plain], CLIP)
        assert any(np.sqrt((e**2).sum()) < np.sqrt((p.grad.double().numpy() ** 2).sum())
                   for e, p in zip(expected, plain))  # fmt: skip
        for p, want in zip(model.parameters(), expected):
            assert isinstance(p.grad, DTensor)  # each rank holds a shard
            full = p.grad.full_tensor().double().numpy()
            np.testing.assert_allclose(full, want, rtol=2e-5, atol=1e-7)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")
def test_per_param_clipping_of_fsdp2_shards_uses_each_full_norm(tmp_path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)


def test_clip_mode_is_a_checked_setting_and_asits_paper_setting():
    from fastspec.train import apply_override, default_config
    from fastspec.train.config import ConfigError

    cfg = default_config("maskspec")
    assert cfg.optim.clip_mode == "norm"  # the global norm unless a preset says otherwise
    apply_override(cfg, "optim.clip_mode=per_param")
    assert cfg.optim.clip_mode == "per_param"
    with pytest.raises(ConfigError, match="optim.clip_mode"):
        apply_override(cfg, "optim.clip_mode=value")
    paper = default_config("asit", demo=False).optim
    assert (paper.clip_mode, paper.grad_clip) == ("per_param", 3.0)  # main_ASiT.py --clip_grad
