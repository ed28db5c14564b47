"""The exported encoder: load without training code or pickle, any length, batched = one by one."""

import json

import pytest
import torch

import fastspec
from fastspec.encoder import Encoder, export_encoder, load_encoder
from fastspec.frontend import get_preset
from fastspec.models import create_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    backbone = create_model("vit_mini_patch16", n_mels=64)
    export_encoder(backbone, get_preset("kaldi", n_mels=64), out)
    return out, backbone


def test_files_and_metadata(exported):
    out, _ = exported
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["format"] == "fastspec-encoder"
    assert meta["model_name"] == "vit_mini_patch16"
    assert meta["frontend"]["n_mels"] == 64 and meta["sample_rate"] == 16000


@pytest.mark.parametrize("which", ["dir", "safetensors", "json"])
def test_load_from_any_of_the_paths(exported, which):
    out, backbone = exported
    path = {"dir": out, "safetensors": out / "encoder.safetensors", "json": out / "encoder.json"}
    enc = fastspec.load_encoder(path[which])
    assert isinstance(enc, Encoder) and not enc.training
    assert enc.sample_rate == 16000 and enc.embed_dim == backbone.embed_dim
    for key, value in backbone.state_dict().items():
        assert torch.equal(enc.backbone.state_dict()[key], value), key


def test_load_uses_no_pickle(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    load_encoder(exported[0])


def test_shapes_dtypes_and_any_length(exported):
    enc = load_encoder(exported[0])
    with torch.no_grad():
        for n_samples in (100, 399, 400, 16000, 37_123):  # shorter than one window, up to 2.3 s
            wave = 0.1 * torch.randn(2, n_samples)
            emb = enc(wave)
            assert emb.shape == (2, enc.embed_dim) and emb.dtype == torch.float32
            assert torch.isfinite(emb).all()
            frames, times = enc.frames(wave)
            assert frames.shape[:2] == times.shape and frames.shape[2] == enc.embed_dim
        assert enc(0.1 * torch.randn(16000)).shape == (1, enc.embed_dim)  # a single [S] clip


def test_padded_batch_with_lengths_equals_clips_one_at_a_time(exported):
    enc = load_encoder(exported[0])
    torch.manual_seed(1)
    lengths = [23_456, 8_000, 16_000, 300]
    clips = [0.2 * torch.randn(n) for n in lengths]
    batch = torch.zeros(len(clips), max(lengths))
    for i, clip in enumerate(clips):
        batch[i, : clip.numel()] = clip
    with torch.no_grad():
        emb = enc(batch, torch.tensor(lengths))
        frames, times = enc.frames(batch, torch.tensor(lengths))
        for i, clip in enumerate(clips):
            alone = enc(clip[None])
            torch.testing.assert_close(emb[i : i + 1], alone, rtol=1e-4, atol=1e-5)
            f_alone, t_alone = enc.frames(clip[None])
            n = f_alone.shape[1]
            torch.testing.assert_close(frames[i : i + 1, :n], f_alone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(times[i, :n], t_alone[0])
            assert (frames[i, n:] == 0).all()  # rows past the clip's last patch are empty


def test_frame_timestamps_are_patch_centres(exported):
    enc = load_encoder(exported[0])
    _, times = enc.frames(torch.zeros(1, 16000 * 2) + 0.01 * torch.randn(1, 32000))
    # kaldi frames: 25 ms window every 10 ms, centre of frame j at 10 j + 12.5 ms;
    # a 16-frame patch is centred on the mean of its frames' centres: 160 t + 87.5 ms
    expected = 160.0 * torch.arange(times.shape[1]) + 87.5
    torch.testing.assert_close(times[0], expected)


def test_not_an_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fastspec encoder"):
        load_encoder(tmp_path)
    (tmp_path / "encoder.safetensors").write_bytes(b"junk")
    (tmp_path / "encoder.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a fastspec encoder"):
        load_encoder(tmp_path)


def test_corrupt_weights_are_named(exported, tmp_path):
    (tmp_path / "encoder.json").write_text((exported[0] / "encoder.json").read_text())
    (tmp_path / "encoder.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="encoder.safetensors"):
        load_encoder(tmp_path)
