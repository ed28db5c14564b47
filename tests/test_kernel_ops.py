"""The kernels' torch library ops, registered beside their kernels (``kernels._utils.kernel_op``).

Compiled kernels (a GPU) register as ``torch.library.triton_op``, so torch.compile traces into
their launches and Inductor sees the Triton kernels; interpreted ones (these CPU tests) as opaque
``custom_op`` with a fake implementation, since ``wrap_triton`` cannot trace an interpreted
kernel. The compiled registration is checked here without a GPU, in a process without
``TRITON_INTERPRET``: the ops decompose under functionalization (what lets Inductor see through)
and their bodies trace with fake CUDA tensors to the right shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

OPS = (
    "fastspec::embed_kept_patches",
    "fastspec::embed_kept_patches_bwd_weight",
    "fastspec::embed_kept_patches_bwd_mel",
    "fastspec::restore_tokens",
    "fastspec::restore_tokens_bwd",
)

_COMPILED = r"""
import sys

import torch
from torch._library.custom_ops import OPDEFS
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._subclasses.functional_tensor import FunctionalTensorMode

from fastspec.kernels import _utils, masking_restore, patch_embed, patch_embed_bwd

assert not _utils.INTERPRETED
for name in sys.argv[1:]:
    # a triton_op decomposes under FunctionalTensorMode: torch.compile traces its body
    assert FunctionalTensorMode in OPDEFS[name]._torch_dispatch_fns, name
with FakeTensorMode():
    mel = torch.empty(2, 32, 48, device="cuda")
    ids = torch.zeros(2, 5, dtype=torch.int64, device="cuda")
    weight, pos = torch.empty(64, 256, device="cuda"), torch.empty(6, 64, device="cuda")
    out = patch_embed.embed_kept_patches(mel, ids, weight, None, pos, (16, 16))
    assert out.shape == (2, 5, 64) and out.device.type == "cuda", out.shape
    grad = torch.empty(2, 5, 64, device="cuda")
    dw, db = patch_embed_bwd.embed_bwd_weight_op(grad, mel, ids, 16, 16, 64, True, torch.float32)
    assert dw.shape == (64, 256) and db.shape == (64,)
    restored = masking_restore.restore_tokens_fwd(
        torch.empty(2, 5, 64, device="cuda"), torch.zeros(2, 6, dtype=torch.int64, device="cuda"),
        torch.empty(64, device="cuda"),
    )
    assert restored.shape == (2, 6, 64)
print("compiled registration ok")
"""


def test_compiled_kernels_register_as_triton_ops_and_trace_with_fake_tensors():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILED, *OPS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled registration ok" in result.stdout


def test_interpreted_kernels_register_opaque_ops_with_fakes():
    from fastspec.kernels import _utils, masking_restore, patch_embed  # noqa: F401 (registers)
    from torch._library.custom_ops import OPDEFS
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    if not _utils.INTERPRETED:
        pytest.skip("compiled kernels here (CUDA): the subprocess test covers the registration")
    for name in OPS:
        assert FunctionalTensorMode not in OPDEFS[name]._torch_dispatch_fns, name
    # the fake gives the shape without running the interpreted kernel
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.fastspec.embed_kept_patches(
            torch.empty(2, 32, 48), None, torch.empty(64, 256), None, torch.empty(6, 64),
            16, 16, torch.float32,
        )  # fmt: skip
    assert out.shape == (2, 6, 64)
