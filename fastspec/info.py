"""What ``fastspec info`` reports: versions, the device, the precision and every backend choice.

:func:`info` gathers the raw dict (``fastspec info --json``); :func:`format_info` lays it out for
people: aligned columns, one line per backend and device with the backend that runs and why
(``fastspec.backends`` makes every one of those choices, so the reasons are the ones a run
announces when it falls back).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from fastspec import __version__, backends
from fastspec._logging import notices
from fastspec.data import loader_report
from fastspec.frontend import backend_report
from fastspec.frontend.cpp import status as cpp_status
from fastspec.masking import masking_report
from fastspec.models import list_models
from fastspec.models.attention import attention_report
from fastspec.train.distributed import distributed_report

__all__ = ["cpu_flags", "cpu_model", "format_info", "info"]

# the instruction-set extensions that decide CPU speed here: bf16 native or emulated, SIMD width
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve", "bf16")


def cpu_flags() -> list[str]:
    """The performance-relevant CPU flags of this machine (from /proc/cpuinfo, Linux only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in _FLAGS if flag in present]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        mod = __import__(module, fromlist=["__version__"])
    except Exception:  # not installed, or fails to load: either way not usable
        return "not installed"
    return getattr(mod, "__version__", "installed")


def info() -> dict:
    """Versions, the device, the precision, and the backend each stage of the data path uses."""
    cuda = torch.cuda.is_available()
    device = {
        "cuda": cuda,
        "name": torch.cuda.get_device_name(0) if cuda else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "cpu_native_bf16": backends.cpu_has_native_bf16(),
    }
    versions = {
        "fastspec": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "flash_attn": _version("flash_attn"),
        "nvidia.dali": _version("nvidia.dali"),
        "numpy": _version("numpy"),
        "soundfile": _version("soundfile"),
        "safetensors": _version("safetensors"),
        "tensorboard": _version("tensorboard"),
    }
    details = {
        "frontend": backend_report(),
        "attention": attention_report(),
        "masking": masking_report(),
        "decode": loader_report(),
        "cpp_extension": cpp_status(),
    }
    return {
        "versions": versions,
        "device": device,
        "choices": backends.report(),
        "backends": details,
        "models": list_models(),
        "distributed": distributed_report(),
        "fallback_notices": notices(),
    }


def _rows(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    """Left-aligned columns (the last one free-running)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def format_info(report: dict) -> str:
    """The report as aligned text."""
    v, d = report["versions"], report["device"]
    lines = ["versions"]
    lines += _rows([(name, str(value)) for name, value in v.items() if value is not None])
    lines.append("device")
    hardware = [
        ("cpu", f"{d['cpu_model']}, {d['cpu_cores']} cores, {d['torch_threads']} torch threads")
    ]
    flags = " ".join(d["cpu_flags"]) or "unknown"
    bf16 = "native bf16" if d["cpu_native_bf16"] else "no native bf16 (bf16 emulated)"
    hardware.append(("cpu kernels", f"{d['cpu_capability']}; flags {flags}; {bf16}"))
    hardware.append(("cuda", d["name"] if d["cuda"] else "not available"))
    lines += _rows(hardware)

    lines.append("backends (backend per device, and why; VAR=value forces one)")
    rows = [("piece", "variable", "device", "backend", "reason")]
    for piece in report["choices"].values():
        env = piece["env"] + (f"={piece['env_value']}" if piece["env_value"] else "")
        for device in ("cpu", "cuda"):
            if device in piece:
                choice = piece[device]
                mark = "  (fallback)" if choice["fallback"] else ""
                rows.append(
                    (piece["title"], env, device, choice["backend"], choice["reason"] + mark)
                )
                env = ""
    lines += _rows(rows)
    lines.append(
        "  choices: "
        + "; ".join(f"{p['env']} = {'|'.join(p['choices'])}" for p in report["choices"].values())
    )

    details = report["backends"]
    lines.append("details")
    cpp = details["frontend"]["cpp"]
    attention = details["attention"]
    flash = attention["flash_attn_version"] or (
        "installed" if attention["flash_attn_installed"] else "not installed"
    )
    lines += _rows(
        [
            ("C++ front end", cpp),
            (
                "Triton",
                f"{v['triton']}, interpreter {'on' if details['frontend']['triton_interpret'] else 'off'}",
            ),
            ("flash-attn", flash),
            ("torch varlen", "available" if attention["torch_varlen_available"] else "missing"),
            (
                "padded batches",
                "attention "
                + ", ".join(f"{dev}: {name}" for dev, name in attention["padded_backend"].items()),
            ),
            ("decode", details["decode"]),
        ]
    )
    dist = report["distributed"]
    lines.append("distributed (torchrun --nproc-per-node N -m fastspec pretrain ...)")
    lines += _rows([
        ("process", f"rank {dist['rank']} of {dist['world_size']} (local rank "
                    f"{dist['local_rank']}), {'under torchrun' if dist['torchrun'] else 'no torchrun'}"
                    f", restarts {dist['restart_count']}"),
        ("backend", f"{dist['backend']} (nccl {'yes' if dist['nccl'] else 'no'}, gloo "
                    f"{'yes' if dist['gloo'] else 'no'}); parallel {dist['parallel']}"),
    ])  # fmt: skip
    models = report["models"]
    lines.append(f"models ({len(models)})")
    lines.append("  " + ", ".join(models))
    lines.append("fallback notices so far")
    lines += _rows([(k, m) for k, m in report["fallback_notices"].items()]) or ["  none"]
    return "\n".join(lines)
