"""Benchmark session set-up: device info in the saved JSON, one result file per suite, a rate
table per suite.

``pytest benchmarks/`` (or any subset) writes one file per suite,
``benchmarks/results/<suite>-<device-slug>-<date>.json`` (suite = the module without ``bench_``:
``frontend``, ``masking``, ``data``, ``train-step``, ``atst``, ``mast``, ...), so running one suite
never replaces another's results of the same day. ``--benchmark-json PATH`` writes one combined
file instead. Each file gets a ``fastspec_device`` block (CPU model, cores and flags, GPU, torch /
triton / python versions, git commit).

The run ends with one table per suite, read from each benchmark's ``extra_info``: hours of audio
per second, clips/s, TFLOP/s and MFU where the suite records them, and each fastspec provider's
speed-up over the best peer measured in the same group of the same run, under a line naming the
machine (CPU flags, native bf16 or not, load, GPU).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path

import pytest
import torch

from fastspec.backends import cpu_has_native_bf16
from fastspec.info import cpu_flags, cpu_model

# FASTSPEC_BENCH_RESULTS redirects the per-suite files (a trial run that should not land in git)
RESULTS = Path(
    os.environ.get("FASTSPEC_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)
REPO = Path(__file__).resolve().parent.parent


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
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "cpu_native_bf16": cpu_has_native_bf16(),
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
        name = f"cpu-{cpu_model()}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def suite_of(fullname: str) -> str:
    """``benchmarks/bench_train_step.py::test_x[...]`` -> ``train-step``."""
    stem = Path(fullname.split("::", 1)[0]).stem
    return stem.removeprefix("bench_").replace("_", "-")


def pytest_configure(config):
    # runs before pytest-benchmark's own (trylast) configure reads the option
    if getattr(config.option, "benchmark_json", "absent") is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        # pytest-benchmark writes everything into one file: a scratch one, split per suite in
        # pytest_benchmark_update_json and removed at the end
        config._fastspec_split = (RESULTS, f"{device_slug()}-{date}")
        config.option.benchmark_json = RESULTS / f".combined-{os.getpid()}.json"


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastspec_device"] = device_info()
    split = getattr(config, "_fastspec_split", None)
    if split is None:
        return
    folder, stamp = split
    by_suite: dict[str, list] = {}
    for bench in output_json.get("benchmarks", []):
        by_suite.setdefault(suite_of(bench["fullname"]), []).append(bench)
    for suite, rows in by_suite.items():
        path = folder / f"{suite}-{stamp}.json"
        path.write_text(json.dumps({**output_json, "benchmarks": rows}, indent=4, default=str))
        config._fastspec_written = [*getattr(config, "_fastspec_written", []), str(path)]


def pytest_unconfigure(config):
    split = getattr(config, "_fastspec_split", None)
    if split is not None:
        Path(config.option.benchmark_json).unlink(missing_ok=True)


# ---- the summary tables ---------------------------------------------------------------------


def _rate(info: dict, median_s: float) -> tuple[str, float]:
    """The rate a row is compared on: the suite's own unit first, else calls per second."""
    for key in ("hours_per_s", "clips_per_s", "masks_per_s", "audio_s_per_s"):
        if info.get(key):
            return key, float(info[key])
    return "calls_per_s", 1.0 / median_s if median_s else math.nan


def _tflops(info: dict) -> float | None:
    if info.get("tflops") is not None:
        return float(info["tflops"])
    clips = info.get("clips_per_s")
    if clips and info.get("tflops_per_clip") is not None:
        return float(info["tflops_per_clip"]) * clips
    if clips and info.get("gflops_per_clip") is not None:
        return float(info["gflops_per_clip"]) * clips / 1e3
    return None


def summary_rows(benchmarks) -> dict[str, list[dict]]:
    """Per suite, one row per benchmark with its rates and (fastspec rows) speed-up."""
    suites: dict[str, list[dict]] = {}
    for bench in benchmarks:
        info, median = bench.extra_info, bench.stats.median
        hours = info.get("hours_per_s")
        if hours is None and info.get("audio_s_per_s"):
            hours = info["audio_s_per_s"] / 3600.0
        group = str(bench.group or info.get("shape") or bench.name.split("[", 1)[0])
        # providers compare only on the same model and kind of work (ViT-S vs ViT-S, forward
        # vs forward), whatever the suite put into its group name
        for key in ("model", "kind", "mode"):
            if info.get(key) is not None and str(info[key]) not in group:
                group += f" {info[key]}"
        rate_key, rate = _rate(info, median)
        provider = str(info.get("provider") or bench.name)
        suites.setdefault(suite_of(bench.fullname), []).append(
            {
                "group": group,
                "provider": provider,
                "ms": 1e3 * median,
                "hours_per_s": hours,
                "clips_per_s": info.get("clips_per_s"),
                "tflops": _tflops(info),
                "mfu": info.get("mfu"),
                "rate_key": rate_key,
                "rate": rate,
                "fastspec": provider.lower().startswith("fastspec"),
            }
        )
    for rows in suites.values():
        for row in rows:
            peers = [
                r["rate"]
                for r in rows
                if not r["fastspec"]
                and r["group"] == row["group"]
                and r["rate_key"] == row["rate_key"]
            ]
            best = max(peers, default=None)
            row["speedup"] = row["rate"] / best if row["fastspec"] and best else None
    return suites


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def machine_line() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    bf16 = "native bf16" if cpu_has_native_bf16() else "bf16 emulated"
    flags = " ".join(cpu_flags()) or "flags unknown"
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu_model()}, {os.cpu_count()} cores ({flags}; {bf16}), load {load}; {gpu}"


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's millisecond tables: the run's last word
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b and b.stats]
    if not benchmarks:
        return
    write = terminalreporter.write_line
    for suite, rows in sorted(summary_rows(benchmarks).items()):
        terminalreporter.section(f"fastspec summary: {suite}")
        write(machine_line())
        header = (
            f"{'group':<28} {'provider':<34} {'ms':>9} {'h audio/s':>10} {'clips/s':>9} "
            f"{'TFLOP/s':>8} {'MFU':>6} {'vs best peer':>12}  other rate"
        )
        write(header)
        for row in sorted(rows, key=lambda r: (r["group"], -r["rate"])):
            mfu = None if row["mfu"] is None else 100 * row["mfu"]
            speedup = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
            other = ""
            if row["rate_key"] not in ("hours_per_s", "clips_per_s"):
                other = f"{row['rate']:.4g} {row['rate_key'].replace('_per_s', '/s')}"
            write(
                f"{row['group'][:28]:<28} {row['provider'][:34]:<34} {row['ms']:>9.2f} "
                f"{_fmt(row['hours_per_s'], '.3f'):>10} {_fmt(row['clips_per_s'], '.1f'):>9} "
                f"{_fmt(row['tflops'], '.3f'):>8} {_fmt(mfu, '.1f'):>6} {speedup:>12}  {other}"
            )
    for path in getattr(config, "_fastspec_written", []):
        write(f"results: {path}")
