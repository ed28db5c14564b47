"""fastspec.hear: the HEAR API on an exported encoder, checked as the HEAR validator checks it.

The validator feeds 2 sounds of 1.07, 1.98 and 4.0 s to ``get_timestamp_embeddings`` and 4 of
2.74 s to ``get_scene_embeddings`` (white noise in [-1, 1]); it requires float32 outputs, the
declared sizes, timestamps no more than 1 ms off a regular grid, the last one within the clip
and within two hops of its end, and suggests a hop of at most 50 ms.
"""

import numpy as np
import pytest
import torch

import fastspec.hear as hear
from fastspec.encoder import export_encoder, load_encoder
from fastspec.frontend import get_preset
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
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hear")
    torch.manual_seed(0)
    export_encoder(create_model("vit_mini_patch16", n_mels=64), get_preset("kaldi", n_mels=64), out)
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    return hear.load_model(str(model_dir / "encoder.safetensors"))


def _noise(n_sounds, seconds, sample_rate, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_sounds, int(seconds * sample_rate), generator=g) * 2 - 1


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.sample_rate == 16000 and isinstance(model.sample_rate, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 128
    assert isinstance(model.scene_embedding_size, int)
    assert model.hop_ms == 40.0 and model.n_shifts == 4  # 160 ms tokens, 4 passes


@pytest.mark.parametrize("seconds", [1.07, 1.98, 2.74, 4.0])
def test_timestamp_embeddings_as_the_validator_checks_them(model, seconds):
    audio = _noise(2, seconds, model.sample_rate)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.ndim == 3 and ts.ndim == 2 and emb.shape[:2] == ts.shape
    assert emb.shape[0] == 2 and emb.shape[2] == model.timestamp_embedding_size
    assert torch.isfinite(emb).all()
    ts = ts.numpy()
    diff = np.diff(ts, axis=1)
    hop = diff.mean()
    assert hop <= 50.0 and np.abs(diff - hop).max() < 1e-3  # regular, in ms
    length_ms = 1000 * seconds
    assert 0 <= ts.min() <= hop  # no validator warning about a late start
    assert length_ms - hop <= ts.max() <= length_ms  # no warning, no error at the end
    assert (ts == ts[:1]).all()  # the same grid for every sound of the batch


@pytest.mark.parametrize("seconds", [1.07, 1.98, 2.74, 4.0])
def test_scene_embeddings(model, seconds):
    audio = _noise(4, seconds, model.sample_rate, seed=1)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (4, model.scene_embedding_size)
    # the scene embedding is the mean of the clip's patch tokens: computed here a second way,
    # from the per-time-step frame embeddings (each the mean of its frequency tokens) of one
    # sound at a time, so neither the clip pooling nor the batching is checked against itself
    for i in range(4):
        with torch.no_grad():
            frames, _ = model.encoder.frames(audio[i : i + 1])
        torch.testing.assert_close(scene[i], frames[0].mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(scene[0], scene[1])  # different sounds, different embeddings


def test_timestamp_embeddings_are_the_encoders_frame_embeddings(model):
    """Every 4th timestamp (the undelayed pass) is the encoder's own token at that centre; the
    others are tokens of the audio delayed by 40, 80, 120 ms."""
    audio = _noise(2, 2.0, model.sample_rate, seed=2)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    with torch.no_grad():
        frames, centres = model.encoder.frames(audio)
        delayed, _ = model.encoder.frames(torch.nn.functional.pad(audio, (640, 0)))
    for t, centre in enumerate(centres[0].tolist()):
        if centre <= 2000:
            j = int(np.flatnonzero(np.isclose(ts[0].numpy(), centre))[0])
            torch.testing.assert_close(emb[:, j], frames[:, t])
            if centre - 40 >= 0:  # the 40 ms delayed pass: token t is centred at centre - 40
                torch.testing.assert_close(emb[:, j - 1], delayed[:, t])


def test_short_and_batched_inputs(model):
    # shorter than the first token centre: one embedding, stamped inside the clip
    emb, ts = hear.get_timestamp_embeddings(_noise(3, 0.005, model.sample_rate), model)
    assert emb.shape == (3, 1, 128) and 0 <= float(ts[0, 0]) <= 5.0
    # sounds split into several forward passes give what one pass gives
    small = hear.HearModel(model.encoder, batch_size=2)
    audio = _noise(5, 1.0, model.sample_rate, seed=3)
    torch.testing.assert_close(
        hear.get_timestamp_embeddings(audio, small)[0],
        hear.get_timestamp_embeddings(audio, model)[0],
        rtol=1e-4,
        atol=1e-5,
    )
    torch.testing.assert_close(
        hear.get_scene_embeddings(audio, small), hear.get_scene_embeddings(audio, model)
    )


def test_hop_option_and_errors(model_dir, model):
    coarse = hear.load_model(str(model_dir), hop_ms=80)
    assert coarse.n_shifts == 2
    _, ts = hear.get_timestamp_embeddings(_noise(1, 1.0, 16000), coarse)
    assert np.allclose(np.diff(ts[0].numpy()), 80.0)
    with pytest.raises(ValueError, match="hop_ms=30 is not available"):
        hear.load_model(str(model_dir), hop_ms=30)
    with pytest.raises(ValueError, match="needs the path"):
        hear.load_model("")
    with pytest.raises(ValueError, match=r"\[n_sounds, n_samples\]"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(TypeError, match="load_model"):
        hear.get_scene_embeddings(torch.zeros(1, 16000), load_encoder(model_dir))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_outputs_follow_the_audio(model_dir):
    gpu = hear.load_model(str(model_dir), device="cuda")
    audio = _noise(2, 1.07, 16000).cuda()
    emb, ts = hear.get_timestamp_embeddings(audio, gpu)
    scene = hear.get_scene_embeddings(audio, gpu)
    assert emb.is_cuda and ts.is_cuda and scene.is_cuda and emb.dtype == torch.float32


# ---- every encoder of the contract: MAST (pooled 2-D tokens) and ATST's frame-token layout -------


@pytest.fixture(scope="module", params=["mast", "atst-mast", "atst-vit"])
def other_model(request, tmp_path_factory):
    """A MAST with its own 64 x 64 output tokens (640 ms: 16 passes of 40 ms), and the layout an
    ATST recipe asks for (40 ms full-frequency tokens, one pass) on MAST and on a ViT."""
    out = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    if request.param == "mast":
        backbone, preset = create_model("mast_mini", n_mels=64), get_preset("kaldi", n_mels=64)
    else:
        name = "mast_mini" if request.param == "atst-mast" else "vit_mini_patch16"
        backbone, preset = create_model(name, n_mels=64, frame_tokens=4), get_preset("atst")
    export_encoder(backbone, preset, out)
    return request.param, hear.load_model(str(out))


@pytest.mark.parametrize("seconds", [1.07, 4.0])
def test_hear_validator_checks_with_every_encoder_layout(other_model, seconds):
    kind, model = other_model
    assert model.hop_ms == 40.0 and model.n_shifts == (16 if kind == "mast" else 1)
    audio = _noise(2, seconds, model.sample_rate)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == ts.dtype == torch.float32 and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size and torch.isfinite(emb).all()
    diff = np.diff(ts.numpy(), axis=1)
    assert np.abs(diff - 40.0).max() < 1e-3
    assert (
        0 <= float(ts.min()) <= 40.0 and 1000 * seconds - 40.0 <= float(ts.max()) <= 1000 * seconds
    )
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (2, model.scene_embedding_size)
    # the undelayed pass is the encoder's own frame embeddings, stamped at their centres
    with torch.no_grad():
        frames, centres = model.encoder.frames(audio)
    hop = model.encoder.frames_per_token * model.encoder.frontend.hop_length
    expected = 1000.0 * hop / model.sample_rate * torch.arange(centres.shape[1])
    # a token's centre: the mean of its frames' centres (centred frames: frame k at 10 k ms)
    torch.testing.assert_close(centres[0] - centres[0, 0], expected)
    for t, centre in enumerate(centres[0].tolist()):
        j = np.flatnonzero(np.isclose(ts[0].numpy(), centre))
        if len(j):
            torch.testing.assert_close(emb[:, int(j[0])], frames[:, t])
