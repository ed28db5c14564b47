"""ATST-Clip and ATST-Frame: input, losses against slow float64 references, teacher, FLOPs, runs.

The references run every clip alone (no padding, no key mask), in float64, with explicit loops
and formulas: a ViT forward, the projector / predictor with training-mode batch norm, and BYOL's
``2 - 2 cos`` row by row. The recipes run batched, with padded crops hidden from attention.
"""

import copy
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fastspec.cli import main
from fastspec.encoder import export_encoder, load_encoder
from fastspec.frontend import get_preset
from fastspec.masking import sample_mask
from fastspec.masking.time_span import overlap_span_counts
from fastspec.models import create_model, sincos_2d
from fastspec.recipes import build_recipe, encoder_options
from fastspec.recipes.atst_clip import ATSTClip
from fastspec.recipes.atst_frame import ATSTFrame, masked_token_ids
from fastspec.recipes.base import StepInput
from fastspec.recipes.byol import whole_patch_frames
from fastspec.recipes.heads import MLPHead
from fastspec.recipes.teacher import ema_momentum
from fastspec.train import apply_override, default_config, pretrain
from fastspec.train.build import recipe_options
from fastspec.train.checkpoint import list_checkpoints, load_checkpoint
from fastspec.train.config import Config, ConfigError
from fastspec.train.metrics import read_metrics

HEADS = {"proj_hidden": 24, "proj_dim": 8, "memory_size": 8}


def tiny_encoder(seed=0):
    """A 2-block, 32-wide ViT on full-frequency 64 x 4 patches (ATST's token layout)."""
    torch.manual_seed(seed)
    return create_model(
        "vit_mini_patch16", n_mels=64, frame_tokens=4, embed_dim=32, depth=2, num_heads=2
    )


def padded_batch(batch, n_frames, lengths, seed=0):
    """[B, T, 64] float64 features, zero past each clip's valid frames (as crops are)."""
    mel = torch.randn(batch, n_frames, 64, generator=torch.Generator().manual_seed(seed))
    mel = mel.double()
    for b, n in enumerate(lengths):
        mel[b, n:] = 0
    return mel, torch.tensor(lengths)


def perturb_teacher(recipe, seed=1):
    # at construction the teacher equals the student; the references must tell them apart
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in recipe.teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---- float64 references --------------------------------------------------------------------------


