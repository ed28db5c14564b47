"""The papers' front-end presets against float64 NumPy re-implementations of their formulas.

``kaldi32k``: torchaudio.compliance.kaldi.fbank at 32 kHz as ASiT calls it (Sara-Ahmed/ASiT
data_transformations.py), checked on every backend, and the asit recipe's paper settings exporting
an encoder at 32 kHz.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastspec.cli import main
from fastspec.frontend import get_preset, logmel, logmel_reference, read_stats_file

SR32 = 32000
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _signal(kind: str, num_samples: int, sr: int, seed: int = 0) -> np.ndarray:
    """float32 signals over a -40 dB noise floor (as recordings have; see tests/test_frontend.py)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sr
    floor = 0.005 * rng.standard_normal(num_samples)
    if kind == "noise":
        x = 0.1 * rng.standard_normal(num_samples)
    elif kind == "chirp":  # 100 Hz -> 14 kHz over 1 s: reaches the 8-16 kHz band only 32 kHz has
        x = 0.3 * np.sin(2 * np.pi * (100.0 * t + 6950.0 * t**2)) + floor
    else:
        x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 11000.0 * t) + floor
    return x.astype(np.float32)


def _kaldi_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def kaldi_fbank_np(x: np.ndarray, sr: int, n_mels: int = 128, low: float = 20.0) -> np.ndarray:
    """Kaldi fbank in float64 (snip_edges, DC removal, pre-emphasis 0.97, symmetric Hann,
    power spectrum, Kaldi mel triangles without the Nyquist bin, ln floored at float32 eps)."""
    win, hop = int(sr * 0.025), int(sr * 0.010)
    n_fft = 1 << (win - 1).bit_length()
    count = 1 + (len(x) - win) // hop
    frames = np.stack([x[t * hop : t * hop + win] for t in range(count)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    shifted = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * shifted
    n = np.arange(win)
    frames *= 0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    mel = power[:, : n_fft // 2] @ kaldi_banks_np(sr, n_fft, n_mels, low, sr / 2).T
    return np.log(np.maximum(mel, FLOAT32_EPS))


def kaldi_banks_np(sr: int, n_fft: int, n_mels: int, low: float, high: float) -> np.ndarray:
    """torchaudio.compliance.kaldi.get_mel_banks: triangles linear in Kaldi mel over the
    n_fft // 2 bins below Nyquist (the Nyquist bin's weight is 0), [n_mels, n_fft // 2]."""
    mel_low, mel_high = _kaldi_mel(low), _kaldi_mel(high)
    delta = (mel_high - mel_low) / (n_mels + 1)
    bin_mel = _kaldi_mel(np.arange(n_fft // 2) * sr / n_fft)
    left = mel_low + delta * np.arange(n_mels)[:, None]
    up = (bin_mel - left) / delta
    down = (left + 2 * delta - bin_mel) / delta
    return np.maximum(0.0, np.minimum(up, down))


def _ast_norm(x):
    return (x + 4.2677393) / (2 * 4.5689974)


def test_kaldi32k_is_the_kaldi_preset_at_32khz():
    cfg = get_preset("kaldi32k")
    assert (cfg.sample_rate, cfg.win_length, cfg.hop_length, cfg.n_fft) == (32000, 800, 320, 1024)
    assert (cfg.n_mels, cfg.f_max) == (128, 16000.0)
    assert cfg == get_preset("kaldi", sample_rate=32000)
    with pytest.raises(ValueError, match="kaldi32k.*sample_rate=32000.*16000"):
        get_preset("kaldi32k", sample_rate=16000)


@pytest.mark.parametrize("kind", ["noise", "chirp", "tone"])
def test_kaldi32k_float64_reference_matches_the_numpy_formula(kind):
    x = _signal(kind, SR32 + 517, SR32)
    expected = kaldi_fbank_np(x, SR32)
    got = logmel_reference(torch.from_numpy(x)[None].double(), None, get_preset("kaldi32k"))
    assert got.shape == (1, 1 + (SR32 + 517 - 800) // 320, 128)
    np.testing.assert_allclose(got[0].numpy(), _ast_norm(expected), rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_kaldi32k_every_backend_matches_the_numpy_formula(backend):
    # the Triton kernel runs interpreted on CPU (tests/conftest.py): a short clip
    num_samples = 4000 if backend == "triton" else SR32 // 2 + 77
    xs = [_signal(kind, num_samples, SR32, seed=i) for i, kind in enumerate(["noise", "chirp"])]
    expected = np.stack([_ast_norm(kaldi_fbank_np(x, SR32)) for x in xs])
    got = logmel(torch.from_numpy(np.stack(xs)), preset="kaldi32k", backend=backend).numpy()
    assert got.shape == expected.shape == (2, 1 + (num_samples - 800) // 320, 128)
    err = np.abs(got.astype(np.float64) - expected)
    # float32 FFT rounding, as for the 16 kHz preset in tests/test_frontend.py (in ln units / 9.14)
    assert err.mean() <= 1e-5 and err.max() <= 1e-3, (err.mean(), err.max())


def test_kaldi32k_matches_kaldi_native_fbank_at_32khz():
    knf = pytest.importorskip("kaldi_native_fbank")
    x = _signal("chirp", SR32, SR32)
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SR32
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.mel_opts.num_bins = 80  # knf refuses 128 filters on 31.25 Hz bins (empty low filters)
    opts.mel_opts.low_freq = 20.0
    opts.use_energy = False
    opts.htk_compat = True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SR32, x.tolist())
    fbank.input_finished()
    expected = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    got = logmel(torch.from_numpy(x)[None], preset="kaldi32k", n_mels=80, normalize=False)[0]
    err = np.abs(got.numpy() - expected)
    assert got.shape == expected.shape and err.mean() <= 5e-5 and err.max() <= 5e-3, err.max()


def test_asit_paper_settings_export_an_encoder_at_32khz(tmp_path):
    sf = pytest.importorskip("soundfile")
    data = tmp_path / "audio"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # 16 kHz files: the loader resamples them to the paper's 32 kHz
        sf.write(data / f"a{i}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    out = tmp_path / "out"
    argv = ["pretrain", "--recipe", "asit", "--data", str(data), "--steps", "0", "--out", str(out)]
    argv += ["--model", "vit_mini_patch16", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    frontend = json.loads((out / "encoder.json").read_text())["frontend"]
    assert frontend == get_preset("kaldi32k").to_dict()
    import fastspec

    assert fastspec.load_encoder(out).sample_rate == 32000
    # main_ASiT.py's defaults with the README's 4 GPUs x 32, vision_transformer.py's vit_base
    cfg = json.loads((out / "config.json").read_text())
    model, optim, train = cfg["model"], cfg["optim"], cfg["train"]
    assert (model["pos_embed"], model["max_frames"], model["qkv_bias"], model["drop_path"]) == (
        "learned", 592, True, 0.1)  # fmt: skip
    assert (optim["grad_clip"], optim["clip_mode"]) == (3.0, "per_param")
    assert (optim["blr"], optim["min_lr"], optim["warmup_epochs"]) == (5e-4, 1e-6, 10.0)
    assert (optim["weight_decay"], optim["weight_decay_end"]) == (0.04, 0.4)
    assert (train["global_batch"], train["batch_size"], optim["accum_steps"]) == (128, 2, 64)
    assert train["epochs"] is None  # --steps 0 wins over the paper's 100 epochs
    assert cfg["asit"]["roll_prob"] == 0.5 and cfg["asit"]["crop_seconds"] == 6.0


def test_asit_trains_on_kaldi32k_features_of_its_waveform_views(tmp_path, monkeypatch):
    """The loop hands ASiT's waveform views, whole, to the paper's front end: each view's
    features are the float64 Kaldi fbank of exactly those samples."""
    sf = pytest.importorskip("soundfile")
    from fastspec.recipes.asit import ASiT

    data = tmp_path / "audio"
    data.mkdir()
    for i, kind in enumerate(["noise", "chirp", "tone"]):  # 0.5 s: padded in the 10 s clips
        sf.write(data / f"a{i}.wav", _signal(kind, SR32 // 2 - 700 * i, SR32, seed=i), SR32)
    seen = {}
    views_of, forward = ASiT.waveform_views, ASiT.forward

    def spy_views(self, wave, lengths, generator):
        seen["views"] = views_of(self, wave, lengths, generator)
        return seen["views"]

    def spy_forward(self, mel, generator=None, frame_lengths=None):
        seen["mel"], seen["frame_lengths"] = mel, frame_lengths
        return forward(self, mel, generator, frame_lengths)

    monkeypatch.setattr(ASiT, "waveform_views", spy_views)
    monkeypatch.setattr(ASiT, "forward", spy_forward)
    argv = ["pretrain", "--recipe", "asit", "--data", str(data), "--steps", "1", "--out",
            str(tmp_path / "out"), "--model", "vit_mini_patch16", "--batch-size", "3",
            "--device", "cpu", "--amp", "none", "--no-progress", "train.global_batch=null",
            "optim.warmup_epochs=null", "asit.crop_seconds=0.2", "asit.out_dim_global=16",
            "asit.out_dim_local=8", "asit.head_hidden_dim=16", "asit.head_bottleneck_dim=8",
            "asit.rec_hidden_dim=16", "asit.rec_bottleneck_dim=8"]  # fmt: skip
    assert main(argv) == 0
    views, mel = seen["views"].numpy(), seen["mel"].numpy()
    assert views.shape == (6, 6400) and seen["frame_lengths"] is None  # 2 views of 3 clips
    assert mel.shape == (6, 1 + (6400 - 800) // 320, 128)
    expected = np.stack([_ast_norm(kaldi_fbank_np(v, SR32)) for v in views])
    err = np.abs(mel.astype(np.float64) - expected)
    assert err.mean() <= 1e-5 and err.max() <= 1e-3, (err.mean(), err.max())


# ----- maskspec -------------------------------------------------------------------------------


def maskspec_np(x: np.ndarray, mean=None, std=None, sr=SR32, low=0.0, high=15000.0) -> np.ndarray:
    """MaskSpec's AugmentMelSTFT (models/models_mae.py; mel range low..high Hz, by default its
    evaluation range) in float64: conv1d
    pre-emphasis [-0.97, 1] of the whole clip (one sample shorter), torch.stft(n_fft=1024,
    win_length=800, hop_length=320, hann_window(800, periodic=False), center=True, reflect)
    power, kaldi get_mel_banks(128, 1024, sr, 0, 15000) padded with a zero Nyquist column,
    log(x + 1e-5), then (x - mean[f]) / std[f] (its (x + 4.5) / 5 folded into the statistics)."""
    n_fft, win, hop, n_mels = 1024, 800, 320, 128
    x = x.astype(np.float64)
    x = x[1:] - 0.97 * x[:-1]
    padded = np.pad(x, n_fft // 2, mode="reflect")
    count = 1 + len(x) // hop
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))
    frames = np.stack([padded[t * hop : t * hop + n_fft] for t in range(count)]) * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    banks = kaldi_banks_np(sr, n_fft, n_mels, low, high)
    out = np.log(power[:, : n_fft // 2] @ banks.T + 1e-5)
    mean = np.zeros(n_mels) if mean is None else np.asarray(mean)
    std = np.ones(n_mels) if std is None else np.asarray(std)
    return (out - mean) / std


def _bins(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(-6.0, 2.0, 128), rng.uniform(0.5, 3.0, 128)


@pytest.mark.parametrize("kind", ["noise", "chirp", "tone"])
def test_maskspec_matches_the_numpy_formula(kind):
    mean, std = _bins()
    cfg = get_preset("maskspec", norm_mean_bins=mean, norm_std_bins=std)
    x = _signal(kind, SR32 // 2 + 77, SR32)
    expected = maskspec_np(x, mean, std)
    wave = torch.from_numpy(x)[None]
    got64 = logmel_reference(wave.double(), None, cfg)[0].numpy()
    assert got64.shape == expected.shape == (1 + (len(x) - 1) // 320, 128)
    np.testing.assert_allclose(got64, expected, rtol=0, atol=1e-9)
    got32 = logmel(wave, preset=cfg, backend="torch")[0].numpy()
    err = np.abs(got32 - expected)
    assert err.mean() <= 1e-5 and err.max() <= 2e-3, (err.mean(), err.max())


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_maskspec_reads_int16_pcm_as_full_scale_floats(backend):
    """int16 PCM is x / 32768 before the whole-clip pre-emphasis, as on every other path."""
    x = _signal("chirp", 6000, SR32)
    pcm = torch.from_numpy(np.round(x * 32767).astype(np.int16))[None]
    expected = maskspec_np(pcm[0].numpy() / 32768.0)
    got = logmel(pcm, preset=get_preset("maskspec"), backend=backend)[0].numpy()
    assert np.abs(got - expected).max() <= 2e-3


def test_maskspec_falls_back_to_torch_with_a_notice_and_keeps_padding_zero():
    from fastspec import _logging

    mean, std = _bins()
    cfg = get_preset("maskspec", norm_mean_bins=mean, norm_std_bins=std)
    xs = np.stack([_signal("noise", 8000, SR32, seed=i) for i in range(2)])
    lengths = torch.tensor([8000, 5000])
    got = logmel(torch.from_numpy(xs), lengths=lengths, preset=cfg, backend="cpp").numpy()
    assert "log_offset" in _logging.notices()["frontend.cpp.config.log_offset"]
    for i, n in enumerate([8000, 5000]):
        frames = 1 + (n - 1) // 320
        expected = maskspec_np(xs[i, :n], mean, std)
        assert np.abs(got[i, :frames] - expected).max() <= 2e-3
        assert np.all(got[i, frames:] == 0.0)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_per_bin_normalisation_follows_every_backend_exactly(backend):
    mean, std = _bins(2)
    cfg = get_preset("kaldi32k", norm="per_bin", norm_mean_bins=mean, norm_std_bins=std)
    xs = torch.from_numpy(np.stack([_signal("chirp", 4000, SR32, seed=i) for i in range(2)]))
    lengths = torch.tensor([4000, 2500])
    raw = logmel(xs, lengths=lengths, preset=cfg, backend=backend, normalize=False)
    got = logmel(xs, lengths=lengths, preset=cfg, backend=backend)
    frames = [1 + (n - 800) // 320 for n in (4000, 2500)]
    for i, n in enumerate(frames):
        expected = (raw[i, :n].double().numpy() - mean) / std
        # float32 rounding of x * (1 / std) + (-mean / std) only (values up to ~10)
        np.testing.assert_allclose(got[i, :n].numpy(), expected, rtol=0, atol=1e-5)
        assert torch.all(got[i, n:] == 0)


def test_maskspec_without_statistics_is_mean_0_std_1_and_says_so():
    from fastspec import _logging

    cfg = get_preset("maskspec")
    assert "mean 0, std 1" in _logging.notices()["frontend.maskspec.stats"]
    x = _signal("tone", 6000, SR32)
    got = logmel(torch.from_numpy(x)[None], preset=cfg, backend="torch")[0].numpy()
    assert np.abs(got - maskspec_np(x)).max() <= 2e-3


def _wav_folder(root, sr, seconds=0.5, count=2):
    sf = pytest.importorskip("soundfile")
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        x = 0.1 * rng.standard_normal(int(seconds * sr)) * (1 + i)
        sf.write(root / f"a{i}.wav", x.astype(np.float32), sr)
    return root


def test_stats_file_is_read_and_normalises_each_bin(tmp_path):
    data = _wav_folder(tmp_path / "audio", SR32)
    path = tmp_path / "stats.json"
    assert main(["stats", str(data), "--preset", "maskspec", "--out", str(path)]) == 0
    bins = read_stats_file(path, 128)
    doc = json.loads(path.read_text())
    assert bins["norm_mean_bins"] == doc["mean"] and bins["norm_std_bins"] == doc["std"]
    cfg = get_preset("maskspec", **bins)
    import soundfile as sf

    feats = [logmel(torch.from_numpy(sf.read(p, dtype="float32")[0])[None], preset=cfg)[0]
             for p in sorted(data.glob("*.wav"))]  # fmt: skip
    all_frames = torch.cat(feats).double()
    assert all_frames.mean(0).abs().max() <= 1e-3
    assert (all_frames.std(0, unbiased=False) - 1).abs().max() <= 1e-3
    with pytest.raises(ValueError, match="stats.json: 128 mel bins, the front end has 64"):
        read_stats_file(path, 64)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a fastspec stats file"):
        read_stats_file(tmp_path / "bad.json")


def test_maskspec_paper_settings_export_an_encoder_at_32khz_with_the_statistics(tmp_path):
    data = _wav_folder(tmp_path / "audio", 16000, seconds=1.0)
    stats = tmp_path / "stats.json"
    assert main(["stats", str(data), "--preset", "maskspec", "--out", str(stats)]) == 0
    out = tmp_path / "out"
    argv = ["pretrain", "--recipe", "maskspec", "--data", str(data), "--steps", "0"]
    argv += ["--out", str(out), "--model", "vit_mini_patch16", "--batch-size", "2"]
    argv += ["--device", "cpu", "--no-progress", f"frontend.stats={stats}"]
    assert main(argv) == 0
    frontend = json.loads((out / "encoder.json").read_text())["frontend"]
    assert frontend["sample_rate"] == 32000 and frontend["log_offset"] == 1e-5
    assert frontend["norm_mean_bins"] == json.loads(stats.read_text())["mean"]
    config = json.loads((out / "config.json").read_text())
    assert get_preset("maskspec").center and config["data"]["clip_seconds"] == 9.92
    from fastspec.frontend import num_frames

    assert num_frames(round(9.92 * SR32), get_preset("maskspec")) == 992
    assert num_frames(round(9.91 * SR32), get_preset("maskspec")) == 991
    # MaskSpec's optimisation, in epochs of the global batch (--steps 0 replaced the epochs)
    optim, train = config["optim"], config["train"]
    assert (optim["blr"], optim["warmup_epochs"], optim["betas"]) == (1e-3, 40.0, [0.9, 0.95])
    assert (train["global_batch"], train["batch_size"]) == (512, 2)
    assert config["model"]["pos_embed"] == "sincos" and config["masking"]["ratio"] == 0.75
    import fastspec

    assert fastspec.load_encoder(out).sample_rate == 32000


# ----- atst-clip / atst-frame (Audio-WestlakeU/audiossl) ----------------------------------------

# per recipe: (config.json values, encoder.json model_config values) the reference gives
ATST_EXPECTED = {
    # methods/atst/train_base.sh, transform.py (6 s crops), models/atst/audio_transformer.py
    "atst-clip": (
        {"optim.blr": 2e-4, "optim.warmup_steps": 15_860, "train.global_batch": 1536,
         "atst.ema_momentum": 0.9995, "atst.crop_seconds": 6.0},
        {"class_token": True},
    ),
    # methods/atstframe/README.md (base model), audio_transformer.py (FrameAST: no class token)
    "atst-frame": (
        {"optim.blr": 8e-5, "optim.warmup_steps": 19_900, "train.global_batch": 864,
         "atst.ema_momentum": 0.9996, "atst.crop_seconds": 10.0, "masking.kind": "time_span",
         "masking.ratio": 0.65, "atst.span_length": 5},
        {"class_token": False},
    ),
}  # fmt: skip


@pytest.mark.parametrize("recipe", sorted(ATST_EXPECTED))
def test_atst_paper_settings_are_the_references(recipe, tmp_path):
    data = _wav_folder(tmp_path / "audio", 16000, seconds=1.0)
    out = tmp_path / "out"
    argv = ["pretrain", "--recipe", recipe, "--data", str(data), "--steps", "0", "--out", str(out)]
    argv += ["--model", "vit_mini_patch16", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    expected_config, expected_arch = ATST_EXPECTED[recipe]
    shared = {"model.pos_embed": "learned", "model.max_frames": 1004, "model.qkv_bias": False,
              "model.drop_path": 0.1, "optim.min_lr": 1e-6, "optim.weight_decay": 0.04,
              "optim.weight_decay_end": 0.4, "optim.betas": [0.9, 0.999],
              "optim.grad_clip": 0.0, "frontend.n_mels": 64}  # fmt: skip
    for key, want in {**shared, **expected_config}.items():
        section, name = key.split(".")
        assert config[section][name] == want, key
    # the papers count steps: 398,000 / 318,000 unless --steps says otherwise (here 0)
    assert config["train"]["epochs"] is None and config["optim"]["warmup_epochs"] is None
    encoder = json.loads((out / "encoder.json").read_text())
    arch = encoder["model_config"]
    want_arch = {"pos_embed": "learned", "qkv_bias": False, "drop_path_rate": 0.1}
    assert {k: arch[k] for k in want_arch} == want_arch
    assert {k: arch[k] for k in expected_arch} == expected_arch
    assert encoder["frontend"] == get_preset("atst", n_mels=64).to_dict()
    import fastspec

    enc = fastspec.load_encoder(out)
    assert enc.sample_rate == 16000 and enc.backbone.pos_table.shape[0] == 251
    with torch.no_grad():  # a whole 10 s clip (1001 frames) fits the learned table
        assert torch.isfinite(enc(0.1 * torch.randn(1, 160_000))).all()
