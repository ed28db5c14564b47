"""Shared test set-up.

Triton kernels run on CPU tensors only through its interpreter, which must be switched on before
any ``@triton.jit`` function is created; so it is set here, before the tests import fastspec.
On a CUDA machine the kernels run natively instead.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# two threads, as on CI: keeps timings and float reduction order stable between machines
torch.set_num_threads(min(2, os.cpu_count() or 1))
