"""Shared test set-up.

Triton kernels run on CPU tensors only through its interpreter, which must be switched on before
any ``@triton.jit`` function is created; so it is set here, before the tests import fastspec.
On a CUDA machine the kernels run natively instead.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# two threads, as on CI: keeps timings and float reduction order stable between machines
torch.set_num_threads(min(2, os.cpu_count() or 1))

if torch.cuda.is_available():
    # cuBLAS is deterministic only with a fixed workspace, set before its first handle exists
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture
def deterministic():
    """Deterministic algorithms for a test that compares two runs bit for bit (a resumed run
    against the uninterrupted one). On CPU every kernel already is; on CUDA atomics-based
    kernels would make two identical runs differ in the last bits. ``warn_only``: an op with no
    deterministic kernel warns instead of failing, and such tests then compare with
    :data:`RESUME_TOLERANCE` on CUDA."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before)


# two runs of the same steps on CUDA: identical up to float32 reordering where a kernel has no
# deterministic version (relative 1e-5 of each weight, far below one step's update)
RESUME_TOLERANCE = {"cuda": {"rtol": 1e-5, "atol": 1e-6}, "cpu": {"rtol": 0.0, "atol": 0.0}}


@pytest.fixture
def same_state(deterministic):
    """``same_state(a, b)``: two checkpoints' tensors equal, exactly on CPU, within
    RESUME_TOLERANCE on CUDA (deterministic algorithms on for the test)."""

    def check(a: dict, b: dict) -> None:
        assert a.keys() == b.keys()
        tol = RESUME_TOLERANCE["cuda" if torch.cuda.is_available() else "cpu"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=key, **tol)

    return check


@pytest.fixture
def index_tensors_by_sorting():
    """``f(keep [B, N] bool) -> (ids_keep [B, K], ids_restore [B, N])`` computed the slow, obvious
    way (a stable sort of masked-after-kept, and its inverse permutation), independent of the
    running-count ``compact_keep`` the samplers use: what mask tests compare the samplers with."""

    def index_tensors(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # kept tokens first in grid order, then masked tokens in grid order
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        ids_restore = torch.argsort(order, dim=1)  # slot of each grid position in that order
        n_keep = int(keep[0].sum()) if keep.shape[0] else 0
        return order[:, :n_keep], ids_restore

    return index_tensors
