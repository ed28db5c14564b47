"""Log-mel front end: presets against the peers they reproduce, the torch backend against the
float64 reference, odd shapes, padding semantics, config and backend selection.

Peers: kaldi-native-fbank (Kaldi fbank, 80 mel: it refuses 128 mel at 16 kHz / 512-point FFT)
and librosa (the ATST torchaudio MelSpectrogram + AmplitudeToDB chain, which librosa reproduces
with htk=True, norm=None). torchaudio itself cannot be installed next to the CPU torch build.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fastspec.kernels import reference as ref

from fastspec import _logging
from fastspec.frontend import (
    FrontendConfig,
    LogMel,
    backend_report,
    get_preset,
    list_presets,
    logmel,
    logmel_reference,
    num_frames,
    resolve_backend,
)
from fastspec.frontend import backend as backend_mod

SR = 16000


def _signal(kind: str, num_samples: int, seed: int = 0) -> np.ndarray:
    """Real-valued float32 test signals in [-1, 1].

    Tones and chirps sit on a -40 dB noise floor, as recordings do. Without one, most mel bins
    hold leakage ~1e-12 below the peak power, next to the log floor, where every float32 Kaldi
    implementation (kaldi-native-fbank and our float32 backend alike) is off the float64 value by
    up to 1e-2; that is float32 itself, not a difference between implementations.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SR
    floor = 0.005 * rng.standard_normal(num_samples)
    if kind == "noise":
        x = 0.1 * rng.standard_normal(num_samples)
    elif kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3100.0 * t) + floor
    elif kind == "chirp":
        # 100 Hz -> 7 kHz linear sweep over 2 s
        x = 0.3 * np.sin(2 * np.pi * (100.0 * t + 1725.0 * t**2)) + floor
    elif kind == "square":
        x = np.sign(np.sin(2 * np.pi * 250.0 * t + 0.1))
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def _knf_fbank(x: np.ndarray, n_mels: int) -> np.ndarray:
    """kaldi-native-fbank with the options AST / Audio-MAE pass to torchaudio's Kaldi fbank."""
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SR
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.snip_edges = True
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.round_to_power_of_two = True
    opts.mel_opts.num_bins = n_mels
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0  # <= 0: relative to Nyquist
    opts.use_energy = False
    opts.htk_compat = True
    fbank = knf.OnlineFbank(opts)
    # samples go in unscaled: knf, like torchaudio's fbank on torchaudio.load output, takes the
    # [-1, 1] floats as they are (int16 scaling would add a constant ln(32768^2) = 20.8)
    fbank.accept_waveform(SR, x.tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


# ----- presets against peers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["noise", "chirp", "tone"])
def test_kaldi_preset_matches_kaldi_native_fbank_80mel(kind):
    x = _signal(kind, 2 * SR)
    expected = _knf_fbank(x, 80)
    cfg = get_preset("kaldi", n_mels=80)
    wave = torch.from_numpy(x)[None]
    got64 = logmel_reference(wave.double(), None, cfg, normalize=False)[0].numpy()
    got32 = logmel(wave, preset=cfg, normalize=False, backend="torch")[0].numpy()
    assert got64.shape == expected.shape == (1 + (2 * SR - 400) // 160, 80)
    for got in (got64, got32):
        err = np.abs(got - expected)
        assert err.mean() <= 5e-5, err.mean()
        assert err.max() <= 5e-3, err.max()


def test_kaldi_mel_banks_match_kaldi_native_fbank():
    knf = pytest.importorskip("kaldi_native_fbank")
    mel_opts = knf.MelBanksOptions()
    mel_opts.num_bins, mel_opts.low_freq, mel_opts.high_freq = 80, 20.0, 0.0
    frame_opts = knf.FrameExtractionOptions()
    frame_opts.samp_freq = SR
    expected = knf.MelBanks(mel_opts, frame_opts, 1.0).get_matrix()  # [80, 257] float32
    got = ref.kaldi_mel_banks(80, 512, SR, 20.0, SR / 2, dtype=torch.float64).numpy().T
    # knf builds the triangles in float32 (mel values ~2000 with ~1e-4 rounding)
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)
    assert np.all(got[:, -1] == 0.0)  # Nyquist bin has weight 0, as in Kaldi


def test_kaldi_128mel_has_empty_low_filters_like_torchaudio():
    fb = ref.kaldi_mel_banks(128, 512, SR, 20.0, SR / 2, dtype=torch.float64)
    empty = (fb == 0).all(dim=0)
    # filters narrower than one 31.25 Hz bin at the bottom: allowed (torchaudio), no NaN
    assert empty.any() and not empty[64:].any()
    assert torch.isfinite(fb).all()


@pytest.mark.parametrize("kind", ["noise", "chirp", "tone", "square"])
def test_kaldi_128mel_float32_backend_vs_float64_reference(kind):
    x = torch.from_numpy(_signal(kind, SR + 123))[None]
    cfg = get_preset("kaldi")
    expected = logmel_reference(x.double(), None, cfg, normalize=False)
    got = logmel(x, preset=cfg, normalize=False, backend="torch")
    assert got.dtype == torch.float32 and got.shape == (1, 99, 128)
    err = (got.double() - expected).abs()
    # float32 rounding of FFT bins with 80+ dB of dynamic range: measured max 2e-3, mean 4e-5
    assert err.mean() <= 5e-5 and err.max() <= 5e-3, (err.mean(), err.max())


def _librosa_atst(x: np.ndarray) -> np.ndarray:
    librosa = pytest.importorskip("librosa")
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float64),
        sr=SR,
        n_fft=1024,
        hop_length=160,
        win_length=1024,
        window="hann",  # scipy's periodic Hann, as torch.hann_window's default
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=64,
        fmin=60.0,
        fmax=7800.0,
        htk=True,
        norm=None,
        dtype=np.float64,
    )
    # AmplitudeToDB(stype="power", top_db=80): 10 log10(max(x, 1e-10)), ref 1, clip max - 80
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0).T


