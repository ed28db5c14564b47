"""BYOL pieces shared by the ATST recipes: the loss, the student/teacher pair, FLOP counting.

ATST-Clip and ATST-Frame train the same pair (Grill et al. 2020, BYOL): a student (encoder ->
projector -> predictor) predicts the output of a teacher (encoder -> projector) that is an
exponential moving average of the student's encoder and projector, through

    loss = 2 - 2 cos(p, z) = || p / |p| - z / |z| ||^2,

with no gradient into the teacher. The projector and predictor are ATST's: Linear -> BatchNorm ->
ReLU -> Linear to 4096 then 256 (:class:`~fastspec.recipes.heads.MLPHead`). The teacher's
momentum rises from ``ema_base`` to ``ema_final`` on a cosine over the run
(:func:`~fastspec.recipes.teacher.ema_momentum`), one fused update after each optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastspec.config_base import check, check_all
from fastspec.frontend import get_preset, num_frames
from fastspec.recipes.augment import MixupMemory
from fastspec.recipes.heads import MLPHead
from fastspec.recipes.monitors import collapse_warnings
from fastspec.recipes.teacher import EMATeacher, ema_momentum

# ==== settings: config section `atst`, shared by atst-clip and atst-frame ======================


@dataclass
class AtstConfig:
    """Settings of the ``atst-clip`` and ``atst-frame`` recipes (ATST-Frame's mask kind and
    ratio are ``masking.kind`` and ``masking.ratio``)."""

    crop_seconds: float | None = None
    """Length of each crop taken from a clip; None: the paper's, 6 s for atst-clip's two crops
    and 10 s for atst-frame's one. Cut down to whole patches (601 -> 600 frames)."""
    ema_momentum: float = 0.99
    """Teacher momentum at the first step; it rises on a cosine to 1 at the last (the paper's
    base models: 0.9995 atst-clip, 0.9996 atst-frame)."""
    proj_hidden: int = 4096
    """Hidden width of the projector and the predictor (Linear -> BatchNorm -> ReLU -> Linear)."""
    proj_dim: int = 256
    """Output width of the projector and the predictor: the space of the BYOL loss."""
    mixup_ratio: float = 0.4
    """Largest weight of the past crop in log-mixup-exp (0 disables mixing)."""
    memory_size: int = 2000
    """Past crops remembered for log-mixup-exp (held on the device and in checkpoints)."""
    freq_scale: tuple[float, float] = (0.6, 1.5)
    """Random resize crop: range of the crop height as a fraction of the mel bins."""
    time_scale: tuple[float, float] = (0.6, 1.5)
    """Random resize crop (atst-clip only): range of the crop width as a fraction of the
    frames. atst-frame never resizes time: its copies must stay aligned frame for frame."""
    time_canvas: float = 1.5
    """Random resize crop (atst-clip only): the zero canvas the crop is cut from, as a multiple
    of the crop's length."""
    span_length: int = 5
    """atst-frame with ``masking.kind=time_span``: tokens (40 ms each) per masked span."""
    min_spans: int = 2
    """atst-frame with ``masking.kind=time_span``: at least this many spans are masked."""
    span_overlap: bool = True
    """atst-frame with ``masking.kind=time_span``: fairseq's overlapping spans as the paper's
    reference (about 50 % of the frames masked at ratio 0.65); False: exactly ``ratio``, in
    spans that never overlap."""
    symmetric: bool = True
    """atst-frame: both copies go through student and teacher and the two directions of the
    loss are averaged (paper); False: student on the augmented copy, teacher on the clean one."""
    token_frames: int = 4
    """Frames per output token, each token spanning every mel bin (4 = ATST's 40 ms at a 10 ms
    hop). The recipe asks its encoder for this layout through the encoder contract
    (``frame_tokens``): a ViT gets 4 x 64 patches, MAST pools frequency to one token and time
    only as far as this allows."""
    clip_pooling: str = "cls"
    """atst-clip: the clip embedding BYOL compares, ``cls`` (the class token, ATST) or ``mean``
    (the mean of the valid output tokens)."""

    def __post_init__(self):
        check(
            self.crop_seconds is None or self.crop_seconds > 0,
            "atst.crop_seconds",
            self.crop_seconds,
            "must be > 0 (or None for the recipe's)",
        )
        check(0 <= self.ema_momentum < 1, "atst.ema_momentum", self.ema_momentum,
              "must be in [0, 1)")  # fmt: skip
        check_all(self, "atst", ("proj_hidden", "proj_dim", "memory_size", "span_length",
                                 "min_spans", "token_frames"), lambda v: v >= 1, "must be >= 1")  # fmt: skip
        check(0 <= self.mixup_ratio <= 1, "atst.mixup_ratio", self.mixup_ratio,
              "must be in [0, 1]")  # fmt: skip
        check_all(self, "atst", ("freq_scale", "time_scale"),
                  lambda v: 0 < v[0] <= v[1] and v[1] >= 1,
                  "must be (low, high) with 0 < low <= high and high >= 1")  # fmt: skip
        check(self.time_canvas >= 1, "atst.time_canvas", self.time_canvas, "must be >= 1")
        check(self.clip_pooling in ("cls", "mean"), "atst.clip_pooling", self.clip_pooling,
              "must be cls or mean")  # fmt: skip


