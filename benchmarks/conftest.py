"""Benchmark session set-up: device info in the saved JSON, automatic saving, a rate table.

``pytest benchmarks/`` writes ``benchmarks/results/<device-slug>-<date>.json`` unless
``--benchmark-json`` is given, adds a ``fastspec_device`` block (CPU model and cores, GPU,
torch / triton / python versions, git commit) to it, and ends with a table of hours of audio per
second per provider, read from each benchmark's ``extra_info``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module, fromlist=["__version__"])
    except Exception:
        return None
    return getattr(mod, "__version__", "installed")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpp_status() -> dict | None:
    try:
        from fastspec.frontend import cpp

        return cpp.status()  # reports, never builds
    except Exception as exc:  # the benchmark record must not fail on this
        return {"state": f"error: {exc}"}


def device_info() -> dict:
    """Where the numbers were measured: enough to compare runs across machines."""
    cuda = torch.cuda.is_available()
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        # other work on the machine skews CPU timings: recorded so a reader can judge a run
        "loadavg_1_5_15": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "librosa": _version("librosa"),
        "nnAudio": _version("nnAudio"),
        "kaldi_native_fbank": _version("kaldi_native_fbank"),
        "torchaudio": _version("torchaudio"),
        "nvidia.dali": _version("nvidia.dali"),
        "fastspec_cpp": _cpp_status(),
        # an uncommitted tree has no HEAD yet: say so instead of failing
        "git_commit": _git("rev-parse", "HEAD") or "uncommitted",
        "git_dirty": bool(_git("status", "--porcelain")),
    }


def device_slug() -> str:
    # file names group results by machine kind: the GPU when there is one, else CPU model + cores
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu-{_cpu_model()}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def pytest_configure(config):
    # runs before pytest-benchmark's own (trylast) configure reads the option
    if getattr(config.option, "benchmark_json", "absent") is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        config.option.benchmark_json = RESULTS / f"{device_slug()}-{date}.json"


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastspec_device"] = device_info()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    # only benchmarks of this suite carry hours_per_s; other suites in the same run are skipped
    rows = [b for b in getattr(session, "benchmarks", []) if b and "hours_per_s" in b.extra_info]
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fastspec front end: hours of audio per second")
    write(
        f"{'shape':<10} {'provider':<34} {'mels':>4} {'h audio/s':>10} {'ms/batch':>9}  "
        "err max / mean vs float64"
    )
    for bench in sorted(rows, key=lambda b: (b.extra_info["shape"], -b.extra_info["hours_per_s"])):
        info = bench.extra_info
        err_max, err_mean = info.get("err_max"), info.get("err_mean")
        err_text = "n/a"
        if err_max is not None:
            err_text = f"{err_max:.1e} / {err_mean:.1e} {info['err_units']}"
        note = f"  ({info['note']})" if info.get("note") else ""
        write(
            f"{info['shape']:<10} {info['provider']:<34} {info['n_mels']:>4} "
            f"{info['hours_per_s']:>10.3f} {info['ms_per_batch']:>9.1f}  {err_text}{note}"
        )
