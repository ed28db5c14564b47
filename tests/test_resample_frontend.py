"""Resampling fused with the front end: ``logmel(wave, orig_sample_rate=...)``.

Ground truth: ``scipy.signal.resample_poly`` in float64, then the float64 front-end reference.
Every backend takes 8, 22.05, 32, 44.1 and 48 kHz input to 16 kHz features in one call: torch
and C++ resample with the polyphase conv1d first; the Triton kernel folds the resampler into its
frame basis (Kaldi framing, one basis per fractional frame offset: two at 22.05 kHz) or resamples
on the device first (centred ATST framing).

Tolerance: the yardstick is computed by code no backend uses for resampling: scipy's resampler
on float32 samples (in float32 arithmetic), then the float32 reference front end. Every backend (torch
included: it resamples with fastspec's own polyphase conv1d) stays within twice the yardstick's
error against float64 plus ``ABS_TOL`` = 1e-3 log units, the front end's error budget
(DESIGN.md section 6): the resamplers' own float32 rounding lands in mel bins 100 dB down near the
new Nyquist, where the log magnifies it to ~5e-4 (a wrong filter costs 0.1 and more). Upsampling
8 kHz leaves the band above 4 kHz empty up to float32 rounding, which the log of those near-floor
mel bins turns into ~5e-3 for every implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastspec.kernels import reference as ref
from scipy import signal

from fastspec.frontend import (
    get_preset,
    logmel,
    logmel_reference,
    num_frames,
    resampled_length,
)
from fastspec.frontend import polyphase as rs

RATES = [8000, 22050, 32000, 44100, 48000]
ABS_TOL = 1e-3  # log units: the error budget of DESIGN.md section 6


def _clip(sample_rate: int, seconds: float, seed: int) -> np.ndarray:
    """A chirp and a tone over noise, all below 3.5 kHz (inside every pass band), float64."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    x = 0.3 * np.sin(2 * np.pi * (200.0 * t + 1500.0 * t**2))
    x += 0.2 * np.sin(2 * np.pi * 1234.5 * t) + 0.01 * rng.standard_normal(t.size)
    return x


def _expected(clips, cfg, orig_sr: int, normalize=False, dtype=torch.float64) -> torch.Tensor:
    """scipy-resampled clips, padded, through the reference, all computed in ``dtype`` (scipy
    filters float32 samples in float32)."""
    samples = np.float64 if dtype == torch.float64 else np.float32
    resampled = [signal.resample_poly(x.astype(samples), cfg.sample_rate, orig_sr) for x in clips]
    longest = max(y.size for y in resampled)
    wave = torch.zeros(len(clips), longest, dtype=dtype)
    for b, y in enumerate(resampled):
        wave[b, : y.size] = torch.from_numpy(y).to(dtype)
    lengths = torch.tensor([y.size for y in resampled])
    return logmel_reference(wave, lengths, cfg, normalize=normalize)


def _padded(clips, fill: float = 0.5):
    lengths = torch.tensor([x.size for x in clips])
    wave = torch.full((len(clips), int(lengths.max())), fill, dtype=torch.float32)
    for b, x in enumerate(clips):
        wave[b, : x.size] = torch.from_numpy(x).float()
    return wave, lengths


