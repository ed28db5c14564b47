"""Encoders without a class token (``class_token=False``, ATST-Frame's ``FrameAST``): slot 0 of
the token layout is an empty placeholder (a zero buffer, masked as a key in every block, zero in
the output), so the patch tokens compute exactly what a transformer over the patches alone
computes; ATST-Frame asks for it, and its exported encoder pools, embeds and serves HEAR."""

import pytest
import torch

import fastspec.hear as hear
from fastspec.encoder import load_encoder
from fastspec.models import create_model
from fastspec.recipes import encoder_options
from fastspec.train import apply_override, default_config, pretrain

ENCODERS = ["vit_mini_patch16", "mast_mini"]


def no_cls(name, **kw):
    torch.manual_seed(0)
    return create_model(name, n_mels=64, frame_tokens=4, class_token=False, **kw).double().eval()


@pytest.mark.parametrize("name", ENCODERS)
def test_placeholder_is_not_learned_and_not_attended(name):
    enc = no_cls(name)
    assert "cls_token" not in enc.state_dict()
    assert all("cls_token" not in n for n, _ in enc.named_parameters())
    assert create_model(name, **enc.arch_config()).class_token is False
    mel = torch.randn(2, 48, 64, dtype=torch.float64)
    with torch.no_grad():
        out = enc.forward_features(mel)
        assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
        # were slot 0 attended, a different placeholder value would change every patch token
        enc.cls_token.normal_()
        moved = enc.forward_features(mel)
        enc.cls_token.zero_()
    torch.testing.assert_close(moved, out, rtol=0, atol=1e-12)
    # a class token, by contrast, is attended: the same check must see a change
    with_cls = create_model(name, n_mels=64, frame_tokens=4).double().eval()
    with torch.no_grad():
        before = with_cls.forward_features(mel)[:, 1:]
        with_cls.cls_token.normal_()  # (a constant shift would vanish in the LayerNorm)
        assert (with_cls.forward_features(mel)[:, 1:] - before).abs().max() > 1e-3


def test_vit_without_class_token_equals_a_transformer_over_the_patches_alone():
    enc = no_cls("vit_mini_patch16")
    mel = torch.randn(3, 40, 64, dtype=torch.float64)
    with torch.no_grad():
        got = enc.forward_features(mel)[:, 1:]
        x = enc.embed(mel)[:, 1:]  # patch embeddings + positions, no slot at all
        for block in enc.blocks:
            x = block(x, None)  # no mask: nothing but patches to attend to
        want = enc.norm(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ENCODERS)
def test_padded_rows_without_class_token_equal_clips_alone(name):
    enc = no_cls(name)
    mel = torch.randn(2, 48, 64, dtype=torch.float64)
    mel[1, 24:] = 0.0
    with torch.no_grad():
        batch = enc.forward_features(mel, token_lengths=torch.tensor([12, 6]))
        alone = enc.forward_features(mel[1:, :24])
    f_p = enc.grid(48)[1]
    torch.testing.assert_close(batch[1, 1 : 1 + 6 * f_p], alone[0, 1:], rtol=0, atol=1e-10)


def test_atst_frame_asks_for_no_class_token():
    assert encoder_options("atst-frame")["class_token"] is False
    assert "class_token" not in encoder_options("atst-clip")


@pytest.fixture(scope="module")
def frame_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("atst-frame")
    cfg = default_config("atst-frame", demo=True)
    for key, value in {
        "train.steps": 2,
        "train.batch_size": 2,
        "data.demo_clips": 4,
        "atst.crop_seconds": 0.8,
        "atst.proj_hidden": 32,
        "atst.proj_dim": 16,
        "train.amp": "none",
        "train.progress": False,
        "train.device": "cpu",
        "out": str(out),
    }.items():
        apply_override(cfg, f"{key}={value}")
    pretrain(cfg)
    return out


def test_atst_frame_export_pools_frames_without_class_token(frame_run):
    enc = load_encoder(frame_run, pooling="atst", last_blocks=2)
    assert enc.backbone.class_token is False
    assert enc.pooled_dim == 2 * enc.embed_dim  # the block means alone (FrameAST)
    wave = torch.randn(2, 16000) * 0.1
    outputs = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in enc.backbone.blocks
    ]
    with torch.no_grad():
        got = enc(wave)
    for h in hooks:
        h.remove()
    want = torch.cat([enc.backbone.norm(x)[:, 1:].mean(1) for x in outputs[-2:]], dim=1)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="needs a class token"):
        load_encoder(frame_run, pooling="token")
    model = hear.load_model(str(frame_run), pooling="atst", last_blocks=2)
    scene = hear.get_scene_embeddings(wave, model)
    assert scene.shape == (2, model.scene_embedding_size) == (2, 2 * enc.embed_dim)
    frames, times = hear.get_timestamp_embeddings(wave, model)
    assert frames.shape[:2] == times.shape and torch.isfinite(frames).all()
