"""Fused drop + embed and the restore scatter (Triton) against float64 torch references.

On a CPU-only machine the kernels run under the Triton interpreter (tests/conftest.py sets
``TRITON_INTERPRET=1`` before anything imports Triton); shapes are tiny because interpreted
launches are slow. Tolerance (STYLE.md): the kernel's error against the float64 reference is at
most twice that of plain PyTorch computing the same thing in the same dtype, plus a floor of a
few float32 ulps of the output's scale (both round once; which element rounds worse is chance).
"""

from __future__ import annotations

import pytest
import torch
from fastspec.kernels.masking_reference import embed_kept_patches_ref, restore_tokens_ref

from fastspec import _logging
from fastspec.masking import (
    masking_report,
    patch_embed_backend,
    restore_tokens,
    sample_mask,
)
from fastspec.models import MAEDecoder, ViTEncoder

triton = pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _kernels():
    from fastspec.kernels import masking_restore, patch_embed

    return patch_embed, masking_restore


def _interpreted() -> bool:
    try:
        return _kernels()[0].INTERPRETED
    except Exception:
        return False


pytestmark = pytest.mark.skipif(
    not CUDA and not _interpreted(),
    reason="Triton kernels need CUDA, or TRITON_INTERPRET=1 set before import "
    "(tests/conftest.py sets it on CPU-only machines)",
)

# (B, T, F, patch, D, ratio or None = keep all)
EMBED_CASES = [
    pytest.param(3, 96, 64, (16, 16), 40, 0.7, id="B3-T96-F64-p16x16-D40-K7"),
    pytest.param(2, 21, 20, (3, 4), 24, 0.6, id="B2-T21-F20-p3x4-D24-K14"),
    pytest.param(1, 12, 8, (4, 4), 16, None, id="B1-T12-F8-p4x4-D16-all"),
    pytest.param(2, 36, 64, (4, 64), 48, 0.65, id="B2-T36-F64-p4x64-D48-K3"),
]