@pytest.mark.parametrize("preset", ["kaldi", "atst"])
@pytest.mark.parametrize("orig_sr", RATES, ids=[f"{r}Hz" for r in RATES])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_fused_resample_matches_scipy_then_float64(backend, orig_sr, preset):
    cfg = get_preset(preset)
    clips = [_clip(orig_sr, 0.5, 0), _clip(orig_sr, 0.31, 1)]
    wave, lengths = _padded(clips)  # padding holds 0.5: it must not leak through the filter
    expected = _expected(clips, cfg, orig_sr)
    got, frames = logmel(
        wave,
        lengths=lengths,
        preset=cfg,
        normalize=False,
        backend=backend,
        orig_sample_rate=orig_sr,
        return_lengths=True,
    )
    # the yardstick shares no code with the resamplers under test
    yardstick = _expected(clips, cfg, orig_sr, dtype=torch.float32)
    assert got.shape == expected.shape == yardstick.shape
    resampled = [resampled_length(x.size, orig_sr, cfg.sample_rate) for x in clips]
    assert frames.tolist() == [num_frames(n, cfg) for n in resampled]
    err = (got.double() - expected).abs().max().item()
    ref_err = (yardstick.double() - expected).abs().max().item()
    assert err <= 2 * ref_err + ABS_TOL and ref_err <= 5e-3, (err, ref_err)
    for b, n in enumerate(frames.tolist()):
        assert (got[b, n:] == 0).all()


def _interpreted() -> bool:
    try:
        from fastspec.kernels import logmel as kernel_module
    except Exception:
        return False
    return kernel_module.INTERPRETED


triton_only = pytest.mark.skipif(
    not torch.cuda.is_available() and not _interpreted(),
    reason="Triton needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
)


@triton_only
@pytest.mark.parametrize(
    "preset, orig_sr",
    [("kaldi", 44100), ("kaldi", 22050), ("kaldi", 8000), ("atst", 48000)],
    ids=[
        "kaldi-44100Hz-folded",
        "kaldi-22050Hz-folded-2-phases",
        "kaldi-8000Hz-folded",
        "atst-48000Hz-resample-first",
    ],
)
def test_triton_fused_resample_matches_scipy_then_float64(preset, orig_sr):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = get_preset(preset, n_mels=40 if preset == "kaldi" else 64)
    clips = [_clip(orig_sr, 0.12, 0), _clip(orig_sr, 0.07, 1)]
    wave, lengths = _padded(clips)
    expected = _expected(clips, cfg, orig_sr)
    got = logmel(
        wave.to(device),
        lengths=lengths.to(device),
        preset=cfg,
        normalize=False,
        backend="triton",
        orig_sample_rate=orig_sr,
    ).cpu()
    # the yardstick shares no code with the resamplers under test
    yardstick = _expected(clips, cfg, orig_sr, dtype=torch.float32)
    assert got.shape == expected.shape == yardstick.shape
    err = (got.double() - expected).abs().max().item()
    ref_err = (yardstick.double() - expected).abs().max().item()
    assert err <= 2 * ref_err + ABS_TOL, (err, ref_err)


@triton_only
def test_triton_fused_resample_flags_non_finite_source_samples():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wave = torch.zeros(3, 4410, device=device)
    wave[1, 4400] = float("nan")  # past the last frame's reach: only the sample scan sees it
    with pytest.raises(ValueError, match=r"clip\(s\) \[1\]"):
        logmel(wave, preset="kaldi", n_mels=40, backend="triton", orig_sample_rate=44100)