def atst_common_options(cfg, default_crop_seconds: float) -> dict:
    """Constructor arguments both ATST recipes take from the ``atst`` section, the crop
    converted from seconds to frames of the run's front end."""
    a = cfg.atst
    seconds = a.crop_seconds if a.crop_seconds is not None else default_crop_seconds
    features = get_preset(
        cfg.frontend.preset, sample_rate=cfg.data.sample_rate, n_mels=cfg.frontend.n_mels
    )
    return {
        "crop_frames": int(num_frames(round(seconds * cfg.data.sample_rate), features)),
        "proj_hidden": a.proj_hidden,
        "proj_dim": a.proj_dim,
        "ema_base": a.ema_momentum,
        "mixup_ratio": a.mixup_ratio,
        "memory_size": a.memory_size,
        "freq_scale": a.freq_scale,
        "token_frames": a.token_frames,
    }


# ATST's input and training, shared by both recipes (Audio-WestlakeU/audiossl): 64 mel, 16 kHz,
# 40 ms full-frequency tokens asked of the encoder (``atst.token_frames``); the reference ViT
# (models/atst/audio_transformer.py and methods/atstframe/audio_transformer.py: AST_base /
# FrameAST_base) has qkv_bias=False, drop_path_rate=0.1 (linear over the blocks) and a learned
# position table (pos_type "cut", trunc-normal 0.02) of 1 + 1001 // 4 entries, 1-D over time as
# the tokens span every mel bin; model.py of both: transformers' AdamW, the lr per step on a
# cosine to 1e-6 after a linear warm-up from 0, weight decay on a cosine 0.04 -> 0.4 (not on
# biases and norms), no gradient clipping, the EMA on a cosine from its base to 1; train.py of
# both: lr = learning_rate x nproc x batch_size_per_gpu / 256 (our blr). Counted in steps, as
# the reference counts them (max_steps, warmup_steps). The table here has 1004 // 4 = 251 rows
# (its 250 patch rows and one more), so a whole 10 s clip (1001 frames, padded) fits.
ATST_PAPER = {
    "frontend.preset": "atst",
    "frontend.n_mels": 64,
    "data.clip_seconds": 10.0,
    "model.name": "vit_base_patch16",
    "model.pos_embed": "learned",
    "model.max_frames": 1004,
    "model.qkv_bias": False,
    "model.drop_path": 0.1,
    "optim.min_lr": 1e-6,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.betas": (0.9, 0.999),
    "optim.grad_clip": 0.0,
}
# about a minute on a 2-core CPU: a 4-block ViT on 2 s clips, narrow heads, and a teacher that
# follows the student within a short run: the paper's momenta average over ~2000 steps (0.1-0.6 %
# of its runs); at the code default 0.99 a 60-step run moves the exported teacher about a quarter
# of the way from its random init (its probe matched random init's to the clip), while 0.9
# averages over ~10 steps. The base lr is raised to match (blr 0.02: 1.25e-3 at 16 clips).
ATST_DEMO = {
    "frontend.preset": "atst",
    "frontend.n_mels": 64,
    "atst.proj_hidden": 256,
    "atst.proj_dim": 128,
    "atst.memory_size": 256,
    "atst.ema_momentum": 0.9,
    "optim.blr": 0.02,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.betas": (0.9, 0.999),
    "train.steps": 200,
}