@pytest.mark.filterwarnings("ignore:n_fft=1024 is too large")
@pytest.mark.parametrize(
    "kind, num_samples", [("noise", SR), ("chirp", SR), ("tone", SR), ("noise", 700)]
)
def test_atst_preset_matches_librosa(kind, num_samples):
    x = _signal(kind, num_samples)
    expected = _librosa_atst(x)
    cfg = get_preset("atst")
    wave = torch.from_numpy(x)[None]
    got64 = logmel_reference(wave.double(), None, cfg, normalize=False)[0].numpy()
    got32 = logmel(wave, preset=cfg, normalize=False, backend="torch")[0].numpy()
    assert got64.shape == expected.shape == (1 + num_samples // 160, 64)
    # same float64 math, different summation order: agreement to rounding
    np.testing.assert_allclose(got64, expected, rtol=0, atol=1e-8)
    # float32: the dB values are 10 log10 of float32 mel energies; their relative rounding
    # (~1e-6 on strong bins, up to ~1e-4 on bins 60-80 dB below the peak) is 4.3x that in dB.
    # Measured max 4e-4 dB; 5e-3 dB leaves headroom and is still 2e-5 of the 80 dB range.
    err = np.abs(got32 - expected)
    assert err.max() <= 5e-3 and err.mean() <= 1e-4, (err.max(), err.mean())


def test_normalisation_constants_of_the_papers():
    x = torch.from_numpy(_signal("noise", 4000))[None]
    raw = logmel(x, preset="kaldi", normalize=False)
    # AST: (fbank - (-4.2677393)) / (4.5689974 * 2)
    torch.testing.assert_close(
        logmel(x, preset="kaldi"), (raw + 4.2677393) / (2 * 4.5689974), rtol=0, atol=1e-6
    )
    raw = logmel(x, preset="atst", normalize=False)
    # ATST MinMax(min=-79.6482, max=50.6842): (x - min) / (max - min) * 2 - 1
    torch.testing.assert_close(
        logmel(x, preset="atst"), (raw + 79.6482) / (50.6842 + 79.6482) * 2 - 1, rtol=0, atol=1e-6
    )


def test_atst_top_db_clamps_each_clip_at_its_own_max():
    loud = 0.9 * torch.from_numpy(_signal("tone", 8000))
    # a loud tone then near-silence: the quiet frames sit exactly at clip max - 80 dB
    wave = torch.cat([loud, 1e-6 * torch.from_numpy(_signal("noise", 8000))])[None]
    out = logmel(wave, preset="atst", normalize=False)[0]
    assert math.isclose(out.min().item(), out.max().item() - 80.0, abs_tol=1e-3)
    assert (out[-20:] == out.min()).float().mean() > 0.9


# ----- reference internals ----------------------------------------------------------------------


@pytest.mark.parametrize("remove_dc, preemphasis", [(True, 0.97), (False, 0.0), (True, 0.0)])
def test_folded_frame_basis_equals_explicit_processing(remove_dc, preemphasis):
    window = ref.window_ref("hann", 400, False, 400, dtype=torch.float64)
    basis_re, basis_im = ref.frame_spectrum_basis(window, 512, remove_dc, preemphasis)
    frames = torch.randn(5, 400, dtype=torch.float64) + 0.7  # with a DC offset
    y = frames - frames.mean(-1, keepdim=True) if remove_dc else frames
    if preemphasis:
        y = y - preemphasis * torch.cat([y[:, :1], y[:, :-1]], dim=1)
    spec = torch.fft.rfft(y * window, n=512)
    torch.testing.assert_close(frames @ basis_re, spec.real, rtol=0, atol=1e-10)
    torch.testing.assert_close(frames @ basis_im, spec.imag, rtol=0, atol=1e-10)


@pytest.mark.parametrize("length", [1, 3, 300, 700, 1000])
def test_center_padding_reflects_at_each_clip_length_like_numpy(length):
    wave = torch.randn(2, 1000, dtype=torch.float64)
    lengths = torch.tensor([1000, length])
    padded = ref._center_pad(wave, lengths, 512, "reflect")
    expected = np.pad(wave[1, :length].numpy(), 512, mode="reflect")
    np.testing.assert_array_equal(padded[1, : length + 1024].numpy(), expected)


def test_windows_match_torch():
    torch.testing.assert_close(
        ref.window_ref("hann", 400, False, 400, dtype=torch.float64),
        torch.hann_window(400, periodic=False, dtype=torch.float64),
    )
    torch.testing.assert_close(
        ref.window_ref("hann", 1024, True, 1024, dtype=torch.float64),
        torch.hann_window(1024, periodic=True, dtype=torch.float64),
    )


# ----- odd shapes and padding semantics ---------------------------------------------------------


@pytest.mark.parametrize(
    "num_samples, frames", [(399, 0), (400, 1), (559, 1), (560, 2), (400 + 996 * 160, 997)]
)
def test_kaldi_frame_counts(num_samples, frames):
    cfg = get_preset("kaldi")
    assert num_frames(num_samples, cfg) == frames
    assert num_frames(torch.tensor([num_samples]), cfg).tolist() == [frames]
    out = logmel(torch.zeros(2, num_samples), preset=cfg)
    assert out.shape == (2, frames, 128) and torch.isfinite(out).all()


def test_997_frames_against_float64_reference():
    x = torch.from_numpy(_signal("chirp", 400 + 996 * 160))[None]
    got = logmel(x, backend="torch")
    assert got.shape == (1, 997, 128)
    expected = logmel_reference(x.double(), None, get_preset("kaldi"))
    assert (got.double() - expected).abs().max() <= 1e-3


def test_clip_shorter_than_one_window_gives_zero_frames():
    out = logmel(torch.zeros(3, 300))
    assert out.shape == (3, 0, 128) and out.dtype == torch.float32
    assert logmel(torch.zeros(300)).shape == (0, 128)


def test_atst_frame_count_is_one_plus_samples_over_hop():
    cfg = get_preset("atst")
    for num_samples in (1, 159, 160, 16000):
        assert num_frames(num_samples, cfg) == 1 + num_samples // 160
        assert logmel(torch.randn(num_samples) * 0.1, preset=cfg).shape == (
            1 + num_samples // 160,
            64,
        )


@pytest.mark.parametrize("preset", ["kaldi", "atst"])
def test_padded_batch_equals_clips_alone_and_zeros_past_lengths(preset):
    lengths = [4321, 2777, 350, 1601]
    num_samples = max(lengths)
    clips = [torch.from_numpy(_signal("chirp", n, seed=i)) for i, n in enumerate(lengths)]
    wave = torch.zeros(len(clips), num_samples)
    for i, clip in enumerate(clips):
        wave[i, : clip.numel()] = clip
        wave[i, clip.numel() :] = 0.5  # padding content must not leak into the features
    out = logmel(wave, lengths=torch.tensor(lengths), preset=preset)
    cfg = get_preset(preset)
    for i, clip in enumerate(clips):
        alone = logmel(clip[None], preset=preset)[0]
        n_valid = num_frames(lengths[i], cfg)
        assert alone.shape[0] == n_valid
        torch.testing.assert_close(out[i, :n_valid], alone, rtol=0, atol=2e-5)
        assert (out[i, n_valid:] == 0.0).all()


def test_silence_is_finite_and_at_the_log_floor():
    out = logmel(torch.zeros(2, 4000), normalize=False)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full_like(out, math.log(1.1920928955078125e-07)))
    assert torch.isfinite(logmel(torch.zeros(1, 4000), preset="atst")).all()