def layer_norm_ref(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def attention_ref(attn, x):
    """Multi-head self-attention of one unpadded sequence x [n, D], head by head."""
    d = x.shape[1]
    dh = d // attn.num_heads
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
    heads = []
    for h in range(attn.num_heads):
        cols = slice(h * dh, (h + 1) * dh)
        scores = q[:, cols] @ k[:, cols].T / math.sqrt(dh)
        weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
        heads.append((weights / weights.sum(dim=1, keepdim=True)) @ v[:, cols])
    return torch.cat(heads, dim=1) @ attn.proj.weight.T + attn.proj.bias


def vit_ref(encoder, mel, masked=None, mask_embed=None):
    """One clip [T, F] (T a multiple of pt, no padding) -> [1 + N, D]; masked [N] bool tokens
    get ``mask_embed`` instead of their patch embedding, before the positions."""
    pt, pf = encoder.patch_size
    t_p, f_p = mel.shape[0] // pt, mel.shape[1] // pf
    patches = [
        mel[t * pt : (t + 1) * pt, f * pf : (f + 1) * pf].reshape(-1)
        for t in range(t_p)
        for f in range(f_p)
    ]
    x = torch.stack(patches) @ encoder.patch_embed.weight.T + encoder.patch_embed.bias
    if masked is not None:
        x = torch.where(masked[:, None], mask_embed, x)
    x = x + sincos_2d((t_p, f_p), encoder.embed_dim, dtype=x.dtype)
    x = torch.cat([encoder.cls_token[None], x])
    for block in encoder.blocks:
        x = x + attention_ref(block.attn, layer_norm_ref(x, block.norm1))
        h = layer_norm_ref(x, block.norm2) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return layer_norm_ref(x, encoder.norm)


def head_ref(head, x):
    """ATST's projector / predictor (audiossl ``build_mlp(2, ..., last_bn=False)``) on rows
    x [N, in]: bias-free linear layers, batch norm with the statistics of these N rows."""
    linear1, bn, _, linear2 = head.net
    h = x @ linear1.weight.T
    mean = h.mean(dim=0)
    var = ((h - mean) ** 2).mean(dim=0)
    h = torch.relu((h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)
    return h @ linear2.weight.T


def byol_ref(p, z):
    """Mean over rows of 2 - 2 cos(p_i, z_i)."""
    terms = [2 - 2 * (p[i] @ z[i]) / (p[i].norm() * z[i].norm()) for i in range(p.shape[0])]
    return torch.stack(terms).mean()


# ---- input: 40 ms tokens, padding hidden from attention -----------------------------------------


def test_atst_input_is_64_mel_and_40_ms_full_frequency_tokens():
    preset = get_preset("atst")
    assert (preset.n_mels, preset.hop_length, preset.center) == (64, 160, True)
    enc = create_model("vit_base_patch16", n_mels=64, frame_tokens=4, device="meta")
    # 10 s = 1001 frames, cut to 1000 = 250 tokens of 4 hops (40 ms); 6 s -> 600 -> 150 tokens
    assert whole_patch_frames(1001, 4) == 1000 and enc.grid(1000) == (250, 1)
    assert whole_patch_frames(601, 4) == 600 and enc.grid(600) == (150, 1)


@pytest.mark.parametrize("path", ["forward_features", "mask_embedding"])
def test_no_token_attends_to_padding(path):
    enc = tiny_encoder().double()
    lengths = [40, 23, 9, 40]  # frames: 10, 6, 3 and 10 valid tokens
    mel, frames = padded_batch(4, 40, lengths)
    token_lengths = (frames + 3) // 4
    masked = torch.rand(4, 10, generator=torch.Generator().manual_seed(2)) < 0.5
    embed = torch.randn(32, dtype=torch.float64)

    def run(x):
        if path == "forward_features":
            return enc.forward_features(x, token_lengths=token_lengths)
        return enc.forward_features(x, token_lengths=token_lengths, mask=masked, mask_embed=embed)

    batched = run(mel)
    for b in range(4):
        n = int(token_lengths[b])
        alone = vit_ref(
            enc, mel[b, : 4 * n], *((masked[b, :n], embed) if path == "mask_embedding" else ())
        )
        torch.testing.assert_close(batched[b, : 1 + n], alone, rtol=1e-10, atol=1e-10)
    # whatever the padding holds, the valid tokens do not change
    noisy = mel.clone()
    for b in range(4):
        noisy[b, 4 * int(token_lengths[b]) :] = 1e3 * torch.randn(
            40 - 4 * int(token_lengths[b]), 64
        )
    again = run(noisy)
    for b in range(4):
        n = 1 + int(token_lengths[b])
        torch.testing.assert_close(again[b, :n], batched[b, :n], rtol=1e-12, atol=1e-12)


def test_mask_embedding_path_without_a_mask_is_forward_features():
    enc = tiny_encoder()
    mel = torch.randn(3, 36, 64)
    lengths = torch.tensor([9, 4, 7])
    plain = enc.forward_features(mel, token_lengths=lengths)
    none = torch.zeros(3, 9, dtype=torch.bool)
    ours = enc.forward_features(mel, token_lengths=lengths, mask=none, mask_embed=torch.randn(32))
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)


def test_masked_token_ids_list_exactly_the_masked_tokens():
    mask = sample_mask(
        "time_span", 5, (50, 1), 0.65, generator=torch.Generator().manual_seed(0), span_length=5
    )
    ids = masked_token_ids(mask.ids_restore, mask.ids_keep.shape[1])
    assert ids.shape == (5, 50 - int(50 * 0.35))
    for b in range(5):
        assert ids[b].sort().values.tolist() == mask.mask[b].nonzero().flatten().tolist()


def test_projector_and_predictor_are_atst_bias_free_mlps():
    # audiossl build_mlp(2, in, hidden, out, last_bn=False): Linear(bias=False) -> BatchNorm1d
    # -> ReLU -> Linear(bias=False); a last bias is a constant output direction the predictor
    # could align with the teacher's projections whatever the input
    recipe = ATSTClip(tiny_encoder(), crop_frames=40, **HEADS)
    for head in (recipe.projector, recipe.predictor, recipe.teacher_projector):
        kinds = [type(m).__name__ for m in head.net]
        assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
        assert head.net[0].bias is None and head.net[3].bias is None
        assert head.net[1].affine
    names = [n for n, _ in recipe.named_parameters() if "projector" in n or "predictor" in n]
    assert not [n for n in names if n.endswith("net.0.bias") or n.endswith("net.3.bias")]


def test_mlp_head_batch_norm_statistics_come_from_the_valid_rows_only():
    torch.manual_seed(0)
    head = MLPHead(6, 10, 4).double().train()
    plain = copy.deepcopy(head)
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    valid = torch.rand(2, 7, generator=torch.Generator().manual_seed(1)) < 0.6
    out = head(x, valid)
    torch.testing.assert_close(out[valid], plain(x[valid]), rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(head.net[1], name), getattr(plain.net[1], name))
    # rows outside ``valid`` are transformed but leave the statistics alone
    moved = x.clone()
    moved[~valid] = 1e3
    torch.testing.assert_close(head(moved, valid)[valid], out[valid], rtol=1e-12, atol=1e-12)


# ---- losses against the references ---------------------------------------------------------------


def test_atst_clip_loss_matches_the_float64_reference():
    recipe = ATSTClip(tiny_encoder(), crop_frames=40, **HEADS).double().train()
    perturb_teacher(recipe)
    # 3 clips x 2 views: rows 0-2 first crops, 3-5 second crops; some crops padded
    views, lengths = padded_batch(6, 40, [40, 23, 9, 40, 17, 40], seed=3)
    out = recipe.forward_views(views, lengths)

    def class_tokens(encoder):
        rows = []
        for r in range(6):
            n = 4 * math.ceil(int(lengths[r]) / 4)  # the last partial patch is real audio
            rows.append(vit_ref(encoder, views[r, :n])[0])
        return torch.stack(rows)

    with torch.no_grad():
        p = head_ref(
            recipe.predictor, head_ref(recipe.projector, class_tokens(recipe.student_encoder))
        )
        z = head_ref(recipe.teacher_projector, class_tokens(recipe.teacher_encoder))
    want = 0.5 * (byol_ref(p[:3], z[3:]) + byol_ref(p[3:], z[:3]))
    torch.testing.assert_close(out["loss"].detach(), want, rtol=1e-10, atol=1e-10)
    # the loss is symmetric: swapping the views changes nothing
    swapped = recipe.forward_views(views.roll(3, 0), lengths.roll(3, 0))["loss"]
    torch.testing.assert_close(swapped.detach(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "one-way"])
def test_atst_frame_loss_matches_the_float64_reference(symmetric):
    recipe = ATSTFrame(tiny_encoder(), crop_frames=80, symmetric=symmetric, **HEADS)
    recipe = recipe.double().train()
    perturb_teacher(recipe)
    clean, lengths = padded_batch(3, 80, [80, 53, 21], seed=4)  # 20, 14 and 6 tokens
    augmented, _ = padded_batch(3, 80, [80, 53, 21], seed=5)
    mask = sample_mask("time_span", 3, (20, 1), 0.65, generator=torch.Generator().manual_seed(6))
    ids = masked_token_ids(mask.ids_restore, mask.ids_keep.shape[1])
    out = recipe.forward_views(clean, augmented, lengths, mask.mask, ids)

    token_lengths = [math.ceil(int(n) / 4) for n in lengths]

    def masked_frames(encoder, copy, student):
        """Output frames at the masked tokens of real audio, clip by clip, in time order."""
        rows = []
        for b, n in enumerate(token_lengths):
            hide = (mask.mask[b, :n], recipe.mask_embed) if student else ()
            tokens = vit_ref(encoder, copy[b, : 4 * n], *hide)[1:]
            rows.append(tokens[mask.mask[b, :n]])  # the loss covers masked frames only
        return torch.cat(rows)

    with torch.no_grad():
        student_copies = [clean, augmented] if symmetric else [augmented]
        teacher_copies = [clean, augmented] if symmetric else [clean]
        s = torch.cat([masked_frames(recipe.student_encoder, c, True) for c in student_copies])
        t = torch.cat([masked_frames(recipe.teacher_encoder, c, False) for c in teacher_copies])
        p = head_ref(recipe.predictor, head_ref(recipe.projector, s))  # BN over both copies
        z = head_ref(recipe.teacher_projector, t)
    if symmetric:
        half = p.shape[0] // 2  # the clean copy's frames, then the augmented copy's
        want = 0.5 * (byol_ref(p[:half], z[half:]) + byol_ref(p[half:], z[:half]))
    else:
        want = byol_ref(p, z)
    torch.testing.assert_close(out["loss"].detach(), want, rtol=1e-10, atol=1e-10)


# ---- views and masks -----------------------------------------------------------------------------


def test_atst_clip_views_are_two_independent_crops_inside_each_clip():
    identity = {"freq_scale": (1.0, 1.0), "time_scale": (1.0, 1.0), "time_canvas": 1.0}
    recipe = ATSTClip(tiny_encoder(), crop_frames=20, mixup_ratio=0.0, **identity)
    # frame t of clip b holds 1000 b + t: a view's first frame tells where it starts
    mel = (1000 * torch.arange(3.0)[:, None] + torch.arange(60.0)[None, :])[..., None]
    mel = mel.expand(3, 60, 64).contiguous()
    frame_lengths = torch.tensor([60, 35, 12])
    for b in range(3):
        mel[b, frame_lengths[b] :] = 0  # the front end gives zeros past a clip's frames
    g = torch.Generator().manual_seed(0)
    views, lengths = recipe.make_views(StepInput(mel, g, frame_lengths))
    assert views.shape == (6, 20, 64)
    starts = []
    for r in range(6):
        b = r % 3
        start = int(views[r, 0, 0].item()) - 1000 * b
        starts.append(start)
        valid = min(int(frame_lengths[b]) - start, 20)
        assert lengths[r] == valid and 0 <= start <= max(int(frame_lengths[b]) - 20, 0)
        torch.testing.assert_close(views[r, :valid], mel[b, start : start + valid])
        assert (views[r, valid:] == 0).all()
    assert starts[:3] != starts[3:]  # the two crops of a clip are drawn independently


def test_atst_frame_copies_share_one_crop_and_one_mask():
    recipe = ATSTFrame(tiny_encoder(), crop_frames=80, **HEADS)
    mel, frame_lengths = padded_batch(4, 100, [100, 90, 50, 100])
    clean, augmented, lengths, mask, ids = recipe.make_views(
        StepInput(mel.float(), None, frame_lengths)
    )
    assert clean.shape == augmented.shape == (4, 80, 64) and mask.shape == (4, 20)
    # overlapping spans (the paper): M candidates = the larger span count x 5, as ids name them
    assert ids.shape == (4, recipe.n_masked)
    assert recipe.n_masked == 5 * overlap_span_counts(20, 0.65, 5, 2)[1]
    assert (mask.sum(1) <= recipe.n_masked).all()
    for b in range(4):  # the clean copy is the crop itself
        hits = [s for s in range(21) if torch.equal(clean[b], mel[b, s : s + 80].float())]
        assert hits, b
    assert lengths.tolist() == [80, 80, 50, 80]
    # time spans of 5 tokens, at least 2: every masked run is at least 5 long
    for row in mask:
        runs = torch.diff(torch.cat([torch.zeros(1), row.float(), torch.zeros(1)])).nonzero()
        assert ((runs[1::2] - runs[::2]) >= 5).all()


# ---- teacher and gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["atst-clip", "atst-frame"])
def test_gradients_reach_only_the_student_and_the_teacher_is_its_ema(name):
    recipe = build_recipe(name, tiny_encoder(), crop_frames=80, ema_base=0.9, **HEADS)
    teacher = recipe.teacher.module.state_dict()
    student = {f"encoder.{k}": v for k, v in recipe.student_encoder.state_dict().items()}
    student.update({f"projector.{k}": v for k, v in recipe.projector.state_dict().items()})
    assert teacher.keys() == student.keys()  # encoder + projector: no predictor, no mask token
    assert all(torch.equal(teacher[k], student[k]) for k in teacher)

    mel, frame_lengths = padded_batch(4, 100, [100, 90, 50, 100])
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # the second step mixes with the memory filled by the first
        recipe(mel.float(), generator=g, frame_lengths=frame_lengths)["loss"].backward()
    for name_p, p in recipe.named_parameters():
        if name_p.startswith("teacher."):
            assert p.grad is None and not p.requires_grad, name_p
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name_p
            assert p.grad.abs().sum() > 0, name_p

    optimizer = torch.optim.SGD([p for p in recipe.parameters() if p.requires_grad], lr=0.1)
    optimizer.step()
    before = {k: v.double().clone() for k, v in recipe.teacher.module.state_dict().items()}
    recipe.after_step(3, 10)
    m = ema_momentum(3, 10, 0.9)
    now = {f"encoder.{k}": v for k, v in recipe.student_encoder.state_dict().items()}
    now.update({f"projector.{k}": v for k, v in recipe.projector.state_dict().items()})
    for k, v in recipe.teacher.module.state_dict().items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            want = now[k].double()  # batch-norm statistics are copied, not averaged
        else:
            want = m * before[k] + (1 - m) * now[k].double()
        torch.testing.assert_close(v.double(), want, rtol=1e-6, atol=1e-7)


def test_collapse_warnings_name_the_collapsing_network():
    recipe = ATSTClip(tiny_encoder(), crop_frames=40, **HEADS)
    warnings = recipe.health({"spread_teacher": 0.01, "spread_student": 0.8})
    assert len(warnings) == 1 and "spread_teacher" in warnings[0]
    assert recipe.health({"spread_teacher": 0.7, "spread_student": 0.8}) == []


# ---- FLOPs for MFU -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [
        ("atst-clip", {"crop_frames": 41}),
        ("atst-frame", {"crop_frames": 83}),
        ("atst-frame", {"crop_frames": 83, "symmetric": False}),
    ],
    ids=["clip", "frame", "frame-one-way"],
)
def test_train_flops_match_the_flop_counter(name, options):
    recipe = build_recipe(name, tiny_encoder(), **HEADS, **options)
    mel = torch.randn(2, 90, 64)
    g = torch.Generator().manual_seed(0)
    # the math backend decomposes attention into bmm, which the counter sees on CPU
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        recipe(mel, generator=g, frame_lengths=torch.tensor([90, 60]))["loss"].backward()
    per_clip = counter.get_total_flops() / 2
    assert recipe.train_flops_per_clip(90) == pytest.approx(per_clip, rel=1e-9)


