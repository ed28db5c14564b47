"""fastspec.frontend.polyphase (resampling) against scipy.signal.resample_poly and against the analytic signal.

Tolerances. The resampler designs the same filter as scipy's default (Kaiser beta 5, 10 zero
crossings), so the two differ only by rounding:

- float64: each output is a dot product of about 2 * 10 * max(up, down) / up <= 60 non-zero
  terms with coefficients of order 1; float64 rounding (1.1e-16 per operation) keeps the error
  near 1e-15 of the signal peak. We allow 1e-12.
- float32: the same sum at float32 rounding (u = 6e-8), including the rounding of input and
  coefficients, is bounded by about 60 * u * sum|h| * peak ~ 5e-6 * peak in the worst case and
  measures ~3e-7. We allow 1e-5 of the reference peak: tight enough that any filter or
  alignment difference (which shows at the 1e-3 level, the filter's ripple) fails.

Against the analytic signal (a sine sampled directly at the new rate) the error is the filter's
pass-band ripple: Kaiser beta 5 gives about 55 dB attenuation, i.e. ripple ~2e-3, for
frequencies below ~0.8 of the lower Nyquist. We allow 5e-3 of the amplitude away from the
edges (where the zero padding outside the signal is part of the definition).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from fastspec.frontend.polyphase import resample, resample_window, resampled_length

RATE_PAIRS = [
    (8000, 16000),
    (22050, 16000),
    (32000, 16000),
    (44100, 16000),
    (48000, 16000),
    (16000, 8000),
]
PAIR_IDS = [f"{a}to{b}" for a, b in RATE_PAIRS]
FLOAT32_RTOL = 1e-5
FLOAT64_RTOL = 1e-12


def _band_limited(rng: np.random.Generator, num_samples: int, orig_sr: int, new_sr: int):
    """Sines plus low-passed noise, all below 0.35 * min(orig, new): well inside both passbands."""
    limit = 0.35 * min(orig_sr, new_sr)
    t = np.arange(num_samples) / orig_sr
    x = np.zeros(num_samples)
    for freq in rng.uniform(50.0, limit, size=4):
        x += rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    noise = rng.standard_normal(num_samples)
    sos = signal.butter(8, limit, fs=orig_sr, output="sos")
    x += 0.2 * signal.sosfiltfilt(sos, noise)
    return x


def _relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(actual - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize(("orig_sr", "new_sr"), RATE_PAIRS, ids=PAIR_IDS)
def test_matches_scipy_on_band_limited_signals(orig_sr, new_sr):
    rng = np.random.default_rng(orig_sr)
    x = _band_limited(rng, orig_sr // 2 + 1, orig_sr, new_sr)  # half a second, odd length
    reference = signal.resample_poly(x, new_sr, orig_sr)

    out64 = resample(torch.from_numpy(x), orig_sr, new_sr)
    out32 = resample(torch.from_numpy(x).float(), orig_sr, new_sr)
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    assert out64.shape[-1] == out32.shape[-1] == reference.shape[-1]
    assert out64.shape[-1] == resampled_length(x.shape[-1], orig_sr, new_sr)
    assert _relative_error(out64.numpy(), reference) < FLOAT64_RTOL
    assert _relative_error(out32.double().numpy(), reference) < FLOAT32_RTOL


@pytest.mark.parametrize(("orig_sr", "new_sr"), RATE_PAIRS, ids=PAIR_IDS)
def test_matches_scipy_on_white_noise(orig_sr, new_sr):
    # full-band input exercises the stop band too: equality here means the same filter, not
    # just two filters that agree on their pass band
    x = np.random.default_rng(1).standard_normal(4097)
    reference = signal.resample_poly(x, new_sr, orig_sr)
    out = resample(x, orig_sr, new_sr)  # numpy in, numpy out
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert out.shape == reference.shape
    assert _relative_error(out, reference) < FLOAT64_RTOL


@pytest.mark.parametrize(("orig_sr", "new_sr"), RATE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("num_samples", [1, 2, 3, 5, 17, 160, 441, 1001])
def test_odd_and_very_short_lengths(orig_sr, new_sr, num_samples):
    x = np.random.default_rng(num_samples).standard_normal(num_samples)
    reference = signal.resample_poly(x, new_sr, orig_sr)
    out = resample(torch.from_numpy(x).float(), orig_sr, new_sr)
    assert out.shape == (reference.shape[0],)
    assert out.shape[0] == resampled_length(num_samples, orig_sr, new_sr)
    err = np.abs(out.double().numpy() - reference).max()
    assert err <= FLOAT32_RTOL * max(np.abs(reference).max(), 1e-3)


@pytest.mark.parametrize(("orig_sr", "new_sr"), RATE_PAIRS, ids=PAIR_IDS)
def test_sine_matches_analytic_resampling(orig_sr, new_sr):
    freq = 0.3 * min(orig_sr, new_sr)  # well inside the pass band
    x = np.sin(2 * np.pi * freq * np.arange(orig_sr // 4) / orig_sr).astype(np.float32)
    out = resample(torch.from_numpy(x), orig_sr, new_sr).numpy()
    expected = np.sin(2 * np.pi * freq * np.arange(out.shape[0]) / new_sr)
    edge = 64  # the filter reaches ~20 output samples past the signal's ends
    assert np.abs(out[edge:-edge] - expected[edge:-edge]).max() < 5e-3


@pytest.mark.parametrize(("orig_sr", "new_sr"), [(44100, 16000), (48000, 16000), (16000, 8000)])
def test_content_above_new_nyquist_is_removed(orig_sr, new_sr):
    freq = 0.75 * new_sr  # above the output Nyquist: would alias to 0.25 * new_sr
    x = np.sin(2 * np.pi * freq * np.arange(orig_sr // 4) / orig_sr).astype(np.float32)
    out = resample(torch.from_numpy(x), orig_sr, new_sr).numpy()
    rms = np.sqrt(np.mean(out[64:-64] ** 2))
    assert rms < 0.01 * np.sqrt(0.5)  # at least 40 dB down


def test_batch_dimensions_are_preserved():
    x = torch.randn(2, 3, 2205, dtype=torch.float64)
    out = resample(x, 22050, 16000)
    assert out.shape == (2, 3, 1600)
    for i in range(2):
        for j in range(3):
            row = signal.resample_poly(x[i, j].numpy(), 16000, 22050)
            assert _relative_error(out[i, j].numpy(), row) < FLOAT64_RTOL


def test_dtypes_and_identity():
    x = torch.randn(4, 1000)
    assert resample(x, 16000, 16000) is x  # identity returns the input itself
    assert resample(x.bfloat16(), 32000, 16000).dtype == torch.bfloat16
    assert resample(np.ones(100, dtype=np.float32), 8000, 16000).dtype == np.float32
    empty = resample(torch.zeros(3, 0), 44100, 16000)
    assert empty.shape == (3, 0)


def test_invalid_rates_are_rejected():
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.zeros(10), 16000, 22050.5)


@pytest.mark.parametrize(("orig_sr", "new_sr"), RATE_PAIRS, ids=PAIR_IDS)
def test_window_equals_slice_of_full_resample(orig_sr, new_sr):
    x = torch.from_numpy(np.random.default_rng(2).standard_normal(orig_sr))  # one second
    full = resample(x, orig_sr, new_sr)
    total = full.shape[-1]
    rng = np.random.default_rng(3)
    windows = [(0, 100), (0, total), (total - 333, 333), (17, 1), (total // 2, 4000)]
    windows += [(int(s), 1600) for s in rng.integers(0, total - 1600, size=5)]
    for start, length in windows:
        window = resample_window(x, orig_sr, new_sr, start, length)
        assert window.shape == (length,)
        torch.testing.assert_close(window, full[start : start + length], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="outside"):
        resample_window(x, orig_sr, new_sr, total - 10, 11)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = torch.randn(4, 44100)
    cpu = resample(x, 44100, 16000)
    gpu = resample(x.cuda(), 44100, 16000)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)
