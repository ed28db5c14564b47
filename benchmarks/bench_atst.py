"""ATST-Frame training step: fastspec against an eager implementation in the style of the paper.

Run with ``pytest benchmarks/bench_atst.py`` (results land in
benchmarks/results/atst-<device>-<date>.json, see conftest.py). Both
providers run one whole training step of ATST-Frame (two copies of each crop, student with 65 %
time-span masking, EMA teacher, symmetric BYOL loss on masked frames, optimizer step, teacher
update) on the same batch of random normalised log-mel:

- ``fastspec``: the ``atst-frame`` recipe as the training loop runs it: crops, log-mixup-exp,
  resize crop and the mask drawn on the device inside the step, attention through
  ``fastspec.models.attention`` (SDPA with the key-padding mask), bf16 autocast on CUDA, fused
  AdamW, one ``_foreach_lerp_`` teacher update, no host sync;
- ``fastspec-compile`` (CUDA only): the same with every transformer block ``torch.compile``-d, as
  ``train.compile=true`` does;
- ``eager-paper``: written for this benchmark in the style of the published ATST-Frame code
  (audiossl's FrameAST + MultiCropWrapper + ByolLoss): fp32, explicit ``q k^T`` attention with a
  ``masked_fill`` key-padding mask, heads ``Linear(bias=False) -> BatchNorm -> ReLU``, frames
  picked by boolean indexing (a host sync), a Python loop of ``mul_`` / ``add_`` for the EMA
  update and a per-parameter AdamW. Its augmentations and mask run in data-loader workers in the
  paper, so here they are prepared outside the timed step (which favours the peer).

Each records in ``extra_info``: ``clips_per_s`` (median step), ``ms_per_step``, the analytic
``tflops_per_clip`` (``ATSTFrame.train_flops_per_clip``, dense matmuls, the same count for both
providers) and ``mfu`` against the device's dense bf16 peak (``fastspec.train.metrics.peak_flops``,
None on CPUs); the module ends with a table and fastspec's speed-up.

Shapes: on CUDA, ViT-B on 64 x 4 patches, 10 s crops (1000 frames, 250 tokens), 128 clips
(target: >= 45 % MFU on an H100); on CPU, fp32, ViT-B on 2 s crops (50 tokens) of 4 clips, so the
suite takes about 20 s on a quiet 2-core CPU (minutes on a shared one). The CUDA shape is skipped
where there is no GPU.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastspec.masking import sample_mask
from fastspec.models import create_model
from fastspec.recipes.atst_frame import ATSTFrame
from fastspec.train.metrics import peak_flops

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# (clips, crop frames); the full-size shape only where a GPU makes it meaningful
SHAPES = {
    "B4-2s": pytest.param((4, 201), id="B4-2s"),
    "B128-10s": pytest.param(
        (128, 1001),
        id="B128-10s",
        marks=pytest.mark.skipif(not CUDA, reason="10 s crops of ViT-B run on CUDA only"),
    ),
}
PROVIDERS = ["fastspec", "fastspec-compile", "eager-paper"]
_RESULTS: dict[tuple, dict] = {}  # (shape, provider) -> extra_info, for the table


def _sync():
    if CUDA:
        torch.cuda.synchronize()  # the timed call must include the device's work


def _autocast():
    # bf16 on the GPU as training runs; fp32 on the CPU, where bf16 matmuls are emulated
    if CUDA:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- the eager, paper-style peer -----------------------------------------------------------------


class _PaperBlock(nn.Module):
    """Pre-norm block with explicit attention and a key-padding mask built from lengths."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, lengths):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # [B, H, N, N] materialised
        pad = torch.arange(n, device=x.device)[None, :] >= lengths[:, None]
        attn = attn.masked_fill(pad[:, None, None, :], float("-inf")).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class _PaperFrameEncoder(nn.Module):
    """Linear patch embedding of 64 x 4 patches, learned positions, mask embedding, blocks."""

    def __init__(self, dim=768, depth=12, heads=12, n_tokens=250, patch=(4, 64)):
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Linear(patch[0] * patch[1], dim)
        self.mask_embed = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_tokens, dim))
        self.blocks = nn.ModuleList(_PaperBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, mel, lengths, mask, mask_input):
        b, t, f = mel.shape
        x = self.patch_embed(mel.reshape(b, t // self.patch[0], self.patch[0] * f))
        if mask_input:
            m = mask.unsqueeze(2).float()
            x = (1 - m) * x + m * self.mask_embed
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x, lengths)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        return self.norm(x)[mask & valid]  # boolean indexing: the host waits for the count


def _paper_mlp(in_dim, hidden=4096, out_dim=256):
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim, bias=False),
    )


