"""ATST's linear-evaluation features as a pooling of any encoder: for each of the last blocks,
after the final norm, the mean of its valid patch tokens, then its class token (audiossl's
``get_intermediate_layers``), through load_encoder, embed, evaluate and HEAR."""

import numpy as np
import pytest
import torch

from fastspec import hear
from fastspec.data import DemoEvalSet
from fastspec.encoder import export_encoder, load_encoder
from fastspec.evaluate import EvalSettings, evaluate, open_task
from fastspec.evaluate.embed import write_embeddings
from fastspec.evaluate.tasks import ClipTable
from fastspec.frontend import get_preset
from fastspec.models import create_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    backbone = create_model("vit_mini_patch16", n_mels=64)
    export_encoder(backbone, get_preset("kaldi", n_mels=64), out)
    return out


def reference_features(enc, wave, last_blocks):
    """The same features written out by hand: run the blocks one by one."""
    outputs = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in enc.backbone.blocks
    ]
    with torch.no_grad():
        enc.forward_features(wave)
    for h in hooks:
        h.remove()
    parts = []
    for x in outputs[-last_blocks:]:
        normed = enc.backbone.norm(x)  # audiossl's get_cls_avg reads both after the norm
        parts += [normed[:, 1:].mean(dim=1), normed[:, 0]]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("last_blocks", [1, 2])
def test_atst_features_are_class_token_and_block_means(exported, last_blocks):
    enc = load_encoder(exported, pooling="atst", last_blocks=last_blocks)
    wave = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        got = enc(wave)
    assert got.shape == (2, 2 * last_blocks * enc.embed_dim) == (2, enc.pooled_dim)
    torch.testing.assert_close(got, reference_features(enc, wave, last_blocks))
    # the default pooling is unchanged: the mean of the final patch tokens
    plain = load_encoder(exported)
    with torch.no_grad():
        torch.testing.assert_close(plain(wave), plain.forward_features(wave)[:, 1:].mean(1))


def test_atst_features_of_a_padded_batch_equal_clips_alone(exported):
    enc = load_encoder(exported, pooling="atst", last_blocks=2)
    a, b = torch.randn(16000) * 0.1, torch.randn(9000) * 0.1
    batch = torch.zeros(2, 16000)
    batch[0], batch[1, :9000] = a, b
    with torch.no_grad():
        together = enc(batch, torch.tensor([16000, 9000]))
        alone = torch.cat([enc(a[None]), enc(b[None])])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_bad_pooling_is_named(exported):
    with pytest.raises(ValueError, match="pooling"):
        load_encoder(exported, pooling="max")
    with pytest.raises(ValueError, match="last_blocks"):
        load_encoder(exported, pooling="atst", last_blocks=99)


def test_atst_pooling_in_hear_embed_and_evaluate(exported, tmp_path):
    model = hear.load_model(str(exported), pooling="atst", last_blocks=2)
    audio = torch.randn(3, 8000) * 0.1
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, model.scene_embedding_size) == (3, 4 * model.encoder.embed_dim)
    enc = load_encoder(exported, pooling="atst")
    summary = write_embeddings(
        enc, ClipTable([DemoEvalSet(4, clip_seconds=0.5)]), tmp_path, workers=0
    )
    assert np.load(tmp_path / "embeddings.npy").shape == (4, enc.pooled_dim) and summary.clips == 4
    settings = EvalSettings(
        device="cpu",
        amp="none",
        workers=0,
        weight_decays=(1e-2,),
        probe_max_iter=20,
        pooling="atst",
        last_blocks=2,
    )
    report = evaluate(exported, open_task("demo:36?seconds=0.5", folds=3), settings)
    assert report.encoder["pooled_dim"] == 4 * report.encoder["embed_dim"]
    for row in report.rows:
        if row.method != "logmel":
            assert row.details["embed_dim"] == 4 * report.encoder["embed_dim"]
