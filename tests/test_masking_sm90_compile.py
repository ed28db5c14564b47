"""Every masking / token kernel compiles for an H100 (sm_90) without a GPU, and does not spill.

The interpreter tests (test_masking_triton.py, test_patch_embed_triton.py) check what the kernels
compute; they cannot see what only the GPU compiler sees: layouts, ``tl.dot`` shape rules, 64-bit
pointer arithmetic, register pressure. Here each kernel is compiled as its launcher would launch
it on an H100 (same constexprs, tile sizes and warps, taken from the launchers' config helpers,
at the shapes of a ViT-B/16 MaskSpec step), down to a cubin through Triton's ptxas, and ptxas's
verbose report must show no spill stores. One fresh interpreter compiles them all: this process
holds the interpreted versions.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

_SCRIPT = r"""
import re, subprocess, tempfile

import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource, compile

from fastspec.kernels import masking as M, masking_restore as R, patch_embed as P
from fastspec.kernels import patch_embed_bwd as PB
from fastspec.kernels import _utils as U
import torch

assert not (M.INTERPRETED or P.INTERPRETED or U.INTERPRETED or R.INTERPRETED)
PTXAS = get_ptxas(90).path


def build(label, kernel, runtime, meta, num_warps):
    signature = {**runtime, **{name: "constexpr" for name in meta}}
    constexprs = {(kernel.arg_names.index(name),): value for name, value in meta.items()}
    binary = compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps},
    )
    assert binary.asm["cubin"], label
    ptx = binary.asm["ptx"]
    arch = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(ptx)
    report = subprocess.run(
        [PTXAS, "-v", "--gpu-name", arch, fh.name, "-o", "/dev/null"],
        capture_output=True, text=True,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", report.stderr)]
    regs = re.findall(r"Used (\d+) registers", report.stderr)
    print(f"{label}: {regs[-1]} registers, {max(spills)} bytes spilled", flush=True)
    assert max(spills) == 0, f"{label} spills: {report.stderr[-1500:]}"


I32 = "i32"
# mask sampling at B = 256 clips x 16 masks, 64 x 8 = 512 tokens
build("uniform", M._uniform_kernel,
      {"seed_ptr": "*i64", "out_ptr": "*fp32", "numel": I32, "stream": I32}, {"BLOCK": 1024}, 4)
select = {"seed_ptr": "*i64", "priority_ptr": "*i32", "mask_ptr": "*u8", "ids_keep_ptr": "*i64",
          "ids_restore_ptr": "*i64", "n_rows": I32, "n_tokens": I32, "n_keep": I32, "stream": I32}
for n_tokens, bits in ((512, 0), (512, 9), (4096, 2)):
    block_b, block_n, warps = M.select_config(4096, n_tokens)
    meta = {"HAS_PRIORITY": bits > 0, "PRIORITY_BITS": bits, "BLOCK_B": block_b, "BLOCK_N": block_n}
    build(f"select_top N{n_tokens} bits{bits}", M._select_top_kernel, select, meta, warps)
block_t, block_f, warps = M.rect_config(128)
build("rect_first_cover", M._rect_first_cover_kernel,
      {"rects_ptr": "*i32", "first_ptr": "*i16", "n_time": I32, "n_freq": I32, "n_rects": I32},
      {"BLOCK_T": block_t, "BLOCK_F": block_f}, warps)

# fused drop + embed, ViT-B/16: D = 768, P = 256; fp32 and bf16 (autocast) operands
strides = {"stride_mb": I32, "stride_mt": I32, "stride_mf": I32}
for compute in (torch.float32, torch.bfloat16):
    dot = U.dot_args(compute)
    name = str(compute).split(".")[-1]
    m, d, p, warps = U.embed_blocks(768, 256)
    tiles = {"BLOCK_M": m, "BLOCK_D": d, "BLOCK_P": p}
    build(f"embed fwd {name}", P._embed_fwd_kernel,
          {"mel_ptr": "*fp32", "ids_ptr": "*i64", "w_ptr": "*fp32", "bias_ptr": "*fp32",
           "pos_ptr": "*fp32", "out_ptr": "*fp32", "n_tokens": I32, "n_keep": I32,
           "f_patches": I32, "dim": I32, **strides, "stride_wd": I32, "stride_wp": I32},
          {"PT": 16, "PF": 16, "HAS_IDS": True, "HAS_BIAS": True, **dot, **tiles}, warps)
    build(f"embed bwd mel {name}", PB._embed_bwd_mel_kernel,
          {"grad_ptr": "*fp32", "ids_ptr": "*i64", "w_ptr": "*fp32", "dmel_ptr": "*fp32",
           "n_tokens": I32, "n_keep": I32, "f_patches": I32, "dim": I32, **strides,
           "stride_wd": I32, "stride_wp": I32},
          {"PT": 16, "PF": 16, "HAS_IDS": True, **dot, **tiles}, warps)
    m, d, p, warps = U.embed_blocks(768, 256, weight_grad=True)
    build(f"embed bwd weight {name}", PB._embed_bwd_weight_kernel,
          {"grad_ptr": "*fp32", "mel_ptr": "*fp32", "ids_ptr": "*i64", "dw_ptr": "*fp32",
           "db_ptr": "*fp32", "n_tokens": I32, "n_keep": I32, "f_patches": I32, "dim": I32,
           "tokens_per_split": I32, **strides},
          {"PT": 16, "PF": 16, "HAS_IDS": True, "HAS_BIAS": True, **dot,
           "BLOCK_M": m, "BLOCK_D": d, "BLOCK_P": p}, warps)

# decoder restore, D_dec = 512, bf16 tokens under autocast, fp32 positions
block_r, block_d = R._blocks(512)
build("restore fwd", R._restore_fwd_kernel,
      {"x_ptr": "*bf16", "ids_restore_ptr": "*i64", "token_ptr": "*fp32", "pos_ptr": "*fp32",
       "out_ptr": "*fp32", "n_rows": I32, "n_tokens": I32, "n_keep": I32, "dim": I32},
      {"HAS_POS": True, "EMULATE": False, "BLOCK_R": block_r, "BLOCK_D": block_d}, 4)
build("restore bwd", R._restore_bwd_kernel,
      {"grad_ptr": "*fp32", "ids_restore_ptr": "*i64", "dx_ptr": "*fp32", "dtoken_ptr": "*fp32",
       "n_rows": I32, "n_tokens": I32, "n_keep": I32, "dim": I32},
      {"BLOCK_R": block_r, "BLOCK_D": block_d}, 4)
print("all compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    assert "all compiled" in result.stdout