class _PaperATSTFrame(nn.Module):
    def __init__(self, dim, depth, heads, n_tokens):
        super().__init__()
        self.student = nn.ModuleDict(
            {
                "encoder": _PaperFrameEncoder(dim, depth, heads, n_tokens),
                "projector": _paper_mlp(dim),
                "predictor": _paper_mlp(256),
            }
        )
        self.teacher = nn.ModuleDict(
            {
                "encoder": _PaperFrameEncoder(dim, depth, heads, n_tokens),
                "projector": _paper_mlp(dim),
            }
        )
        self.teacher.load_state_dict(self.student.state_dict(), strict=False)
        self.teacher.requires_grad_(False)

    def forward(self, x, lengths, mask):
        s = self.student
        student = s["predictor"](s["projector"](s["encoder"](x, lengths, mask, True)))
        teacher = self.teacher["projector"](self.teacher["encoder"](x, lengths, mask, False))
        loss = 0.0
        for i, q in enumerate(teacher.chunk(2)):
            for j, v in enumerate(student.chunk(2)):
                if i != j:
                    loss = loss + 2 - 2 * F.cosine_similarity(q, v, dim=-1).mean()
        return loss / 2

    @torch.no_grad()
    def update_teacher(self, m):
        for name in ("encoder", "projector"):
            for ps, pt in zip(self.student[name].parameters(), self.teacher[name].parameters()):
                pt.data.mul_(m).add_((1 - m) * ps.detach().data)


# ---- steps ---------------------------------------------------------------------------------------


def _mel(clips, frames):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    return torch.randn(clips, frames, 64, device=DEVICE, generator=g)


def _fastspec_step(mel, compile_blocks):
    torch.manual_seed(0)
    encoder = create_model("vit_base_patch16", n_mels=64, patch_size=(4, 64))
    memory = 2000 if CUDA else 64
    recipe = ATSTFrame(encoder, crop_frames=mel.shape[1], memory_size=memory, ema_base=0.9996)
    recipe = recipe.to(DEVICE).train()
    if compile_blocks:
        for module in (recipe.encoder, recipe.teacher_encoder):
            for block in module.blocks:
                block.compile()
    params = [p for p in recipe.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=CUDA)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    frame_lengths = torch.full((mel.shape[0],), mel.shape[1], device=DEVICE)
    step_index = [0]

    def step():
        with _autocast():
            loss = recipe(mel, generator=generator, frame_lengths=frame_lengths)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recipe.after_step(step_index[0], 100_000)
        step_index[0] += 1
        _sync()

    return step, recipe


def _paper_step(mel):
    torch.manual_seed(0)
    clips = mel.shape[0]
    crop = mel.shape[1] // 4 * 4
    n_tokens = crop // 4
    model = _PaperATSTFrame(768, 12, 12, n_tokens).to(DEVICE).train()
    params = [p for p in model.student.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=False)  # one parameter at a time
    # prepared by the paper's loader workers, outside the step: two copies, one shared mask
    x = torch.cat([mel[:, :crop], mel[:, :crop]])
    g = torch.Generator(device=DEVICE).manual_seed(0)
    mask = sample_mask("time_span", clips, (n_tokens, 1), 0.65, generator=g).mask
    mask = torch.cat([mask, mask])
    lengths = torch.full((2 * clips,), n_tokens, device=DEVICE)

    def step():
        loss = model(x, lengths, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.9996)
        _sync()

    return step


@pytest.fixture(scope="module", autouse=True)
def _table(request):
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or not _RESULTS:
        return
    # module teardown runs under output capture: lift it so the table reaches the terminal
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        write = reporter.write_line
        write("")
        write("ATST-Frame ViT-B training step (clips/s of the median step; MFU vs bf16 peak)")
        write(
            f"{'shape':<10} {'provider':<18} {'clips/s':>9} {'ms/step':>9} {'MFU':>7} "
            f"{'x eager':>8}"
        )
        for (shape, provider), info in sorted(_RESULTS.items()):
            peer = _RESULTS.get((shape, "eager-paper"))
            speedup = info["clips_per_s"] / peer["clips_per_s"] if peer else math.nan
            mfu = f"{100 * info['mfu']:.1f}%" if info["mfu"] is not None else "n/a"
            write(
                f"{shape:<10} {provider:<18} {info['clips_per_s']:>9.2f} "
                f"{info['ms_per_step']:>9.1f} {mfu:>7} {speedup:>7.2f}x"
            )


@pytest.mark.parametrize("shape", list(SHAPES.values()))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_atst_frame_step(benchmark, provider, shape):
    if provider == "fastspec-compile" and not CUDA:
        pytest.skip("torch.compile of every block takes minutes on the 2-core CPU")
    clips, frames = shape
    mel = _mel(clips, frames)
    # the FLOP count of the work both providers do, from the recipe's analytic formula
    encoder = create_model("vit_base_patch16", n_mels=64, patch_size=(4, 64), device="meta")
    counter = ATSTFrame(encoder, crop_frames=frames, memory_size=1, device="meta")
    flops_per_clip = counter.train_flops_per_clip(frames)
    if provider == "eager-paper":
        step = _paper_step(mel)
    else:
        step, _ = _fastspec_step(mel, compile_blocks=provider == "fastspec-compile")
    rounds = 10 if CUDA else 3
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=3 if CUDA else 1)
    seconds = benchmark.stats.stats.median
    peak = peak_flops(DEVICE, "bf16")
    info = {
        "provider": provider,
        "shape": f"B{clips}-{frames}x64",
        "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
        "precision": "fp32" if provider == "eager-paper" or not CUDA else "bf16-autocast",
        "clips_per_s": clips / seconds,
        "clips_per_s_best": clips / benchmark.stats.stats.min,
        "ms_per_step": 1000.0 * seconds,
        "tflops_per_clip": flops_per_clip / 1e12,
        "mfu": flops_per_clip * clips / seconds / peak if peak else None,
    }
    benchmark.extra_info.update(info)
    _RESULTS[(info["shape"], provider)] = info
