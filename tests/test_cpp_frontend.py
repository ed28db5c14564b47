"""C++ front end (``fastspec._C``) against the float64 reference, and its build / load machinery.

The extension is built on first use (one ``c++`` call, about 2 s) into the user cache, so these
tests build it when a compiler exists (CI has one) and are skipped, with the reason, only where
none does. Tolerance (STYLE.md): the C++ error against float64 is at most twice that of the
float32 torch backend on the same input plus 1e-4 log units (both are float32 FFTs; they round
differently in bins ~90 dB below a frame's peak).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastspec import _logging
from fastspec.frontend import backend as backend_mod
from fastspec.frontend import (
    backend_report,
    cpp,
    cpp_ops,
    get_preset,
    logmel,
    logmel_reference,
    num_frames,
    resolve_backend,
)

SR = 16000


@pytest.fixture(scope="module")
def ext():
    """The loaded extension (built into the cache on first use), or a skip naming the reason."""
    module = cpp.load()
    if module is None:
        pytest.skip(f"fastspec._C unavailable: {cpp.status().get('reason')}")
    return module


def _signal(kind: str, num_samples: int, seed: int = 0) -> np.ndarray:
    """float32 test signals; tones and chirps over a -40 dB noise floor, as recordings have."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SR
    floor = 0.005 * rng.standard_normal(num_samples)
    if kind == "noise":
        x = 0.1 * rng.standard_normal(num_samples)
    elif kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3100.0 * t) + floor
    elif kind == "chirp":
        x = 0.3 * np.sin(2 * np.pi * (100.0 * t + 1725.0 * t**2)) + floor
    elif kind == "square":  # full scale
        x = np.sign(np.sin(2 * np.pi * 250.0 * t + 0.1))
    elif kind == "silence":
        x = np.zeros(num_samples)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def _batch(kinds, num_samples: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(_signal(k, num_samples, i)) for i, k in enumerate(kinds)])


def _check_against_float64(wave, lengths, cfg, normalize=False):
    """C++ output vs float64, with the float32 torch backend's error as the yardstick."""
    expected = logmel_reference(wave.double(), lengths, cfg, normalize=normalize)
    got = logmel(wave, lengths=lengths, preset=cfg, normalize=normalize, backend="cpp")
    torch32 = logmel(wave, lengths=lengths, preset=cfg, normalize=normalize, backend="torch")
    assert got.shape == expected.shape and got.dtype == torch.float32
    if not got.numel():
        return got
    err = (got.double() - expected).abs()
    ref_err = (torch32.double() - expected).abs()
    assert err.max() <= 2 * ref_err.max() + 1e-4, (err.max().item(), ref_err.max().item())
    assert err.mean() <= 2 * ref_err.mean() + 1e-6, (err.mean().item(), ref_err.mean().item())
    return got


CASES = [
    # id: preset, num_samples, per-clip lengths (None: full), signal kinds
    pytest.param("kaldi", 559, None, ["noise", "tone"], id="kaldi-B2-one-short-of-2-frames"),
    pytest.param("kaldi", 399, None, ["noise"], id="kaldi-B1-shorter-than-window"),
    pytest.param("kaldi", 400 + 996 * 160, None, ["chirp"], id="kaldi-B1-T997"),
    pytest.param(
        "kaldi",
        4321,
        [4321, 2777, 350, 1601, 0],
        ["chirp", "noise", "tone", "square", "noise"],
        id="kaldi-B5-mixed-lengths",
    ),
    pytest.param("kaldi", 16001, None, ["silence", "square"], id="kaldi-B2-silence-square"),
    pytest.param("atst", 1599, None, ["noise", "tone"], id="atst-B2-S1599"),
    pytest.param("atst", 300, None, ["chirp"], id="atst-B1-shorter-than-half-window"),
    pytest.param(
        "atst",
        4321,
        [4321, 2777, 350, 1, 0],
        ["chirp", "noise", "tone", "square", "noise"],
        id="atst-B5-mixed-lengths",
    ),
    pytest.param("atst", 16001, None, ["silence", "square"], id="atst-B2-silence-square"),
]


@pytest.mark.parametrize("preset, num_samples, lengths, kinds", CASES)
def test_cpp_matches_float64_reference(ext, preset, num_samples, lengths, kinds):
    cfg = get_preset(preset)
    wave = _batch(kinds, num_samples)
    lengths_t = None if lengths is None else torch.tensor(lengths)
    if lengths is not None:
        for b, n in enumerate(lengths):
            wave[b, n:] = 0.5  # padding content must not leak into the features
    got = _check_against_float64(wave, lengths_t, cfg)
    assert got.shape[1] == num_frames(num_samples, cfg)
    for b, n in enumerate(lengths or []):
        assert (got[b, num_frames(n, cfg) :] == 0.0).all()


