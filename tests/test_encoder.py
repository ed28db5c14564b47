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


# ---- hardening: tiny and mixed lengths, int16, timestamps of centred framing -------------------


def test_clips_shorter_than_a_patch_or_a_window_batch_like_alone(exported):
    enc = load_encoder(exported[0])
    torch.manual_seed(2)
    # empty, one sample, under one 400-sample window, one window, under one 16-frame patch
    lengths = [0, 1, 399, 400, 2_700, 5_000]
    clips = [0.2 * torch.randn(n) for n in lengths]
    batch = torch.zeros(len(clips), max(lengths))
    for i, clip in enumerate(clips):
        batch[i, : clip.numel()] = clip
    with torch.no_grad():
        emb = enc(batch, torch.tensor(lengths))
        assert torch.isfinite(emb).all()
        assert enc.frame_lengths(torch.tensor(lengths)).tolist() == [1, 1, 1, 1, 1, 2]
        for i, clip in enumerate(clips):
            torch.testing.assert_close(emb[i : i + 1], enc(clip[None]), rtol=1e-4, atol=1e-5)


def test_int16_and_numpy_input_equal_float_input(exported):
    enc = load_encoder(exported[0])
    pcm = (torch.randn(2, 8000) * 3000).to(torch.int16)
    with torch.no_grad():
        ref = enc(pcm.float() / 32768)
        torch.testing.assert_close(enc(pcm), ref)
        torch.testing.assert_close(enc(pcm.float().numpy() / 32768), ref)


def test_centred_framing_timestamps(tmp_path):
    # the ATST preset frames with center=True: frame j is centred on sample 160 j (10 j ms), so
    # a 16-frame token t is centred at 160 t + 75 ms
    torch.manual_seed(0)
    export_encoder(create_model("vit_mini_patch16", n_mels=64), get_preset("atst"), tmp_path)
    enc = load_encoder(tmp_path)
    with torch.no_grad():
        frames, times = enc.frames(0.1 * torch.randn(1, 16000))
    assert frames.shape[1] == times.shape[1] == 7  # 101 frames -> 7 tokens
    torch.testing.assert_close(times[0], 160.0 * torch.arange(7) + 75.0)


def test_frame_lengths_and_frames_pool_to_the_clip_embedding(exported):
    enc = load_encoder(exported[0])
    lengths = torch.tensor([30_000, 9_000])
    wave = 0.1 * torch.randn(2, 30_000)
    with torch.no_grad():
        frames, _ = enc.frames(wave, lengths)
        clip = enc(wave, lengths)
    counts = enc.frame_lengths(lengths)
    assert counts.tolist() == [12, 4]  # ceil(186 / 16), ceil(55 / 16) Kaldi frames
    for i, n in enumerate(counts.tolist()):
        assert frames[i, n:].abs().sum() == 0 and frames[i, :n].abs().sum() > 0
        torch.testing.assert_close(frames[i, :n].mean(0), clip[i], rtol=1e-4, atol=1e-5)


# ---- timm-style fine-tuning API ------------------------------------------------------------------