def test_full_scale_square_wave():
    x = torch.from_numpy(_signal("square", 8000))[None]
    for preset in ("kaldi", "atst"):
        got = logmel(x, preset=preset)
        expected = logmel_reference(x.double(), None, get_preset(preset))
        assert torch.isfinite(got).all()
        assert (got.double() - expected).abs().max() <= 1e-3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_names_the_clip(bad):
    wave = torch.zeros(3, 1000)
    wave[1, 500] = bad
    with pytest.raises(ValueError, match=r"clip\(s\) \[1\]"):
        logmel(wave)


def test_non_finite_padding_past_lengths_is_ignored():
    wave = torch.zeros(2, 1000)
    wave[1, 900] = float("nan")
    out = logmel(wave, lengths=torch.tensor([1000, 800]))
    assert torch.isfinite(out).all()


def test_bad_lengths_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="lengths"):
        logmel(torch.zeros(2, 1000), lengths=torch.tensor([1000, 1001]))
    with pytest.raises(ValueError, match="lengths"):
        logmel(torch.zeros(2, 1000), lengths=torch.tensor([1000.0, 10.0]))
    with pytest.raises(ValueError, match="shape"):
        logmel(torch.zeros(2, 3, 1000))


def test_1d_input_and_int16_input():
    x = torch.from_numpy(_signal("noise", 3000))
    batched = logmel(x[None])[0]
    torch.testing.assert_close(logmel(x), batched)
    pcm = torch.round(x * 32767).to(torch.int16)
    torch.testing.assert_close(logmel(pcm), logmel(pcm.float() / 32768.0))


