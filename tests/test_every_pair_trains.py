"""Every recipe trains every encoder kind on the demo corpus and exports an encoder that loads.

Tiny on purpose (three steps of two 1 s clips, narrow heads): what is checked is that each
recipe x encoder pair runs end to end through the training loop with finite losses, and that
its exported encoder gives clip and frame embeddings with timestamps on its own token grid
(HEAR's timestamps too, for the ATST-trained ones).
"""

import math

import pytest
import torch

import fastspec.hear as hear
from fastspec.encoder import load_encoder
from fastspec.train import apply_override, default_config, pretrain
from fastspec.train.metrics import read_metrics

ENCODERS = ["vit_mini_patch16", "mast_tiny"]
TINY = {
    "maskspec": {"model.decoder_dim": 32, "model.decoder_depth": 1, "model.decoder_heads": 2},
    "asit": {
        "asit.crop_seconds": 0.7,
        "asit.out_dim_global": 32,
        "asit.out_dim_local": 16,
        "asit.head_hidden_dim": 32,
        "asit.head_bottleneck_dim": 16,
        "asit.rec_hidden_dim": 32,
        "asit.rec_bottleneck_dim": 16,
    },
    "atst-clip": {"atst.crop_seconds": 0.8, "atst.proj_hidden": 32, "atst.proj_dim": 16},
    "atst-frame": {"atst.crop_seconds": 0.8, "atst.proj_hidden": 32, "atst.proj_dim": 16},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: at these sizes a second one gains nothing on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_run(out, recipe, model):
    cfg = default_config(recipe, demo=True)
    settings = {
        "out": str(out),
        "model.name": model,
        "frontend.n_mels": 64,
        "data.demo_clips": 8,
        "data.demo_clip_seconds": 1.0,
        "data.clip_seconds": 1.0,
        "train.batch_size": 2,
        "train.steps": 3,
        "train.log_every": 1,
        "train.ckpt_every": 3,
        "train.progress": False,
        "train.amp": "none",
        "optim.warmup_steps": 1,
        **TINY[recipe],
    }
    if recipe.startswith("atst"):
        settings["atst.memory_size"] = 4
    for key, value in settings.items():
        apply_override(cfg, f"{key}={value}")
    return cfg


@pytest.mark.parametrize("model", ENCODERS)
@pytest.mark.parametrize("recipe", ["maskspec", "asit", "atst-clip", "atst-frame"])
def test_every_recipe_trains_every_encoder_and_exports_it(tmp_path, recipe, model):
    result = pretrain(tiny_run(tmp_path / "run", recipe, model))
    assert result.step == 3
    losses = [r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses

    enc = load_encoder(result.run_dir)
    assert enc.model_name == model
    wave = 0.1 * torch.randn(2, 2 * enc.sample_rate, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([2 * enc.sample_rate, enc.sample_rate])
    clip = enc(wave, lengths)
    frames, t_ms = enc.frames(wave, lengths)
    assert clip.shape == (2, enc.embed_dim) and torch.isfinite(clip).all()
    assert frames.shape[:2] == t_ms.shape and frames.shape[2] == enc.embed_dim
    # timestamps step by one output token: frame_hop front-end hops (ATST: 40 ms tokens)
    step_ms = 1000.0 * enc.frames_per_token * enc.frontend.hop_length / enc.sample_rate
    if recipe.startswith("atst"):
        assert step_ms == pytest.approx(40.0)
    if t_ms.shape[1] > 1:
        torch.testing.assert_close(
            t_ms[0, 1:] - t_ms[0, :-1], torch.full_like(t_ms[0, 1:], step_ms)
        )
    valid = int(enc.frame_lengths(lengths)[1])
    assert (frames[1, valid:] == 0).all() and torch.isfinite(frames).all()
    if recipe.startswith("atst"):  # an ATST-trained encoder under the HEAR API
        model_h = hear.HearModel(enc)
        emb, ts = hear.get_timestamp_embeddings(wave[:1], model_h)
        assert emb.shape[:2] == ts.shape and float(ts.max()) <= 2000.0
        assert hear.get_scene_embeddings(wave, model_h).shape == (2, enc.embed_dim)
