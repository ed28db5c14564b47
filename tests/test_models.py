"""fastspec.models: registry, ViT encoder, MAE decoder, positions and attention dispatch."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from fastspec.kernels.masking_reference import gather_patches_ref

from fastspec import _logging
from fastspec.masking import gather_tokens, sample_mask
from fastspec.models import (
    MAEDecoder,
    ViTEncoder,
    attention_backend,
    attention_report,
    cached_sincos_2d,
    create_model,
    list_models,
    pad_frames,
    register_model,
    registry,
    sincos_2d,
)
from fastspec.models.attention import attention

VIT_NAMES = [
    "vit_mini_patch16",
    "vit_tiny_patch16",
    "vit_small_patch16",
    "vit_base_patch16",
    "vit_large_patch16",
]


def _small_encoder(**kwargs):
    """A 2-block encoder on a tiny odd grid, fast enough for exact equivalence tests."""
    cfg = dict(embed_dim=32, depth=2, num_heads=4, patch_size=(4, 4), n_mels=20)
    return ViTEncoder(**{**cfg, **kwargs})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- registry ---------------------------------------------------------------------------------


def test_registry_names_and_docs():
    assert set(VIT_NAMES) <= set(list_models())
    assert list_models() == sorted(list_models())
    for name in VIT_NAMES:
        model = create_model(name, device="meta")
        assert model.model_name == name
        assert isinstance(model, ViTEncoder)
        # each factory documents its layout
        doc = registry._MODELS[name].__doc__
        assert f"D {model.embed_dim}" in doc and f"{model.depth} blocks" in doc


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match="vit_base_patch16"):
        create_model("vit_huge_patch3")


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match="n_mel"):
        create_model("vit_mini_patch16", n_mel=64)


def test_duplicate_registration_rejected():
    def vit_mini_patch16(**kwargs):
        return None

    with pytest.raises(ValueError, match="already registered"):
        register_model(vit_mini_patch16)


def test_overrides_and_arch_config_round_trip():
    # ATST-Clip-like layout: 64 mel, full-frequency patches of 4 frames
    model = create_model("vit_mini_patch16", n_mels=64, patch_size=(4, 64), depth=2)
    assert model.patch_size == (4, 64) and model.n_mels == 64 and model.depth == 2
    assert model.grid(40) == (10, 1)
    cfg = json.loads(json.dumps(model.arch_config()))  # must be JSON-safe
    rebuilt = ViTEncoder(**cfg)
    assert rebuilt.arch_config() == model.arch_config()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())


def test_decoder_arch_config_round_trip():
    dec = MAEDecoder(128, 64, 2, 4, patch_dim=48)
    cfg = json.loads(json.dumps(dec.arch_config()))
    assert MAEDecoder(**cfg).arch_config() == dec.arch_config()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(embed_dim=30, num_heads=3), "multiple of 4"),
        (dict(embed_dim=32, num_heads=3), "num_heads"),
        (dict(n_mels=22), "n_mels"),
        (dict(patch_size=(4, 0)), "patch_size"),
    ],
    ids=["dim-not-x4", "heads", "n_mels", "patch_size"],
)
def test_bad_architecture_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _small_encoder(**kwargs)


# ---- meta device and parameter counts ---------------------------------------------------------


@pytest.mark.parametrize("name", VIT_NAMES)
def test_meta_construction(name):
    model = create_model(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())


def test_vit_base_parameter_count():
    # AST / Audio-MAE ViT-B/16 without a learned position table: 85.25 M
    n_params = sum(p.numel() for p in create_model("vit_base_patch16", device="meta").parameters())
    assert 85e6 <= n_params <= 86e6, n_params


def test_meta_model_materialises():
    model = create_model("vit_mini_patch16", device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    out = model(torch.randn(1, 32, 128))
    assert out.shape == (1, 1 + 16, 128) and torch.isfinite(out).all()


def test_mae_init():
    model = _small_encoder()
    block = model.blocks[0]
    assert torch.equal(block.norm1.weight, torch.ones(32))
    assert torch.equal(block.attn.qkv.bias, torch.zeros(96))
    # xavier-uniform bound for the fused QKV weight [3D, D]
    bound = math.sqrt(6 / (32 + 96))
    assert block.attn.qkv.weight.abs().max() <= bound
    assert 0.005 < model.cls_token.std() < 0.05


# ---- patches and positions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "patch_size,n_mels,n_frames",
    [((16, 16), 128, 16 * 7), ((3, 4), 20, 21), ((4, 64), 64, 36), ((1, 1), 5, 3)],
    ids=["16x16-T7", "3x4-T7-F5", "4x64-T9-F1", "1x1-T3-F5"],
)
def test_patchify_layout_and_round_trip(patch_size, n_mels, n_frames):
    model = ViTEncoder(8, 1, 2, patch_size=patch_size, n_mels=n_mels)
    pt, pf = patch_size
    mel = torch.randn(2, n_frames, n_mels)
    patches = model.patchify(mel)
    t_p, f_p = model.grid(n_frames)
    assert patches.shape == (2, t_p * f_p, pt * pf)
    # token n = t * F_p + f holds the patch at (t, f), flattened time-major within the patch
    t, f = t_p - 1, f_p // 2
    expected = mel[:, t * pt : (t + 1) * pt, f * pf : (f + 1) * pf].reshape(2, -1)
    assert torch.equal(patches[:, t * f_p + f], expected)
    assert torch.equal(model.unpatchify(patches, (t_p, f_p)), mel)


def test_patch_embed_equals_conv():
    # the linear patch embedding is the pt x pf stride-(pt, pf) conv of AST / Audio-MAE
    model = _small_encoder(patch_size=(3, 4))
    mel = torch.randn(2, 21, 20)
    w = model.patch_embed.weight.view(32, 1, 3, 4)
    conv = F.conv2d(mel[:, None], w, model.patch_embed.bias, stride=(3, 4))  # [B, D, T_p, F_p]
    linear = model.patch_embed(model.patchify(mel))  # [B, N, D]
    torch.testing.assert_close(linear, conv.flatten(2).transpose(1, 2))


def test_gathered_patches_equal_patchify_then_gather():
    model = _small_encoder(patch_size=(3, 4))
    mel = torch.randn(3, 21, 20)
    m = sample_mask("random", 3, model.grid(21), 0.6, seed=0)
    assert torch.equal(
        gather_patches_ref(mel, m.ids_keep, model.patch_size),
        gather_tokens(model.patchify(mel), m.ids_keep),
    )


@pytest.mark.parametrize("bad_shape", [(2, 30, 128), (2, 32, 64), (32, 128)])
def test_patchify_rejects_bad_shape(bad_shape):
    model = create_model("vit_mini_patch16", depth=1)
    with pytest.raises(ValueError, match=r"\(" + ", ".join(map(str, bad_shape)) + r"\)"):
        model.patchify(torch.randn(bad_shape))


@pytest.mark.parametrize(
    "n_frames,min_frames,expected", [(16, 0, 16), (17, 0, 32), (5, 16, 16), (0, 16, 16)]
)
def test_pad_frames(n_frames, min_frames, expected):
    mel = torch.randn(2, n_frames, 8)
    padded = pad_frames(mel, 16, min_frames=min_frames)
    assert padded.shape == (2, expected, 8)
    assert torch.equal(padded[:, :n_frames], mel)
    assert not padded[:, n_frames:].any()
    assert (padded is mel) == (expected == n_frames)


@pytest.mark.parametrize("t_patches", [1, 3, 64])
def test_positions(t_patches):
    dim, f_p = 32, 5
    table = cached_sincos_2d((t_patches, f_p), dim, torch.device("cpu"), torch.float32)
    assert table.shape == (t_patches * f_p, dim) and table.dtype == torch.float32
    assert cached_sincos_2d((t_patches, f_p), dim, torch.device("cpu"), torch.float32) is table
    torch.testing.assert_close(table, sincos_2d((t_patches, f_p), dim))  # deterministic
    grid = table.view(t_patches, f_p, dim)
    # first half depends only on the time index, second half only on the frequency index
    assert torch.equal(grid[:, :1, : dim // 2].expand(-1, f_p, -1), grid[..., : dim // 2])
    assert torch.equal(grid[:1, :, dim // 2 :].expand(t_patches, -1, -1), grid[..., dim // 2 :])
    # every token gets a distinct position
    distance = torch.cdist(table.double(), table.double())
    assert (distance + torch.eye(len(table), dtype=torch.float64) * 1e3).min() > 1e-3
    # absolute positions: a longer clip starts with the same table
    longer = sincos_2d((t_patches + 2, f_p), dim)
    torch.testing.assert_close(longer[: t_patches * f_p], table)
    # time index 0 is sin(0) = 0, cos(0) = 1 (MAE's 1-D layout)
    assert torch.equal(table[0, : dim // 4], torch.zeros(dim // 4))
    assert torch.equal(table[0, dim // 4 : dim // 2], torch.ones(dim // 4))


def test_positions_follow_dtype_and_inference_mode():
    with torch.inference_mode():
        table = cached_sincos_2d((3, 7), 16, torch.device("cpu"), torch.bfloat16)
    assert table.dtype == torch.bfloat16 and not table.is_inference()


# ---- encoder forward ----------------------------------------------------------------------------


def test_forward_shapes():
    model = create_model("vit_mini_patch16", depth=2)
    mel = torch.randn(3, 16 * 5, 128)
    grid = model.grid(mel.shape[1])
    n = grid[0] * grid[1]
    assert model(mel).shape == (3, 1 + n, 128)
    m = sample_mask("random", 3, grid, 0.75, seed=0)
    assert model(mel, m.ids_keep).shape == (3, 1 + m.n_keep, 128)
    lengths = torch.tensor([5, 2, 1])
    assert model(mel, token_lengths=lengths).shape == (3, 1 + n, 128)
    assert model(mel, m.ids_keep, lengths).shape == (3, 1 + m.n_keep, 128)


def test_keeping_every_token_equals_no_mask():
    model = _small_encoder()
    mel = torch.randn(2, 28, 20)
    m = sample_mask("random", 2, model.grid(28), 0.0, seed=0)
    torch.testing.assert_close(model(mel, m.ids_keep), model(mel))


def test_token_lengths_match_clips_run_alone():
    model = _small_encoder()
    t_p, f_p = 6, 5
    mel = torch.randn(3, t_p * 4, 20)
    lengths = torch.tensor([6, 4, 1])
    out = model(mel, token_lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        alone = model(mel[b : b + 1, : length * 4])
        valid = 1 + length * f_p  # class token + time-major prefix of valid tokens
        torch.testing.assert_close(out[b : b + 1, :valid], alone, rtol=1e-5, atol=1e-5)


def test_padding_content_is_invisible():
    model = _small_encoder()
    mel = torch.randn(2, 24, 20)
    lengths = torch.tensor([3, 5])
    m = sample_mask("random", 2, model.grid(24), 0.5, seed=0)
    noisy = mel.clone()
    noisy[0, 12:] = 1e3 * torch.randn(12, 20)  # clip 0 is valid for 3 time patches = 12 frames
    noisy[1, 20:] = 1e3 * torch.randn(4, 20)
    t_of_token = torch.arange(model.grid(24)[0]).repeat_interleave(model.grid(24)[1])
    pad = t_of_token[None] >= lengths[:, None]  # [B, N] True = padding
    for ids_keep in (None, m.ids_keep):
        a, b = model(mel, ids_keep, lengths), model(noisy, ids_keep, lengths)
        valid = ~(pad if ids_keep is None else torch.gather(pad, 1, ids_keep))
        valid = torch.cat([torch.ones(2, 1, dtype=torch.bool), valid], dim=1)
        torch.testing.assert_close(a[valid], b[valid], rtol=1e-5, atol=1e-5)


def test_forward_rejects_bad_inputs():
    model = _small_encoder()
    with pytest.raises(ValueError, match="ids_keep"):
        model(torch.randn(2, 8, 20), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="token_lengths"):
        model(torch.randn(2, 8, 20), token_lengths=torch.tensor([1, 2, 2]))


def test_low_precision_parameters():
    model = _small_encoder(dtype=torch.bfloat16)
    out = model(torch.randn(2, 8, 20))  # fp32 mel into a bf16 model
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ---- decoder and training step ----------------------------------------------------------------


def _mae_step(encoder, decoder, mel, ratio=0.75):
    grid = encoder.grid(mel.shape[1])
    m = sample_mask("random", mel.shape[0], grid, ratio, seed=0)
    pred = decoder(encoder(mel, m.ids_keep), m.ids_restore, grid)
    target = encoder.patchify(mel)
    loss = ((pred.float() - target) ** 2).mean(-1)[m.mask].mean()
    return pred, loss


def test_decoder_shapes():
    encoder = create_model("vit_mini_patch16", depth=1)
    decoder = MAEDecoder(128, decoder_dim=64, depth=1, num_heads=4, patch_dim=256)
    mel = torch.randn(2, 16 * 7, 128)
    pred, _ = _mae_step(encoder, decoder, mel)
    assert pred.shape == (2, 7 * 8, 256)
    with pytest.raises(ValueError, match="grid"):
        decoder(torch.randn(2, 5, 128), torch.zeros(2, 56, dtype=torch.long), (7, 7))


def test_every_parameter_gets_a_gradient():
    encoder = create_model("vit_mini_patch16", depth=2)
    decoder = MAEDecoder(128, decoder_dim=64, depth=2, num_heads=4, patch_dim=256)
    _, loss = _mae_step(encoder, decoder, torch.randn(2, 16 * 6, 128))
    loss.backward()
    for module in (encoder, decoder):
        for name, p in module.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bf16_autocast_on_cpu():
    encoder = create_model("vit_mini_patch16", depth=2)
    decoder = MAEDecoder(128, decoder_dim=64, depth=1, num_heads=4, patch_dim=256)
    mel = torch.randn(2, 16 * 4, 128)
    pred32, loss32 = _mae_step(encoder, decoder, mel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred16, loss16 = _mae_step(encoder, decoder, mel)
    assert torch.isfinite(pred16).all()
    loss16.backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())
    # bf16 keeps ~3 significant digits; the loss agrees to a few percent
    assert abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()


# ---- attention ----------------------------------------------------------------------------------


def _reference_attention(q, k, v, key_padding_mask=None):
    """softmax(q k^T / sqrt(Dh)) v in float64, padded keys set to -inf."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, N, N]
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("n", [1, 37, 64])
def test_sdpa_matches_float64_reference(n, padded, monkeypatch):
    monkeypatch.setenv("FASTSPEC_ATTENTION", "sdpa")
    b, h, dh = 2, 3, 16
    q, k, v = (torch.randn(b, h, n, dh, requires_grad=True) for _ in range(3))
    kpm = None
    if padded:
        lengths = torch.tensor([n, max(n // 3, 1)])
        kpm = torch.arange(n)[None, :] >= lengths[:, None]  # True = padding
    out = attention(q, k, v, kpm)
    ref = _reference_attention(q, k, v, kpm)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out.double())
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(
            g.double(), r.double(), rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}"
        )


def test_forced_flash_falls_back_with_notice(monkeypatch):
    monkeypatch.setenv("FASTSPEC_ATTENTION", "flash")
    q, k, v = (torch.randn(1, 2, 37, 8) for _ in range(3))
    out = attention(q, k, v)
    torch.testing.assert_close(out.double(), _reference_attention(q, k, v), rtol=1e-5, atol=1e-5)
    assert attention_backend("cpu") == "sdpa"
    assert any(key.startswith("attention.flash") for key in _logging.notices())


def test_unknown_backend_request_is_an_error_listing_the_choices(monkeypatch):
    monkeypatch.setenv("FASTSPEC_ATTENTION", "xformers")
    with pytest.raises(ValueError, match="FASTSPEC_ATTENTION='xformers'.*auto, flash, sdpa"):
        attention_backend("cpu")
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="choose one of"):
        attention(q, q, q)
    assert attention_report()["backend"]["cpu"].startswith("error:")  # info still prints


