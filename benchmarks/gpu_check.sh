#!/usr/bin/env bash
# First contact with a CUDA machine: every GPU path of fastspec checked and measured in one run.
#
#   bash benchmarks/gpu_check.sh [OUT]        (OUT defaults to benchmarks/results)
#
# Under 10 minutes on one H100/H200: the CUDA tests, the Triton kernel tests natively, the
# no-host-sync tests, every Triton kernel against its float64 reference at training shapes, a
# short bf16 ViT-B pretrain of each recipe, and the front-end, masking and train-step benchmarks.
# Results go to OUT/gpu-check-<UTC time>/: gpu_check.json (every step: status, seconds, key
# figures, output tail), kernels.json, the pytest-benchmark JSON of each suite, the runs and one
# log per step; a summary table ends the output. A step that fails or times out never stops the
# others (benchmarks/gpu_check.py). Without CUDA it says so in one line and exits 2 at once.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${1:-benchmarks/results}"

# the cheap test first: no NVIDIA driver, no GPU (seconds, before torch is even imported)
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device here (nvidia-smi finds no GPU); run this on a GPU machine" >&2
    exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: a GPU is present but torch cannot use CUDA (a CPU build of torch?)" >&2
    exit 2
fi
exec "$PYTHON" benchmarks/gpu_check.py "$OUT" "${@:2}"