# ----- config -----------------------------------------------------------------------------------


def test_presets_listed_and_config_round_trips_through_json():
    assert {"kaldi", "atst"} <= set(list_presets())
    for name in list_presets():
        cfg = get_preset(name)
        data = json.loads(json.dumps(cfg.to_dict()))
        assert FrontendConfig.from_dict(data) == cfg


def test_kaldi_preset_settings():
    cfg = get_preset("kaldi")
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.n_mels) == (400, 160, 512, 128)
    assert (cfg.f_min, cfg.f_max, cfg.preemphasis, cfg.center) == (20.0, 8000.0, 0.97, False)
    atst = get_preset("atst")
    assert (atst.n_fft, atst.hop_length, atst.n_mels, atst.f_min, atst.f_max) == (
        1024,
        160,
        64,
        60.0,
        7800.0,
    )
    assert (atst.top_db, atst.norm_min, atst.norm_max) == (80.0, -79.6482, 50.6842)


def test_millisecond_settings_follow_an_overridden_sample_rate():
    cfg = get_preset("kaldi", sample_rate=8000)
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.f_max) == (200, 80, 256, 4000.0)
    assert get_preset("kaldi", sample_rate=8000, hop_length=100).hop_length == 100
    with pytest.raises(ValueError, match="f_max"):
        get_preset("atst", sample_rate=8000)  # 7800 Hz is past the 4 kHz Nyquist