def test_attention_report_is_json_safe():
    report = json.loads(json.dumps(attention_report()))
    assert report["backend"]["cpu"] == "sdpa"
    assert set(report) >= {"requested", "flash_attn_installed", "backend"}


# ---- no host sync -------------------------------------------------------------------------------


def test_masked_forward_has_static_shapes_on_meta():
    # meta tensors hold no values, so any .item()/.tolist() or data-dependent shape would fail
    encoder = create_model("vit_mini_patch16", device="meta")
    decoder = MAEDecoder(128, 64, 1, 4, device="meta")
    m = sample_mask("random", 2, (6, 8), 0.75, device="meta")
    lengths = torch.empty(2, dtype=torch.long, device="meta")
    latent = encoder(torch.empty(2, 96, 128, device="meta"), m.ids_keep, lengths)
    assert latent.shape == (2, 13, 128)
    assert decoder(latent, m.ids_restore, m.grid).shape == (2, 48, 256)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_without_host_sync():
    encoder = create_model("vit_mini_patch16", device="cuda")
    decoder = MAEDecoder(128, 64, 1, 4, device="cuda")
    mel = torch.randn(4, 16 * 8, 128, device="cuda")
    encoder(mel)  # first call fills the position cache
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m = sample_mask("random", 4, encoder.grid(128), 0.75, seed=0, device="cuda")
            decoder(encoder(mel, m.ids_keep), m.ids_restore, m.grid).float().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_constructor_config_reads_every_constructor_argument():
    class Kept(torch.nn.Module):
        def __init__(self, width: int, strides=((2, 2), (1, 2)), tag: str = "x", device=None):
            super().__init__()
            self.width, self.strides, self.tag = width, tuple(strides), tag

    class Forgotten(Kept):
        def __init__(self, width: int, extra: float = 0.5):
            super().__init__(width)  # ``extra`` is never kept: it could not be exported

    config = registry.constructor_config(Kept(8, tag="y"))
    assert config == {"width": 8, "strides": [[2, 2], [1, 2]], "tag": "y"}
    assert json.loads(json.dumps(config)) == config
    with pytest.raises(AttributeError, match="extra"):
        registry.constructor_config(Forgotten(8))
    assert registry.constructor_config(Forgotten(8), derived=("extra",)) == {"width": 8}