@pytest.mark.parametrize("orig_sr", RATES, ids=[f"{r}Hz" for r in RATES])
def test_folded_basis_equals_resample_then_frame(orig_sr):
    """Frame t of the resampled clip, through the basis, equals its source window through the
    folded basis: the identity the Triton kernel relies on (float64, to rounding)."""
    window = ref.window_ref("hann", 400, False, 400, dtype=torch.float64)
    basis_re, basis_im = ref.frame_spectrum_basis(window, 512, True, 0.97)
    folded_re, folded_im, starts, source_hop = rs.resampled_frame_basis(
        basis_re, basis_im, orig_sr, 16000, 160
    )
    x = torch.from_numpy(_clip(orig_sr, 0.2, 3))
    y = torch.from_numpy(signal.resample_poly(x.numpy(), 16000, orig_sr))
    phases, width = folded_re.shape[:2]
    assert phases == (2 if orig_sr == 22050 else 1)
    for t in range(1 + (y.numel() - 400) // 160):
        phase, u = t % phases, t // phases
        idx = torch.arange(width) + u * source_hop + starts[phase]
        ok = (idx >= 0) & (idx < x.numel())
        source = torch.where(ok, x[idx.clamp(0, x.numel() - 1)], torch.zeros((), dtype=x.dtype))
        frame = y[t * 160 : t * 160 + 400]
        torch.testing.assert_close(source @ folded_re[phase], frame @ basis_re, atol=1e-9, rtol=0)
        torch.testing.assert_close(source @ folded_im[phase], frame @ basis_im, atol=1e-9, rtol=0)


def test_same_rate_is_a_no_op_and_int16_source_works():
    x = torch.from_numpy(_clip(16000, 0.3, 0)).float()[None]
    torch.testing.assert_close(logmel(x, orig_sample_rate=16000), logmel(x))
    pcm = torch.round(torch.from_numpy(_clip(44100, 0.3, 0))[None] * 32767).to(torch.int16)
    torch.testing.assert_close(
        logmel(pcm, orig_sample_rate=44100), logmel(pcm.float() / 32768.0, orig_sample_rate=44100)
    )


@pytest.fixture(scope="module")
def ext():
    from fastspec.frontend import cpp

    module = cpp.load()
    if module is None:
        pytest.skip(f"fastspec._C unavailable: {cpp.status().get('reason')}")
    return module


@pytest.mark.parametrize("num_samples", [1, 17, 441, 4801])
@pytest.mark.parametrize("orig_sr", RATES, ids=[f"{r}Hz" for r in RATES])
def test_cpp_resampler_matches_scipy(ext, orig_sr, num_samples):
    from fastspec.frontend.cpp_ops import resample_cpp

    rng = np.random.default_rng(num_samples)
    clips = [rng.standard_normal(num_samples), rng.standard_normal(max(1, num_samples // 3))]
    wave, lengths = _padded(clips, fill=9.0)  # padding must read as zeros
    out, out_lengths = resample_cpp(wave, lengths, orig_sr, 16000)
    assert out.dtype == torch.float32
    assert out.shape == (2, resampled_length(num_samples, orig_sr, 16000))
    for b, x in enumerate(clips):
        expected = signal.resample_poly(x.astype(np.float32).astype(np.float64), 16000, orig_sr)
        assert int(out_lengths[b]) == expected.size
        got = out[b, : expected.size].double().numpy()
        # float32 dot products of <= 64 taps: the bound of tests/test_resample.py
        assert np.abs(got - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1e-3)


def test_cpp_resampler_int16_and_errors(ext):
    from fastspec.frontend.cpp_ops import resample_cpp

    pcm = torch.round(torch.from_numpy(_clip(44100, 0.2, 0))[None] * 32767).to(torch.int16)
    from_pcm, _ = resample_cpp(pcm, None, 44100, 16000)
    from_float, _ = resample_cpp(pcm.float() / 32768.0, None, 44100, 16000)
    torch.testing.assert_close(from_pcm, from_float, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"lengths\[0\]=9000 is outside \[0, S=8820\]"):
        resample_cpp(pcm, torch.tensor([9000]), 44100, 16000)
    with pytest.raises(
        ValueError, match=r"resample: wave must have shape \[B, S\] = \[\*, \*\], got \[8820\]"
    ):
        resample_cpp(pcm[0], None, 44100, 16000)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_fused_resample_names_the_clip_with_non_finite_samples(backend):
    wave = torch.zeros(3, 4410)
    wave[2, 4400] = float("nan")
    with pytest.raises(ValueError, match=r"clip\(s\) \[2\]"):
        logmel(wave, backend=backend, orig_sample_rate=44100)
    lengths = torch.tensor([4410, 4410, 4000])  # the NaN is padding now
    out = logmel(wave, lengths=lengths, backend=backend, orig_sample_rate=44100)
    assert torch.isfinite(out).all()