# ==== end of settings ==========================================================================


def byol_loss(p: Tensor, z: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of ``2 - 2 cos(p, z)`` over rows, in float32 at least.

    p: [..., D] student predictions; z: [..., D] teacher targets (detached by the caller);
    weight: optional [...] row weights (e.g. 1 for masked frames of real audio, 0 elsewhere);
    the mean is then weighted, and a zero total weight gives 0, not NaN.
    """
    dtype = torch.promote_types(p.dtype, torch.float32)  # bf16 autocast outputs: fp32 loss
    cos = F.cosine_similarity(p.to(dtype), z.to(dtype), dim=-1, eps=1e-12)  # [...]
    per_row = 2.0 - 2.0 * cos
    if weight is None:
        return per_row.mean()
    weight = weight.to(per_row.dtype)
    # clamp keeps an all-zero weight finite without reading it back (no host sync)
    return (per_row * weight).sum() / weight.sum().clamp_min(1.0)


def mlp_head_flops(head: MLPHead) -> float:
    """Forward FLOPs of :class:`MLPHead` per row: its two linear layers."""
    first, last = head.net[0], head.net[3]
    return 2.0 * (first.in_features * first.out_features + last.in_features * last.out_features)


class BYOLPair(nn.Module):
    """Student encoder + projector + predictor, and the EMA teacher of encoder + projector.

    Subclasses (the recipes) cut and augment their views (``make_views``) and compute their
    losses (``forward_views``); this class owns what both ATST recipes share: the parameters,
    the crop length, the log-mixup-exp memory, the teacher update hook, the collapse warnings
    and the token layout asked of the encoder.

    The exported encoder is the teacher's: :attr:`encoder` (what the training loop exports) is
    the EMA teacher's backbone, as ATST evaluates it (audiossl's downstream code loads
    ``model.teacher.encoder``); the student's is :attr:`student_encoder`. Both are in every
    checkpoint.

    Args:
        encoder: the student encoder; the teacher starts as a copy of it.
        crop_frames: frames of each crop, cut down to whole output tokens (ATST drops the
            frames that do not fill a last patch: 600 of 601 for 6 s, 1000 of 1001 for 10 s).
        proj_hidden, proj_dim: projector and predictor widths (ATST: 4096 and 256).
        ema_base, ema_final: teacher momentum at the first and at the last step.
        mixup_ratio, memory_size: largest background weight of log-mixup-exp (0.4) and the
            number of past crops remembered (2000).
        freq_scale: random resize crop, range of the crop height over the mel bins (0.6-1.5).
        token_frames: frames per full-frequency output token asked of the encoder (4 = 40 ms).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        crop_frames: int,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        ema_base: float = 0.99,
        ema_final: float = 1.0,
        mixup_ratio: float = 0.4,
        memory_size: int = 2000,
        freq_scale: tuple[float, float] = (0.6, 1.5),
        token_frames: int = 4,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not 0.0 <= ema_base <= ema_final <= 1.0:
            raise ValueError(
                f"need 0 <= ema_base <= ema_final <= 1, got ema_base={ema_base}, "
                f"ema_final={ema_final}"
            )
        kw = {"device": device, "dtype": dtype}
        self.student_encoder = encoder
        self.projector = MLPHead(encoder.embed_dim, proj_hidden, proj_dim, **kw)
        self.predictor = MLPHead(proj_dim, proj_hidden, proj_dim, **kw)
        self.ema_base, self.ema_final = float(ema_base), float(ema_final)
        # the teacher starts as an exact copy of encoder + projector (ATST's load_state_dict)
        self.teacher = EMATeacher(self._student_branch())
        self.token_frames = int(token_frames)
        self.crop_frames = whole_patch_frames(crop_frames, encoder.frame_hop)
        self.freq_scale = tuple(float(s) for s in freq_scale)
        self.memory = MixupMemory(
            memory_size, self.crop_frames, encoder.n_mels, mixup_ratio, device=device
        )

    @staticmethod
    def encoder_options(token_frames: int = 4, **options) -> dict:
        """Contract options asked of the encoder: full-frequency tokens of ``token_frames``."""
        del options
        return {"frame_tokens": int(token_frames)}

    def forward(
        self,
        mel: Tensor,
        generator: torch.Generator | None = None,
        frame_lengths: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One training forward pass: the recipe's views of ``mel`` [B, T, F] (normalised
        log-mel, ``atst`` preset; ``generator`` the RNG of crops, augmentations and masks, on
        mel's device; ``frame_lengths`` [B] valid frames per clip), then their loss.
        Returns {"loss", "spread_student", "spread_teacher"}."""
        return self.forward_views(*self.make_views(mel, generator, frame_lengths))

    def _student_branch(self) -> nn.ModuleDict:
        # what the teacher follows, in the order of the teacher's own copy; a fresh container
        # each call, so the recipe itself registers each module once
        return nn.ModuleDict({"encoder": self.student_encoder, "projector": self.projector})

    @property
    def encoder(self) -> nn.Module:
        """The encoder the run exports: the EMA teacher's backbone (class docstring)."""
        return self.teacher.module["encoder"]

    @property
    def teacher_encoder(self) -> nn.Module:
        return self.teacher.module["encoder"]

    @property
    def teacher_projector(self) -> MLPHead:
        return self.teacher.module["projector"]

    def momentum(self, step: int, total_steps: int) -> float:
        """Teacher momentum after optimizer step ``step`` of ``total_steps``."""
        return ema_momentum(step, total_steps, self.ema_base, self.ema_final)

    def after_step(self, step: int, total_steps: int) -> None:
        """Training-loop hook: the teacher follows the student (one fused foreach lerp)."""
        self.teacher.update(self._student_branch(), self.momentum(step, total_steps))

    def health(self, stats: dict[str, float]) -> list[str]:
        """Training-loop hook: warn when student or teacher outputs stop varying (collapse)."""
        warnings = collapse_warnings(stats, spread_key="spread_teacher")
        return warnings + collapse_warnings(stats, spread_key="spread_student")

    def heads_train_flops(self, rows: int, views: int) -> float:
        """FLOPs of the heads for ``rows`` output rows per view and ``views`` views per clip:
        student projector + predictor forward and backward (3x), teacher projector forward."""
        student = 3.0 * (mlp_head_flops(self.projector) + mlp_head_flops(self.predictor))
        return views * rows * (student + mlp_head_flops(self.projector))

    def encoders_train_flops(self, n_frames: int, views: int) -> float:
        """FLOPs of the encoders for ``views`` inputs of ``n_frames`` frames per clip: the
        student forward and backward (3x, the patch embedding 2x: the mel needs no gradient)
        and the teacher forward."""
        enc = self.student_encoder
        forward = sum(enc.forward_flops(n_frames).values())
        return views * (enc.train_flops(n_frames) + forward)


def whole_patch_frames(crop_frames: int, patch_frames: int) -> int:
    """``crop_frames`` cut down to whole patches (at least one): ATST drops the frames that
    do not fill a last patch (600 of 601 frames for 6 s, 1000 of 1001 for 10 s)."""
    if crop_frames < 1:
        raise ValueError(f"crop_frames must be >= 1, got {crop_frames}")
    return max(patch_frames, crop_frames // patch_frames * patch_frames)


def crop_lengths(
    starts: Tensor, frame_lengths: Tensor | None, n_frames: int, crop: int
) -> Tensor | None:
    """Valid frames of crops that start at ``starts`` [...] in clips of ``frame_lengths`` [B]
    (default: all ``n_frames``), between 1 and ``crop``.

    None when every crop is whole, known on the host without a sync: no clip is padded
    (``frame_lengths`` None, as the loop passes it then) and clips hold a crop. The encoders then
    run without a padding mask, the path that reaches the fast attention kernels.
    """
    if frame_lengths is None and n_frames >= crop:
        return None
    if frame_lengths is None:
        total = torch.full_like(starts, n_frames)
    else:
        total = frame_lengths.to(device=starts.device, dtype=torch.long).expand_as(starts)
    return (total - starts).clamp(1, crop)


__all__ = [
    "ATST_DEMO",
    "ATST_PAPER",
    "AtstConfig",
    "BYOLPair",
    "atst_common_options",
    "byol_loss",
    "crop_lengths",
    "mlp_head_flops",
    "whole_patch_frames",
]
