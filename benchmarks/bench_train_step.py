"""Whole training steps of the teacher-student recipes, fastspec against eager peers in the style
of each paper's own code, on the same device, model and batch.

Run with ``pytest benchmarks/bench_train_step.py`` (results land in
benchmarks/results/train-step-<device>-<date>.json, see conftest.py).

``asit`` (ViT-S and ViT-B, two 6 s crops per clip, the paper's heads: 8192 global and 1024 local
prototypes, reconstruction head 768 / 128). One step is what the training loop runs: views,
masks and fills, teacher forward, student forward and backward, gradient clipping at 3, AdamW,
and the EMA of the teacher. Providers, on identical random log-mel batches:

- ``fastspec``: :class:`fastspec.recipes.asit.ASiT` as ``fastspec pretrain --recipe asit`` runs
  it: crops, GMML rectangles and fills drawn on the device from 10.24 s clips (inside the timed
  step), attention through SDPA or flash-attn, one global-norm clip, AdamW fused on CUDA, the
  teacher updated in one ``_foreach_lerp_`` pass; bf16 autocast on CUDA.
- ``fastspec-compiled`` (CUDA only): the same with every transformer block compiled
  (``train.compile``).
- ``asit-eager``: a re-implementation in the style of ``Sara-Ahmed/ASiT`` (``main_ASiT.py``,
  ``vision_transformer.py``, ``losses.py``, ``utils.py``): manual attention
  (``softmax(q @ k^T) @ v``), a conv patch embedding, ``CLSHead`` / ``RECHead`` with a
  transposed convolution, ``CLSLoss`` / ``DATALoss`` with ``chunk`` and a masked-index L1,
  fp16 autocast with a GradScaler, the per-parameter gradient clip of ``utils.clip_gradients``
  (one ``.item()`` per parameter), ``math.isfinite(loss.item())`` every step, the teacher
  updated in a Python loop over parameters (``mul_(m).add_((1 - m) * p)``). Its crops arrive
  already corrupted (the paper corrupts them in DataLoader workers), so its timed step does
  less work than fastspec's.

Each records in ``extra_info``: ``clips_per_s`` (median step), ``clips_per_s_best`` (fastest
step: the least disturbed estimate on a shared CPU), ``ms_per_step``, ``tflops`` (model FLOPs per
second: ``ASiT.train_flops_per_clip``, the same dense-matmul count for both providers, which run
the same architecture) and ``mfu`` where the device's peak is known
(``fastspec.train.metrics.peak_flops``: H100, H200, A100); the module ends with a table.

Shapes: on CUDA, 64 clips (2 x 64 crops of 592 frames x 128 mel; the paper runs 32 per GPU), in
bf16 (fastspec) and fp16 (peer) autocast; on CPU, 2 clips of 2 x 96 frames in float32 for both
(CPU autocast is bf16 only and emulated), so the suite takes one to two minutes on 2 cores. The
CUDA shapes are skipped where there is no GPU. On a CPU shared with other jobs, run it with
``OMP_NUM_THREADS=1``: two OpenMP threads that must wait for a busy core make step times vary
several-fold, one thread gives repeatable ones (the JSON records ``torch_threads``).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastspec.models import create_model
from fastspec.recipes.asit import ASiT
from fastspec.train.metrics import peak_flops

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
MODELS = {"vit-s": "vit_small_patch16", "vit-b": "vit_base_patch16"}
# (clips, frames per loaded clip, frames per crop, mel bins)
SHAPES = {
    "B2-2x96": pytest.param((2, 160, 96, 128), id="B2-2x96"),
    "B64-2x592": pytest.param(
        (64, 1024, 592, 128),
        id="B64-2x592",
        marks=pytest.mark.skipif(not CUDA, reason="the paper's 2 x 6 s crops run on CUDA only"),
    ),
}
PROVIDERS = ["fastspec", "fastspec-compiled", "asit-eager"]
_RESULTS: dict[tuple, dict] = {}  # (shape, model, provider) -> extra_info, for the table


def _sync():
    if CUDA:
        torch.cuda.synchronize()  # the timed call must include the device's work


# ---- the peer: ASiT's own code, condensed (same architecture, same FLOPs) ------------------


class _PaperAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # the full N x N matrix
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _PaperBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = _PaperAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PaperViT(nn.Module):
    def __init__(self, frames, n_mels, dim, depth, heads):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=16, stride=16)
        n = (frames // 16) * (n_mels // 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(_PaperBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):  # x: [B, 1, T, F]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def _weight_normed(a, b):
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(a, b, bias=False))
    layer.parametrizations.weight.original0.data.fill_(1)
    layer.parametrizations.weight.original0.requires_grad = False
    return layer


class _PaperCLSHead(nn.Module):
    def __init__(self, dim, out_cls=8192, out_data=1024, hidden=2048, bottleneck=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))  # fmt: skip
        self.cls_layer = _weight_normed(bottleneck, out_cls)
        self.data_layer = _weight_normed(bottleneck, out_data)

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.cls_layer(x[:, 0]), self.data_layer(x[:, 1:])


class _PaperRECHead(nn.Module):
    def __init__(self, dim, frames, n_mels, hidden=768, bottleneck=128):
        super().__init__()
        self.grid = (frames // 16, n_mels // 16)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck), nn.GELU())  # fmt: skip
        self.convTrans = nn.ConvTranspose2d(bottleneck, 1, kernel_size=16, stride=16)

    def forward(self, x):
        x = self.mlp(x).transpose(1, 2)
        return self.convTrans(x.unflatten(2, self.grid))


class _PaperPipeline(nn.Module):
    def __init__(self, frames, n_mels, dim, depth, heads):
        super().__init__()
        self.backbone = _PaperViT(frames, n_mels, dim, depth, heads)
        self.head_cls = _PaperCLSHead(dim)
        self.head_recons = _PaperRECHead(dim, frames, n_mels)

    def forward(self, x, recons=True):
        out = self.backbone(torch.cat(x[0:]))
        cls_out, data_out = self.head_cls(out)
        data_out = data_out.flatten(0, 1)  # rearrange "b n c -> (b n) c"
        return cls_out, data_out, self.head_recons(out[:, 1:]) if recons else None


class _PaperLoss(nn.Module):
    """CLSLoss / DATALoss of ``losses.py`` (one GPU: the all_reduce is left out)."""

    def __init__(self, out_dim, global_loss):
        super().__init__()
        self.global_loss = global_loss
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, s_out, t_out, temp=0.04):
        s = s_out / 0.1
        t = F.softmax((t_out - self.center) / temp, dim=-1).detach()
        if self.global_loss:
            s, t = s.chunk(2), t.chunk(2)
            loss1 = torch.sum(-t[0] * F.log_softmax(s[1], dim=-1), dim=-1)
            loss2 = torch.sum(-t[1] * F.log_softmax(s[0], dim=-1), dim=-1)
            loss = (loss1.mean() + loss2.mean()) / 2.0
        else:
            loss = torch.sum(-t * F.log_softmax(s, dim=-1), dim=-1).mean()
        with torch.no_grad():
            batch_center = torch.sum(t_out, dim=0, keepdim=True) / len(t_out)
            self.center = self.center * 0.9 + batch_center * 0.1
        return loss


def _paper_step_fn(model_name: str, clean: torch.Tensor, corrupted: torch.Tensor, mask):
    """One iteration of ``train_one_epoch`` on pre-corrupted crops [2B, T, F]."""
    ref = create_model(model_name)  # only for the sizes
    frames, n_mels = clean.shape[1], clean.shape[2]
    sizes = (frames, n_mels, ref.embed_dim, ref.depth, ref.num_heads)
    student = _PaperPipeline(*sizes).to(DEVICE)
    teacher = _PaperPipeline(*sizes).to(DEVICE)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    loss_cls, loss_data = _PaperLoss(8192, True).to(DEVICE), _PaperLoss(1024, False).to(DEVICE)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=CUDA)
    # the paper's inputs: lists of crops [B, 1, T, F], crop-major as ours
    clean_crops = list(clean[:, None].chunk(2))
    corrupted_crops = list(corrupted[:, None].chunk(2))
    masks_crops = list(mask[:, None].float().chunk(2))

    def step():
        autocast = torch.autocast("cuda", dtype=torch.float16) if CUDA else contextlib.nullcontext()
        with autocast:
            t_cls, t_data, _ = teacher(clean_crops, recons=False)
            s_cls, s_data, s_recons = student(corrupted_crops)
            clsloss = loss_cls(s_cls, t_cls)
            dtaloss = loss_data(s_data, t_data)
            rloss = F.l1_loss(s_recons, torch.cat(clean_crops[:2]), reduction="none")
            recloss = rloss[torch.cat(masks_crops[:2]) == 1].mean()
        loss = clsloss + dtaloss + 2 * recloss
        if not math.isfinite(loss.item()):  # the paper's host sync, every step
            raise FloatingPointError("non-finite loss")
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        for p in student.parameters():  # utils.clip_gradients: a norm and a sync per tensor
            if p.grad is not None:
                param_norm = p.grad.data.norm(2)
                clip_coef = 3.0 / (param_norm.item() + 1e-6)
                if clip_coef < 1:
                    p.grad.data.mul_(clip_coef)
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():  # the EMA: a Python loop of small kernels
            m = 0.996
            for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        _sync()

    return step


# ---- fastspec ---------------------------------------------------------------------------------


def _recipe(model_name: str, crop_frames: int) -> ASiT:
    torch.manual_seed(0)
    return ASiT(create_model(model_name), crop_frames=crop_frames).to(DEVICE).train()


def _fastspec_step_fn(recipe: ASiT, mel: torch.Tensor, compiled: bool):
    if compiled:
        for module in recipe.modules():  # as train.compile: one graph per block
            for block in getattr(module, "blocks", []):
                block.compile()
    params = [p for p in recipe.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=CUDA)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    state = {"step": 0}

    def step():
        recipe.before_step(state["step"], 1000)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
            loss = recipe(mel, generator=generator)["loss"]
        loss.backward()
        nn.utils.clip_grad_norm_(params, 3.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recipe.after_step(state["step"], 1000)
        state["step"] += 1
        _sync()

    return step


# ---- the benchmark ----------------------------------------------------------------------------


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
        write("asit training step: clips/s (median step; fastest in brackets), speed-up over")
        write("asit-eager, model TFLOP/s and MFU where the peak is known")
        for (shape, model, provider), info in sorted(_RESULTS.items()):
            base = _RESULTS.get((shape, model, "asit-eager"))
            speedup = info["clips_per_s"] / base["clips_per_s"] if base else float("nan")
            mfu = f"{100 * info['mfu']:.1f} %" if info.get("mfu") is not None else "n/a"
            write(
                f"{shape:<10} {model:<6} {provider:<18} {info['clips_per_s']:>9.2f} "
                f"({info['clips_per_s_best']:>8.2f}) {speedup:>6.2f}x "
                f"{info['tflops']:>8.3f} TFLOP/s  MFU {mfu}"
            )


@pytest.mark.parametrize("shape", list(SHAPES.values()))
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_asit_train_step(benchmark, provider, model, shape):
    if provider == "fastspec-compiled" and not CUDA:
        pytest.skip("compiled blocks are measured on CUDA (a first CPU compile takes minutes)")
    clips, clip_frames, crop_frames, n_mels = shape
    model_name = MODELS[model]
    gen = torch.Generator().manual_seed(0)
    # the features of the two waveform crops of each clip (ASiT.waveform_views), as the
    # training loop's front end hands them to the recipe; the front end itself is not timed
    mel = torch.randn(2 * clips, crop_frames, n_mels, generator=gen).to(DEVICE)
    recipe = _recipe(model_name, crop_frames)
    flops_per_clip = recipe.train_flops_per_clip(clip_frames)
    if provider == "asit-eager":
        # the peer's crops come corrupted from its loader: drawn here, outside the timing
        with torch.no_grad():
            clean, corrupted, spec_mask = recipe.make_views(mel, torch.Generator(DEVICE))
        del recipe
        step = _paper_step_fn(model_name, clean, corrupted, spec_mask)
        precision = "fp16-autocast" if CUDA else "fp32"
    else:
        step = _fastspec_step_fn(recipe, mel, compiled=provider == "fastspec-compiled")
        precision = "bf16-autocast" if CUDA else "fp32"
    rounds = 10 if CUDA else 3
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=3 if CUDA else 1)
    seconds = benchmark.stats.stats.median
    clips_per_s = clips / seconds
    peak = peak_flops(DEVICE, "bf16" if CUDA else "none")
    info = {
        "provider": provider,
        "recipe": "asit",
        "model": model_name,
        "shape": f"B{clips}-2x{crop_frames}",
        "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
        "precision": precision,
        "clips_per_s": clips_per_s,
        "clips_per_s_best": clips / benchmark.stats.stats.min,
        "ms_per_step": 1000.0 * seconds,
        "gflops_per_clip": flops_per_clip / 1e9,
        "tflops": flops_per_clip * clips_per_s / 1e12,
        # MFU against the dense bf16/fp16 peak (the same for both autocast dtypes)
        "mfu": flops_per_clip * clips_per_s / peak if peak else None,
    }
    benchmark.extra_info.update(info)
    _RESULTS[(info["shape"], model, provider)] = info
