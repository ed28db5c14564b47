"""MAST vs ViT: training and inference throughput on the same recipe, input and device, beside MACs.

Run with ``pytest benchmarks/bench_mast.py`` (results land in
benchmarks/results/mast-<device>-<date>.json, see conftest.py). On a CPU shared with other
jobs the timings are meaningless: measure on an idle machine. Each size pair
(``vit_tiny_patch16`` / ``mast_tiny``, ``vit_base_patch16`` / ``mast_base``) runs the same
batch of random normalised log-mel in three modes:

- ``infer``: ``forward_features`` on full sequences under ``torch.inference_mode`` (what the
  exported encoder and HEAR run);
- ``train-maskspec``: one optimizer step of the ``maskspec`` recipe (75 % masking, decoder
  512 x 8, 16 heads): forward, backward and AdamW, as the training loop runs it. ViT goes
  through ``MaskSpec`` (random 16x16 patches dropped), MAST through the same ``MaskSpec`` (random
  mask units dropped, multiscale decoder);
- ``train-full``: one optimizer step of the encoder on full sequences with a stand-in loss
  (the encoder cost of ``asit`` / ``atst``, whose recipes are not in the tree yet).

Each records in ``extra_info``: ``clips_per_s`` (median time), ``ms_per_step``, the forward
``gmacs`` per clip at that input (``fastspec.models.count_macs``: FLOPs / 2, matmuls only) and
``params_m``; the module ends with a table of MAST's speed-up and MAC reduction per pair.

Shapes: on CUDA, bf16 autocast, 128 clips of 1024 x 128 (the target: ``mast_base`` >= 4x the
training throughput of ViT-B); on CPU, fp32, 4 clips of 256 x 128 so the suite takes about two
minutes on 2 cores. The CUDA shape is skipped where there is no GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fastspec.models import count_macs, create_model
from fastspec.recipes.maskspec import MaskSpec

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
PAIRS = {"tiny": ("vit_tiny_patch16", "mast_tiny"), "base": ("vit_base_patch16", "mast_base")}
MODES = ["infer", "train-maskspec", "train-full"]
# (clips, frames, mel bins); the full-size shape only where a GPU makes it meaningful
SHAPES = {
    "B4-256x128": pytest.param((4, 256, 128), id="B4-256x128"),
    "B128-1024x128": pytest.param(
        (128, 1024, 128),
        id="B128-1024x128",
        marks=pytest.mark.skipif(not CUDA, reason="full 1024 x 128 shapes run on CUDA only"),
    ),
}
_RESULTS: dict[tuple, dict] = {}  # (shape, mode, size, family) -> extra_info, for the table


def _sync():
    if CUDA:
        torch.cuda.synchronize()  # the timed call must include the device's work


def _autocast():
    # bf16 on the GPU as training runs; fp32 on the CPU, where bf16 matmuls are emulated
    if CUDA:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _recipe(encoder):
    # one recipe for every encoder (the encoder contract)
    return MaskSpec(encoder, decoder_dim=512, decoder_depth=8, decoder_heads=16, mask_ratio=0.75)


def _step_fn(model_name: str, mode: str, mel: torch.Tensor):
    """A closure running one step of ``mode``; everything it needs is built here, untimed."""
    torch.manual_seed(0)
    encoder = create_model(model_name, n_mels=mel.shape[2])
    if mode == "infer":
        encoder = encoder.to(DEVICE).eval()

        def infer():
            with torch.inference_mode(), _autocast():
                encoder.forward_features(mel)
            _sync()

        return infer

    module = (_recipe(encoder) if mode == "train-maskspec" else encoder).to(DEVICE).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=CUDA)
    generator = torch.Generator(device=DEVICE).manual_seed(0)

    def train():
        with _autocast():
            if mode == "train-maskspec":
                loss = module(mel, generator=generator)["loss"]
            else:  # stand-in objective: every output token gets a gradient
                loss = module.forward_features(mel).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()

    return train


@pytest.fixture(scope="module", autouse=True)
def _speedup_table(request):
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or not _RESULTS:
        return
    # module teardown runs under output capture: lift it so the table reaches the terminal
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        _write_table(reporter.write_line)


def _write_table(write) -> None:
    write("")
    write("MAST vs ViT on the same recipe, input and device (clips/s of the median step;")
    write("speed-up of the median and of the fastest step; forward GMACs per clip)")
    write(
        f"{'shape':<14} {'mode':<15} {'size':<5} {'ViT clips/s':>11} {'MAST clips/s':>12} "
        f"{'speed-up':>8} {'(best)':>7} {'ViT GMACs':>9} {'MAST GMACs':>10} {'MAC ratio':>9}"
    )
    for (shape, mode, size, family), mast in sorted(_RESULTS.items()):
        vit = _RESULTS.get((shape, mode, size, "vit"))
        if family != "mast" or vit is None:
            continue
        write(
            f"{shape:<14} {mode:<15} {size:<5} {vit['clips_per_s']:>11.1f} "
            f"{mast['clips_per_s']:>12.1f} {mast['clips_per_s'] / vit['clips_per_s']:>7.2f}x "
            f"{mast['clips_per_s_best'] / vit['clips_per_s_best']:>6.2f}x "
            f"{vit['gmacs']:>9.2f} {mast['gmacs']:>10.2f} {mast['gmacs'] / vit['gmacs']:>9.3f}"
        )


@pytest.mark.parametrize("shape", list(SHAPES.values()))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", list(PAIRS))
@pytest.mark.parametrize("family", ["vit", "mast"])
def test_throughput(benchmark, family, size, mode, shape):
    clips, n_frames, n_mels = shape
    model_name = PAIRS[size][family == "mast"]
    mel = torch.randn(clips, n_frames, n_mels, device=DEVICE)
    step = _step_fn(model_name, mode, mel)
    rounds = 10 if CUDA else 3
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2 if CUDA else 1)
    seconds = benchmark.stats.stats.median
    macs = count_macs(model_name, n_frames, n_mels)
    info = {
        "provider": model_name,
        "family": family,
        "mode": mode,
        "shape": f"B{clips}-{n_frames}x{n_mels}",
        "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
        "precision": "bf16-autocast" if CUDA else "fp32",
        "clips_per_s": clips / seconds,
        # the fastest round: on a shared CPU the least disturbed estimate of the same work
        "clips_per_s_best": clips / benchmark.stats.stats.min,
        "ms_per_step": 1000.0 * seconds,
        "gmacs": macs.macs / 1e9,  # forward MACs per clip of the full sequence
        "params_m": macs.params / 1e6,
    }
    benchmark.extra_info.update(info)
    _RESULTS[(info["shape"], mode, size, family)] = info
