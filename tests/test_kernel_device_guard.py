"""Every Triton launch runs under the device guard of its inputs (issue 13): Triton launches on
the *current* CUDA device, so without the guard a model on ``cuda:1`` would launch its kernels
on GPU 0. Checked without a GPU: statically (every launch in ``kernels/`` sits inside ``with
device_guard(...)``), and by standing in for ``torch.cuda.device``."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from fastspec.kernels import _utils  # noqa: E402
from fastspec.kernels import masking as masking_kernels  # noqa: E402

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def _launches_outside_the_guard(source: str) -> tuple[int, list[int]]:
    """(number of kernel launches ``kernel[grid](...)``, lines of those not inside a
    ``with device_guard(...)`` block)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    launches, unguarded = 0, []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)):
            continue
        kernel = node.func.value  # kernel[grid](...) or launch(kernel)[grid](...)
        if isinstance(kernel, ast.Call) and getattr(kernel.func, "id", None) == "launch":
            kernel = kernel.args[0]
        if not (isinstance(kernel, ast.Name) and kernel.id.endswith("_kernel")):
            continue
        launches += 1
        up, guarded = node, False
        while up in parents and not guarded:
            up = parents[up]
            guarded = isinstance(up, ast.With) and any(
                isinstance(item.context_expr, ast.Call)
                and getattr(item.context_expr.func, "id", None) == "device_guard"
                for item in up.items
            )
        if not guarded:
            unguarded.append(node.lineno)
    return launches, unguarded


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.name)
def test_every_launch_is_inside_the_device_guard(path):
    launches, unguarded = _launches_outside_the_guard(path.read_text())
    assert not unguarded, f"{path.name}: kernel launches outside device_guard at lines {unguarded}"


def test_the_static_check_sees_launches():
    # the check above can fail: it finds the launches of the kernel files, guarded or not
    total = sum(_launches_outside_the_guard(p.read_text())[0] for p in KERNELS.glob("*.py"))
    assert total >= 9  # logmel 2, masking 3, restore 2, patch embed 3
    bare = "def f(x):\n    _k_kernel[(1,)](x)\n    launch(_k_kernel)[(1,)](x)\n"
    assert _launches_outside_the_guard(bare) == (2, [2, 3])


def test_guard_enters_the_inputs_cuda_device_and_is_a_no_op_on_cpu(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def fake_cuda_device(device):
        entered.append(torch.device(device))
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_cuda_device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with _utils.device_guard(torch.device("cuda", 1)):
        pass
    assert entered == [torch.device("cuda", 1)]
    with _utils.device_guard(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 1)]  # nothing entered for CPU tensors
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with _utils.device_guard(torch.device("cuda", 1)):  # fake CUDA tensors, no device: no-op
        pass
    assert entered == [torch.device("cuda", 1)]


def test_a_launcher_guards_the_device_of_its_inputs(monkeypatch):
    if masking_kernels.INTERPRETED is False and not torch.cuda.is_available():
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    guarded = []

    def recording_guard(where):
        guarded.append(torch.device(where))
        return _utils.device_guard(where)

    monkeypatch.setattr(masking_kernels, "device_guard", recording_guard)
    seed = torch.tensor([7], dtype=torch.int64, device=device)
    draws = masking_kernels.philox_uniform(seed, (4,), stream=0)
    assert draws.shape == (4,) and guarded == [seed.device]
