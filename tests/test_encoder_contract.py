"""The encoder contract: geometry of every encoder, FLOPs of every recipe x encoder pair against
torch's own count of a real training step, and recipes that see encoders only through it."""

import ast
import pathlib

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fastspec.models import SpectrogramEncoder, create_model, list_models, sincos_2d
from fastspec.recipes import build_recipe, encoder_options, list_recipes

ENCODERS = ["vit_mini_patch16", "mast_tiny"]
RECIPES = ["maskspec", "asit", "atst-clip", "atst-frame"]
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fastspec"

# tiny heads and decoders: the FLOP count does not depend on their size, only the run time does
TINY = {
    "maskspec": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "asit": {
        "crop_frames": 128,
        "out_dim_global": 16,
        "out_dim_local": 8,
        "head_hidden_dim": 16,
        "head_bottleneck_dim": 8,
        "rec_hidden_dim": 16,
        "rec_bottleneck_dim": 8,
    },
    "atst-clip": {"crop_frames": 60, "proj_hidden": 16, "proj_dim": 8, "memory_size": 4},
    "atst-frame": {"crop_frames": 83, "proj_hidden": 16, "proj_dim": 8, "memory_size": 4},
}


def tiny_pair(recipe: str, encoder: str, seed: int = 0):
    torch.manual_seed(seed)
    options = TINY[recipe]
    enc = create_model(encoder, n_mels=64, **encoder_options(recipe, **options))
    return build_recipe(recipe, enc, **options)


def test_every_registered_encoder_implements_the_contract():
    for name in list_models():
        model = create_model(name, device="meta")
        assert isinstance(model, SpectrogramEncoder), name
        assert model.patch_size == tuple(
            e * u for e, u in zip(model.embed_patch_size, model.unit_size)
        )
        assert len(model.stage_dims) == len(model.stage_tokens) and model.stage_tokens[-1] == 1
        assert model.stage_dims[-1] == model.embed_dim


