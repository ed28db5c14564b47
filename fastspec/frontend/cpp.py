"""The C++ CPU front end ``fastspec._C``: find it, build it on first use, and call it.

Where the module comes from, in order:

1. ``fastspec._C`` installed next to the package (``FASTSPEC_BUILD_EXT=1 pip install -e .``);
2. a build cached in ``$FASTSPEC_CACHE/ext`` (default ``~/.cache/fastspec/ext``, or
   ``$XDG_CACHE_HOME/fastspec/ext``), keyed by the sources, the compiler, the flags, the Python
   ABI and the CPU (the build uses ``-march=native``);
3. a fresh build into that cache: one ``c++`` call on ``csrc/*.cpp``, about 2 s. The extension
   uses only the CPython C API (no torch or pybind11 headers), which is what keeps the build
   that short and independent of torch's C++ ABI; tensors cross the boundary as data pointers,
   after :func:`logmel_cpp` has checked them.

Concurrent first uses (DataLoader workers) serialise on a file lock and the build is moved into
place atomically, so a process never loads a half-written library. ``FASTSPEC_CPP_BUILD=0``
forbids step 3 (only 1 and 2 are used). When no module can be had, :func:`load` returns None
and :func:`status` says why; the backend resolver then issues the one-line notice.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastspec.kernels import reference as ref

from . import polyphase
from .config import FrontendConfig

__all__ = [
    "API_VERSION",
    "build",
    "load",
    "status",
    "supports",
    "logmel_cpp",
    "resample_cpp",
    "cache_dir",
]

# must match kApiVersion in csrc/module.cpp: a module with another version is not used
API_VERSION = 2
CACHE_ENV = "FASTSPEC_CACHE"
BUILD_ENV = "FASTSPEC_CPP_BUILD"
_SOURCES = ("logmel_cpu.cpp", "resample_cpu.cpp", "module.cpp")
_HEADERS = ("logmel_cpu.h", "resample_cpu.h")
# first choice first: the vector width follows the CPU (AVX-512 here), OpenMP for threads;
# each fallback drops what a compiler may not support
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3",),
)
_COMMON_FLAGS = ("-std=gnu++17", "-fPIC", "-shared", "-ffp-contract=fast", "-fvisibility=hidden")

_WAVE_CODES = {torch.float32: 0, torch.float64: 1, torch.int16: 2}
_OUT_CODES = {torch.float32: 0, torch.bfloat16: 1}

_lock = threading.Lock()
_state: dict = {"module": None, "origin": None, "error": None, "tried_build": False}


def csrc_dir() -> Path | None:
    """The C++ sources: ``csrc/`` of the source checkout the package runs from (editable
    installs), else the copy ``setup.py`` ships inside the package (``fastspec/_csrc``)."""
    package = Path(__file__).resolve().parent.parent
    for here in (package.parent / "csrc", package / "_csrc"):
        if all((here / name).is_file() for name in _SOURCES + _HEADERS):
            return here
    return None


def cache_dir() -> Path:
    """Where first-use builds go: ``$FASTSPEC_CACHE/ext`` or ``~/.cache/fastspec/ext``."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "fastspec")
    return Path(root) / "ext"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    # -march=native code must not be loaded on another CPU sharing the same home directory
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{os.uname().machine}"


