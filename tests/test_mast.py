"""MAST: registered layouts, unit-local pooling, token drop by mask unit, padding, export, MaskSpec."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fastspec.encoder import export_encoder, load_encoder
from fastspec.frontend import get_preset
from fastspec.models import MASTEncoder, create_model, list_models, registry
from fastspec.models.pooling_attention import UnitPool, max_pool_units
from fastspec.recipes.maskspec import MaskSpec

MAST_NAMES = ["mast_mini", "mast_tiny", "mast_small", "mast_base"]


def _small(**kwargs) -> MASTEncoder:
    """3 stages over 4x4 patches of 32 mel; unit = (4, 2) patches = 16 frames x 8 mel.

    kv stride (4, 2) pools keys to one token per unit in stage 1, and (2, 1) in the transition
    block, so both adaptive kv pooling and query pooling run.
    """
    cfg = dict(
        dims=(16, 32, 64),
        depths=(1, 2, 1),
        heads=(1, 2, 4),
        q_strides=((2, 2), (2, 1)),
        kv_stride=(4, 2),
        embed_patch_size=(4, 4),
        n_mels=32,
    )
    return MASTEncoder(**{**cfg, **kwargs})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- registry and layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MAST_NAMES)
def test_registered_sizes_match_their_documented_layout(name):
    assert name in list_models()
    model = create_model(name, device="meta")
    assert isinstance(model, MASTEncoder) and model.model_name == name
    doc = " ".join(registry._MODELS[name].__doc__.split())
    assert f"D {model.embed_dim} out" in doc and f"({model.depth} blocks)" in doc
    assert ", ".join(map(str, model.depths)) + " blocks" in doc
    # the documented parameter count is the real one, to 0.1 M
    documented = float(re.search(r"About ([\d.]+) M parameters", doc).group(1))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(documented, abs=0.1)
    assert model.patch_size == (64, 64) and model.grid(1024) == (16, 2)
    assert model.stage_grids(1024) == [(128, 16), (64, 8), (32, 4), (16, 2)]
    # adaptive kv stride: 4x4 in stage 1, 2x2 from the first pooling on, none after the second
    kv = [b.kv_stride for b in model.blocks]
    first = [sum(model.depths[:i]) for i in range(4)]
    assert [kv[i] for i in first] == [(4, 4), (2, 2), (1, 1), (1, 1)]
    widths = [(b.dim_in, b.dim_out, b.attn.num_heads) for b in model.blocks]
    d, h = model.dims, model.heads
    assert [widths[i] for i in first] == [(d[max(s - 1, 0)], d[s], h[s]) for s in range(4)]
    assert h == (1, 2, 4, 8) and all(d[s + 1] == 2 * d[s] for s in range(3))
    if name != "mast_mini":  # the MViTv2 widths
        assert d == (96, 192, 384, 768)


def test_arch_config_round_trip_is_json_safe():
    model = create_model("mast_mini", n_mels=64, q_strides=((2, 1), (2, 1), (2, 2)))
    cfg = json.loads(json.dumps(model.arch_config()))
    rebuilt = MASTEncoder(**cfg)
    assert rebuilt.arch_config() == model.arch_config()
    rebuilt.load_state_dict(model.state_dict())  # same names and shapes


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depths=(1, 2)), "one entry per stage"),
        (dict(q_strides=((2, 2),)), "one per stage"),
        (dict(dims=(18, 32, 64)), "multiple of 4"),
        (dict(heads=(1, 3, 4)), "num_heads"),
        (dict(n_mels=36), "n_mels"),
        (dict(depths=(1, 0, 1)), "at least one block"),
        (dict(q_strides=((2, 2), (3, 1)), kv_stride=(4, 2)), "does not tile"),
    ],
    ids=["depths", "q_strides", "dim-not-x4", "heads", "n_mels", "empty-stage", "kv-tiling"],
)
def test_bad_layouts_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _small(**kwargs)


def test_meta_build_then_materialise():
    model = _small(device="meta")
    assert all(p.is_meta for p in model.parameters())
    model = model.to_empty(device="cpu")
    model.init_weights()
    out = model(torch.randn(1, 32, 32))
    assert out.shape == (1, 1 + 2 * 4, 64) and torch.isfinite(out).all()


# ---- shapes, grids and pooling ----------------------------------------------------------------


def test_shapes_grids_and_any_number_of_frames():
    model = _small().eval()
    assert model.patch_size == (16, 8) and model.unit_size == (4, 2) and model.embed_dim == 64
    for n_frames in (16, 48, 128, 400):
        t_u, f_u = model.grid(n_frames)
        assert (t_u, f_u) == (n_frames // 16, 4)
        out, stages = model.forward_multiscale(torch.randn(2, n_frames, 32))
        assert out.shape == (2, 1 + t_u * f_u, 64)
        assert [s.shape for s in stages] == [
            (2, t_u * f_u, 8, 16),
            (2, t_u * f_u, 2, 32),
            (2, t_u * f_u, 1, 64),
        ]
        assert model.stage_grids(n_frames) == [(4 * t_u, 8), (2 * t_u, 4), (t_u, 4)]
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.randn(1, 40, 32))


def test_one_dimensional_pooling_keeps_the_frequency_axis():
    model = _small(q_strides=((2, 1), (2, 1)), kv_stride=(4, 4))
    assert model.unit_size == (4, 1) and model.patch_size == (16, 4) and model.grid(64) == (4, 8)
    # keys are never pooled across frequency: a window may not leave a 1-patch-wide unit
    assert all(b.kv_stride[1] == 1 for b in model.blocks)
    assert model(torch.randn(2, 64, 32)).shape == (2, 1 + 32, 64)


def _to_units(grid: torch.Tensor, unit: tuple[int, int]) -> torch.Tensor:
    """[B, T, F, C] grid -> [B, K * u_t * u_f, C] grouped by unit (units and insides time-major)."""
    b, t, f, c = grid.shape
    u_t, u_f = unit
    x = grid.reshape(b, t // u_t, u_t, f // u_f, u_f, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, -1, c)


@pytest.mark.parametrize("stride", [(2, 2), (2, 1), (4, 2)], ids=lambda s: f"s{s[0]}x{s[1]}")
def test_unit_pooling_is_a_strided_depthwise_conv_and_max_pool(stride):
    unit, c = (4, 2), 6
    grid = torch.randn(2, 8, 6, c)  # [B, T, F, C]: 2 x 3 units of 4 x 2 tokens
    cls = torch.randn(2, 1, c)
    tokens = torch.cat([cls, _to_units(grid, unit)], dim=1)
    layout = (6, *unit)
    pool = UnitPool(stride, c)
    with torch.no_grad():
        pool.weight.normal_()
        pool.bias.normal_()
        pool.norm.weight.normal_()
    # reference: a depthwise conv with kernel = stride on the whole grid, then the same norm
    conv_weight = pool.weight.permute(2, 0, 1).unsqueeze(1)  # [C, 1, st, sf]
    ref = F.conv2d(grid.permute(0, 3, 1, 2), conv_weight, pool.bias, stride=stride, groups=c)
    ref_units = _to_units(ref.permute(0, 2, 3, 1), (unit[0] // stride[0], unit[1] // stride[1]))
    expected = pool.norm(torch.cat([cls, ref_units], dim=1))
    torch.testing.assert_close(pool(tokens, layout), expected)

    ref_max = F.max_pool2d(grid.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)
    expected = torch.cat([cls, _to_units(ref_max, (unit[0] // stride[0], unit[1] // stride[1]))], 1)
    torch.testing.assert_close(max_pool_units(tokens, layout, stride), expected)


# ---- token drop by mask unit ------------------------------------------------------------------


def test_keeping_every_unit_in_any_order_equals_the_full_forward():
    model = _small().eval()
    mel = torch.randn(2, 64, 32)
    n = 4 * 4
    full = model(mel)
    perm = torch.stack([torch.randperm(n), torch.randperm(n)])  # [B, N] units in random order
    out = model(mel, ids_keep=perm)
    torch.testing.assert_close(out[:, 0], full[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        out[:, 1:],
        torch.gather(full[:, 1:], 1, perm[..., None].expand(-1, -1, 64)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_dropped_units_are_never_read():
    model = _small().eval()
    mel = torch.randn(2, 64, 32)
    ids_keep = torch.tensor([[0, 5, 6, 15], [1, 2, 8, 13]])
    out = model(mel, ids_keep=ids_keep)
    # overwrite every dropped unit (16 frames x 8 mel each) with garbage: nothing changes
    units = model.patchify(mel)  # [B, 16, 128]
    dropped = torch.ones(2, 16, dtype=torch.bool)
    dropped[torch.arange(2)[:, None], ids_keep] = False
    garbage = torch.where(dropped[..., None], 1e3 * torch.randn_like(units), units)
    torch.testing.assert_close(model(model.unpatchify(garbage, (4, 4)), ids_keep=ids_keep), out)
    # while a kept unit does change the output
    changed = units.clone()
    changed[0, 5] += 1.0
    assert not torch.allclose(model(model.unpatchify(changed, (4, 4)), ids_keep=ids_keep), out)


def test_ids_keep_shape_is_checked():
    with pytest.raises(ValueError, match="mask-unit grid"):
        _small()(torch.randn(2, 64, 32), ids_keep=torch.zeros(3, 4, dtype=torch.long))


# ---- padding ----------------------------------------------------------------------------------


def test_padded_batch_equals_clips_one_at_a_time():
    model = _small().eval()
    lengths = [8, 3, 5, 1]  # valid time units (16 frames each) per clip
    clips = [torch.randn(1, n * 16, 32) for n in lengths]
    # padding filled with garbage, not zeros: it must be invisible, not merely harmless
    batch = 50 * torch.randn(len(clips), 8 * 16, 32)
    for i, clip in enumerate(clips):
        batch[i, : clip.shape[1]] = clip[0]
    with torch.no_grad():
        out = model(batch, token_lengths=torch.tensor(lengths))
        for i, clip in enumerate(clips):
            alone = model(clip)  # [1, 1 + n * 4, D]
            torch.testing.assert_close(out[i, : alone.shape[1]], alone[0], rtol=1e-4, atol=1e-5)


def test_padded_batch_with_masking_equals_clips_one_at_a_time():
    model = _small().eval()
    lengths = [4, 2]
    clips = [torch.randn(1, n * 16, 32) for n in lengths]
    batch = 50 * torch.randn(2, 4 * 16, 32)
    for i, clip in enumerate(clips):
        batch[i, : clip.shape[1]] = clip[0]
    ids_keep = torch.tensor([[1, 4, 9, 14], [0, 3, 5, 12]])  # clip 1 keeps 3 valid, 1 padded
    with torch.no_grad():
        out = model(batch, ids_keep=ids_keep, token_lengths=torch.tensor(lengths))
        torch.testing.assert_close(out[0], model(clips[0], ids_keep=ids_keep[:1])[0])
        alone = model(clips[1], ids_keep=ids_keep[1:, :3])[0]
        torch.testing.assert_close(out[1, :4], alone, rtol=1e-4, atol=1e-5)


# ---- the exported encoder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("mast-enc")
    torch.manual_seed(0)
    backbone = create_model("mast_mini", n_mels=64)
    export_encoder(backbone, get_preset("kaldi", n_mels=64), out)
    return out, backbone


def test_exported_encoder_round_trip(exported):
    out, backbone = exported
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["model_name"] == "mast_mini" and meta["embed_dim"] == 256
    enc = load_encoder(out)
    for key, value in backbone.state_dict().items():
        assert torch.equal(enc.backbone.state_dict()[key], value), key


def test_exported_encoder_clip_and_frame_embeddings(exported):
    enc = load_encoder(exported[0])
    lengths = [23_456, 8_000, 16_000, 300]  # 1.5 s, 0.5 s, 1 s and less than one window
    clips = [0.2 * torch.randn(n) for n in lengths]
    batch = torch.zeros(len(clips), max(lengths))
    for i, clip in enumerate(clips):
        batch[i, : clip.numel()] = clip
    with torch.no_grad():
        emb = enc(batch, torch.tensor(lengths))
        frames, times = enc.frames(batch, torch.tensor(lengths))
        assert emb.shape == (4, 256) and emb.dtype == torch.float32
        assert frames.shape == (4, 3, 256) and times.shape == (4, 3)
        # one frame embedding per 64-frame output token: 640 ms apart at a 10 ms hop
        torch.testing.assert_close(times[0, 1:] - times[0, :-1], torch.full((2,), 640.0))
        for i, clip in enumerate(clips):
            torch.testing.assert_close(emb[i : i + 1], enc(clip[None]), rtol=1e-4, atol=1e-5)
            f_alone, t_alone = enc.frames(clip[None])
            n = f_alone.shape[1]
            torch.testing.assert_close(frames[i : i + 1, :n], f_alone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(times[i, :n], t_alone[0])
            assert (frames[i, n:] == 0).all()


# ---- training ---------------------------------------------------------------------------------


def _recipe(ratio=0.75, **kwargs):
    encoder = create_model("mast_mini", n_mels=64)
    return MaskSpec(
        encoder, decoder_dim=64, decoder_depth=2, decoder_heads=4, mask_ratio=ratio, **kwargs
    )


def test_maskspec_mast_trains_every_parameter_and_lowers_the_loss():
    recipe = _recipe()
    mel = torch.randn(4, 200, 64)  # padded to 256 frames: 4 x 1 units of 64 x 64
    optimizer = torch.optim.AdamW(recipe.parameters(), lr=1e-3)
    losses = []
    for step in range(8):
        loss = recipe(mel, generator=torch.Generator().manual_seed(step % 2))["loss"]
        loss.backward()
        if step == 0:  # DDP needs every parameter in the graph
            assert [n for n, p in recipe.named_parameters() if p.grad is None] == []
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0]


def test_maskspec_mast_under_bf16_autocast():
    recipe = _recipe()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = recipe(torch.randn(2, 512, 64), generator=torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32


def test_maskspec_mast_with_every_unit_masked():
    # 128 frames = 2 units, 75 % masking keeps int(0.5) = 0: the encoder sees the class token only
    recipe = _recipe()
    loss = recipe(torch.randn(2, 128, 64), generator=torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert torch.isfinite(loss)


def test_maskspec_mast_loss_is_on_masked_units_with_per_patch_targets():
    recipe = _recipe()
    target = torch.randn(1, 3, 64 * 64)
    mask = torch.tensor([[True, False, True]])
    pred = torch.zeros_like(target)
    pred[0, 1] = 100.0  # a visible unit: its error must not count
    # zero prediction against per-patch normalised targets: the mean of z^2 = (n - 1) / n
    expected = (64 - 1) / 64
    assert recipe.forward_loss(target, pred, mask).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n_frames, ratio", [(200, 0.75), (128, 0.5), (64, 0.0)])
def test_maskspec_mast_flops_match_the_flop_counter(n_frames, ratio):
    recipe = _recipe(ratio)
    mel = torch.randn(1, n_frames, 64)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        recipe(mel, generator=torch.Generator().manual_seed(0))["loss"].backward()
    assert recipe.train_flops_per_clip(n_frames) == pytest.approx(
        counter.get_total_flops(), rel=1e-9
    )
