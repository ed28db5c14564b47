"""End to end: ``fastspec pretrain`` (tiny, a few steps) -> the exported encoder -> every way of
using it: ``fastspec.load_encoder``, ``fastspec.hear``, ``fastspec embed``, ``fastspec evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import fastspec
import fastspec.hear as hear
from fastspec.cli import main

TONES = (400.0, 1500.0, 3500.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for this module's tiny models: two gain nothing at these sizes, and
    when the 2 cores are shared with other processes, OpenMP's spin-waiting turns every small
    op into milliseconds (30-100x slower steps measured on the shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _class_folders(root):
    """3 classes (a tone each, random phase, level, length, noise) x 6 clips."""
    rng = np.random.default_rng(0)
    for k, f in enumerate(TONES):
        for i in range(6):
            n = round(rng.uniform(0.4, 0.9) * 16000)
            t = np.arange(n) / 16000
            x = rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
            x += 0.02 * rng.standard_normal(n)
            (root / f"class{k}").mkdir(parents=True, exist_ok=True)
            sf.write(root / f"class{k}" / f"{i}.wav", x.astype(np.float32), 16000)
    return root


def test_pretrain_then_use_the_encoder_everywhere(tmp_path, capsys):
    run = tmp_path / "run"
    pretrain = [
        "pretrain", "--out", str(run), "--steps", "3", "--batch-size", "8", "--amp", "none",
        "--no-progress", "data.demo_clips=16", "data.demo_clip_seconds=1.0",
        "data.clip_seconds=1.0", "frontend.n_mels=64", "model.decoder_dim=64",
        "model.decoder_depth=1", "model.decoder_heads=4", "train.log_every=1",
        "train.ckpt_every=3", "optim.warmup_steps=1",
    ]  # fmt: skip
    assert main(pretrain) == 0
    assert "load it with: fastspec.load_encoder" in capsys.readouterr().out

    # the drop-in module: padded batch with lengths == clips one at a time
    enc = fastspec.load_encoder(run)
    assert enc.model_name == "vit_mini_patch16" and enc.frontend_config.n_mels == 64
    lengths = [16000, 5000, 200]
    clips = [0.1 * torch.randn(n) for n in lengths]
    batch = torch.zeros(3, 16000)
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = clip
    with torch.no_grad():
        emb = enc(batch, torch.tensor(lengths))
        frames, times = enc.frames(batch, torch.tensor(lengths))
        for i, clip in enumerate(clips):
            torch.testing.assert_close(emb[i : i + 1], enc(clip), rtol=1e-4, atol=1e-5)
    assert emb.shape == (3, enc.embed_dim) and frames.shape[:2] == times.shape

    # HEAR, from the weights file alone
    model = hear.load_model(str(run / "encoder.safetensors"))
    audio = torch.rand(2, int(1.07 * model.sample_rate)) * 2 - 1
    ts_emb, ts = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
    assert ts_emb.shape == (2, ts.shape[1], model.timestamp_embedding_size)
    assert scene.shape == (2, model.scene_embedding_size) and scene.dtype == torch.float32
    assert float(ts.max()) <= 1070.0

    data = _class_folders(tmp_path / "data")
    out = tmp_path / "emb"
    assert (
        main(["embed", str(run), str(data), "--out", str(out), "--frames", "--workers", "0"]) == 0
    )
    assert np.load(out / "embeddings.npy").shape == (18, enc.embed_dim)
    assert len(list((out / "frames").glob("*.npy"))) == 18

    report_path = tmp_path / "report.json"
    evaluate = [
        "evaluate", str(run), str(data), "--mode", "both", "--folds", "2", "--ft-epochs", "1",
        "--ft-batch-size", "9", "--workers", "0", "--out", str(report_path),
    ]  # fmt: skip
    assert main(evaluate) == 0
    table = capsys.readouterr().out
    assert "fastspec vit_mini_patch16" in table and "random init" in table and "log-mel" in table
    report = json.loads(report_path.read_text())
    cells = {(r["method"], r["mode"]): r["metrics"] for r in report["results"]}
    assert len(cells) == 5 and report["task"]["clips"] == 18
    for metrics in cells.values():
        assert 0.0 <= metrics["accuracy"]["mean"] <= 1.0 and len(metrics["mAP"]["splits"]) == 2
    assert cells[("logmel", "linear")]["accuracy"]["mean"] > 0.6  # chance is 1/3