def _build_key(compiler: str, src: Path) -> str:
    digest = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        digest.update((src / name).read_bytes())
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    for part in (
        version,
        repr(_FLAG_SETS),
        repr(_COMMON_FLAGS),
        sysconfig.get_config_var("EXT_SUFFIX") or "",
        _cpu_signature(),
        str(API_VERSION),
    ):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _load_file(path: Path):
    spec = importlib.util.spec_from_file_location("fastspec._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if getattr(module, "API_VERSION", None) != API_VERSION:
        raise ImportError(
            f"{path} has API_VERSION {getattr(module, 'API_VERSION', None)}, need {API_VERSION}"
        )
    return module


def _installed():
    """``fastspec._C`` built by setup.py, if present and current."""
    try:
        module = importlib.import_module("fastspec._C")
    except ImportError:
        return None, None
    if getattr(module, "API_VERSION", None) != API_VERSION:
        return None, f"installed fastspec._C is stale (API_VERSION != {API_VERSION}); rebuild it"
    return module, getattr(module, "__file__", "fastspec._C")


def _target() -> tuple[Path | None, str | None]:
    """``(path of the cached build for these sources, why there is none)``."""
    src = csrc_dir()
    if src is None:
        return None, "the C++ sources (csrc/) are not next to the package"
    compiler = _compiler()
    if compiler is None:
        return None, "no C++ compiler found (set CXX, or install g++ or clang++)"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return cache_dir() / _build_key(compiler, src) / f"_C{suffix}", None


def build(*, force: bool = False, verbose: bool = False) -> Path:
    """Compile ``csrc/`` into the cache (if not there yet) and return the library's path.

    Raises RuntimeError with the compiler's last lines when every flag set fails.
    """
    target, why = _target()
    if target is None:
        raise RuntimeError(f"cannot build fastspec._C: {why}")
    if target.is_file() and not force:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        # a read-only home (some CI runners, containers): build under the temp directory
        fallback = Path(tempfile.gettempdir()) / f"fastspec-{os.getuid()}" / "ext"
        target = fallback / target.parent.name / target.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and not force:
            return target
    src, compiler = csrc_dir(), _compiler()
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise RuntimeError(f"cannot build fastspec._C: no Python.h in {include} (python3-dev)")
    import fcntl

    # one build at a time per key; later arrivals find the finished file after the lock
    with open(target.parent / "build.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if target.is_file() and not force:
            return target
        errors = []
        for flags in _FLAG_SETS:
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
            os.close(fd)
            cmd = [compiler, *flags, *_COMMON_FLAGS, f"-I{include}"]
            cmd += [str(src / name) for name in _SOURCES] + ["-o", tmp]
            start = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if result.returncode == 0:
                os.replace(tmp, target)  # atomic: loaders never see a partial file
                if verbose:
                    print(f"built {target} in {time.perf_counter() - start:.1f} s: {' '.join(cmd)}")
                return target
            os.unlink(tmp)
            errors.append(f"{' '.join(flags)}: {result.stderr.strip()[-1500:]}")
        # first line: what the one-line notice shows; then every attempt's compiler output
        first = next((line for line in result.stderr.splitlines() if "error" in line), "")
        raise RuntimeError(
            f"cannot build fastspec._C with {compiler}: {first.strip()}\n" + "\n".join(errors)
        )


def load(*, build_if_missing: bool = True):
    """The ``fastspec._C`` module, or None (``status()["error"]`` says why).

    Tries the installed module, then the cache, then (if ``build_if_missing`` and
    ``FASTSPEC_CPP_BUILD`` is not ``0``) a first-use build. The result is remembered for the
    process; a failed build is not retried.
    """
    with _lock:
        if _state["module"] is not None:
            return _state["module"]
        module, why = _installed()
        if module is not None:
            _state.update(module=module, origin=str(why), error=None)
            return module
        target, why_not = _target()
        if target is not None and target.is_file():
            try:
                module = _load_file(target)
            except ImportError as exc:
                why_not = f"cached build {target} does not load: {exc}"
            else:
                sys.modules.setdefault("fastspec._C", module)
                _state.update(module=module, origin=str(target), error=None)
                return module
        allowed = os.environ.get(BUILD_ENV, "1") != "0"
        if target is None or not build_if_missing or not allowed or _state["tried_build"]:
            if target is not None and not allowed:
                why_not = f"not built, and {BUILD_ENV}=0 forbids building it on first use"
            elif target is not None and not build_if_missing and why_not is None:
                why_not = "not built yet"
            _state["error"] = why_not or _state["error"]
            return None
        _state["tried_build"] = True
        try:
            path = build()
            module = _load_file(path)
        except (RuntimeError, ImportError, OSError, subprocess.SubprocessError) as exc:
            _state["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None
        sys.modules.setdefault("fastspec._C", module)
        _state.update(module=module, origin=str(path), error=None)
        return module


def status() -> dict:
    """What ``fastspec info`` reports: whether the module is loaded / cached / buildable."""
    with _lock:
        loaded = _state["module"]
        origin, error = _state["origin"], _state["error"]
    if loaded is not None:
        return {"state": "loaded", "path": origin, "simd_lanes": loaded.simd_lanes()}
    module, why = _installed()
    if module is not None:
        return {"state": "installed", "path": why, "simd_lanes": module.simd_lanes()}
    target, why_not = _target()
    if target is not None and target.is_file():
        return {"state": "cached", "path": str(target)}
    if target is not None and os.environ.get(BUILD_ENV, "1") != "0" and error is None:
        return {"state": "buildable", "path": str(target), "compiler": _compiler()}
    return {"state": "unavailable", "reason": error or why_not or why}


def supports(cfg: FrontendConfig) -> str | None:
    """None if the C++ backend computes ``cfg``, else the reason it cannot."""
    if cfg.n_fft & (cfg.n_fft - 1):
        return f"n_fft={cfg.n_fft} is not a power of two (the C++ FFT is radix 2/4)"
    return None


@functools.lru_cache(maxsize=64)
def _plan(cfg: FrontendConfig) -> dict:
    """Window and sparse (CSR) mel filters of ``cfg`` as CPU tensors, built in float64."""
    window = ref.window_ref(
        cfg.window, cfg.win_length, cfg.periodic_window, cfg.frame_length, dtype=torch.float64
    )
    build_fb = ref.kaldi_mel_banks if cfg.mel_scale == "kaldi" else ref.htk_mel_banks
    fb = build_fb(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.f_max, dtype=torch.float64)
    # the C++ split step yields 2 X[k]: |2X|^2 = 4 |X|^2, |2X| = 2 |X|; exact powers of two
    fb = fb * (0.25 if cfg.power == 2.0 else 0.5)
    starts, offsets, weights = [], [0], []
    for m in range(cfg.n_mels):
        nonzero = (fb[:, m] != 0).nonzero().flatten()
        # Kaldi / HTK triangles are one contiguous run of bins (or empty)
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.numel() else (0, 0)
        starts.append(lo)
        weights.append(fb[lo:hi, m])
        offsets.append(offsets[-1] + hi - lo)
    return {
        "window": window.to(torch.float32).contiguous(),
        "mel_start": torch.tensor(starts, dtype=torch.int32),
        "mel_offset": torch.tensor(offsets, dtype=torch.int32),
        "mel_weight": torch.cat(weights).to(torch.float32).contiguous(),
    }


def logmel_cpp(
    wave: Tensor,
    lengths: Tensor | None,
    cfg: FrontendConfig,
    *,
    normalize: bool = True,
    out_dtype: torch.dtype = torch.float32,
    module=None,
) -> Tensor:
    """Features of ``wave [B, S]`` (CPU; float32/float64/int16) -> ``[B, T, n_mels]``.

    ``lengths [B]`` int (None: all ``S``). Frames past each clip's frame count are 0. NaN / inf
    in a clip's valid samples raise ValueError naming the clip (when ``cfg.check_finite``).
    Runs on ``torch.get_num_threads()`` OpenMP threads, without the GIL.
    """
    module = module or load()
    if module is None:
        raise RuntimeError(f"fastspec._C is unavailable: {status().get('reason')}")
    if not isinstance(wave, Tensor) or wave.dim() != 2 or wave.device.type != "cpu":
        raise ValueError(
            "wave must be a CPU tensor [B, S], got "
            f"{tuple(wave.shape) if isinstance(wave, Tensor) else type(wave).__name__} "
            f"on {getattr(wave, 'device', '?')}"
        )
    if wave.dtype in (torch.float16, torch.bfloat16):
        wave = wave.float()  # the C++ reads float32, float64 or int16
    if wave.dtype not in _WAVE_CODES:
        raise ValueError(f"wave must be float or int16, got {wave.dtype} {tuple(wave.shape)}")
    if out_dtype not in _OUT_CODES:
        raise ValueError(f"out_dtype must be float32 or bfloat16, got {out_dtype}")
    reason = supports(cfg)
    if reason is not None:
        raise ValueError(f"the C++ front end cannot compute this config: {reason}")
    if wave.stride(-1) != 1 or (wave.shape[0] > 1 and wave.stride(0) < wave.shape[1]):
        wave = wave.contiguous()  # rows must not overlap (an expanded batch has stride 0)
    batch, num_samples = wave.shape
    if lengths is None:
        lengths = torch.full((batch,), num_samples, dtype=torch.int64)
    elif (
        not isinstance(lengths, Tensor)
        or lengths.shape != (batch,)
        or lengths.dtype.is_floating_point
        or lengths.dtype == torch.bool
    ):
        raise ValueError(
            f"lengths must be an int tensor [B={batch}], got "
            f"{getattr(lengths, 'dtype', type(lengths).__name__)} "
            f"{tuple(getattr(lengths, 'shape', ()))}"
        )
    lengths = lengths.to(device="cpu", dtype=torch.int64).contiguous()
    n_frames = ref.frame_count(num_samples, cfg.frame_length, cfg.hop_length, cfg.center)
    out = torch.empty(batch, n_frames, cfg.n_mels, dtype=out_dtype)
    plan = _plan(cfg)
    norm_mul, norm_add = cfg.norm_affine(normalize)
    module.logmel(
        wave=wave.data_ptr(),
        wave_dtype=_WAVE_CODES[wave.dtype],
        batch=batch,
        num_samples=num_samples,
        stride_b=wave.stride(0) if batch > 1 else num_samples,
        lengths=lengths.data_ptr(),
        out=out.data_ptr(),
        out_dtype=_OUT_CODES[out_dtype],
        n_frames=n_frames,
        window=plan["window"].data_ptr(),
        frame_len=cfg.frame_length,
        n_fft=cfg.n_fft,
        hop=cfg.hop_length,
        center=cfg.center,
        reflect=cfg.center and cfg.pad_mode == "reflect",
        remove_dc=cfg.remove_dc,
        preemph=cfg.preemphasis,
        power_one=cfg.power == 1.0,
        n_mels=cfg.n_mels,
        mel_start=plan["mel_start"].data_ptr(),
        mel_offset=plan["mel_offset"].data_ptr(),
        mel_weight=plan["mel_weight"].data_ptr(),
        log_floor=cfg.log_floor,
        log_mult=cfg.log_mult,
        has_top_db=cfg.top_db is not None,
        top_db=cfg.top_db if cfg.top_db is not None else 0.0,
        norm_mul=norm_mul,
        norm_add=norm_add,
        check_finite=cfg.check_finite and wave.dtype != torch.int16,
        n_threads=max(1, torch.get_num_threads()),
    )
    return out


@functools.lru_cache(maxsize=16)
def _resample_plan(up: int, down: int, lanes: int) -> tuple[Tensor, Tensor, int]:
    """``(taps [up, n_taps] float32, starts [up] int64, n_taps)`` for the C++ resampler.

    Phase ``r`` of the output (``k = r + m up``) is ``sum_j x[base_r + m down - j] h[phase_r +
    j up]`` (as ``polyphase._polyphase_bank``); reversed, that is a contiguous dot product of
    ``x[m down + starts[r] + q]`` with ``taps[r, q]``, zero padded to a multiple of ``lanes``.
    """
    h, half_len = polyphase.filter_taps(up, down)
    r = np.arange(up)
    centre = r * down + half_len
    phase, base = centre % up, centre // up
    count = (h.size - 1 - phase) // up + 1  # taps of each phase
    n_taps = -(-int(count.max()) // lanes) * lanes
    taps = np.zeros((up, n_taps))
    for i in range(up):
        j = np.arange(count[i])
        taps[i, count[i] - 1 - j] = h[phase[i] + j * up]
    starts = base - count + 1
    return (
        torch.from_numpy(taps).to(torch.float32).contiguous(),
        torch.from_numpy(starts.astype(np.int64)).contiguous(),
        n_taps,
    )


def resample_cpp(
    wave: Tensor, lengths: Tensor | None, orig_sr: int, new_sr: int, *, module=None
) -> tuple[Tensor, Tensor | None]:
    """Polyphase resampling of ``wave [B, S]`` (CPU; float32/float64/int16) in C++.

    The filter of :func:`fastspec.frontend.polyphase.resample` (scipy's resample_poly), in
    float32. Samples past ``lengths[b]`` read as zero, so each clip is resampled as if alone.
    Returns ``(float32 [B, ceil(S up / down)], resampled lengths or None)``.
    """
    module = module or load()
    if module is None:
        raise RuntimeError(f"fastspec._C is unavailable: {status().get('reason')}")
    if not isinstance(wave, Tensor) or wave.dim() != 2 or wave.device.type != "cpu":
        raise ValueError(
            "wave must be a CPU tensor [B, S], got "
            f"{tuple(wave.shape) if isinstance(wave, Tensor) else type(wave).__name__}"
        )
    if wave.dtype in (torch.float16, torch.bfloat16):
        wave = wave.float()
    if wave.dtype not in _WAVE_CODES:
        raise ValueError(f"wave must be float or int16, got {wave.dtype} {tuple(wave.shape)}")
    if wave.stride(-1) != 1 or (wave.shape[0] > 1 and wave.stride(0) < wave.shape[1]):
        wave = wave.contiguous()
    up, down = polyphase.reduced_ratio(orig_sr, new_sr)
    batch, num_samples = wave.shape
    full = torch.full((batch,), num_samples, dtype=torch.int64)
    clip_lengths = full if lengths is None else lengths.to("cpu", torch.int64).contiguous()
    taps, starts, n_taps = _resample_plan(up, down, module.simd_lanes())
    out_len = -(-num_samples * up // down)
    out = torch.empty(batch, out_len, dtype=torch.float32)
    module.resample(
        wave=wave.data_ptr(),
        wave_dtype=_WAVE_CODES[wave.dtype],
        batch=batch,
        num_samples=num_samples,
        stride_b=wave.stride(0) if batch > 1 else num_samples,
        lengths=clip_lengths.data_ptr(),
        out=out.data_ptr(),
        out_len=out_len,
        taps=taps.data_ptr(),
        starts=starts.data_ptr(),
        up=up,
        down=down,
        n_taps=n_taps,
        n_threads=max(1, torch.get_num_threads()),
    )
    if lengths is None:
        return out, None
    return out, polyphase.resampled_lengths(lengths.to(torch.int64), orig_sr, new_sr)


if __name__ == "__main__":  # python -m fastspec.frontend.cpp: build now, print where
    print(build(force="--force" in sys.argv, verbose=True))