# ---- configuration -------------------------------------------------------------------------------


def test_paper_and_demo_settings():
    frame = default_config("atst-frame", demo=False)
    assert (frame.frontend.preset, frame.frontend.n_mels) == ("atst", 64)
    # the 40 ms full-frequency tokens are the recipe's request to the encoder, not a user override
    assert (frame.model.name, frame.model.patch_size) == ("vit_base_patch16", None)
    asked = encoder_options("atst-frame", **recipe_options(frame))
    assert asked == {"frame_tokens": 4, "class_token": False}  # FrameAST has no class token
    assert (frame.masking.kind, frame.masking.ratio) == ("time_span", 0.65)
    assert frame.train.global_batch == 864 and frame.atst.ema_momentum == 0.9996
    opts = recipe_options(frame)
    assert opts["crop_frames"] == 1001 and opts["mask_options"] == {
        "span_length": 5,
        "min_spans": 2,
        "overlap": True,
    }
    clip = default_config("atst-clip", demo=False)
    assert clip.train.global_batch == 1536 and clip.optim.blr == 2e-4
    assert recipe_options(clip)["crop_frames"] == 601 and "mask_kind" not in recipe_options(clip)
    demo = default_config("atst-clip", demo=True)
    assert demo.model.patch_size is None and demo.frontend.preset == "atst"
    assert encoder_options("atst-clip", **recipe_options(demo)) == {"frame_tokens": 4}
    # the paper resizes both axes; the demo only time (ATST_CLIP_DEMO: the frequency crop cuts
    # the demo's narrow-band events out of one view, and BYOL learns to ignore them)
    assert clip.atst.freq_scale == (0.6, 1.5) and clip.atst.time_scale == (0.6, 1.5)
    assert demo.atst.freq_scale == (1.0, 1.0) and demo.atst.time_scale == (0.6, 1.5)
    # the config survives its JSON round trip (config.json, resume)
    assert Config.from_dict(json.loads(frame.to_json())) == frame


