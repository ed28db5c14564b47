"""``fastspec embed``: files and folders to .npy clip and frame embeddings, in the documented layout."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from fastspec.cli import main
from fastspec.encoder import export_encoder, load_encoder
from fastspec.evaluate import open_inputs, write_embeddings
from fastspec.frontend import get_preset
from fastspec.frontend.polyphase import resample
from fastspec.models import create_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for this module's tiny models: two gain nothing at these sizes, and
    when the 2 cores are shared with other processes, OpenMP's spin-waiting turns every small
    op into milliseconds (30-100x slower steps measured on the shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    export_encoder(create_model("vit_mini_patch16", n_mels=64), get_preset("kaldi", n_mels=64), out)
    return out


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """A folder with clips of several lengths, rates and channel counts, one silent file (only
    decoding shows it) and one file that is not audio (the header probe rejects it)."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    sf.write(root / "a.wav", 0.2 * rng.standard_normal(16000).astype(np.float32), 16000)
    sf.write(root / "b.flac", 0.2 * rng.standard_normal(3000).astype(np.float32), 16000)
    stereo = 0.2 * rng.standard_normal((44100 * 2, 2)).astype(np.float32)
    sf.write(root / "sub" / "c.wav", stereo, 44100)
    sf.write(root / "sub" / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    (root / "sub" / "junk.wav").write_bytes(b"RIFF not really")
    return root


def _rows(out):
    with open(out / "clips.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_folder_to_clip_and_frame_embeddings(encoder_dir, audio, tmp_path):
    enc = load_encoder(encoder_dir)
    out = tmp_path / "emb"
    summary = write_embeddings(enc, open_inputs([audio]), out, frames=True, batch_size=2, workers=1)
    emb = np.load(out / "embeddings.npy")
    rows = _rows(out)
    assert summary.clips == 3 and emb.shape == (3, 128) and emb.dtype == np.float32
    # input order: the folder sorted by relative path, bad files left out
    assert [r["name"] for r in rows] == ["a.wav", "b.flac", "sub/c.wav"]
    assert [r["row"] for r in rows] == ["0", "1", "2"]
    meta = json.loads((out / "embed.json").read_text())
    assert meta["clips"] == 3 and meta["embed_dim"] == 128 and meta["frames"]
    assert meta["first_frame_ms"] == 87.5 and meta["frame_hop_ms"] == 160.0
    reasons = {s["name"]: s["reason"] for s in meta["skipped"]}
    assert reasons["sub/silent.wav"].startswith("silent") and "sub/junk.wav" in reasons

    # each row is the encoder's embedding of that clip alone (mono, resampled to 16 kHz)
    clip_c, sr = sf.read(audio / "sub" / "c.wav", dtype="float32")
    clip_c = resample(clip_c.mean(axis=1), sr, 16000)
    with torch.no_grad():
        for row, wave in ((0, sf.read(audio / "a.wav", dtype="float32")[0]), (2, clip_c)):
            ref = enc(torch.from_numpy(np.ascontiguousarray(wave)))[0].numpy()
            np.testing.assert_allclose(emb[row], ref, rtol=1e-4, atol=1e-5)
    # frames: [n_frames, D] per clip, pooling to the clip embedding
    for row in rows:
        frames = np.load(out / row["frames_file"])
        assert frames.shape == (int(row["n_frames"]), 128)
        np.testing.assert_allclose(frames.mean(0), emb[int(row["row"])], rtol=1e-4, atol=1e-5)
    assert [int(r["n_frames"]) for r in rows] == [7, 2, 13]  # 98, 17 and 198 Kaldi frames


def test_cli_embed_files_and_folders(encoder_dir, audio, tmp_path, capsys):
    out = tmp_path / "cli"
    files = [str(audio / "b.flac"), str(audio / "a.wav")]  # kept in the order given
    assert main(["embed", str(encoder_dir), *files, str(audio / "sub"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote 3 clip embeddings [3, 128]" in text and "skipped 2" in text
    rows = _rows(out)
    assert [r["name"] for r in rows] == [*files, "c.wav"]
    assert all(r["frames_file"] == "" for r in rows) and not (out / "frames").exists()
    assert np.load(out / "embeddings.npy").shape == (3, 128)


def test_labelled_input_keeps_labels(encoder_dir, audio, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{audio / 'a.wav'},dog\n{audio / 'b.flac'},cat;dog\n")
    out = tmp_path / "labelled"
    write_embeddings(load_encoder(encoder_dir), open_inputs([manifest]), out, workers=0)
    assert [r["labels"] for r in _rows(out)] == ["dog", "cat;dog"]


def test_cli_embed_errors(encoder_dir, audio, tmp_path, capsys):
    assert main(["embed", str(tmp_path / "missing"), str(audio), "--out", str(tmp_path / "o")]) == 2
    assert "no fastspec encoder" in capsys.readouterr().err
    assert main(["embed", str(encoder_dir), str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