@pytest.mark.parametrize("preset", ["kaldi", "atst"])
def test_cpp_normalised_output_matches_reference(ext, preset):
    cfg = get_preset(preset)
    wave = _batch(["tone", "noise", "chirp"], 8000)
    _check_against_float64(wave, torch.tensor([8000, 5000, 2000]), cfg, normalize=True)


@pytest.mark.parametrize("preset", ["kaldi", "atst"])
def test_cpp_padded_batch_equals_clips_alone(ext, preset):
    lengths = [4321, 2777, 350, 1601]
    clips = [torch.from_numpy(_signal("chirp", n, seed=i)) for i, n in enumerate(lengths)]
    wave = torch.full((len(clips), max(lengths)), 0.25)
    for i, clip in enumerate(clips):
        wave[i, : clip.numel()] = clip
    out = logmel(wave, lengths=torch.tensor(lengths), preset=preset, backend="cpp")
    cfg = get_preset(preset)
    for i, clip in enumerate(clips):
        alone = logmel(clip[None], preset=preset, backend="cpp")[0]
        n_valid = num_frames(lengths[i], cfg)
        # same frames, same lanes of the same SIMD code: bitwise equal, except that a clip's
        # top_db maximum is reduced over blocks in a different grouping (float max is exact)
        torch.testing.assert_close(out[i, :n_valid], alone, rtol=0, atol=0)
        assert (out[i, n_valid:] == 0.0).all()


def test_cpp_silence_sits_at_the_log_floor(ext):
    out = logmel(torch.zeros(2, 4000), normalize=False, backend="cpp")
    torch.testing.assert_close(out, torch.full_like(out, math.log(1.1920928955078125e-07)))
    atst = logmel(torch.zeros(1, 4000), preset="atst", normalize=False, backend="cpp")
    torch.testing.assert_close(atst, torch.full_like(atst, -100.0))  # 10 log10(1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("preset", ["kaldi", "atst"])
def test_cpp_non_finite_input_names_the_clip(ext, preset, bad):
    wave = torch.zeros(4, 3000)
    wave[2, 2990] = bad  # past the last full Kaldi frame: not read by any frame, still checked
    with pytest.raises(ValueError, match=r"clip\(s\) \[2\]"):
        logmel(wave, preset=preset, backend="cpp")
    wave[0, 10] = bad
    with pytest.raises(ValueError, match=r"clip\(s\) \[0, 2\]"):
        logmel(wave.double(), preset=preset, backend="cpp")
    # past a clip's length the samples are padding and may hold anything
    out = logmel(wave, lengths=torch.tensor([5, 3000, 2900, 3000]), preset=preset, backend="cpp")
    assert torch.isfinite(out).all()


def test_cpp_non_finite_in_a_clip_shorter_than_a_window(ext):
    wave = torch.zeros(2, 300)
    wave[1, 299] = float("nan")
    with pytest.raises(ValueError, match=r"clip\(s\) \[1\]"):
        logmel(wave, backend="cpp")


def test_cpp_int16_float64_and_bf16(ext):
    cfg = get_preset("kaldi")
    x = torch.from_numpy(_signal("chirp", 5000))[None]
    pcm = torch.round(x * 32767).to(torch.int16)
    from_pcm = logmel(pcm, preset=cfg, backend="cpp")
    torch.testing.assert_close(from_pcm, logmel(pcm.float() / 32768.0, preset=cfg, backend="cpp"))
    # float64 input is read as float32 by the C++ code
    torch.testing.assert_close(logmel(x.double(), backend="cpp"), logmel(x, backend="cpp"))
    for preset in ("kaldi", "atst"):
        full = logmel(x, preset=preset, backend="cpp")
        half = logmel(x, preset=preset, backend="cpp", dtype=torch.bfloat16)
        assert half.dtype == torch.bfloat16
        # rounded once from the float32 result: round-to-nearest-even, as torch rounds
        torch.testing.assert_close(half, full.to(torch.bfloat16), rtol=0, atol=0)