def test_atst_overrides_are_typed_and_checked():
    cfg = default_config("atst-frame")
    apply_override(cfg, "atst.freq_scale=0.5,1.2")
    apply_override(cfg, "model.patch_size=2,64")
    apply_override(cfg, "atst.crop_seconds=none")
    assert cfg.atst.freq_scale == (0.5, 1.2) and cfg.model.patch_size == (2, 64)
    assert cfg.atst.crop_seconds is None
    for bad in (
        "atst.time_scale=0.5,0.9",
        "atst.mixup_ratio=2",
        "atst.ema_momentum=1",
        "atst.memory_size=0",
        "model.patch_size=0,64",
    ):
        with pytest.raises(ConfigError):
            apply_override(cfg, bad)


def test_atst_frame_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="group"):
        ATSTFrame(tiny_encoder(), mask_kind="group")


# ---- the training loop, the CLI and the exported encoder -----------------------------------------


def small_run(out, recipe, **overrides):
    cfg = default_config(recipe, demo=True)
    settings = {
        "out": str(out),
        "data.demo_clips": 24,
        "data.demo_clip_seconds": 1.0,
        "data.clip_seconds": 1.0,
        "atst.crop_seconds": 0.8,
        "atst.proj_hidden": 64,
        "atst.proj_dim": 32,
        "atst.memory_size": 16,
        "train.batch_size": 8,
        "train.steps": 4,
        "train.log_every": 2,
        "train.ckpt_every": 2,
        "train.progress": False,
        "optim.warmup_steps": 2,
    }
    settings.update(overrides)
    for key, value in settings.items():
        apply_override(cfg, f"{key}={value}")
    return cfg


