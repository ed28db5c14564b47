"""The steps of ``benchmarks/gpu_check.sh``: the first contact with a CUDA machine, in one run.

Run through the shell script (it refuses a machine without CUDA within seconds). Every step is
a subprocess with its own timeout inside one overall budget (``--budget``, default 570 s, so the
whole check ends within 10 minutes on one H100/H200); a step that fails or times out is recorded
and the next one runs; a step that no longer fits the budget is recorded as skipped. What is not
installed (flash-attn, DALI, a peer library) is skipped by the tests and benchmarks themselves.

Steps, in order of what a short device loan should learn first:

1. ``info``: ``fastspec info --json`` (versions, the device, every backend choice);
2. ``cuda-tests``: the tests that need CUDA (``-m cuda``) and the Triton kernel tests, which run
   natively when CUDA is present;
3. ``no-sync-tests``: the tests asserting no host-device sync in a step;
4. ``kernels``: every Triton kernel against its float64 reference at training shapes
   (``benchmarks/gpu_kernels.py``);
5. ``pretrain-<recipe>``: a short bf16 pretrain of each recipe with ViT-B on the demo corpus;
6. ``bench-<suite>``: the front-end, masking and train-step benchmarks (pytest-benchmark JSON).

Writes ``OUT/gpu_check.json`` (every step: status, seconds, command, key figures, the output's
tail) beside the steps' own files, and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = ("maskspec", "asit", "atst-clip", "atst-frame")
SUITES = ("frontend", "masking", "train_step")
TRITON_TESTS = (
    "tests/test_logmel_triton.py",
    "tests/test_masking_triton.py",
    "tests/test_patch_embed_triton.py",
)


def steps(out: Path, py: str) -> list[tuple[str, list[str], int]]:
    """``(name, command, timeout seconds)`` of every step."""
    # -rs lists why each skipped test was skipped (flash-attn, DALI or a peer not installed)
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    plan = [
        ("info", [py, "-m", "fastspec", "info", "--json"], 60),
        (
            "cuda-tests",
            [*pytest, "tests", "-m", "cuda", f"--junitxml={out / 'cuda-tests.xml'}"],
            150,
        ),
        ("triton-tests", [*pytest, *TRITON_TESTS, f"--junitxml={out / 'triton-tests.xml'}"], 120),
        ("no-sync-tests", [*pytest, "tests", "-k", "without_host_sync"], 60),
        ("kernels", [py, "benchmarks/gpu_kernels.py", str(out / "kernels.json")], 120),
    ]
    for recipe in RECIPES:
        run_dir = out / "runs" / recipe
        plan.append(
            (
                f"pretrain-{recipe}",
                [
                    py,
                    "-m",
                    "fastspec",
                    "pretrain",
                    "--recipe",
                    recipe,
                    "--model",
                    "vit_base_patch16",
                    "--amp",
                    "bf16",
                    "--steps",
                    "30",
                    "--batch-size",
                    "32",
                    "--no-progress",
                    "--out",
                    str(run_dir),
                    "train.log_every=10",
                    "train.ckpt_every=1000",
                ],
                100,
            )
        )
    for suite in SUITES:
        result = out / f"{suite.replace('_', '-')}.json"  # pytest-benchmark's file, per suite
        plan.append(
            (
                f"bench-{suite}",
                [*pytest, f"benchmarks/bench_{suite}.py", f"--benchmark-json={result}"],
                150,
            )
        )
    return plan


def _figures(name: str, out: Path) -> dict:
    """Key numbers of a finished step, read from the files it wrote."""
    try:
        if name.startswith("pretrain-"):
            lines = (out / "runs" / name.removeprefix("pretrain-") / "metrics.jsonl").read_text()
            records = [json.loads(line) for line in lines.splitlines() if line.strip()]
            last = records[-1]
            return {
                "loss_first": records[0]["loss"],
                "loss_last": last["loss"],
                "clips_per_s": round(last["clips_per_s"], 1),
                "mfu": last.get("mfu"),
            }
        if name == "kernels":
            report = json.loads((out / "kernels.json").read_text())
            return {k: v.get("ok") for k, v in report.items() if isinstance(v, dict)}
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return {"figures": f"unreadable: {exc}"}
    return {}


def run(out: Path, budget: float, only: list[str] | None = None) -> dict:
    py = sys.executable
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    deadline = time.monotonic() + budget
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "steps": {}}
    for name, command, limit in steps(out, py):
        if only and name not in only:
            continue
        left = deadline - time.monotonic()
        if left < 20:
            report["steps"][name] = {"status": "skipped (budget)", "seconds": 0.0}
            print(f"[gpu_check] {name}: skipped, the {budget:.0f} s budget is spent", flush=True)
            continue
        timeout = min(limit, left)
        print(f"[gpu_check] {name} (timeout {timeout:.0f} s)", flush=True)
        start = time.monotonic()
        try:
            done = subprocess.run(
                command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
            )
            status = "ok" if done.returncode == 0 else f"failed (rc {done.returncode})"
            output = done.stdout + done.stderr
            if name == "info" and done.returncode == 0:
                (out / "info.json").write_text(done.stdout)
        except subprocess.TimeoutExpired as exc:
            status = f"timeout ({timeout:.0f} s)"
            output = exc.stdout or ""
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
        seconds = time.monotonic() - start
        (out / f"{name}.log").write_text(output)
        report["steps"][name] = {
            "status": status,
            "seconds": round(seconds, 1),
            "command": " ".join(command),
            **_figures(name, out),
            "tail": output[-1500:],
        }
    report["seconds"] = round(budget - max(deadline - time.monotonic(), 0.0), 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    return report


def print_summary(report: dict, out: Path) -> None:
    print(f"\n{'step':<22} {'status':<20} {'s':>6}  figures")
    for name, step in report["steps"].items():
        figures = {
            k: v for k, v in step.items() if k not in ("status", "seconds", "command", "tail")
        }
        line = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
        )
        print(f"{name:<22} {step['status']:<20} {step['seconds']:>6.1f}  {line}")
    print(f"\nreport: {out / 'gpu_check.json'} ({report['seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU first-contact check (see gpu_check.sh)")
    parser.add_argument("out", nargs="?", default="benchmarks/results", help="output folder")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for all steps")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(args.out).resolve() / f"gpu-check-{stamp}"
    report = run(out, args.budget, args.only)
    print_summary(report, out)
    return 0 if all(s["status"] == "ok" for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