def test_forward_features_head_and_classifier(exported):
    enc = load_encoder(exported[0])
    wave, lengths = 0.1 * torch.randn(3, 20_000), torch.tensor([20_000, 12_000, 3_000])
    d = enc.embed_dim
    assert enc.num_classes == 0 and isinstance(enc.get_classifier(), torch.nn.Identity)
    with torch.no_grad():
        feats = enc.forward_features(wave, lengths)  # [B, 1 + N, D]
        t_p = enc.frame_lengths(torch.tensor(20_000)).item()
        assert feats.shape == (3, 1 + t_p * 4, d) and feats.dtype == torch.float32  # F_p = 4
        # tokens past a clip's valid time tokens are zeroed
        valid = enc.frame_lengths(lengths)
        grid = feats[:, 1:].reshape(3, t_p, 4, d)
        assert grid[2, valid[2] :].abs().sum() == 0 and grid[2, : valid[2]].abs().sum() > 0
        pooled = enc.forward_head(feats, pre_logits=True, token_lengths=valid)
        torch.testing.assert_close(pooled, enc(wave, lengths))
        # full-length clips: pooling without token_lengths is the plain mean
        full = enc.forward_features(wave)
        torch.testing.assert_close(enc.forward_head(full), enc(wave))

    torch.manual_seed(0)
    enc.reset_classifier(5)
    assert enc.num_classes == 5 and enc.get_classifier().out_features == 5
    enc.train()
    logits = enc(wave, lengths)
    assert logits.shape == (3, 5)
    logits.logsumexp(1).sum().backward()  # gradients reach the head and the backbone
    assert enc.head.weight.grad is not None and enc.backbone.patch_embed.weight.grad is not None
    assert enc.backbone.patch_embed.weight.grad.abs().sum() > 0

    enc.reset_classifier(0, global_pool="token")
    with torch.no_grad():
        torch.testing.assert_close(enc(wave), enc.forward_features(wave)[:, 0])
    with pytest.raises(ValueError, match="global_pool"):
        enc.reset_classifier(3, global_pool="max")
    with pytest.raises(ValueError, match="num_classes"):
        enc.reset_classifier(-1)


def test_classifier_seed_gives_the_same_head(exported):
    a, b = load_encoder(exported[0]), load_encoder(exported[0])
    torch.manual_seed(7)
    a.reset_classifier(4)
    torch.manual_seed(7)
    b.reset_classifier(4)
    assert torch.equal(a.head.weight, b.head.weight)


# ---- what is and is not an encoder ---------------------------------------------------------------


def test_a_lone_renamed_safetensors_is_a_complete_encoder(exported, tmp_path):
    renamed = tmp_path / "my-model.safetensors"
    renamed.write_bytes((exported[0] / "encoder.safetensors").read_bytes())
    enc = load_encoder(renamed)  # no JSON anywhere: the description is in the header
    wave = 0.1 * torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(enc(wave), load_encoder(exported[0])(wave))


def test_clear_errors_for_things_that_are_not_encoders(exported, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder(tmp_path / "nowhere")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04junk")
    with pytest.raises(ValueError, match="pickled checkpoint"):
        load_encoder(pt)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="checkpoints but no exported encoder"):
        load_encoder(run)
    # a safetensors file from elsewhere: no description in its header, no JSON beside it
    foreign = tmp_path / "foreign" / "weights.safetensors"
    foreign.parent.mkdir()
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="no description in its header"):
        load_encoder(foreign)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_name": "vit_nonexistent"}, "does not have"),
        ({"format_version": 99}, "newer than this fastspec"),
        ({"model_config": {"embed_dim": 64, "depth": 1, "num_heads": 4}}, "does not match"),
        ({"frontend": {"n_mel": 64}}, "cannot build"),
    ],
    ids=["unknown-model", "future-format", "wrong-shapes", "bad-frontend"],
)
def test_descriptions_that_do_not_fit_are_named(exported, tmp_path, change, message):
    meta = json.loads((exported[0] / "encoder.json").read_text())
    meta.update(change)
    (tmp_path / "encoder.json").write_text(json.dumps(meta))
    (tmp_path / "encoder.safetensors").write_bytes(
        (exported[0] / "encoder.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match=message):
        load_encoder(tmp_path)


def test_load_opens_no_network_connection(exported, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("load_encoder must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    enc = load_encoder(exported[0])
    with torch.no_grad():
        enc(0.1 * torch.randn(1, 4000))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_encoder_matches_cpu(exported):
    cpu, gpu = load_encoder(exported[0]), load_encoder(exported[0], device="cuda")
    wave, lengths = 0.1 * torch.randn(3, 24_000), torch.tensor([24_000, 9_000, 500])
    with torch.no_grad():
        out = gpu(wave, lengths)  # a CPU wave is moved to the encoder's device
        assert out.device.type == "cuda" and out.dtype == torch.float32
        torch.testing.assert_close(out.cpu(), cpu(wave, lengths), rtol=1e-3, atol=1e-3)