def test_atst_frame_demo_run_learns(tmp_path):
    cfg = small_run(
        tmp_path / "run",
        "atst-frame",
        **{
            "train.steps": 20,
            "train.log_every": 5,
            "train.ckpt_every": 20,
            "train.amp": "bf16",
            "optim.lr": 1e-3,
        },
    )
    result = pretrain(cfg)
    records = read_metrics(result.run_dir / "metrics.jsonl")
    assert {"loss", "spread_student", "spread_teacher"} <= set(records[0])
    losses = [r["loss"] for r in records]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    described = json.loads((result.run_dir / "encoder.json").read_text())
    assert described["model_config"]["patch_size"] == [4, 64]
    # the export is the EMA teacher's backbone, the encoder ATST evaluates
    state = load_checkpoint(list_checkpoints(result.run_dir)[-1][1])["model"]
    exported = load_encoder(result.run_dir).backbone.state_dict()
    for key, value in exported.items():
        assert torch.equal(value, state[f"teacher.module.encoder.{key}"].float()), key
    assert any(
        not torch.equal(value, state[f"student_encoder.{key}"].float())
        for key, value in exported.items()
    )


def test_atst_clip_resumed_run_equals_the_uninterrupted_one(tmp_path, same_state):
    """The mixup memory and the teacher are in the checkpoint: resuming changes nothing."""
    full = pretrain(small_run(tmp_path / "full", "atst-clip"))
    pretrain(small_run(tmp_path / "part", "atst-clip", **{"train.stop_after": 2}))
    resumed = pretrain(small_run(tmp_path / "part", "atst-clip"), resume=True)
    a = load_checkpoint(list_checkpoints(full.run_dir)[-1][1])["model"]
    b = load_checkpoint(list_checkpoints(resumed.run_dir)[-1][1])["model"]
    assert any(k.startswith("memory.") for k in a) and any(k.startswith("teacher.") for k in a)
    same_state(a, b)