@pytest.mark.parametrize("name", ENCODERS)
def test_geometry_padding_lengths_and_frame_spans(name):
    enc = create_model(name, n_mels=128, device="meta")
    hop = enc.frame_hop
    assert enc.grid(3 * hop) == (3, 128 // enc.patch_size[1])
    mel = torch.zeros(2, 2 * hop + 1, 128)
    assert enc.pad_frames(mel).shape[1] == 3 * hop
    assert enc.pad_frames(mel[:, :0], min_frames=1).shape[1] == hop
    lengths = torch.tensor([0, 1, hop, hop + 1])
    assert enc.token_lengths(lengths).tolist() == [1, 1, 1, 2]
    assert enc.frame_spans(3).tolist() == [[0, hop], [hop, 2 * hop], [2 * hop, 3 * hop]]
    with pytest.raises(ValueError, match="multiple of"):
        enc.grid(hop + 1)


@pytest.mark.parametrize("frame_tokens", [4, 16])
@pytest.mark.parametrize("name", ENCODERS)
def test_frame_tokens_give_one_full_frequency_token_per_step(name, frame_tokens):
    enc = create_model(name, n_mels=64, frame_tokens=frame_tokens)
    assert enc.patch_size == (frame_tokens, 64) and enc.grid(10 * frame_tokens) == (10, 1)
    if enc.unit_size != (1, 1):  # MAST: frequency pooled to one token, time as far as allowed
        assert enc.embed_patch_size[0] == 4 and enc.unit_size == (frame_tokens // 4, 8)
    mel = torch.randn(2, 10 * frame_tokens, 64)
    tokens = enc.forward_features(mel, token_lengths=torch.tensor([10, 4]))
    frames = enc.frame_tokens(tokens, mel.shape[1])
    assert tokens.shape == (2, 11, enc.embed_dim)
    assert torch.equal(frames, tokens[:, 1:])
    # a rebuilt architecture (export) has the same layout without the option
    again = create_model(name, **enc.arch_config())
    assert again.patch_size == enc.patch_size and again.unit_size == enc.unit_size


def test_frame_tokens_refuse_a_patch_size_too():
    with pytest.raises(ValueError, match="not both"):
        create_model("vit_mini_patch16", n_mels=64, frame_tokens=4, patch_size=(4, 64))


@pytest.mark.parametrize("name", ENCODERS)
def test_embedding_of_kept_units_equals_patch_by_patch_reference(name):
    torch.manual_seed(0)
    enc = create_model(name, n_mels=64).double()
    mel = torch.randn(2, 2 * enc.frame_hop, 64, dtype=torch.float64)
    ids_keep = torch.tensor([[1, 0], [0, 1]])  # units in any order
    x = enc.embed(mel, ids_keep)[:, 1:]
    (pt, pf), (u_t, u_f) = enc.embed_patch_size, enc.unit_size
    t_p, f_p = enc.grid(mel.shape[1])
    pos = sincos_2d((t_p * u_t, f_p * u_f), enc.embed_width, dtype=torch.float64)
    for b in range(2):
        rows = []
        for unit in ids_keep[b].tolist():
            t, f = divmod(unit, f_p)
            for i in range(u_t):  # the unit's patches, time-major
                for j in range(u_f):
                    r, c = t * u_t + i, f * u_f + j
                    patch = mel[b, r * pt : (r + 1) * pt, c * pf : (c + 1) * pf].reshape(-1)
                    rows.append(enc.patch_embed(patch) + pos[r * f_p * u_f + c])
        torch.testing.assert_close(x[b], torch.stack(rows), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_train_flops_of_every_pair_match_the_flop_counter(recipe, encoder):
    model = tiny_pair(recipe, encoder)
    mel = torch.randn(2, 150, 64)
    generator = torch.Generator().manual_seed(0)
    lengths, clips = torch.tensor([150, 100]), 2
    if hasattr(model, "waveform_views"):  # asit: the rows are the two views of one clip, whole
        lengths, clips = None, 1
    # the math backend decomposes attention into bmm, which the counter sees on CPU
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(mel, generator=generator, frame_lengths=lengths)
        out["loss"].backward()
    assert torch.isfinite(out["loss"])
    per_clip = counter.get_total_flops() / clips
    assert model.train_flops_per_clip(150) == pytest.approx(per_clip, rel=1e-9)


def _imported_names(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_recipes_export_and_hear_see_encoders_only_through_the_contract():
    users = sorted((PACKAGE / "recipes").glob("*.py")) + [
        PACKAGE / "encoder.py",
        PACKAGE / "hear.py",
    ]
    assert len(users) > 6
    concrete = ("fastspec.models.vit", "fastspec.models.mast", "ViTEncoder", "MASTEncoder")
    for path in users:
        names = _imported_names(path)
        bad = sorted(n for n in names if any(c in n for c in concrete))
        assert not bad, f"{path.name} imports a concrete encoder: {bad}"
        text = path.read_text()
        for probe in ("hasattr(encoder", "hasattr(self.encoder", "isinstance(encoder"):
            assert probe not in text, f"{path.name} duck-types an encoder: {probe}"
    assert set(RECIPES) <= set(list_recipes())


@pytest.mark.parametrize("name", ENCODERS)
def test_drop_path_and_qkv_bias_are_encoder_options(name):
    torch.manual_seed(0)
    enc = create_model(name, n_mels=64, drop_path_rate=0.5, qkv_bias=False)
    assert enc.blocks[0].attn.qkv.bias is None
    again = create_model(name, **enc.arch_config())
    assert again.drop_path_rate == 0.5 and again.blocks[-1].attn.qkv.bias is None
    mel = torch.randn(4, 2 * enc.frame_hop, 64)
    enc.eval()
    torch.testing.assert_close(enc(mel), enc(mel))  # the identity in eval
    enc.train()
    # in training whole residual branches drop for some samples: outputs change from draw to draw
    assert not torch.allclose(enc(mel), enc(mel))
    plain = create_model(name, n_mels=64)
    assert all(b.drop_path.rate == 0.0 for b in plain.blocks)


@pytest.mark.parametrize("name", ENCODERS)
def test_learned_positions_are_an_encoder_option(name, tmp_path):
    from fastspec.encoder import export_encoder, load_encoder
    from fastspec.frontend import get_preset

    torch.manual_seed(0)
    enc = create_model(name, n_mels=64, pos_embed="learned", max_frames=256)
    mel = torch.randn(2, 128, 64)
    enc(mel, torch.tensor([[1, 0], [0, 1]])).pow(2).mean().backward()
    assert enc.pos_table.grad.abs().sum() > 0  # learned, through the kept units only
    with torch.no_grad():  # a different table gives different outputs: it is really added
        before = enc(mel)
        enc.pos_table.add_(1.0)
        assert not torch.allclose(before, enc(mel))
    with pytest.raises(ValueError, match="max_frames"):
        enc(torch.randn(1, 512, 64))
    export_encoder(enc, get_preset("kaldi", n_mels=64), tmp_path)
    loaded = load_encoder(tmp_path).backbone
    assert loaded.pos_embed == "learned" and torch.equal(loaded.pos_table, enc.pos_table)
    assert create_model(name, n_mels=64, device="meta").pos_table is None  # fixed by default


def test_atst_clip_mean_pooling_averages_the_valid_output_frames():
    model = build_recipe(
        "atst-clip",
        create_model("mast_mini", n_mels=64, frame_tokens=4),
        **TINY["atst-clip"],
        pooling="mean",
    )
    tokens = torch.randn(2, 1 + 15, 8)  # 15 frame tokens of a 60-frame crop
    lengths = torch.tensor([15, 6])
    pooled = model.clip_embedding(tokens, lengths)
    torch.testing.assert_close(pooled[0], tokens[0, 1:].mean(dim=0))
    torch.testing.assert_close(pooled[1], tokens[1, 1:7].mean(dim=0))
    out = model(torch.randn(2, 90, 64), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="pooling"):
        build_recipe("atst-clip", create_model("vit_mini_patch16", n_mels=64), pooling="max")


@pytest.mark.parametrize("name", ["vit_mini_patch16", "mast_mini"])
def test_record_blocks_gives_the_last_blocks_output_tokens(name):
    torch.manual_seed(0)
    enc = create_model(name, n_mels=64, frame_tokens=4).eval()
    mel = torch.randn(2, 40, 64)
    n = 2 if name.startswith("vit") else 1  # mast_mini's last stage has one block
    with torch.no_grad(), enc.record_blocks(n) as outputs:
        out = enc.forward_features(mel)
    assert len(outputs) == n and all(o.shape == out.shape for o in outputs)
    torch.testing.assert_close(enc.norm(outputs[-1]), out)  # the last, before the final norm
    with pytest.raises(ValueError, match="last blocks"):
        with enc.record_blocks(len(enc.blocks) + 1):
            pass
