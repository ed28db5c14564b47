"""The C++ CPU front end ``fastspec._C``: find it, build it on first use, and call it.

Where the module comes from, in order:

1. ``fastspec._C`` installed next to the package (``FASTSPEC_BUILD_EXT=1 pip install -e .``);
2. a build cached in ``$FASTSPEC_CACHE/ext`` (default ``~/.cache/fastspec/ext``, or
   ``$XDG_CACHE_HOME/fastspec/ext``), keyed by the sources, the compiler, the flags, the Python
   ABI and the CPU (the build uses ``-march=native``);
3. a fresh build into that cache: one ``c++`` call on ``csrc/*.cpp``, about 2 s. The extension
   uses only the CPython C API (no torch or pybind11 headers), which is what keeps the build
   that short and independent of torch's C++ ABI; tensors cross the boundary through DLPack and
   the binding checks each one's device, dtype, shape and strides (``csrc/tensor_args.h``).

The calls themselves (:func:`~fastspec.frontend.cpp_ops.logmel_cpp`,
:func:`~fastspec.frontend.cpp_ops.resample_cpp`) are in :mod:`fastspec.frontend.cpp_ops`.

Concurrent first uses (DataLoader workers) serialise on a file lock and the build is moved into
place atomically, so a process never loads a half-written library. ``FASTSPEC_CPP_BUILD=0``
forbids step 3 (only 1 and 2 are used). When no module can be had, :func:`load` returns None
and :func:`status` says why; the backend resolver then issues the one-line notice.
"""

from __future__ import annotations

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

from .config import FrontendConfig

__all__ = ["API_VERSION", "build", "cache_dir", "load", "status", "supports"]

# must match kApiVersion in csrc/module.cpp: a module with another version is not used
API_VERSION = 3
CACHE_ENV = "FASTSPEC_CACHE"
BUILD_ENV = "FASTSPEC_CPP_BUILD"
_SOURCES = ("fft_cpu.cpp", "logmel_cpu.cpp", "resample_cpu.cpp", "module.cpp")
_HEADERS = ("fft_cpu.h", "logmel_cpu.h", "resample_cpu.h", "simd.h", "tensor_args.h")
# first choice first: the vector width follows the CPU (AVX-512 here), OpenMP for threads;
# each fallback drops what a compiler may not support
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3",),
)
_COMMON_FLAGS = ("-std=gnu++17", "-fPIC", "-shared", "-ffp-contract=fast", "-fvisibility=hidden")

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
    if cfg.log_offset:
        return f"log_offset={cfg.log_offset} (it floors the log only)"
    return None


if __name__ == "__main__":  # python -m fastspec.frontend.cpp: build now, print where
    print(build(force="--force" in sys.argv, verbose=True))
