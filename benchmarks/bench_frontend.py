"""Front-end throughput: fastspec's backends and the peers users run today, on identical batches.

Run with ``pytest benchmarks/`` (results land in benchmarks/results/, see conftest.py). Every
provider gets the same float32 waveform batch (a mix of noise, chirps and tones over a -40 dB
floor, fixed seed) and records in ``extra_info``:

- ``hours_per_s``: hours of 16 kHz audio turned into log-mel features per second (median time);
- ``err_max`` / ``err_mean``: max / mean abs error of its output against fastspec's float64
  reference configured to compute what that provider computes (``err_units``: ln for Kaldi
  fbank, dB for the rest). The max is set by bins ~90 dB below the frame's peak (low bins after
  pre-emphasis), where any float32 FFT is off by ~1e-2 (librosa's is not: its float64 window
  silently promotes the FFT to float64): compare providers, not against zero;
- ``n_mels`` and a ``note`` where a provider cannot run the common setting.

Providers: fastspec's torch backend (fp32), C++ extension (``cpp``, CPU; built on first use)
and Triton kernel (CUDA only; precision ieee, tf32x3, bf16x6, bf16x3), kaldi-native-fbank
per-clip loop (the Audio-MAE-style loader; 80 mel, it refuses 128), torchaudio
compliance.kaldi.fbank per-clip loop and MelSpectrogram, librosa, nnAudio, and DALI
(spectrogram + mel_filter_bank + to_decibels; the CPU pipeline, and the GPU one on CUDA). DALI
runs synchronously (no prefetch), so each timed call computes its own batch. Peers that are not
installed are skipped. Tensor providers run on CUDA when present and synchronise inside the
timed call. A second group, ``resample+logmel``, times fastspec's fused 44.1 kHz -> 16 kHz path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastspec.frontend import FrontendConfig, get_preset, logmel, logmel_reference

SR = 16000
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (clips, seconds): the common 32 x 10 s batch, a small one, and a GPU-sized one on CUDA
SHAPES = {"B32-10s": (32, 10.0), "B8-2s": (8, 2.0)}
if DEVICE == "cuda":
    SHAPES["B256-10s"] = (256, 10.0)

# what librosa / nnAudio / torchaudio MelSpectrogram / DALI compute with the Kaldi preset's
# window and hop: centred frames, periodic Hann, HTK triangles without area normalisation, dB
PEER_CFG = FrontendConfig(
    win_length=400,
    hop_length=160,
    n_fft=512,
    window="hann",
    periodic_window=True,
    center=True,
    pad_mode="reflect",
    remove_dc=False,
    preemphasis=0.0,
    n_mels=128,
    f_min=20.0,
    f_max=8000.0,
    mel_scale="htk",
    log="db",
    log_floor=1e-10,
    top_db=None,
    norm="none",
)
KALDI = get_preset("kaldi")
KALDI80 = get_preset("kaldi", n_mels=80)


def _make_batch(clips: int, seconds: float) -> torch.Tensor:
    """``[clips, S]`` float32 in [-1, 1]: noise, chirps and tone pairs over a -40 dB floor."""
    rng = np.random.default_rng(1234)
    num_samples = int(seconds * SR)
    t = np.arange(num_samples) / SR
    out = np.empty((clips, num_samples), dtype=np.float32)
    for i in range(clips):
        floor = 0.005 * rng.standard_normal(num_samples)
        f0 = rng.uniform(100.0, 2000.0)
        if i % 3 == 0:
            x = rng.uniform(0.05, 0.3) * rng.standard_normal(num_samples)
        elif i % 3 == 1:
            sweep = rng.uniform(100.0, 600.0)
            x = 0.3 * np.sin(2 * np.pi * (f0 * t + sweep * t**2))
        else:
            x = 0.4 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * 3.7 * f0 * t)
        out[i] = np.clip(x + floor, -1.0, 1.0)
    return torch.from_numpy(out)


@pytest.fixture(scope="module", params=list(SHAPES))
def batch(request):
    """``(shape id, wave [B, S] float32 on the CPU)``."""
    return request.param, _make_batch(*SHAPES[request.param])


_REFERENCES: dict = {}


def _reference(cfg: FrontendConfig, shape: str, wave: torch.Tensor) -> torch.Tensor:
    """float64 reference ``[B, T, n_mels]`` (cached per config and shape)."""
    key = (cfg, shape)
    if key not in _REFERENCES:
        _REFERENCES[key] = logmel_reference(wave.double(), None, cfg, normalize=False)
    return _REFERENCES[key]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn, *, rounds: int = 3):
    # one warm-up (constant caches, cuFFT plans, Triton compile) then `rounds` timed calls
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def _record(benchmark, shape, wave, out, cfg, provider, note=""):
    """Fill extra_info; ``out`` is ``[B, T, n_mels]`` (any array type) or None."""
    clips, seconds = SHAPES[shape]
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        provider=provider,
        shape=shape,
        n_mels=cfg.n_mels,
        hours_per_s=clips * seconds / 3600.0 / median,
        ms_per_batch=median * 1e3,
        err_units="ln" if cfg.log == "ln" else "dB",
        note=note,
    )
    if out is None:
        benchmark.extra_info.update(err_max=None, err_mean=None)
        return
    expected = _reference(cfg, shape, wave)
    got = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
    got = got.detach().to("cpu", torch.float64)
    if got.shape != expected.shape:
        # a peer that frames differently: compare the frames both have, and say so
        n = min(got.shape[1], expected.shape[1])
        benchmark.extra_info["note"] = (
            note + f" frames {got.shape[1]} vs {expected.shape[1]}"
        ).strip()
        got, expected = got[:, :n], expected[:, :n]
    err = (got - expected).abs()
    benchmark.extra_info["err_max"] = err.max().item()
    benchmark.extra_info["err_mean"] = err.mean().item()


# ----- fastspec ----------------------------------------------------------------------------------


def test_fastspec_cpp(benchmark, batch):
    from fastspec.frontend import cpp

    if cpp.load() is None:
        pytest.skip(f"fastspec._C unavailable: {cpp.status().get('reason')}")
    shape, wave = batch
    benchmark.group = f"logmel {shape}"

    def run():
        return logmel(wave, preset=KALDI, normalize=False, backend="cpp")

    out = _run(benchmark, run, rounds=10)
    _record(benchmark, shape, wave, out, KALDI, f"fastspec cpp ({torch.get_num_threads()} threads)")


def test_fastspec_torch(benchmark, batch):
    shape, wave = batch
    benchmark.group = f"logmel {shape}"
    x = wave.to(DEVICE)

    def run():
        out = logmel(x, preset=KALDI, normalize=False, backend="torch")
        _sync()
        return out

    out = _run(benchmark, run)
    _record(benchmark, shape, wave, out, KALDI, f"fastspec torch fp32 ({DEVICE})")


@pytest.mark.skipif(DEVICE != "cuda", reason="the Triton kernel is benchmarked on CUDA only")
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "bf16x6", "bf16x3"])
def test_fastspec_triton(benchmark, batch, precision):
    shape, wave = batch
    benchmark.group = f"logmel {shape}"
    cfg = get_preset("kaldi", precision=precision)
    x = wave.to(DEVICE)

    def run():
        out = logmel(x, preset=cfg, normalize=False, backend="triton")
        _sync()
        return out

    out = _run(benchmark, run, rounds=10)
    _record(benchmark, shape, wave, out, cfg, f"fastspec triton {precision}")


# ----- peers -------------------------------------------------------------------------------------


def test_kaldi_native_fbank_loop(benchmark, batch):
    knf = pytest.importorskip("kaldi_native_fbank")
    shape, wave = batch
    benchmark.group = f"logmel {shape}"
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 80  # knf refuses 128 bins at 16 kHz / 512-point FFT
    opts.mel_opts.low_freq = 20.0
    opts.use_energy = False
    opts.htk_compat = True
    clips = [c.numpy() for c in wave]

    def run():
        feats = []
        for clip in clips:  # one clip at a time, as an Audio-MAE-style Dataset.__getitem__ does
            fbank = knf.OnlineFbank(opts)
            fbank.accept_waveform(SR, clip)
            fbank.input_finished()
            feats.append(np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]))
        return np.stack(feats)

    out = _run(benchmark, run)
    _record(benchmark, shape, wave, out, KALDI80, "kaldi-native-fbank loop", "80 mel (refuses 128)")


def test_torchaudio_kaldi_fbank_loop(benchmark, batch):
    torchaudio = pytest.importorskip("torchaudio")
    shape, wave = batch
    benchmark.group = f"logmel {shape}"

    def run():
        # exactly the call of the AST / Audio-MAE loaders, one clip at a time on the CPU
        return torch.stack(
            [
                torchaudio.compliance.kaldi.fbank(
                    clip[None],
                    htk_compat=True,
                    sample_frequency=SR,
                    use_energy=False,
                    window_type="hanning",
                    num_mel_bins=128,
                    dither=0.0,
                    frame_shift=10,
                )
                for clip in wave
            ]
        )

    out = _run(benchmark, run)
    _record(benchmark, shape, wave, out, KALDI, "torchaudio kaldi.fbank loop")


def test_torchaudio_melspectrogram(benchmark, batch):
    torchaudio = pytest.importorskip("torchaudio")
    shape, wave = batch
    benchmark.group = f"logmel {shape}"
    mel = torchaudio.transforms.MelSpectrogram(
        SR, n_fft=512, win_length=400, hop_length=160, f_min=20.0, f_max=8000.0, n_mels=128
    ).to(DEVICE)
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None).to(DEVICE)
    x = wave.to(DEVICE)

    def run():
        with torch.no_grad():
            out = to_db(mel(x)).transpose(1, 2)
        _sync()
        return out

    out = _run(benchmark, run)
    _record(benchmark, shape, wave, out, PEER_CFG, f"torchaudio MelSpectrogram ({DEVICE})")


def test_librosa(benchmark, batch):
    librosa = pytest.importorskip("librosa")
    shape, wave = batch
    benchmark.group = f"logmel {shape}"
    y = wave.numpy()

    def run():
        mel = librosa.feature.melspectrogram(
            y=y,
            sr=SR,
            n_fft=512,
            win_length=400,
            hop_length=160,
            center=True,
            pad_mode="reflect",
            power=2.0,
            n_mels=128,
            fmin=20.0,
            fmax=8000.0,
            htk=True,
            norm=None,
        )
        return np.swapaxes(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), 1, 2)

    out = _run(benchmark, run)
    # librosa's float64 window promotes the frames, so its FFT runs in float64 (hence its error)
    _record(benchmark, shape, wave, out, PEER_CFG, "librosa (batched numpy)", "FFT in float64")


def test_nnaudio(benchmark, batch):
    features = pytest.importorskip("nnAudio.features")
    shape, wave = batch
    benchmark.group = f"logmel {shape}"
    mel = features.MelSpectrogram(
        sr=SR,
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=128,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        htk=True,
        fmin=20.0,
        fmax=8000.0,
        norm=None,
        verbose=False,
    ).to(DEVICE)
    x = wave.to(DEVICE)

    def run():
        with torch.no_grad():
            out = 10.0 * torch.log10(torch.clamp_min(mel(x), 1e-10)).transpose(1, 2)
        _sync()
        return out

    out = _run(benchmark, run)
    _record(benchmark, shape, wave, out, PEER_CFG, f"nnAudio MelSpectrogram ({DEVICE})")


@pytest.mark.parametrize(
    "dali_device",
    ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA"))],
)
def test_dali_pipeline(benchmark, batch, dali_device):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    shape, wave = batch
    benchmark.group = f"logmel {shape}"
    clips = [c.numpy() for c in wave]

    # synchronous: with the default prefetching, run() returns a batch computed in the background
    # during the previous call and the timing would hide the work
    @pipeline_def(
        batch_size=len(clips),
        num_threads=torch.get_num_threads(),
        device_id=0 if dali_device == "gpu" else None,
        seed=0,
        exec_async=False,
        exec_pipelined=False,
    )
    def pipeline():
        audio = fn.external_source(source=lambda: clips, dtype=types.FLOAT)
        if dali_device == "gpu":
            audio = audio.gpu()
        spec = fn.spectrogram(
            audio, nfft=512, window_length=400, window_step=160, center_windows=True, power=2
        )
        mel = fn.mel_filter_bank(
            spec,
            sample_rate=SR,
            nfilter=128,
            freq_low=20.0,
            freq_high=8000.0,
            mel_formula="htk",
            normalize=False,
        )
        return fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=-100.0)

    pipe = pipeline()
    pipe.build()

    def run():
        (out,) = pipe.run()
        if dali_device == "gpu":
            out = out.as_cpu()  # the copy is part of what a consumer of the features pays
        return np.stack([np.asarray(out[i]).T for i in range(len(clips))])  # [B, T, F]

    out = _run(benchmark, run)
    # DALI's mel bank equals the HTK one here (checked to 2e-5); its frames differ from
    # torch.stft(center=True)'s, by up to a few dB in single bands (0.02 dB on average)
    _record(
        benchmark,
        shape,
        wave,
        out,
        PEER_CFG,
        f"DALI {dali_device.upper()} pipeline",
        "framing differs from torch.stft",
    )


# ----- fused resampling ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["triton", "torch"] if DEVICE == "cuda" else ["cpp", "torch"])
def test_fastspec_resample_44k_fused(benchmark, batch, backend):
    from fastspec.frontend import resample

    shape, wave = batch
    clips, seconds = SHAPES[shape]
    benchmark.group = f"resample+logmel {shape}"
    # the same audio at 44.1 kHz: the provider resamples it back to 16 kHz and featurises
    source = resample(wave.double(), SR, 44100).float()
    x = source.to(DEVICE)

    def run():
        out = logmel(x, preset=KALDI, normalize=False, backend=backend, orig_sample_rate=44100)
        _sync()
        return out

    out = _run(benchmark, run)
    expected = logmel_reference(
        source.double(), None, KALDI, normalize=False, orig_sample_rate=44100
    )
    err = (out.cpu().double() - expected).abs()
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        provider=f"fastspec {backend} 44.1k fused",
        shape=shape,
        n_mels=KALDI.n_mels,
        hours_per_s=clips * seconds / 3600.0 / median,
        ms_per_batch=median * 1e3,
        err_units="ln",
        note="44.1 kHz input",
        err_max=err.max().item(),
        err_mean=err.mean().item(),
    )