def _embed_inputs(b, t, f, patch, d, ratio, *, seed=0):
    """float64 mel, ids_keep (or None), weight, bias, pos."""
    g = torch.Generator().manual_seed(seed)
    pt, pf = patch
    grid = (t // pt, f // pf)
    n = grid[0] * grid[1]
    ids = None if ratio is None else sample_mask("random", b, grid, ratio, seed=seed).ids_keep
    mel = torch.randn(b, t, f, generator=g, dtype=torch.float64)
    weight = torch.randn(d, pt * pf, generator=g, dtype=torch.float64) / (pt * pf) ** 0.5
    bias = torch.randn(d, generator=g, dtype=torch.float64)
    pos = torch.randn(n, d, generator=g, dtype=torch.float64)
    return mel, ids, weight, bias, pos


def _err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return (got.double() - ref).abs().max().item()


def _assert_close_as_torch(got, torch_same_dtype, ref, dtype):
    """Kernel error <= 2 x torch's error in the same dtype + 4 ulps of the output's scale."""
    floor = 4 * torch.finfo(dtype).eps * ref.abs().max().item()
    err, torch_err = _err(got, ref), _err(torch_same_dtype, ref)
    assert err <= 2 * torch_err + floor, (err, torch_err, floor)


@pytest.mark.parametrize("b, t, f, patch, d, ratio", EMBED_CASES)
def test_embed_forward_backward_fp32(b, t, f, patch, d, ratio):
    patch_embed, _ = _kernels()
    mel, ids_cpu, weight, bias, pos = _embed_inputs(b, t, f, patch, d, ratio)
    # the float64 reference runs on the CPU, with the CPU ids; the kernels get device copies
    ids = ids_cpu.to(DEVICE) if ids_cpu is not None else None
    leaves64 = [x.clone().requires_grad_() for x in (mel, weight, bias)]
    ref = embed_kept_patches_ref(leaves64[0], ids_cpu, leaves64[1], leaves64[2], pos, patch)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref.backward(grad)

    def run(fn):
        leaves = [x.detach().float().to(DEVICE).requires_grad_() for x in (mel, weight, bias)]
        out = fn(leaves[0], ids, leaves[1], leaves[2], pos.float().to(DEVICE), patch)
        out.backward(grad.float().to(DEVICE))
        return out, [x.grad for x in leaves]

    out, grads = run(patch_embed.embed_kept_patches)
    out_t, grads_t = run(embed_kept_patches_ref)
    assert out.shape == ref.shape and out.dtype == torch.float32
    _assert_close_as_torch(out.cpu(), out_t.cpu(), ref, torch.float32)
    for name, g_k, g_t, leaf in zip(("mel", "weight", "bias"), grads, grads_t, leaves64):
        assert g_k is not None, name
        _assert_close_as_torch(g_k.cpu(), g_t.cpu(), leaf.grad, torch.float32)
    if ids is not None:
        # dropped patches are never read: their bins get exactly zero gradient
        assert (grads[0].cpu()[leaves64[0].grad == 0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_embed_low_precision_parameters(dtype):
    patch_embed, _ = _kernels()
    mel, ids, weight, bias, pos = _embed_inputs(3, 24, 20, (4, 4), 40, 0.5, seed=3)
    ref = embed_kept_patches_ref(mel, ids, weight, bias, pos, (4, 4))
    args = [x.to(dtype).to(DEVICE) for x in (mel, weight, bias, pos)]
    ids = ids.to(DEVICE)
    out = patch_embed.embed_kept_patches(args[0], ids, args[1], args[2], args[3], (4, 4))
    out_t = embed_kept_patches_ref(args[0], ids, args[1], args[2], args[3], (4, 4))
    assert out.dtype == dtype
    _assert_close_as_torch(out.cpu(), out_t.cpu(), ref, dtype)


def test_embed_under_autocast_matches_torch_autocast():
    patch_embed, _ = _kernels()
    mel, ids, weight, bias, pos = _embed_inputs(2, 24, 20, (4, 4), 32, 0.5, seed=4)
    ref = embed_kept_patches_ref(mel, ids, weight, bias, pos, (4, 4))
    args = [x.float().to(DEVICE) for x in (mel, weight, bias, pos)]
    ids = ids.to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = patch_embed.embed_kept_patches(args[0], ids, args[1], args[2], args[3], (4, 4))
        out_t = embed_kept_patches_ref(args[0], ids, args[1], args[2], args[3], (4, 4))
    # fp32 positions promote the sum, as the reference's bf16 linear + fp32 pos does
    assert out.dtype == out_t.dtype == torch.float32
    _assert_close_as_torch(out.cpu(), out_t.cpu(), ref, torch.bfloat16)


def test_embed_reads_strided_mel_and_skips_mel_grad():
    patch_embed, _ = _kernels()
    mel, ids, weight, bias, pos = _embed_inputs(2, 24, 20, (4, 4), 16, 0.5, seed=5)
    # a [B, F, T] buffer viewed as [B, T, F]: the kernel must follow the strides
    strided = mel.float().transpose(1, 2).contiguous().transpose(1, 2).to(DEVICE)
    assert not strided.is_contiguous()
    w = weight.float().to(DEVICE).requires_grad_()
    out = patch_embed.embed_kept_patches(
        strided, ids.to(DEVICE), w, None, pos.float().to(DEVICE), (4, 4)
    )
    ref = embed_kept_patches_ref(mel, ids, weight, None, pos, (4, 4))
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert w.grad is not None and strided.grad is None


def test_embed_rejects_bad_shapes():
    patch_embed, _ = _kernels()
    mel, ids, weight, bias, pos = (
        x.to(DEVICE) for x in _embed_inputs(2, 24, 20, (4, 4), 16, 0.5)
    )  # on the kernels' device, so only the shape checks can fail
    with pytest.raises(ValueError, match="pos"):
        patch_embed.embed_kept_patches(
            mel.float(), ids, weight.float(), None, pos[:3].float(), (4, 4)
        )
    with pytest.raises(ValueError, match="weight"):
        patch_embed.embed_kept_patches(
            mel.float(), ids, weight[:, :5].float(), None, pos.float(), (4, 4)
        )
    with pytest.raises(ValueError, match="no gradient"):
        patch_embed.embed_kept_patches(
            mel.float(), ids, weight.float(), None, pos.float().requires_grad_(), (4, 4)
        )


def test_embed_op_registration():
    # schema, fake (meta) implementation and autograd registration of the library op
    patch_embed, _ = _kernels()
    mel, ids, weight, bias, pos = _embed_inputs(2, 16, 8, (4, 4), 16, 0.5, seed=6)
    args = (
        mel.float().to(DEVICE),
        ids.to(DEVICE),
        weight.float().to(DEVICE).requires_grad_(),
        bias.float().to(DEVICE).requires_grad_(),
        pos.float().to(DEVICE),
        4,
        4,
        torch.float32,
    )
    torch.library.opcheck(
        patch_embed._embed_op,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    with torch.device("meta"):
        meta = patch_embed._embed_op(*(a.to("meta") if torch.is_tensor(a) else a for a in args))
    assert meta.shape == (2, ids.shape[1], 16)


# ---- restore -------------------------------------------------------------------------------------

RESTORE_CASES = [
    pytest.param(3, (7, 5), 0.75, 24, True, id="B3-N35-K8-D24-pos"),
    pytest.param(2, (4, 4), 0.5, 40, False, id="B2-N16-K8-D40"),
    pytest.param(2, (3, 3), 0.0, 8, True, id="B2-N9-K9-D8-pos"),
    pytest.param(1, (5, 1), 0.9, 12, True, id="B1-N5-K0-D12-pos"),
]


@pytest.mark.parametrize("b, grid, ratio, d, with_pos", RESTORE_CASES)
def test_restore_forward_backward(b, grid, ratio, d, with_pos):
    _, masking_restore = _kernels()
    g = torch.Generator().manual_seed(2)
    m = sample_mask("random", b, grid, ratio, seed=1)
    n = grid[0] * grid[1]
    x64 = torch.randn(b, m.n_keep, d, generator=g, dtype=torch.float64, requires_grad=True)
    tok64 = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(n, d, generator=g, dtype=torch.float64) if with_pos else None
    ref = restore_tokens_ref(x64, m.ids_restore, tok64, pos)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(grad)

    x = x64.detach().float().to(DEVICE).requires_grad_()
    tok = tok64.detach().float().to(DEVICE).requires_grad_()
    pos32 = pos.float().to(DEVICE) if with_pos else None
    out = masking_restore.restore_tokens(x, m.ids_restore.to(DEVICE), tok, pos32)
    out.backward(grad.float().to(DEVICE))
    scale = 4 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(out.double().cpu(), ref, rtol=scale, atol=scale * 8)
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(tok.grad.double().cpu(), tok64.grad, rtol=1e-5, atol=1e-5)


def test_restore_bf16_tokens_match_reference_exactly():
    # copies and one rounding: the kernel must reproduce the reference bit for bit
    _, masking_restore = _kernels()
    m = sample_mask("random", 2, (4, 6), 0.5, seed=2)
    x = torch.randn(2, m.n_keep, 16).bfloat16().to(DEVICE)
    tok = torch.randn(16).to(DEVICE)  # fp32 parameter, rounded to bf16 like the reference
    pos = torch.randn(24, 16).to(DEVICE)
    ids = m.ids_restore.to(DEVICE)
    for p in (None, pos):
        out = masking_restore.restore_tokens(x, ids, tok, p)
        expected = restore_tokens_ref(x, ids, tok, p)
        assert out.dtype == expected.dtype
        assert torch.equal(out, expected)


def test_restore_op_registration():
    _, masking_restore = _kernels()
    m = sample_mask("random", 2, (3, 4), 0.5, seed=0)
    args = (
        torch.randn(2, m.n_keep, 16, device=DEVICE, requires_grad=True),
        m.ids_restore.to(DEVICE),
        torch.randn(16, device=DEVICE, requires_grad=True),
        torch.randn(12, 16, device=DEVICE),
    )
    torch.library.opcheck(
        masking_restore._restore_op,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


# ---- dispatch and the models -------------------------------------------------------------------


def test_backend_chosen_in_one_place_and_forced_by_env(monkeypatch):
    monkeypatch.delenv("FASTSPEC_PATCH_EMBED", raising=False)
    assert patch_embed_backend("cuda") == "triton"
    assert patch_embed_backend("cpu") == "torch"
    assert patch_embed_backend("meta") == "torch"
    monkeypatch.setenv("FASTSPEC_PATCH_EMBED", "torch")
    assert patch_embed_backend("cuda") == "torch"
    monkeypatch.setenv("FASTSPEC_PATCH_EMBED", "triton")
    assert patch_embed_backend("cpu") == ("torch" if CUDA else "triton")  # interpreted on CPU
    report = masking_report()
    assert report["patch_embed"]["requested"] == "triton"
    assert report["patch_embed"]["triton_kernels"] == "importable"


def test_forced_triton_that_cannot_run_falls_back_with_notice(monkeypatch):
    patch_embed, masking_restore = _kernels()
    monkeypatch.setenv("FASTSPEC_PATCH_EMBED", "triton")
    # what a CPU-only process without TRITON_INTERPRET=1 sees
    monkeypatch.setattr(patch_embed, "INTERPRETED", False)
    monkeypatch.setattr(masking_restore, "INTERPRETED", False)
    monkeypatch.setattr(_logging, "_seen", {})
    assert patch_embed_backend("cpu") == "torch"
    assert "TRITON_INTERPRET" in _logging.notices()["FASTSPEC_PATCH_EMBED.cpu"]


def _tiny_models():
    torch.manual_seed(0)
    enc = ViTEncoder(32, 1, 4, patch_size=(4, 4), n_mels=20).to(DEVICE)
    dec = MAEDecoder(32, 16, 1, 2, patch_dim=16).to(DEVICE)
    return enc, dec


def test_vit_and_decoder_fused_path_matches_torch_path(monkeypatch):
    enc, dec = _tiny_models()
    mel = torch.randn(2, 24, 20, device=DEVICE)
    m = sample_mask("random", 2, enc.grid(24), 0.6, seed=0, device=DEVICE)

    def step(backend):
        monkeypatch.setenv("FASTSPEC_PATCH_EMBED", backend)
        enc.zero_grad()
        dec.zero_grad()
        pred = dec(enc(mel, m.ids_keep), m.ids_restore, m.grid)
        pred.square().mean().backward()
        grads = [p.grad.clone() for p in (enc.patch_embed.weight, enc.patch_embed.bias)]
        return pred.detach(), grads + [dec.mask_token.grad.clone()]

    pred_t, grads_t = step("torch")
    pred_k, grads_k = step("triton")
    torch.testing.assert_close(pred_k, pred_t, rtol=1e-4, atol=1e-5)
    for g_k, g_t in zip(grads_k, grads_t):
        torch.testing.assert_close(g_k, g_t, rtol=1e-4, atol=1e-6)


def test_restore_dispatch_keeps_shape_checks():
    with pytest.raises(ValueError, match="mask_token"):
        restore_tokens(torch.randn(2, 2, 3), torch.zeros(2, 5, dtype=torch.long), torch.zeros(4))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_masked_step_fused_without_host_sync(monkeypatch):
    monkeypatch.delenv("FASTSPEC_PATCH_EMBED", raising=False)
    monkeypatch.delenv("FASTSPEC_MASKING", raising=False)
    enc, dec = _tiny_models()
    mel = torch.randn(4, 48, 20, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    enc(mel)  # fills the position cache and compiles the kernels
    m = sample_mask("random", 4, enc.grid(48), 0.75, generator=g, device="cuda")
    dec(enc(mel, m.ids_keep), m.ids_restore, m.grid).float().mean().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m = sample_mask("random", 4, enc.grid(48), 0.75, generator=g, device="cuda")
            dec(enc(mel, m.ids_keep), m.ids_restore, m.grid).float().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