def test_cpp_is_independent_of_the_thread_count(ext):
    wave = _batch(["chirp", "noise", "tone"], 20000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = logmel(wave, preset="atst", backend="cpp")
        torch.set_num_threads(max(2, threads))
        many = logmel(wave, preset="atst", backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_cpp_rejects_bad_inputs_naming_the_argument(ext):
    cfg = get_preset("kaldi")
    with pytest.raises(
        ValueError, match=r"wave must have shape \[B, S\] = \[\*, \*\], got \[2, 3, 4\]"
    ):
        cpp_ops.logmel_cpp(torch.zeros(2, 3, 4), None, cfg)
    with pytest.raises(ValueError, match=r"lengths must have shape \[B\] = \[2\], got \[3\]"):
        cpp_ops.logmel_cpp(torch.zeros(2, 1000), torch.tensor([1, 2, 3]), cfg)
    with pytest.raises(ValueError, match=r"lengths must be int64, got float32"):
        cpp_ops.logmel_cpp(torch.zeros(2, 1000), torch.tensor([1000.0, 1000.0]), cfg)
    with pytest.raises(ValueError, match=r"lengths\[1\]=1001 is outside \[0, S=1000\]"):
        cpp_ops.logmel_cpp(torch.zeros(2, 1000), torch.tensor([1000, 1001]), cfg)
    with pytest.raises(ValueError, match="wave must be float32, float64 or int16, got int32"):
        cpp_ops.logmel_cpp(torch.zeros(2, 1000, dtype=torch.int32), None, cfg)
    with pytest.raises(ValueError, match="wave cannot be read: Cannot pack tensors on meta"):
        cpp_ops.logmel_cpp(torch.zeros(2, 1000, device="meta"), None, cfg)
    with pytest.raises(ValueError, match="n_fft=400 is not a power of two"):
        cpp_ops.logmel_cpp(torch.zeros(2, 1000), None, get_preset("kaldi", n_fft=400))
    with pytest.raises(ValueError, match=r"resample: lengths must have shape \[B\] = \[2\]"):
        cpp_ops.resample_cpp(torch.zeros(2, 1000), torch.tensor([5]), 44100, 16000)


def _raw_args(batch: int = 2, num_samples: int = 1000) -> dict:
    """A valid keyword set for the binding's logmel (Kaldi preset)."""
    cfg = get_preset("kaldi")
    n_frames = 1 + (num_samples - cfg.frame_length) // cfg.hop_length
    return dict(
        wave=torch.zeros(batch, num_samples),
        lengths=torch.full((batch,), num_samples, dtype=torch.int64),
        out=torch.empty(batch, n_frames, cfg.n_mels),
        **cpp_ops._plan(cfg),
        n_fft=512,
        hop=160,
        center=False,
        reflect=False,
        remove_dc=True,
        preemph=0.97,
        power_one=False,
        log_floor=1e-7,
        log_mult=1.0,
        top_db=None,
        norm_mul=1.0,
        norm_add=0.0,
        check_finite=True,
        n_threads=1,
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hop": 0}, r"logmel: hop=0 must be >= 1"),
        # shapes: the binding derives B, S, T and n_mels from the tensors and checks the others
        (
            {"out": torch.empty(2, 4, 64)},
            r"out must have shape \[B, T, n_mels\] = \[2, 4, 128\], got \[2, 4, 64\]",
        ),
        (
            {"out": torch.empty(2, 5, 128)},
            r"out must have shape \[B, T, n_mels\] = \[2, 4, 128\], got \[2, 5, 128\]",
        ),
        (
            {"lengths": torch.zeros(3, dtype=torch.int64)},
            r"lengths must have shape \[B\] = \[2\], got \[3\]",
        ),
        (
            {"mel_offset": torch.zeros(128, dtype=torch.int32)},
            r"mel_offset must have shape \[n_mels \+ 1\] = \[129\], got \[128\]",
        ),
        (
            {"mel_weight": torch.zeros(5)},
            r"mel_offset\[n_mels\]=\d+ must equal the length of mel_weight, 5",
        ),
        # dtypes
        ({"mel_start": torch.zeros(128, dtype=torch.int64)}, r"mel_start must be int32, got int64"),
        (
            {"out": torch.empty(2, 4, 128, dtype=torch.float16)},
            r"out must be float32 or bfloat16, got float16",
        ),
        ({"window": torch.zeros(400, dtype=torch.float64)}, r"window must be float32, got float64"),
        # strides: an expanded batch aliases its rows, a transposed output is not row-major
        (
            {"wave": torch.zeros(1, 1000).expand(2, 1000)},
            r"wave must have contiguous, non-overlapping rows, got strides \[0, 1\]",
        ),
        (
            {"out": torch.empty(2, 128, 4).transpose(1, 2)},
            r"out must be contiguous, got strides \[512, 1, 4\]",
        ),
        ({"window": torch.zeros(800)[::2]}, r"window must be contiguous, got strides \[2\]"),
        # not a tensor at all, or one the C++ cannot read
        (
            {"wave": [[0.0] * 1000] * 2},
            r"wave must be a tensor \(an object with __dlpack__\), got list",
        ),
        (
            {"out": torch.empty(2, 4, 128, requires_grad=True)},
            r"out cannot be read: .*require gradient",
        ),
    ],
    ids=[
        "hop",
        "out-n_mels",
        "out-frames",
        "lengths-batch",
        "mel_offset-shape",
        "mel_weight-nnz",
        "mel_start-dtype",
        "out-dtype",
        "window-dtype",
        "wave-expanded",
        "out-transposed",
        "window-strided",
        "wave-list",
        "out-requires-grad",
    ],
)
def test_the_binding_checks_every_tensor_at_the_boundary(ext, change, message):
    with pytest.raises(ValueError, match=message):
        ext.logmel(**{**_raw_args(), **change})
    ext.logmel(**_raw_args())  # the unchanged set is accepted


def test_the_binding_refuses_a_non_cpu_tensor(ext):
    """A CUDA (or any non-CPU) tensor is named with its device, never dereferenced. Without a
    GPU, a DLPack producer that reports device type 2 (CUDA) stands in for one."""

    class OnCuda:
        def __init__(self, tensor):
            self.tensor = tensor

        def __dlpack__(self):
            capsule = self.tensor.__dlpack__()
            # patch the device field of the DLTensor in the capsule (offset: data pointer)
            import ctypes

            get = ctypes.pythonapi.PyCapsule_GetPointer
            get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
            address = get(capsule, b"dltensor")
            device = (ctypes.c_int32 * 2).from_address(address + ctypes.sizeof(ctypes.c_void_p))
            device[0], device[1] = 2, 1
            return capsule

    with pytest.raises(ValueError, match=r"logmel: wave must be a CPU tensor, got one on cuda:1"):
        ext.logmel(**{**_raw_args(), "wave": OnCuda(torch.zeros(2, 1000))})


def test_cpp_falls_back_to_torch_for_a_non_power_of_two_fft(ext):
    cfg = get_preset("kaldi", n_fft=400)
    x = torch.from_numpy(_signal("noise", 2000))[None]
    got = logmel(x, preset=cfg, backend="cpp")
    torch.testing.assert_close(got, logmel(x, preset=cfg, backend="torch"))
    assert "power of two" in _logging.notices()["frontend.cpp.config.400"]


# ----- backend selection, build and load --------------------------------------------------------


def test_auto_on_cpu_picks_cpp_and_info_says_so(ext, monkeypatch):
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    assert resolve_backend("auto", "cpu") == "cpp"
    assert resolve_backend("cpp", "cpu") == "cpp"
    report = backend_report()
    assert report["auto_cpu"] == "cpp"
    assert report["cpp"].startswith(("loaded", "installed", "cached"))
    monkeypatch.setenv(backend_mod.ENV_VAR, "torch")
    assert resolve_backend("cpp", "cpu") == "torch"


def test_without_a_compiler_cpp_falls_back_with_one_notice(monkeypatch, tmp_path):
    # a fresh loader state with an empty cache and no compiler on the PATH
    monkeypatch.setattr(
        cpp, "_state", {"module": None, "origin": None, "error": None, "tried_build": False}
    )
    monkeypatch.setattr(cpp, "_installed", lambda: (None, None))
    monkeypatch.setattr(cpp, "_compiler", lambda: None)
    monkeypatch.setenv(cpp.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(_logging, "_seen", {})
    assert cpp.status() == {
        "state": "unavailable",
        "reason": "no C++ compiler found (set CXX, or install g++ or clang++)",
    }
    assert backend_report()["auto_cpu"] == "torch"
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("cpp", "cpu") == "torch"
    notice = _logging.notices()["frontend.cpp"]
    assert "no C++ compiler" in notice and "torch reference" in notice
    x = torch.from_numpy(_signal("noise", 2000))[None]
    torch.testing.assert_close(logmel(x), logmel(x, backend="torch"))


def test_build_into_a_fresh_cache_and_load(monkeypatch, tmp_path):
    if cpp._compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv(cpp.CACHE_ENV, str(tmp_path))
    path = cpp.build()
    assert path.is_file() and path.parent.parent == tmp_path / "ext"
    assert not list(path.parent.glob("*.tmp"))  # the atomic rename left no partial file
    assert cpp.build() == path  # cached: no second compile
    module = cpp._load_file(path)
    assert module.API_VERSION == cpp.API_VERSION and module.simd_lanes() in (4, 8, 16)
    monkeypatch.setenv(cpp.BUILD_ENV, "0")
    monkeypatch.setattr(
        cpp, "_state", {"module": None, "origin": None, "error": None, "tried_build": False}
    )
    monkeypatch.setattr(cpp, "_installed", lambda: (None, None))
    assert cpp.status()["state"] == "cached"
    monkeypatch.setenv(cpp.CACHE_ENV, str(tmp_path / "empty"))
    assert cpp.load() is None
    assert "FASTSPEC_CPP_BUILD=0" in cpp.status()["reason"]