def test_pretrain_atst_clip_on_a_folder_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "audio"
    data.mkdir()
    t = np.arange(int(1.3 * 16000)) / 16000
    for i in range(6):
        sf.write(data / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t)), 16000)
    out = tmp_path / "run"
    argv = ["pretrain", "--recipe", "atst-clip", "--data", str(data), "--model"]
    argv += ["vit_mini_patch16", "--steps", "2", "--batch-size", "3", "--out", str(out)]
    argv += ["--no-progress", "--workers", "0", "optim.accum_steps=1", "data.clip_seconds=1.2"]
    argv += ["atst.crop_seconds=1.0", "atst.proj_hidden=64", "atst.memory_size=8"]
    assert main(argv) == 0
    assert f"saved to {out}" in capsys.readouterr().out
    encoder = load_encoder(out)
    emb, t_ms = encoder.frames(torch.zeros(1, 16000))
    assert emb.shape == (1, 26, 128)  # 101 frames -> 26 tokens of 40 ms


def test_frames_of_an_exported_atst_encoder_are_one_per_40_ms_token(tmp_path):
    backbone = tiny_encoder()
    export_encoder(backbone, get_preset("atst"), tmp_path)
    enc = load_encoder(tmp_path)
    wave = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([16000, 7000])  # 101 and 44 frames: 26 and 11 tokens
    emb, t_ms = enc.frames(wave, lengths)
    assert emb.shape == (2, 26, 32) and t_ms.shape == (2, 26)
    # centred frames at 10 ms hops: token k covers frames 4k..4k+3, centre 40 k + 15 ms
    torch.testing.assert_close(t_ms[0], 40.0 * torch.arange(26) + 15.0)
    assert (emb[1, 11:] == 0).all() and (emb[1, :11].abs().sum(dim=1) > 0).all()
    # one row per token: the backbone's own tokens of the front-end features, no pooling
    with torch.no_grad():
        mel = torch.nn.functional.pad(enc.frontend(wave[:1]), (0, 0, 0, 3))  # 101 -> 104
        tokens = enc.backbone.forward_features(mel)[0, 1:]
    torch.testing.assert_close(emb[0], tokens, rtol=1e-5, atol=1e-5)
    alone, _ = enc.frames(wave[1:, :7000])
    torch.testing.assert_close(emb[1, :11], alone[0], rtol=1e-5, atol=1e-5)
