"""The front end as the torch library op ``fastspec::logmel``: opcheck, and torch.compile tracing
it without graph breaks or recompiles when the number of samples (hence frames) changes.

On CPU the op runs the C++ or torch backend (and the Triton kernel under TRITON_INTERPRET=1);
the compile tests use the ``aot_eager`` backend for the recompile count (seconds) and inductor
once, for the full default path (about 10 s on 2 cores).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing as dynamo_testing

from fastspec.frontend import LogMel, get_preset, logmel
from fastspec.frontend.op import config_key


def _wave(batch: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, num_samples, generator=torch.Generator().manual_seed(seed))


def _interpreted() -> bool:
    try:
        from fastspec.kernels import logmel as kernel_module
    except Exception:
        return False
    return kernel_module.INTERPRETED


_TRITON_MISSING = pytest.mark.skipif(
    not torch.cuda.is_available() and not _interpreted(),
    reason="Triton needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
)
_OPCHECK_CASES = {
    "kaldi-B2-lengths-fp32": ("kaldi", [1999, 1200], torch.float32, 16000),
    "atst-B2-44k-bf16": ("atst", None, torch.bfloat16, 44100),
}
# every backend with every case, except the interpreted Triton kernel with the second one: each
# interpreted launch takes seconds and opcheck launches many times; the atst / resampling path
# of the kernel has its own tests (test_resample_frontend.py, test_logmel_triton.py)
_OPCHECK_PARAMS = [
    pytest.param(backend, *case, id=f"{backend}-{name}", marks=marks)
    for backend, marks in (("torch", ()), ("cpp", ()), ("triton", _TRITON_MISSING))
    for name, case in _OPCHECK_CASES.items()
    if not (backend == "triton" and name.startswith("atst") and not torch.cuda.is_available())
]


@pytest.mark.parametrize("backend, preset, lengths, out_dtype, orig_sample_rate", _OPCHECK_PARAMS)
def test_opcheck(backend, preset, lengths, out_dtype, orig_sample_rate):
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    cfg = get_preset(preset, n_mels=40 if preset == "kaldi" else 64)
    wave = _wave(2, 1999).to(device)
    lengths_t = None if lengths is None else torch.tensor(lengths, device=device)
    args = (wave, lengths_t, config_key(cfg), True, backend, out_dtype, orig_sample_rate)
    # schema, fake (meta) impl vs the real output, autograd registration, aot dispatch
    torch.library.opcheck(torch.ops.fastspec.logmel.default, args)


def test_fake_impl_gives_the_frame_count_symbolically():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())
    cases = [("kaldi", 16000, 399), ("kaldi", 44100, 44100), ("atst", 8000, 8001)]
    for preset, orig, num_samples in cases:
        cfg = get_preset(preset)
        real = logmel(_wave(1, num_samples), preset=cfg, orig_sample_rate=orig, backend="torch")
        with mode:
            fake_wave = mode.from_tensor(_wave(1, num_samples))
            fake = torch.ops.fastspec.logmel(
                fake_wave, None, config_key(cfg), True, "torch", torch.float32, orig
            )
        assert fake.shape == real.shape


def _recompiles(fn, backend: str, shapes) -> int:
    """Compilations after the first call while the sample count changes (0: none)."""
    counter = dynamo_testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=True)
    first = None
    for batch, num_samples in shapes:
        wave = _wave(batch, num_samples, seed=num_samples)
        lengths = torch.tensor([num_samples - 7 * i for i in range(batch)])
        got = compiled(wave, lengths)
        expected = fn(wave, lengths)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and torch.equal(g, e)
        # the first call may call the backend more than once (dynamo restarts its analysis
        # after specialising Python scalars); what matters is that later calls never do
        first = counter.frame_count if first is None else first
    assert first >= 1 and counter.graphs[-1] is not None
    return counter.frame_count - first


def _module_call(wave, lengths):
    out, frames = _MODULE(wave, lengths, return_lengths=True)
    return out * 2.0 - 1.0, frames


_MODULE = LogMel("kaldi", n_mels=64)


def _functional_call(wave, lengths):
    # the config is built from a preset name inside the traced code
    return logmel(
        wave,
        lengths=lengths,
        preset="atst",
        normalize=False,
        orig_sample_rate=22050,
        return_lengths=True,
    )


@pytest.mark.parametrize("fn", [_module_call, _functional_call], ids=["module", "functional"])
def test_compile_fullgraph_no_recompile_when_frames_change(fn):
    torch._dynamo.reset()
    # four sample counts, hence four frame counts: one compiled graph
    shapes = [(2, 16000), (2, 17001), (2, 20480), (2, 9000)]
    assert _recompiles(fn, "aot_eager", shapes) == 0


def test_compile_fullgraph_with_inductor_on_cpu():
    torch._dynamo.reset()
    assert _recompiles(_module_call, "inductor", [(2, 16000), (2, 17003)]) == 0
