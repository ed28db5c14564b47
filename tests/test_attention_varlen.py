"""Variable-length attention through the packing code, against masked attention in float64.

The varlen kernels (flash-attn's ``flash_attn_varlen_func``, torch's ``varlen_attn``) run on CUDA
only; on CPU the packing and unpacking around them are checked with
``varlen_attention_reference`` standing in for the kernel (it leaves rows past ``cu[-1]`` NaN, as
undefined as a kernel leaves them), against an independent masked softmax. Where CUDA is present
the real kernels are checked the same way.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastspec.backends import decide
from fastspec.models.attention import (
    any_padding,
    attention,
    pack_plan,
    varlen_attention,
    varlen_attention_reference,
)

CUDA = torch.cuda.is_available()


def _masked_reference(q, k, v, key_padding_mask):
    """softmax(q k^T / sqrt(Dh)) v with padded keys at -inf, float64 (independent of the code)."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _padding(lengths, n, scattered=False, seed=0):
    """[B, N] True = padding: a valid prefix per row, or (scattered) valid tokens anywhere, as
    after a token drop."""
    if not scattered:
        return torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        row = torch.ones(n, dtype=torch.bool)
        row[torch.randperm(n, generator=g)[:length]] = False
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("scattered", [False, True], ids=["prefix", "scattered"])
@pytest.mark.parametrize("lengths, n", [([7, 3, 1], 7), ([13, 13], 13), ([5, 11, 2, 9], 11)])
def test_packing_matches_masked_attention(lengths, n, scattered):
    b, h, dh = len(lengths), 2, 8
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, n, dh, generator=g, requires_grad=True) for _ in range(3))
    kpm = _padding(lengths, n, scattered)
    out = varlen_attention(q, k, v, kpm, varlen_attention_reference)
    ref = _masked_reference(q, k, v, kpm)
    valid = ~kpm[:, None, :, None]  # [B, 1, N, 1]
    torch.testing.assert_close(out.double() * valid, ref * valid, rtol=1e-5, atol=1e-6)
    # padded queries get exactly zero, and nothing undefined leaks out of the kernel's tail
    assert (out.masked_select(~valid.expand_as(out)) == 0).all()

    grad = torch.randn(out.shape, generator=g) * valid  # the loss reads valid tokens only
    grads = torch.autograd.grad(out, (q, k, v), grad)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad.double())
    for name, got, want in zip("qkv", grads, ref_grads):
        assert torch.isfinite(got).all(), name  # the NaN tail sends no gradient back
        torch.testing.assert_close(
            got, want, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"d{name}: {m}"
        )


def test_pack_plan_layout():
    kpm = _padding([2, 3], 4)  # row 0: 2 valid, row 1: 3 valid
    plan = pack_plan(kpm)
    assert plan.cu_seqlens.tolist() == [0, 2, 5] and plan.cu_seqlens.dtype == torch.int32
    # valid tokens in order, row by row, then the padding
    assert plan.dest.tolist() == [0, 1, 5, 6, 2, 3, 4, 7]
    assert plan.src[plan.dest].tolist() == list(range(8))
    assert plan.valid.tolist() == [True] * 5 + [False] * 3


def test_any_padding_is_decided_on_the_host():
    assert not any_padding(None, 10)
    assert not any_padding(torch.tensor([10, 10]), 10)
    assert any_padding(torch.tensor([10, 9]), 10)
    meta = torch.tensor([10, 10], device="meta")  # not on the host: reading it would sync
    assert any_padding(meta, 10)


def test_decisions_for_padded_and_dense_batches(monkeypatch):
    monkeypatch.delenv("FASTSPEC_ATTENTION", raising=False)
    # off CUDA: SDPA, masked when padded, without a word
    cpu = decide("attention", "cpu", padded=True)
    assert cpu.backend == "sdpa" and not cpu.fallback
    # on CUDA in bf16 a padded batch takes a varlen kernel when one exists
    cuda = decide("attention", "cuda", dtype=torch.bfloat16, head_dim=64, padded=True)
    assert cuda.backend in ("flash_varlen", "torch_varlen") or cuda.fallback
    dense = decide("attention", "cuda", dtype=torch.bfloat16, head_dim=64, padded=False)
    assert dense.backend in ("flash", "sdpa")
    fp32 = decide("attention", "cuda", dtype=torch.float32, head_dim=64, padded=True)
    assert fp32.backend == "sdpa" and fp32.fallback  # announced: masked SDPA is the slow path
    monkeypatch.setenv("FASTSPEC_ATTENTION", "sdpa")
    assert decide("attention", "cuda", dtype=torch.bfloat16, padded=True).backend == "sdpa"


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="varlen kernels need CUDA")
def test_cuda_padded_attention_uses_varlen_and_matches(monkeypatch):
    monkeypatch.delenv("FASTSPEC_ATTENTION", raising=False)
    b, h, n, dh = 4, 4, 96, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(b, h, n, dh, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3)
    )
    kpm = _padding([96, 40, 7, 77], n).cuda()
    out = attention(q, k, v, kpm)
    ref = _masked_reference(q, k, v, kpm)
    valid = ~kpm[:, None, :, None]
    err = ((out.double() - ref) * valid).abs().max().item()
    assert err < 2e-2, err


# ---- recipes: no mask unless a clip is padded -----------------------------------------------


def _record_masks(monkeypatch):
    """Every key_padding_mask the transformer blocks hand to attention, in call order."""
    from fastspec.models import layers

    seen = []

    def recording(q, k, v, key_padding_mask=None):
        seen.append(key_padding_mask)
        return attention(q, k, v, key_padding_mask)

    monkeypatch.setattr(layers, "attention", recording)
    return seen


def _tiny_recipe(name):
    from fastspec.models import create_model
    from fastspec.recipes import build_recipe

    torch.manual_seed(0)
    if name == "maskspec":
        enc = create_model("vit_mini_patch16", n_mels=32, embed_dim=32, depth=1, num_heads=2)
        return build_recipe(name, enc, decoder_dim=16, decoder_depth=1, decoder_heads=2), 32
    enc = create_model(
        "vit_mini_patch16", n_mels=64, frame_tokens=4, embed_dim=32, depth=1, num_heads=2
    )
    heads = {"proj_hidden": 16, "proj_dim": 8, "memory_size": 4}
    if name == "asit":
        return build_recipe(
            name,
            create_model("vit_mini_patch16", n_mels=32, embed_dim=32, depth=1, num_heads=2),
            crop_frames=32,
        ), 32
    return build_recipe(name, enc, crop_frames=48, **heads), 64


@pytest.mark.parametrize("name", ["maskspec", "asit", "atst-clip", "atst-frame"])
def test_recipes_attend_without_a_mask_unless_a_clip_is_padded(name, monkeypatch):
    recipe, n_mels = _tiny_recipe(name)
    seen = _record_masks(monkeypatch)
    mel = torch.randn(2, 64, n_mels)
    g = torch.Generator().manual_seed(0)
    recipe(mel, generator=g, frame_lengths=None)  # nothing padded: the loop passes None
    assert seen and all(m is None for m in seen), name
    if name.startswith("atst"):  # ATST crops are padded when a clip is short: then a mask
        seen.clear()
        recipe(mel, generator=g, frame_lengths=torch.tensor([64, 20]))
        assert any(m is not None for m in seen)