def test_unknown_names_are_errors_that_name_them():
    with pytest.raises(ValueError, match=r"'nope'.*atst.*kaldi"):
        get_preset("nope")
    with pytest.raises(ValueError, match="n_mel_bins"):
        get_preset("kaldi", n_mel_bins=80)
    with pytest.raises(ValueError, match="bogus"):
        FrontendConfig.from_dict({**get_preset("kaldi").to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="window"):
        FrontendConfig(window="blackmanharris")
    with pytest.raises(ValueError, match="n_mels"):
        FrontendConfig(n_mels=0)
    with pytest.raises(ValueError, match="n_fft"):
        FrontendConfig(n_fft=256)


def test_field_types_are_checked_as_annotated():
    # every int, float and bool field (optional ones too) is type-checked, in one message
    with pytest.raises(ValueError) as excinfo:
        FrontendConfig(n_mels=64.0, n_fft=512.0, top_db="80", f_max="8k", center=1)
    message = str(excinfo.value)
    assert "n_mels must be an int" in message and "n_fft must be an int" in message
    assert "top_db must be a number" in message and "f_max must be a number" in message
    assert "center must be a bool" in message
    # ints are accepted for floats and stored as floats; None stays None where allowed
    cfg = FrontendConfig(power=1, log_offset=0, top_db=None, n_fft=None)
    assert type(cfg.power) is float and type(cfg.log_offset) is float and cfg.top_db is None


# ----- module -----------------------------------------------------------------------------------


def test_logmel_module():
    module = LogMel("kaldi", n_mels=80)
    assert (module.sample_rate, module.n_mels, module.hop_length, module.win_length) == (
        16000,
        80,
        160,
        400,
    )
    assert list(module.parameters()) == [] and module.state_dict() == {}
    assert module.num_frames(16000) == 98
    assert module.num_frames(torch.tensor([16000, 399])).tolist() == [98, 0]
    times = module.frame_times_ms(3)
    torch.testing.assert_close(times, torch.tensor([12.5, 22.5, 32.5], dtype=torch.float64))
    atst_times = LogMel("atst").frame_times_ms(2)
    torch.testing.assert_close(atst_times, torch.tensor([0.0, 10.0], dtype=torch.float64))
    x = torch.randn(2, 5000) * 0.1
    lengths = torch.tensor([5000, 3000])
    torch.testing.assert_close(
        module(x, lengths), logmel(x, lengths=lengths, preset="kaldi", n_mels=80)
    )
    assert module.config == get_preset("kaldi", n_mels=80)
    assert LogMel(module.config).config is module.config
    assert LogMel.from_config(module.config).config is module.config


# ----- backend selection ------------------------------------------------------------------------


def test_auto_on_cpu_is_cpp_or_torch_with_a_notice(monkeypatch):
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    chosen = resolve_backend("auto", "cpu")
    assert chosen in ("cpp", "torch")
    if chosen == "torch":  # only where fastspec._C cannot be built, and then never silently
        assert "fastspec._C is unavailable" in _logging.notices()["frontend.cpp"]
    assert resolve_backend("torch", torch.device("cpu")) == "torch"


def test_cpp_on_a_cuda_tensor_uses_the_cuda_choice_with_a_notice(monkeypatch):
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(backend_mod, "_kernel_import", lambda: (False, "no kernel here"))
    assert resolve_backend("cpp", "cuda") == "torch"
    assert "runs on CPU tensors" in _logging.notices()["frontend.cpp.cuda"]


def test_triton_on_cpu_without_interpreter_falls_back_with_a_notice(monkeypatch):
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(backend_mod, "_interpret_active", lambda: False)
    assert resolve_backend("triton", "cpu") == "torch"
    assert "TRITON_INTERPRET" in _logging.notices()["frontend.triton.cpu"]


def test_env_var_forces_the_backend(monkeypatch):
    monkeypatch.setenv(backend_mod.ENV_VAR, "torch")
    assert resolve_backend("triton", "cpu") == "torch"
    monkeypatch.setenv(backend_mod.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=backend_mod.ENV_VAR):
        resolve_backend("auto", "cpu")
    monkeypatch.delenv(backend_mod.ENV_VAR)
    with pytest.raises(ValueError, match="'numpy'"):
        resolve_backend("numpy", "cpu")


def test_backend_report(monkeypatch):
    monkeypatch.setenv(backend_mod.ENV_VAR, "torch")
    report = backend_report()
    assert report["auto_cpu"] == "torch" and report["env_override"] == "torch"
    assert {"auto_cuda", "triton_importable", "triton_interpret", "cpp"} <= set(report)
    json.dumps(report)
    monkeypatch.delenv(backend_mod.ENV_VAR)
    # what auto picks on CPU is reported without building anything
    assert backend_report()["auto_cpu"] in ("cpp", "torch")


# ----- output dtype and frame lengths -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("preset", ["kaldi", "atst"])
def test_bf16_output_is_the_float32_result_rounded_once(backend, preset):
    x = torch.from_numpy(_signal("chirp", 6000))[None]
    full = logmel(x, preset=preset, backend=backend)
    half = logmel(x, preset=preset, backend=backend, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, full.to(torch.bfloat16), rtol=0, atol=0)
    with pytest.raises(ValueError, match="dtype"):
        logmel(x, dtype=torch.float16)


@pytest.mark.parametrize("preset", ["kaldi", "atst"])
def test_return_lengths_gives_the_valid_frames_of_each_clip(preset):
    cfg = get_preset(preset)
    lengths = torch.tensor([4000, 399, 560, 0])
    out, frames = logmel(
        torch.randn(4, 4000) * 0.1, lengths=lengths, preset=preset, return_lengths=True
    )
    assert frames.dtype == torch.int64 and frames.tolist() == num_frames(lengths, cfg).tolist()
    for b, n in enumerate(frames.tolist()):
        assert (out[b, n:] == 0).all() and (out[b, :n] != 0).any() == (n > 0)
    single, n_single = logmel(torch.randn(3000) * 0.1, preset=preset, return_lengths=True)
    assert n_single.dim() == 0 and int(n_single) == single.shape[0] == num_frames(3000, cfg)
    module = LogMel(preset)
    _, frames_module = module(torch.zeros(4, 4000), lengths, return_lengths=True)
    assert torch.equal(frames_module, frames)
    assert torch.equal(module.frame_lengths(lengths), frames)
